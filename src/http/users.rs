use std::{collections::HashMap, sync::Arc};

use warp::{Filter, Rejection, http::StatusCode, reply::Response};

use super::{
    error::{ApiError, respond},
    extract::{bearer, path_id, query, query_number},
    json, with_app,
};
use crate::app::App;

pub const MAX_PAGE: i64 = 100;
const DEFAULT_SEARCH_LIMIT: i64 = 20;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let me = warp::path!("users" / "me")
        .and(warp::get())
        .and(with_app(Arc::clone(&app)))
        .and(bearer())
        .then(|app, token| async move { respond(me(app, token).await) });
    let search = warp::path!("users")
        .and(warp::get())
        .and(with_app(Arc::clone(&app)))
        .and(bearer())
        .and(query())
        .then(|app, token, query| async move { respond(search(app, token, query).await) });
    let one = warp::path!("users" / String)
        .and(warp::get())
        .and(with_app(app))
        .and(bearer())
        .then(|id, app, token| async move { respond(one(app, token, id).await) });
    me.or(search).unify().or(one).unify()
}

async fn me(app: Arc<App>, token: Option<String>) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?;
    let user = app.store.user(caller).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the user of this token no longer exists",
        )
    })?;
    Ok(json(StatusCode::OK, &user.me(app.hub.is_online(caller))))
}

async fn search(
    app: Arc<App>,
    token: Option<String>,
    query: HashMap<String, String>,
) -> Result<Response, ApiError> {
    app.auth.authenticate(token.as_deref()).await?;
    let limit = query_number(&query, "limit", 1, MAX_PAGE)?.unwrap_or(DEFAULT_SEARCH_LIMIT);
    let text = query.get("q").map(|q| q.trim()).unwrap_or_default();
    if text.chars().count() > 100 || text.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "q must be at most 100 printable characters",
        ));
    }
    let users = app.store.search_users(text, limit as u32).await?;
    let public: Vec<_> = users
        .iter()
        .map(|user| user.public(app.hub.is_online(user.id)))
        .collect();
    Ok(json(StatusCode::OK, &public))
}

async fn one(app: Arc<App>, token: Option<String>, id: String) -> Result<Response, ApiError> {
    app.auth.authenticate(token.as_deref()).await?;
    let id = path_id(&id, "the user id")?;
    let user = app
        .store
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no user with id {id}")))?;
    Ok(json(StatusCode::OK, &user.public(app.hub.is_online(id))))
}
