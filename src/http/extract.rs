//! Reading requests without trusting them: bodies, query strings, path ids and bearer tokens, each
//! refused with a sentence that names the field.

use std::collections::HashMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use warp::{Filter, Rejection, http::StatusCode};

use super::error::ApiError;

/// The largest JSON body any route accepts.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

pub fn json_body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::content_length_limit(MAX_BODY_BYTES).and(warp::body::bytes())
}

pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ApiError::invalid_field(data_error_sentence(&error)),
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the body is not valid JSON",
            ),
        }
    })
}

/// serde's messages without the position suffix, and never longer than a line.
pub fn data_error_sentence(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text);
    let mut sentence: String = text.chars().take(200).collect();
    if sentence.is_empty() {
        sentence = "a field has the wrong type".into();
    }
    sentence
}

pub fn query()
-> impl Filter<Extract = (HashMap<String, String>,), Error = std::convert::Infallible> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(|raw: String| {
            url::form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect::<HashMap<_, _>>()
        })
}

/// An optional whole number in `min..=max` from the query string.
pub fn query_number(
    query: &HashMap<String, String>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    let Some(raw) = query.get(name) else {
        return Ok(None);
    };
    match whole_number(raw) {
        Some(value) if (min..=max).contains(&value) => Ok(Some(value)),
        _ => Err(ApiError::invalid_field(format!(
            "{name} must be a whole number from {min} to {max}"
        ))),
    }
}

/// A user or message id from the path.
pub fn path_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    match whole_number(raw) {
        Some(id) if id > 0 => Ok(id),
        _ => Err(ApiError::invalid_field(format!(
            "{what} must be a positive whole number"
        ))),
    }
}

/// A JSON-style integer: digits with an optional minus sign. `str::parse` also takes a leading `+`,
/// which the OpenAPI document's `integer` does not: what is accepted here is exactly what it allows.
fn whole_number(raw: &str) -> Option<i64> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer() -> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Clone
{
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
        .map(|header: Option<String>| header.as_deref().and_then(bearer_token).map(str::to_owned))
}

pub(crate) fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}
