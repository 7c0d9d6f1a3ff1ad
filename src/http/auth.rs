use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::{Filter, Rejection, Reply, http::StatusCode, reply::Response};

use super::{
    error::{ApiError, respond},
    extract::{json_body, parse_json},
    json, with_app,
};
use crate::{
    app::App,
    auth::{Session, holds_email_address},
    domain::Me,
};

const MAX_DEV_NAME_CHARS: usize = 64;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The Google ID token from Google Identity Services (`token` is accepted too).
    #[serde(alias = "token")]
    pub id_token: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevLoginRequest {
    /// Any display name but an email address; the same name signs in as the same user.
    pub name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionResponse {
    pub user: Me,
    pub access_token: String,
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let login = warp::path!("auth" / "login")
        .and(warp::post())
        .and(with_app(Arc::clone(&app)))
        .and(json_body())
        .then(|app, body| async move { respond(login(app, body).await) });
    let dev_login = warp::path!("auth" / "dev-login")
        .and(warp::post())
        .and(with_app(Arc::clone(&app)))
        .and(json_body())
        .then(|app, body| async move { respond(dev_login(app, body).await) });
    let refresh = warp::path!("auth" / "refresh")
        .and(warp::post())
        .and(with_app(Arc::clone(&app)))
        .and(json_body())
        .then(|app, body| async move { respond(refresh(app, body).await) });
    let logout = warp::path!("auth" / "logout")
        .and(warp::post())
        .and(with_app(app))
        .and(json_body())
        .then(|app, body| async move { respond(logout(app, body).await) });
    login
        .or(dev_login)
        .unify()
        .or(refresh)
        .unify()
        .or(logout)
        .unify()
}

fn session_response(app: &App, session: Session) -> Response {
    let online = app.hub.is_online(session.user.id);
    json(
        StatusCode::OK,
        &SessionResponse {
            user: session.user.me(online),
            access_token: session.access_token,
            refresh_token: session.refresh_token,
            token_type: "bearer",
            expires_in: session.expires_in,
        },
    )
}

async fn login(app: Arc<App>, body: Bytes) -> Result<Response, ApiError> {
    let request: LoginRequest = parse_json(&body)?;
    let session = app.auth.login_google(&request.id_token).await?;
    Ok(session_response(&app, session))
}

async fn dev_login(app: Arc<App>, body: Bytes) -> Result<Response, ApiError> {
    if !app.auth.dev_login_enabled() {
        return Err(ApiError::not_found(
            "dev login is turned off on this server",
        ));
    }
    let request: DevLoginRequest = parse_json(&body)?;
    let name = request.name.trim();
    let length = name.chars().count();
    if length == 0 || length > MAX_DEV_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(format!(
            "name must be 1 to {MAX_DEV_NAME_CHARS} printable characters"
        )));
    }
    if holds_email_address(name) {
        return Err(ApiError::invalid_field(
            "name must not be an email address: every signed-in user can see and search it",
        ));
    }
    let session = app.auth.login_dev(name).await?;
    Ok(session_response(&app, session))
}

async fn refresh(app: Arc<App>, body: Bytes) -> Result<Response, ApiError> {
    let request: RefreshRequest = parse_json(&body)?;
    let session = app.auth.refresh(&request.refresh_token).await?;
    Ok(session_response(&app, session))
}

async fn logout(app: Arc<App>, body: Bytes) -> Result<Response, ApiError> {
    let request: RefreshRequest = parse_json(&body)?;
    app.auth.logout(&request.refresh_token).await?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}
