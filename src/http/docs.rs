//! The OpenAPI document at `/openapi.json`, Swagger UI at `/docs` and ReDoc at `/redoc`. Every asset
//! is compiled into the binary, so the pages work with no internet access from the server or browser.
//!
//! The operations are documented by `#[utoipa::path]` on their handlers; `ApiDoc` only lists them.
//! What depends on the configuration (`limits.max_message_chars`) is filled in by `document`, so the
//! document describes the server that serves it.

use std::sync::Arc;

use utoipa::{
    Modify, OpenApi,
    openapi::{
        RefOr, Schema,
        path::{HttpMethod, ParameterIn},
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use warp::{
    Filter, Rejection,
    http::{StatusCode, Uri, header},
    path::{FullPath, Tail},
    reply::{Reply, Response},
};

use super::{auth, conversations, error::ErrorBody, health, metrics, users};
use crate::{
    config::Config,
    domain::{Me, Message, PublicUser},
};

/// The pages that serve the documentation, which the document does not describe. All take GET only;
/// `{path*}` is any number of segments.
pub const PAGES: [&str; 4] = [
    "/openapi.json",
    "/docs/{path*}",
    "/redoc",
    "/redoc/redoc.standalone.js",
];

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
        description = "Teachly's real-time 1:1 chat API. JSON in and out; every error is \
                       `{\"detail\", \"code\"}`. Authenticated routes take `Authorization: Bearer \
                       <access token>` from `/auth/login` or `/auth/dev-login`. Live events travel over \
                       the WebSocket at `/ws` (see its description). A method a path does not take is \
                       answered 405 with `Allow`."
    ),
    paths(
        health::health, health::ready, auth::login, auth::dev_login, auth::refresh, auth::logout,
        users::me, users::search, users::one, conversations::list, conversations::history,
        conversations::send, conversations::seen, crate::ws::upgrade, metrics::scrape
    ),
    components(schemas(
        health::Health, health::Readiness, auth::LoginRequest, auth::DevLoginRequest,
        auth::RefreshRequest, auth::SessionResponse, conversations::Conversation,
        conversations::History, conversations::SendRequest, conversations::SeenRequest,
        conversations::SeenResponse, Message, PublicUser, Me, ErrorBody
    )),
    modifiers(&Credentials, &PlainSocket),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "auth", description = "Signing in and sessions"),
        (name = "users", description = "People"),
        (name = "conversations", description = "Messages and receipts"),
        (name = "websocket", description = "Live events")
    )
)]
pub struct ApiDoc;

/// The document for a server running with `config`.
pub fn document(config: &Config) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    let send_request = document
        .components
        .as_mut()
        .and_then(|components| components.schemas.get_mut("SendRequest"));
    if let Some(RefOr::T(Schema::Object(request))) = send_request {
        request.properties.insert(
            "message".into(),
            conversations::text_schema(config.limits.max_message_chars).into(),
        );
    }
    document
}

/// The access token as `Authorization: Bearer`, or as `?access_token=` where a browser cannot set
/// headers (the WebSocket upgrade).
struct Credentials;

impl Modify for Credentials {
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
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The access token, for a browser's WebSocket (it cannot set headers)",
            ))),
        );
    }
}

/// `/ws` is the socket of `/ws/chat/{user_id}` without the id: one handler serves both, and its
/// annotation describes the longer path.
struct PlainSocket;

impl Modify for PlainSocket {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(mut operation) = openapi
            .paths
            .get_path_operation("/ws/chat/{user_id}", HttpMethod::Get)
            .cloned()
        else {
            return;
        };
        operation.operation_id = Some("open_socket".into());
        if let Some(parameters) = operation.parameters.as_mut() {
            parameters.retain(|parameter| {
                !matches!(parameter, RefOr::T(parameter) if parameter.parameter_in == ParameterIn::Path)
            });
        }
        openapi
            .paths
            .add_path_operation("/ws", vec![HttpMethod::Get], operation);
    }
}

pub fn routes(
    document: utoipa::openapi::OpenApi,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let spec: Arc<str> = document.to_json().unwrap_or_else(|_| "{}".into()).into();
    let spec = warp::path!("openapi.json").and(warp::get()).map(move || {
        warp::reply::with_header(spec.to_string(), header::CONTENT_TYPE, "application/json")
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
