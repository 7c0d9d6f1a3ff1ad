//! Every HTTP error is `{"detail": "<sentence>", "code": "<snake_case>"}` with the right status, and
//! the answers many operations share are documented here once, for the handlers' `responses(...)`.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{
    IntoResponses,
    openapi::{
        Content, Ref, RefOr, Response as ApiResponse, ResponseBuilder,
        header::HeaderBuilder,
        schema::{ObjectBuilder, Type},
    },
};
use warp::{
    http::{HeaderValue, StatusCode, header},
    reply::{Reply, Response},
};

use crate::{
    auth::AuthError,
    chat::{ChatError, WriteError},
    store::StoreError,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// One sentence that says what went wrong and what to do.
    pub detail: &'a str,
    /// A stable snake_case code for programs.
    pub code: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn invalid_field(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            detail: &self.detail,
            code: self.code,
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::not_found("not found"),
            ref unavailable if unavailable.is_unavailable() => {
                tracing::error!(%error, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; try again shortly",
                )
            }
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the server could not complete this; try again",
                )
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let status = match error {
            AuthError::Store(store) => return store.into(),
            AuthError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::GoogleDisabled | AuthError::DevLoginDisabled => StatusCode::NOT_FOUND,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<ChatError> for ApiError {
    fn from(error: ChatError) -> Self {
        let status = match error {
            ChatError::Store(store) => return store.into(),
            ChatError::Write(WriteError::Unavailable | WriteError::ShuttingDown)
            | ChatError::TimedOut => StatusCode::SERVICE_UNAVAILABLE,
            ChatError::Write(WriteError::Refused) => StatusCode::INTERNAL_SERVER_ERROR,
            ChatError::UnknownRecipient(_) => StatusCode::NOT_FOUND,
            ChatError::Forbidden => StatusCode::FORBIDDEN,
            ChatError::Content(_) | ChatError::InvalidRecipient | ChatError::InvalidField(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// Handlers answer `Result<Response, ApiError>`; this folds the error into a response.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(Reply::into_response)
}

// The shared answers below go first in a handler's `responses(...)`: a status the handler then
// documents itself replaces the shared description with its own.

/// A documented answer whose body is an `ErrorBody`.
fn error_response(description: &str) -> ApiResponse {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
}

fn answers<const N: usize>(
    responses: [(u16, ApiResponse); N],
) -> BTreeMap<String, RefOr<ApiResponse>> {
    responses
        .into_iter()
        .map(|(status, response)| (status.to_string(), RefOr::T(response)))
        .collect()
}

/// What any route that reads the database may answer, whatever the request.
pub struct DatabaseTrouble;

impl IntoResponses for DatabaseTrouble {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        answers([
            (
                500,
                error_response("`internal`: an unexpected database error; try again"),
            ),
            (
                503,
                error_response(
                    "`unavailable`: the database did not answer (in time); try again shortly",
                ),
            ),
        ])
    }
}

/// What `http::front` may answer for any route before (or instead of) the route itself: a browser
/// origin CORS refuses, a rate limit (SPEC §7), and a request not complete in time.
pub struct FrontRefusals;

impl IntoResponses for FrontRefusals {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        let wait = HeaderBuilder::new()
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            ))
            .description(Some("Seconds to wait before trying again"))
            .build();
        let mut limited = error_response(
            "`rate_limited`: too many requests from this address (or, on the chat routes, this \
             user); see `rate_limit.*`",
        );
        limited
            .headers
            .insert("Retry-After".to_owned(), wait.into());
        answers([
            (
                403,
                error_response(
                    "`forbidden_origin`: the request's `Origin` is not in `server.cors_origins` \
                     (only when that list is set)",
                ),
            ),
            (
                408,
                error_response(
                    "`request_timeout`: the request was not complete within \
                     `server.request_timeout`",
                ),
            ),
            (429, limited),
        ])
    }
}

/// A route that needs `Authorization: Bearer <access token>`.
pub struct SignInRequired;

impl IntoResponses for SignInRequired {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        let challenge = HeaderBuilder::new()
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["Bearer"])),
            ))
            .description(Some("Always `Bearer`"))
            .build();
        let mut response = error_response(
            "`not_authenticated` (no token), `invalid_token` (malformed, forged, its user no \
             longer exists, or its session ended: signed out, revoked after a refresh token was \
             presented twice, or by `admin kick --revoke`) or `token_expired`: sign in or refresh, \
             then retry",
        );
        response
            .headers
            .insert("WWW-Authenticate".to_owned(), challenge.into());
        answers([(401, response)])
    }
}

/// How a route with a JSON body refuses one it cannot read. Field-level refusals (422) differ per
/// route and are documented with it.
pub struct UnreadableBody;

impl IntoResponses for UnreadableBody {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        answers([
            (
                400,
                error_response(
                    "`invalid_json`: the body is not JSON; `bad_request`: it could not be read",
                ),
            ),
            (
                411,
                error_response("`length_required`: send the body with a `Content-Length` header"),
            ),
            (
                413,
                error_response(&format!(
                    "`payload_too_large`: the body is larger than {} KiB",
                    super::extract::MAX_BODY_BYTES / 1024
                )),
            ),
        ])
    }
}
