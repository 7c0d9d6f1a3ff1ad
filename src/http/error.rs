//! Every HTTP error is `{"detail": "<sentence>", "code": "<snake_case>"}` with the right status.

use serde::Serialize;
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
            StoreError::Unavailable(_) | StoreError::TimedOut => {
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
