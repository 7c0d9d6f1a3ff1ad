use std::sync::Arc;

use serde::Serialize;
use warp::{Filter, Rejection, http::StatusCode, reply::Response};

use super::{json, with_app};
use crate::app::App;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves.
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ok` when every part answers, else `unavailable`.
    pub status: &'static str,
    /// Each part and whether it answers (`ok` or a short reason).
    pub database: String,
}

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| json(StatusCode::OK, &Health { status: "ok" }));
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_app(app))
        .then(ready);
    health.or(ready).unify()
}

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
