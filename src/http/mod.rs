//! The HTTP transport: warp filters per route group, a last filter that answers a known path's wrong
//! method with 405 and `Allow`, one `recover` that turns warp's own rejections into the
//! `{"detail", "code"}` shape, and CORS around the whole (after `recover`, so errors keep their CORS
//! headers).

pub mod allow;
mod auth;
mod conversations;
pub mod docs;
pub mod error;
pub mod extract;
mod health;
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

pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let document = docs::document(&app.config);
    let methods = Arc::new(allow::Methods::new(&document, &docs::PAGES));
    let api = health::routes(Arc::clone(&app))
        .or(auth::routes(Arc::clone(&app)))
        .unify()
        .or(users::routes(Arc::clone(&app)))
        .unify()
        .or(conversations::routes(Arc::clone(&app)))
        .unify()
        .or(crate::ws::routes(Arc::clone(&app)))
        .unify()
        .or(docs::routes(document))
        .unify()
        .or(allow::wrong_method(methods))
        .unify();
    let logged = api
        .recover(recover)
        .unify()
        .with(warp::log::custom(log_request));
    let origins = &app.config.server.cors_origins;
    if origins.is_empty() {
        return logged.map(Reply::into_response).boxed();
    }
    let cors = warp::cors()
        .allow_origins(origins.iter().map(String::as_str))
        .allow_methods(["GET", "POST", "OPTIONS"])
        .allow_headers(["authorization", "content-type"])
        .max_age(600);
    logged
        .with(cors)
        .map(Reply::into_response)
        .recover(|rejection: Rejection| async move {
            // The only rejection left once `recover` ran is CORS refusing the origin.
            let _ = rejection;
            Ok::<_, Infallible>(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_origin",
                    "this origin is not in server.cors_origins",
                )
                .into_response(),
            )
        })
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

fn log_request(info: warp::log::Info<'_>) {
    // The path may carry an access token in its query string: log the path only.
    tracing::info!(
        method = %info.method(),
        route = info.path(),
        status = info.status().as_u16(),
        latency_ms = info.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
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
