use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::{Filter, Rejection, http::StatusCode, reply::Response};

use super::{
    error::{ApiError, respond},
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
    pub unread: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct History {
    /// Newest first.
    pub messages: Vec<Message>,
    /// Pass as `before` for the next (older) page; null on the last page.
    pub next_before: Option<MessageId>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub message: String,
    /// Idempotency key (≤ 64 characters): a retry with the same key stores nothing new.
    #[serde(default)]
    pub client_id: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeenRequest {
    /// Every message from the peer with an id up to this one is marked seen.
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

async fn list(app: Arc<App>, token: Option<String>) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?;
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

async fn history(
    app: Arc<App>,
    token: Option<String>,
    peer: String,
    query: HashMap<String, String>,
) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?;
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

async fn send(
    app: Arc<App>,
    token: Option<String>,
    peer: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?;
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

async fn seen(
    app: Arc<App>,
    token: Option<String>,
    peer: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = app.auth.authenticate(token.as_deref()).await?;
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
