use std::{collections::HashMap, sync::Arc};

use warp::{Filter, Rejection, http::StatusCode, reply::Response};

use super::{
    error::{ApiError, DatabaseTrouble, ErrorBody, FrontRefusals, SignInRequired, respond},
    extract::{bearer, path_id, query, query_number},
    json, with_app,
};
use crate::{
    app::App,
    domain::{Me, PublicUser},
};

pub const MAX_PAGE: i64 = 100;
const DEFAULT_SEARCH_LIMIT: i64 = 20;
const MAX_QUERY_CHARS: usize = 100;

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

#[utoipa::path(get, path = "/users/me", tag = "users", operation_id = "me",
    security(("bearer" = [])),
    responses(
        SignInRequired, DatabaseTrouble, FrontRefusals,
        (status = 200, description = "The caller, with their Google id", body = Me)))]
async fn me(app: Arc<App>, token: Option<String>) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?.user;
    let user = app.store.user(caller).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the user of this token no longer exists",
        )
    })?;
    Ok(json(StatusCode::OK, &user.me(app.hub.is_online(caller))))
}

#[utoipa::path(get, path = "/users", tag = "users", operation_id = "search_users",
    security(("bearer" = [])),
    params(
        ("q" = Option<String>, Query, max_length = 100, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
            description = "Part of the name, case-insensitive; surrounding whitespace is ignored. \
                           Up to 100 characters, no control characters. Without it, everyone"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "How many at most; default 20")),
    responses(
        SignInRequired, DatabaseTrouble, FrontRefusals,
        (status = 200, description = "Matching users by name", body = [PublicUser]),
        (status = 422, description = "`invalid_field`: `q` or `limit` breaks its rules", body = ErrorBody)))]
async fn search(
    app: Arc<App>,
    token: Option<String>,
    query: HashMap<String, String>,
) -> Result<Response, ApiError> {
    app.auth.authenticate(token.as_deref()).await?;
    let limit = query_number(&query, "limit", 1, MAX_PAGE)?.unwrap_or(DEFAULT_SEARCH_LIMIT);
    // Judged before trimming, so the rule is the one the OpenAPI document can state.
    let raw = query.get("q").map(String::as_str).unwrap_or_default();
    if raw.chars().count() > MAX_QUERY_CHARS || raw.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(format!(
            "q must be at most {MAX_QUERY_CHARS} printable characters"
        )));
    }
    let users = app.store.search_users(raw.trim(), limit as u32).await?;
    let public: Vec<_> = users
        .iter()
        .map(|user| user.public(app.hub.is_online(user.id)))
        .collect();
    Ok(json(StatusCode::OK, &public))
}

#[utoipa::path(get, path = "/users/{id}", tag = "users", operation_id = "user",
    security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1, description = "User id")),
    responses(
        SignInRequired, DatabaseTrouble, FrontRefusals,
        (status = 200, description = "The user, as anyone signed in may see them", body = PublicUser),
        (status = 404, description = "`not_found`: no user has this id", body = ErrorBody),
        (status = 422, description = "`invalid_field`: the id is not a whole number from 1 up", body = ErrorBody)))]
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
