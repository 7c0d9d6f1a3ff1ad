use std::sync::Arc;

use serde::Serialize;
use warp::{Filter, Rejection, http::StatusCode, reply::Response};

use super::{error::FrontRefusals, json, with_app};
use crate::app::App;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves.
    #[schema(value_type = String, pattern = "^ok$")]
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ok` when every part answers, else `unavailable`.
    #[schema(value_type = String, pattern = "^(ok|unavailable)$")]
    pub status: &'static str,
    /// Each part and whether it answers (`ok` or a short reason).
    pub database: String,
}

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let health = warp::path!("health").and(warp::get()).map(health);
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_app(app))
        .then(ready);
    health.or(ready).unify()
}

#[utoipa::path(get, path = "/health", tag = "health", operation_id = "health",
    description = "Whether the process serves; it does not ask the database (that is `/ready`).",
    responses(
        FrontRefusals,
        (status = 200, description = "The process serves", body = Health)))]
fn health() -> Response {
    json(StatusCode::OK, &Health { status: "ok" })
}

#[utoipa::path(get, path = "/ready", tag = "health", operation_id = "ready",
    responses(
        FrontRefusals,
        (status = 200, description = "Every part answers", body = Readiness),
        (status = 503, description = "A part does not answer; the body names it", body = Readiness)))]
async fn ready(app: Arc<App>) -> Response {
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), app.store.ping()).await;
    let (status, database) = match ping {
        Ok(Ok(())) => (StatusCode::OK, "ok".to_owned()),
        Ok(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable".to_owned()),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out".to_owned()),
    };
    let overall = if status == StatusCode::OK {
        "ok"
    } else {
        "unavailable"
    };
    json(
        status,
        &Readiness {
            status: overall,
            database,
        },
    )
}
