//! `GET /metrics`: the Prometheus text format, to the addresses of `metrics.allow` only. The list
//! is read at start; the rest answer 403 before anything is gathered.

use std::sync::Arc;

use ipnet::IpNet;
use warp::{
    Filter, Rejection,
    http::{HeaderValue, StatusCode, header},
    reply::{Reply, Response},
};

use super::{error::ApiError, front::Peer, with_app};
use crate::app::App;

/// The content type of Prometheus' text exposition format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn routes(
    app: Arc<App>,
    allow: Vec<IpNet>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let allow = Arc::new(allow);
    warp::path!("metrics")
        .and(warp::get())
        .and(warp::ext::optional::<Peer>())
        .and(with_app(app))
        .map(move |peer: Option<Peer>, app: Arc<App>| {
            let allowed =
                peer.is_some_and(|peer| allow.iter().any(|net| net.contains(&peer.client)));
            if allowed {
                scrape(&app)
            } else {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this address may not read the metrics; see metrics.allow",
                )
                .into_response()
            }
        })
}

#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "metrics",
    description = "Prometheus metrics (SPEC §9) in the text exposition format, to the client \
                   addresses of `metrics.allow` only (by default loopback and private ranges).",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
        (status = 403, description = "`forbidden`: this address is not in `metrics.allow`; \
                                      `forbidden_origin`: the `Origin` is not in `server.cors_origins`",
         body = super::error::ErrorBody),
        (status = 408, description = "`request_timeout`: the request was not complete within \
                                      `server.request_timeout`", body = super::error::ErrorBody)))]
fn scrape(app: &App) -> Response {
    let text = app.metrics.render(
        app.hub.connection_count(),
        app.hub.online_user_count(),
        app.store.pool_usage(),
    );
    let mut response = warp::reply::with_status(text, StatusCode::OK).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    response
}
