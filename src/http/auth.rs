use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::{Filter, Rejection, Reply, http::StatusCode, reply::Response};

use super::{
    error::{ApiError, DatabaseTrouble, ErrorBody, FrontRefusals, UnreadableBody, respond},
    extract::{json_body, parse_json},
    json, with_app,
};
use crate::{
    app::App,
    auth::{AuthError, Session, holds_email_address},
    domain::Me,
    metrics::SignIn,
};

const MAX_DEV_NAME_CHARS: usize = 64;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The Google ID token (a JWT) from Google Identity Services (`token` is accepted too).
    #[serde(alias = "token")]
    pub id_token: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevLoginRequest {
    /// Any display name but an email address; the same name signs in as the same user. 1 to 64
    /// characters, no control characters, not only whitespace, no `@` between two non-space
    /// characters; surrounding whitespace is trimmed.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^(?![\s\S]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]@[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000])[^\u0000-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the latest sign-in or refresh. Any string is read: one that is not a
    /// live token is refused by `/auth/refresh` and ignored by `/auth/logout`.
    pub refresh_token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionResponse {
    pub user: Me,
    /// For `Authorization: Bearer`; it expires after `expires_in` seconds.
    pub access_token: String,
    /// Spend it at `/auth/refresh` for a new pair; it can be spent once.
    #[schema(pattern = r"^[A-Za-z0-9_-]{43}$")]
    pub refresh_token: String,
    /// Always `bearer`.
    #[schema(value_type = String, pattern = "^bearer$")]
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

#[utoipa::path(post, path = "/auth/login", tag = "auth", operation_id = "login",
    request_body = LoginRequest,
    responses(
        UnreadableBody, DatabaseTrouble, FrontRefusals,
        (status = 200, description = "Signed in; the user is created on first sign-in", body = SessionResponse),
        (status = 401, description = "`invalid_token`: the ID token's signature, audience, issuer or times are wrong", body = ErrorBody),
        (status = 404, description = "`not_found`: Google sign-in is not configured on this server", body = ErrorBody),
        (status = 422, description = "`invalid_field`: `id_token` is missing, not a string, or next to an unknown field", body = ErrorBody),
        (status = 503, description = "`auth_unavailable`: Google's keys could not be fetched; `unavailable`: the database did not answer", body = ErrorBody)))]
async fn login(app: Arc<App>, body: Bytes) -> Result<Response, ApiError> {
    let request: LoginRequest = parse_json(&body)?;
    let session = counted(
        &app,
        SignIn::Google,
        app.auth.login_google(&request.id_token).await,
    )?;
    Ok(session_response(&app, session))
}

/// Counts a sign-in or refresh that got as far as checking its credentials, by its outcome.
fn counted<T>(app: &App, method: SignIn, outcome: Result<T, AuthError>) -> Result<T, ApiError> {
    let outcome = outcome.map_err(ApiError::from);
    let result = match &outcome {
        Ok(_) => "success",
        Err(error) => error.code,
    };
    app.metrics.auth_attempt(method, result);
    outcome
}

#[utoipa::path(post, path = "/auth/dev-login", tag = "auth", operation_id = "dev_login",
    description = "Signs in by name alone, without Google: only on a server with dev login on \
                   (`auth.dev_login`, or no Google client ids and a loopback `server.listen`).",
    request_body = DevLoginRequest,
    responses(
        UnreadableBody, DatabaseTrouble, FrontRefusals,
        (status = 200, description = "Signed in as that name; the user is created on first sign-in", body = SessionResponse),
        (status = 404, description = "`not_found`: dev login is off on this server", body = ErrorBody),
        (status = 422, description = "`invalid_field`: the name breaks its rules, or the body has a missing, mistyped or unknown field", body = ErrorBody)))]
async fn dev_login(app: Arc<App>, body: Bytes) -> Result<Response, ApiError> {
    if !app.auth.dev_login_enabled() {
        return Err(ApiError::not_found(
            "dev login is turned off on this server",
        ));
    }
    let request: DevLoginRequest = parse_json(&body)?;
    // Judged before trimming, so the rule is the one the OpenAPI document can state.
    let raw = &request.name;
    let name = raw.trim();
    if name.is_empty()
        || raw.chars().count() > MAX_DEV_NAME_CHARS
        || raw.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(format!(
            "name must be 1 to {MAX_DEV_NAME_CHARS} printable characters"
        )));
    }
    if holds_email_address(name) {
        return Err(ApiError::invalid_field(
            "name must not be an email address: every signed-in user can see and search it",
        ));
    }
    let session = counted(&app, SignIn::Dev, app.auth.login_dev(name).await)?;
    Ok(session_response(&app, session))
}

#[utoipa::path(post, path = "/auth/refresh", tag = "auth", operation_id = "refresh",
    request_body = RefreshRequest,
    responses(
        UnreadableBody, DatabaseTrouble, FrontRefusals,
        (status = 200, description = "A new pair; the presented refresh token is spent", body = SessionResponse),
        (status = 401, description = "`invalid_token` (unknown), `token_expired`, or `token_reused`: already spent, \
                                      which ends the session of that sign-in: its refresh and access tokens stop \
                                      working and its sockets close with 4001", body = ErrorBody),
        (status = 422, description = "`invalid_field`: `refresh_token` is missing, not a string, or next to an unknown field", body = ErrorBody)))]
async fn refresh(app: Arc<App>, body: Bytes) -> Result<Response, ApiError> {
    let request: RefreshRequest = parse_json(&body)?;
    let session = counted(
        &app,
        SignIn::Refresh,
        app.auth.refresh(&request.refresh_token).await,
    )?;
    Ok(session_response(&app, session))
}

#[utoipa::path(post, path = "/auth/logout", tag = "auth", operation_id = "logout",
    description = "Ends the session (sign-in) the refresh token belongs to, whichever of its tokens \
                   is presented: every refresh token of it is revoked, its access tokens are refused \
                   from now on (401 `invalid_token`), and its WebSockets close with 4001 within a \
                   second. The user's other sessions (other devices) keep theirs.",
    request_body = RefreshRequest,
    responses(
        UnreadableBody, DatabaseTrouble, FrontRefusals,
        (status = 204, description = "The session is ended (an unknown token changes nothing)"),
        (status = 422, description = "`invalid_field`: `refresh_token` is missing, not a string, or next to an unknown field", body = ErrorBody)))]
async fn logout(app: Arc<App>, body: Bytes) -> Result<Response, ApiError> {
    let request: RefreshRequest = parse_json(&body)?;
    app.auth.logout(&request.refresh_token).await?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}
