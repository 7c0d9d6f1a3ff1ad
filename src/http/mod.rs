//! The HTTP transport: warp filters per route group, a last filter that answers a known path's wrong
//! method with 405 and `Allow`, and one `recover` that turns warp's own rejections into the
//! `{"detail", "code"}` shape. `front` wraps the whole in CORS and the request log.

pub(crate) mod allow;
mod auth;
pub(crate) mod caps;
pub(crate) mod client_ip;
mod conversations;
pub mod docs;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod front;
mod health;
mod metrics;
mod users;

use std::{convert::Infallible, sync::Arc};

use serde::Serialize;
use warp::{
    Filter, Rejection,
    filters::BoxedFilter,
    http::StatusCode,
    reply::{Reply, Response},
};

use crate::app::App;
use error::ApiError;

/// Every route, with warp's rejections answered in the `{"detail", "code"}` shape. CORS and the
/// request log wrap them in `front`.
pub fn routes(
    app: Arc<App>,
    document: utoipa::openapi::OpenApi,
    methods: Arc<allow::Methods>,
    metrics_allow: Vec<ipnet::IpNet>,
) -> BoxedFilter<(Response,)> {
    health::routes(Arc::clone(&app))
        .or(auth::routes(Arc::clone(&app)))
        .unify()
        .or(users::routes(Arc::clone(&app)))
        .unify()
        .or(conversations::routes(Arc::clone(&app)))
        .unify()
        .or(crate::ws::routes(Arc::clone(&app)))
        .unify()
        .or(metrics::routes(Arc::clone(&app), metrics_allow))
        .unify()
        .or(docs::routes(document))
        .unify()
        .or(allow::wrong_method(methods))
        .unify()
        .recover(recover)
        .unify()
        .boxed()
}

/// Hands the shared state to a handler.
pub fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || Arc::clone(&app))
}

pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::not_found("no such route")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {} bytes", extract::MAX_BODY_BYTES),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header with the body",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        // `allow::wrong_method` answers every documented path; this one is missing from the
        // OpenAPI document, so its 405 cannot say which methods it takes.
        tracing::error!("a route refused a method but is not documented, so its 405 has no Allow");
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::MissingHeader>().is_some()
    {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "a request header is missing or malformed",
        )
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request could not be understood",
        )
    };
    Ok(error.into_response())
}
