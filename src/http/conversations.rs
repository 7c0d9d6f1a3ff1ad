use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::{Filter, Rejection, http::StatusCode, reply::Response};

use super::{
    error::{
        ApiError, DatabaseTrouble, ErrorBody, FrontRefusals, SignInRequired, UnreadableBody,
        respond,
    },
    extract::{bearer, json_body, parse_json, path_id, query, query_number},
    json,
    users::MAX_PAGE,
    with_app,
};
use crate::{
    app::App,
    domain::{Message, MessageId, PublicUser},
};

const DEFAULT_HISTORY_LIMIT: i64 = 50;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Conversation {
    pub peer: PublicUser,
    pub last_message: Message,
    /// Messages from the peer the caller has not marked seen.
    #[schema(minimum = 0)]
    pub unread: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct History {
    /// Newest first.
    pub messages: Vec<Message>,
    /// Pass as `before` for the next (older) page; null on the last page.
    #[schema(minimum = 1)]
    pub next_before: Option<MessageId>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    // Documented by `text_schema`, which follows the configured `limits.max_message_chars`.
    pub message: String,
    /// Idempotency key, 1 to 64 characters without control characters: a retry with the same key
    /// stores nothing new and answers the stored message.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub client_id: Option<String>,
}

/// Unicode `White_Space`, what `str::trim` removes before the text is judged.
const WHITESPACE: &str =
    r"\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// The rules on `message` that a schema can state: 1 to `max_chars` characters once surrounding
/// whitespace is trimmed. A `maxLength` on the raw string would refuse a valid text padded with
/// spaces, so the pattern counts from the first to the last character that is not whitespace.
pub fn text_schema(max_chars: usize) -> utoipa::openapi::schema::Object {
    let middle = match max_chars {
        1 => String::new(),
        max => format!("(?:[\\s\\S]{{0,{}}}[^{WHITESPACE}])?", max - 2),
    };
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .pattern(Some(format!(
            "^[{WHITESPACE}]*[^{WHITESPACE}]{middle}[{WHITESPACE}]*$"
        )))
        .description(Some(format!(
            "The text: 1 to {max_chars} characters (`limits.max_message_chars`, default 1000) once \
             surrounding whitespace is trimmed. HTML is sanitized (only `<b> <i> <em> <strong> <u>` \
             survive) and the content rules then apply: a text this schema allows can still be \
             refused with 422 (see the responses)."
        )))
        .build()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeenRequest {
    /// Every message from the peer with an id up to this one is marked seen.
    #[schema(minimum = 1)]
    pub up_to: MessageId,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SeenResponse {
    /// How many messages changed from unseen to seen.
    pub marked: usize,
}

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let list = warp::path!("conversations")
        .and(warp::get())
        .and(with_app(Arc::clone(&app)))
        .and(bearer())
        .then(|app, token| async move { respond(list(app, token).await) });
    let history =
        warp::path!("conversations" / String / "messages")
            .and(warp::get())
            .and(with_app(Arc::clone(&app)))
            .and(bearer())
            .and(query())
            .then(|peer, app, token, query| async move {
                respond(history(app, token, peer, query).await)
            });
    let send = warp::path!("conversations" / String / "messages")
        .and(warp::post())
        .and(with_app(Arc::clone(&app)))
        .and(bearer())
        .and(json_body())
        .then(|peer, app, token, body| async move { respond(send(app, token, peer, body).await) });
    let seen = warp::path!("conversations" / String / "seen")
        .and(warp::post())
        .and(with_app(app))
        .and(bearer())
        .and(json_body())
        .then(|peer, app, token, body| async move { respond(seen(app, token, peer, body).await) });
    list.or(history).unify().or(send).unify().or(seen).unify()
}

#[utoipa::path(get, path = "/conversations", tag = "conversations", operation_id = "list_conversations",
    security(("bearer" = [])),
    responses(
        SignInRequired, DatabaseTrouble, FrontRefusals,
        (status = 200, description = "Every conversation, most recent first", body = [Conversation])))]
async fn list(app: Arc<App>, token: Option<String>) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?.user;
    let conversations: Vec<Conversation> = app
        .store
        .conversations(caller)
        .await?
        .into_iter()
        .map(|summary| Conversation {
            peer: summary.peer.public(app.hub.is_online(summary.peer.id)),
            last_message: summary.last_message,
            unread: summary.unread,
        })
        .collect();
    Ok(json(StatusCode::OK, &conversations))
}

#[utoipa::path(get, path = "/conversations/{peer_id}/messages", tag = "conversations",
    operation_id = "history", security(("bearer" = [])),
    params(
        ("peer_id" = i64, Path, minimum = 1, description = "The other user"),
        ("before" = Option<i64>, Query, minimum = 1,
            description = "Only messages with a smaller id (the previous page's `next_before`)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "How many at most; default 50")),
    responses(
        SignInRequired, DatabaseTrouble, FrontRefusals,
        (status = 200, description = "One page of history, newest first (empty for a stranger)", body = History),
        (status = 422, description = "`invalid_field`: `peer_id`, `before` or `limit` breaks its rules", body = ErrorBody)))]
async fn history(
    app: Arc<App>,
    token: Option<String>,
    peer: String,
    query: HashMap<String, String>,
) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?.user;
    let peer = path_id(&peer, "the peer id")?;
    let limit = query_number(&query, "limit", 1, MAX_PAGE)?.unwrap_or(DEFAULT_HISTORY_LIMIT);
    let before = query_number(&query, "before", 1, i64::MAX)?;
    let page = app
        .store
        .history(caller, peer, before, limit as u32)
        .await?;
    Ok(json(
        StatusCode::OK,
        &History {
            messages: page.messages,
            next_before: page.next_before,
        },
    ))
}

#[utoipa::path(post, path = "/conversations/{peer_id}/messages", tag = "conversations",
    operation_id = "send", security(("bearer" = [])), request_body = SendRequest,
    description = "Checks, stores and delivers one message, with the same checks, error codes and \
                   events as the WebSocket's `message` event. It answers once the message is \
                   committed; the recipient's sockets get `new_message`, the sender's `message_sent`.",
    params(("peer_id" = i64, Path, minimum = 1, description = "The recipient")),
    responses(
        SignInRequired, UnreadableBody, DatabaseTrouble, FrontRefusals,
        (status = 201, description = "Stored (committed) and sent to the recipient", body = Message),
        (status = 200, description = "A retry: this `client_id` was already stored; nothing new is stored or sent", body = Message),
        (status = 404, description = "`unknown_recipient`: no user has this id", body = ErrorBody),
        (status = 422, description = "Refused, and nothing stored. Rules no schema can state: \
            `empty_message` (blank once HTML is sanitized and entities decoded), `url_blocked` \
            (a link that is not http(s), has credentials or a blocked domain), `spam_detected` \
            (a run of one character, too many links, a blocked word, or the same text more than 3 \
            times a minute), `invalid_recipient` (`peer_id` is the caller). Rules the schema \
            states: `message_too_long`, `empty_message`, `invalid_field` (`peer_id`, `client_id`, \
            or a missing, mistyped or unknown field)", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database did not commit within \
            `database.write_timeout`; retry with the same `client_id`", body = ErrorBody)))]
async fn send(
    app: Arc<App>,
    token: Option<String>,
    peer: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?.user;
    let peer = path_id(&peer, "the peer id")?;
    let request: SendRequest = parse_json(&body)?;
    let stored = app
        .chat
        .send(caller, peer, &request.message, request.client_id, None)
        .await?;
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &stored.message))
}

#[utoipa::path(post, path = "/conversations/{peer_id}/seen", tag = "conversations",
    operation_id = "mark_seen", security(("bearer" = [])), request_body = SeenRequest,
    params(("peer_id" = i64, Path, minimum = 1, description = "The sender whose messages were read")),
    responses(
        SignInRequired, UnreadableBody, DatabaseTrouble, FrontRefusals,
        (status = 200, description = "Marked; the sender gets `message_seen` events", body = SeenResponse),
        (status = 422, description = "`invalid_field`: `peer_id` or `up_to` is not a whole number from 1 up, \
            or the body has a missing, mistyped or unknown field", body = ErrorBody)))]
async fn seen(
    app: Arc<App>,
    token: Option<String>,
    peer: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?.user;
    let peer = path_id(&peer, "the peer id")?;
    let request: SeenRequest = parse_json(&body)?;
    if request.up_to <= 0 {
        return Err(ApiError::invalid_field(
            "up_to must be a positive message id",
        ));
    }
    let marked = app
        .chat
        .mark_seen_up_to(caller, peer, request.up_to)
        .await?;
    Ok(json(StatusCode::OK, &SeenResponse { marked }))
}
