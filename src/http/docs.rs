//! The OpenAPI document at `/openapi.json`, Swagger UI at `/docs` and ReDoc at `/redoc`. Every asset
//! is compiled into the binary, so the pages work with no internet access from the server or browser.
//!
//! warp has no utoipa integration: the routes are described here, on placeholder functions, next to
//! the schemas the handlers already derive.

use std::sync::{Arc, LazyLock};

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use warp::{
    Filter, Rejection,
    http::{StatusCode, Uri, header},
    path::{FullPath, Tail},
    reply::{Reply, Response},
};

use super::{auth, conversations, error::ErrorBody, health};
use crate::domain::{Me, Message, PublicUser};

const REDOC_SCRIPT: &str = include_str!("../../assets/redoc/redoc.standalone.js");

const REDOC_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>teachlyd API — ReDoc</title>
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<div id="redoc-container"></div>
<script type="module">
import { init } from "/redoc/redoc.standalone.js";
init("/openapi.json", {}, document.getElementById("redoc-container"));
</script>
</body>
</html>
"#;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "teachlyd",
        description = "Teachly's real-time 1:1 chat API. JSON in and out; errors are \
                       `{\"detail\", \"code\"}`. Authenticated routes take `Authorization: Bearer \
                       <access token>` from `/auth/login` or `/auth/dev-login`. Live events travel over \
                       the WebSocket at `/ws` (see its description)."
    ),
    paths(
        health_doc, ready_doc, login_doc, dev_login_doc, refresh_doc, logout_doc, me_doc,
        search_users_doc, user_doc, conversations_doc, history_doc, send_doc, seen_doc, ws_doc,
        ws_chat_doc
    ),
    components(schemas(
        health::Health, health::Readiness, auth::LoginRequest, auth::DevLoginRequest,
        auth::RefreshRequest, auth::SessionResponse, conversations::Conversation,
        conversations::History, conversations::SendRequest, conversations::SeenRequest,
        conversations::SeenResponse, Message, PublicUser, Me, ErrorBody
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "auth", description = "Signing in and sessions"),
        (name = "users", description = "People"),
        (name = "conversations", description = "Messages and receipts"),
        (name = "websocket", description = "Live events")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

static SPEC: LazyLock<String> =
    LazyLock::new(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into()));

pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let spec = warp::path!("openapi.json").and(warp::get()).map(|| {
        warp::reply::with_header(SPEC.as_str(), header::CONTENT_TYPE, "application/json")
            .into_response()
    });
    let swagger_config = Arc::new(utoipa_swagger_ui::Config::from("/openapi.json"));
    let swagger = warp::path("docs")
        .and(warp::get())
        .and(warp::path::full())
        .and(warp::path::tail())
        .map(move |full: FullPath, tail: Tail| swagger_file(&full, &tail, &swagger_config));
    let redoc_page = warp::path!("redoc").and(warp::get()).map(|| {
        warp::reply::with_header(REDOC_PAGE, header::CONTENT_TYPE, "text/html; charset=utf-8")
            .into_response()
    });
    let redoc_script = warp::path!("redoc" / "redoc.standalone.js")
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(
                REDOC_SCRIPT,
                header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            )
            .into_response()
        });
    spec.or(swagger)
        .unify()
        .or(redoc_page)
        .unify()
        .or(redoc_script)
        .unify()
}

fn swagger_file(
    full: &FullPath,
    tail: &Tail,
    config: &Arc<utoipa_swagger_ui::Config<'static>>,
) -> Response {
    if full.as_str() == "/docs" {
        return warp::redirect::found(Uri::from_static("/docs/")).into_response();
    }
    match utoipa_swagger_ui::serve(tail.as_str(), Arc::clone(config)) {
        Ok(Some(file)) => {
            warp::reply::with_header(file.bytes.to_vec(), header::CONTENT_TYPE, file.content_type)
                .into_response()
        }
        Ok(None) => super::error::ApiError::not_found("no such file").into_response(),
        Err(error) => {
            tracing::error!(%error, "serving Swagger UI failed");
            warp::reply::with_status(
                "Swagger UI is unavailable",
                StatusCode::INTERNAL_SERVER_ERROR,
            )
            .into_response()
        }
    }
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process serves", body = health::Health)))]
#[allow(dead_code)]
fn health_doc() {}

#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Every part answers", body = health::Readiness),
        (status = 503, description = "A part does not answer; the body names it", body = health::Readiness)))]
#[allow(dead_code)]
fn ready_doc() {}

#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = auth::LoginRequest,
    responses(
        (status = 200, description = "Signed in; the user is created on first sign-in", body = auth::SessionResponse),
        (status = 401, description = "The ID token is invalid (signature, audience, issuer, expiry)", body = ErrorBody),
        (status = 404, description = "Google sign-in is not configured", body = ErrorBody),
        (status = 503, description = "Google's keys could not be fetched", body = ErrorBody)))]
#[allow(dead_code)]
fn login_doc() {}

#[utoipa::path(post, path = "/auth/dev-login", tag = "auth", request_body = auth::DevLoginRequest,
    responses(
        (status = 200, description = "Signed in as that name", body = auth::SessionResponse),
        (status = 404, description = "Dev login is off", body = ErrorBody),
        (status = 422, description = "The name is empty or too long", body = ErrorBody)))]
#[allow(dead_code)]
fn dev_login_doc() {}

#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = auth::RefreshRequest,
    responses(
        (status = 200, description = "A new pair; the presented refresh token is spent", body = auth::SessionResponse),
        (status = 401, description = "Unknown, expired or already spent (which revokes the whole family)", body = ErrorBody)))]
#[allow(dead_code)]
fn refresh_doc() {}

#[utoipa::path(post, path = "/auth/logout", tag = "auth", request_body = auth::RefreshRequest,
    responses((status = 204, description = "The refresh token is revoked")))]
#[allow(dead_code)]
fn logout_doc() {}

#[utoipa::path(get, path = "/users/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller, with their Google id", body = Me),
        (status = 401, description = "No or invalid access token", body = ErrorBody)))]
#[allow(dead_code)]
fn me_doc() {}

#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])),
    params(
        ("q" = Option<String>, Query, description = "Part of the name, case-insensitive"),
        ("limit" = Option<i64>, Query, description = "1 to 100, default 20")),
    responses(
        (status = 200, description = "Matching users by name", body = [PublicUser]),
        (status = 422, description = "A bad parameter", body = ErrorBody)))]
#[allow(dead_code)]
fn search_users_doc() {}

#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = PublicUser),
        (status = 404, description = "No such user", body = ErrorBody)))]
#[allow(dead_code)]
fn user_doc() {}

#[utoipa::path(get, path = "/conversations", tag = "conversations", security(("bearer" = [])),
    responses((status = 200, description = "Every conversation, most recent first", body = [conversations::Conversation])))]
#[allow(dead_code)]
fn conversations_doc() {}

#[utoipa::path(get, path = "/conversations/{peer_id}/messages", tag = "conversations",
    security(("bearer" = [])),
    params(
        ("peer_id" = i64, Path, description = "The other user"),
        ("before" = Option<i64>, Query, description = "Only messages with a smaller id (the previous page's next_before)"),
        ("limit" = Option<i64>, Query, description = "1 to 100, default 50")),
    responses(
        (status = 200, description = "One page of history, newest first", body = conversations::History),
        (status = 422, description = "A bad parameter", body = ErrorBody)))]
#[allow(dead_code)]
fn history_doc() {}

#[utoipa::path(post, path = "/conversations/{peer_id}/messages", tag = "conversations",
    security(("bearer" = [])), request_body = conversations::SendRequest,
    params(("peer_id" = i64, Path, description = "The recipient")),
    responses(
        (status = 201, description = "Stored (committed) and sent to the recipient", body = Message),
        (status = 200, description = "A retry: this client_id was already stored; nothing new is stored", body = Message),
        (status = 404, description = "unknown_recipient", body = ErrorBody),
        (status = 422, description = "Refused: empty_message, message_too_long, url_blocked, spam_detected, invalid_recipient, invalid_field", body = ErrorBody)))]
#[allow(dead_code)]
fn send_doc() {}

#[utoipa::path(post, path = "/conversations/{peer_id}/seen", tag = "conversations",
    security(("bearer" = [])), request_body = conversations::SeenRequest,
    params(("peer_id" = i64, Path, description = "The sender whose messages were read")),
    responses((status = 200, description = "Marked; the sender gets message_seen events", body = conversations::SeenResponse)))]
#[allow(dead_code)]
fn seen_doc() {}

#[utoipa::path(get, path = "/ws", tag = "websocket",
    description = "Upgrades to a WebSocket of JSON text frames. Token: `Authorization: Bearer` or \
                   `?access_token=`. Client → server: `message {to, message, client_id?}`, \
                   `message_seen {message_id}`, `typing {to}`, `ping`. Server → client: \
                   `user_connected {user_id}`, `user_disconnected {user_id, last_seen_at}`, \
                   `message_sent {message}` (after commit), `new_message {message}`, \
                   `message_delivered {message_id, delivered_at}`, `message_seen {message_id, seen_at}`, \
                   `typing {from}`, `pong`, `error {code, detail, client_id?}`. Close codes: 1001 \
                   shutdown, 1008 over the connection cap, 1009 frame too large, 1013 too slow \
                   (reconnect to get what was missed).",
    params(("access_token" = Option<String>, Query, description = "For browsers, instead of the header")),
    responses(
        (status = 101, description = "Switching protocols"),
        (status = 400, description = "not_a_websocket: not a WebSocket version 13 handshake", body = ErrorBody),
        (status = 401, description = "No, invalid or expired token", body = ErrorBody),
        (status = 403, description = "Origin not allowed", body = ErrorBody),
        (status = 429, description = "Too many open sockets for this user", body = ErrorBody)))]
#[allow(dead_code)]
fn ws_doc() {}

#[utoipa::path(get, path = "/ws/chat/{user_id}", tag = "websocket",
    description = "The same socket as `/ws`, at the original path; `user_id` must be the token's user.",
    params(
        ("user_id" = i64, Path, description = "The caller's own id"),
        ("access_token" = Option<String>, Query, description = "For browsers, instead of the header")),
    responses(
        (status = 101, description = "Switching protocols"),
        (status = 400, description = "not_a_websocket: not a WebSocket version 13 handshake", body = ErrorBody),
        (status = 401, description = "No, invalid or expired token", body = ErrorBody),
        (status = 403, description = "Someone else's user id, or an origin not allowed", body = ErrorBody),
        (status = 429, description = "Too many open sockets for this user", body = ErrorBody)))]
#[allow(dead_code)]
fn ws_chat_doc() {}
