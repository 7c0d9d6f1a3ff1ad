//! The WebSocket transport: `GET /ws/chat/{user_id}` (the seed's path) and `GET /ws`.

mod connection;
pub mod protocol;

use std::{collections::HashMap, sync::Arc};

use warp::{
    Filter, Rejection,
    http::StatusCode,
    reply::{Reply, Response},
};

use crate::{
    app::App,
    http::{
        error::ApiError,
        extract::{self, bearer_token},
    },
};

/// Frames may be a little over the limit on the wire: the socket task closes with 1009 itself, so a
/// frame slightly too large gets the documented close code rather than a protocol error.
const WIRE_SLACK: usize = 1024;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with_user = warp::path!("ws" / "chat" / String).map(Some);
    let without_user = warp::path!("ws").map(|| None);
    with_user
        .or(without_user)
        .unify()
        .and(warp::get())
        .and(warp::ws())
        .and(warp::header::optional::<String>("authorization"))
        .and(extract::query())
        .and(warp::header::optional::<String>("origin"))
        .and(warp::any().map(move || Arc::clone(&app)))
        .map(upgrade)
}

fn upgrade(
    path_user: Option<String>,
    ws: warp::ws::Ws,
    authorization: Option<String>,
    query: HashMap<String, String>,
    origin: Option<String>,
    app: Arc<App>,
) -> Response {
    match check(&app, path_user, authorization, &query, origin) {
        Ok(user) => {
            let max = app.config.limits.max_frame_bytes + WIRE_SLACK;
            ws.max_frame_size(max)
                .max_message_size(max)
                .on_upgrade(move |socket| {
                    let sockets = app.sockets.clone();
                    sockets.track_future(connection::run(app, user, socket))
                })
                .into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// The checks made before the upgrade: a valid token, the path's user is the token's, an allowed
/// origin, and room for one more connection.
fn check(
    app: &App,
    path_user: Option<String>,
    authorization: Option<String>,
    query: &HashMap<String, String>,
    origin: Option<String>,
) -> Result<i64, ApiError> {
    let token = authorization
        .as_deref()
        .and_then(bearer_token)
        .or_else(|| query.get("access_token").map(String::as_str));
    let user = app.auth.authenticate(token)?;
    if let Some(path_user) = path_user
        && path_user.parse::<i64>().ok() != Some(user)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this socket belongs to another user: the path's user id must be your own",
        ));
    }
    let allowed = &app.config.server.cors_origins;
    if let Some(origin) = origin
        && !allowed.is_empty()
        && !allowed.iter().any(|a| a == &origin)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this origin may not open a socket; it is not in server.cors_origins",
        ));
    }
    let limit = app.config.limits.max_connections_per_user;
    if app.hub.connections_of(user) >= limit {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            format!("you already have {limit} open sockets; close one first"),
        ));
    }
    Ok(user)
}
