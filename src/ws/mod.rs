//! The WebSocket transport: `GET /ws/chat/{user_id}` (the seed's path) and `GET /ws`.
//!
//! The upgrade is done here rather than by `warp::ws`, which allocates tungstenite's default 128 KiB
//! read buffer per socket and offers no way to change it: at a few KiB, an idle socket costs a
//! fraction of that.

mod connection;
pub mod protocol;

use std::{collections::HashMap, sync::Arc};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use warp::{
    Filter, Rejection,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    path::FullPath,
    reply::{Reply, Response},
};

use crate::{
    app::App,
    auth::AuthError,
    http::{
        caps::ConnectionSlot,
        error::ApiError,
        extract::{self, bearer},
        front::Peer,
    },
    hub::{Arrival, Refusal, Slot},
};

/// The server side of one upgraded connection.
pub type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Frames may be a little over the limit on the wire: the socket task closes with 1009 itself, so a
/// frame slightly too large gets the documented close code rather than a protocol error.
const WIRE_SLACK: usize = 1024;
/// What a socket reads at a time; a larger frame grows the buffer as it arrives.
const READ_BUFFER: usize = 1024;
/// Frames fed in one burst are written out once they pass this much: the buffer keeps its capacity
/// for the socket's life, so it must stay small.
pub(crate) const WRITE_BUFFER: usize = 8 * 1024;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with_user = warp::path!("ws" / "chat" / String).map(Some);
    let without_user = warp::path!("ws").map(|| None);
    with_user
        .or(without_user)
        .unify()
        .and(warp::get())
        .and(arrival())
        .and(warp::header::headers_cloned())
        .and(pending_upgrade())
        .and(bearer())
        .and(extract::query())
        .and(warp::any().map(move || Arc::clone(&app)))
        .then(upgrade)
}

/// The connection to take over once the handshake is answered, and the place it holds among
/// `limits.max_connections*`.
fn pending_upgrade() -> impl Filter<
    Extract = ((Option<OnUpgrade>, Option<ConnectionSlot>),),
    Error = std::convert::Infallible,
> + Clone {
    warp::ext::optional::<OnUpgrade>()
        .and(warp::ext::optional::<ConnectionSlot>())
        .map(|on_upgrade, slot| (on_upgrade, slot))
}

/// Where the socket comes from: the peer's address and the path without its query.
fn arrival() -> impl Filter<Extract = (Arrival,), Error = std::convert::Infallible> + Clone {
    warp::path::full().and(warp::ext::optional::<Peer>()).map(
        |path: FullPath, peer: Option<Peer>| Arrival {
            remote: peer.map(|peer| peer.socket),
            path: path.as_str().to_owned(),
        },
    )
}

#[utoipa::path(get, path = "/ws/chat/{user_id}", tag = "websocket", operation_id = "open_socket_as",
    description = "Upgrades to a WebSocket of JSON text frames (RFC 6455); `/ws` is the same socket \
                   without the id. The token comes as `Authorization: Bearer` or, for browsers, \
                   `?access_token=`. Client → server: `message {to, message, client_id?}`, \
                   `message_seen {message_id}`, `typing {to}`, `ping`. Server → client: \
                   `user_connected {user_id}`, `user_disconnected {user_id, last_seen_at}`, \
                   `message_sent {message}` (after commit), `new_message {message}`, \
                   `message_delivered {message_id, delivered_at}`, `message_seen {message_id, seen_at}`, \
                   `typing {from}`, `pong`, `error {code, detail, client_id?, retry_after_ms?}`. \
                   `message` and `typing` frames are rate limited per user \
                   (`rate_limit.ws_messages_*`, `rate_limit.typing_per_second`): a refused one is \
                   answered `error` `rate_limited` with `retry_after_ms`, and the socket stays open. \
                   `typing` reaches \
                   only a user who shares a conversation (a message either way) with the sender; \
                   one to anyone else is dropped without an answer, so it tells nothing about \
                   who exists or is online. A socket belongs to the session (sign-in) whose access \
                   token opened it. Close codes: 1001 shutdown, 1002 protocol error, 1007 text \
                   that is not UTF-8, 1008 more than `rate_limit.ws_flood_close` refused frames in \
                   10 s, 1009 frame too large, \
                   1011 backlog unreadable, 1013 too slow (reconnect to get what was missed), 4001 \
                   closed by an operator (`teachlyd admin kick`) or the session ended (logout, a \
                   refresh token presented twice, `admin kick --revoke`; the user's other sessions \
                   keep their sockets): sign in again rather than reconnect with the same token.",
    security(("bearer" = []), ("access_token" = [])),
    params(
        ("user_id" = i64, Path, minimum = 1, description = "The caller's own id"),
        ("Connection" = String, Header,
            pattern = r"^(?:[\t\u0020-\u002B\u002D-\u007E]*,)*[\t ]*[Uu][Pp][Gg][Rr][Aa][Dd][Ee][\t ]*(?:,[\t\u0020-\u002B\u002D-\u007E]*)*$",
            description = "A list that holds `Upgrade` (any case)"),
        ("Upgrade" = String, Header,
            pattern = r"^(?:[\t\u0020-\u002B\u002D-\u007E]*,)*[\t ]*[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt][\t ]*(?:,[\t\u0020-\u002B\u002D-\u007E]*)*$",
            description = "A list that holds `websocket` (any case)"),
        ("Sec-WebSocket-Version" = String, Header, pattern = "^13$", description = "Only version 13"),
        ("Sec-WebSocket-Key" = String, Header,
            description = "The client's nonce (RFC 6455: 16 random bytes in base64); the answer's \
                           `Sec-WebSocket-Accept` is derived from it")),
    responses(
        crate::http::error::FrontRefusals,
        crate::http::error::SignInRequired, crate::http::error::DatabaseTrouble,
        (status = 101, description = "Switching protocols: the connection is a WebSocket from here on",
            headers(("Sec-WebSocket-Accept" = String, description = "Derived from `Sec-WebSocket-Key`"))),
        (status = 400, description = "`not_a_websocket`: not a WebSocket version 13 handshake over HTTP/1.1", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: `user_id` is not the token's user (`/ws/chat/{user_id}` \
            only); `forbidden_origin`: \
            the `Origin` is not in `server.cors_origins` (when that list is set)", body = crate::http::error::ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`): more than \
            `rate_limit.ws_upgrades_per_minute` upgrades from this address; \
            `too_many_connections`: the user holds `limits.max_connections_per_user` \
            sockets (default 5) already, counting upgrades under way: of several upgrades at once, \
            those beyond the limit get this answer, never a 101 that is closed afterwards", body = crate::http::error::ErrorBody)))]
async fn upgrade(
    path_user: Option<String>,
    arrival: Arrival,
    headers: HeaderMap,
    (on_upgrade, connection_slot): (Option<OnUpgrade>, Option<ConnectionSlot>),
    header_token: Option<String>,
    query: HashMap<String, String>,
    app: Arc<App>,
) -> Response {
    let (accept, on_upgrade) = match handshake(&headers, on_upgrade) {
        Ok(handshake) => handshake,
        Err(error) => return error.into_response(),
    };
    let token = header_token
        .as_deref()
        .or(query.get("access_token").map(String::as_str));
    let slot = match check(&app, path_user, token).await {
        Ok(slot) => slot,
        Err(error) => return error.into_response(),
    };
    let max = app.config.limits.max_frame_bytes + WIRE_SLACK;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_frame_size(Some(max))
        .max_message_size(Some(max));
    let sockets = app.sockets.clone();
    // The slot goes with the task: an upgrade that never completes drops it, which frees the place.
    tokio::spawn(sockets.track_future(async move {
        // The TCP connection stays counted against `limits.max_connections*` while the socket lives.
        let _connection_slot = connection_slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                connection::run(app, slot, arrival, socket).await;
            }
            Err(error) => tracing::debug!(%error, "the WebSocket upgrade did not complete"),
        }
    }));
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// The parts of RFC 6455's opening handshake a server checks; answers the `Sec-WebSocket-Accept`
/// value and the pending upgrade.
fn handshake(
    headers: &HeaderMap,
    on_upgrade: Option<OnUpgrade>,
) -> Result<(HeaderValue, OnUpgrade), ApiError> {
    let refuse = |detail: &str| ApiError::new(StatusCode::BAD_REQUEST, "not_a_websocket", detail);
    let has_token = |name: header::HeaderName, wanted: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case(wanted))
            })
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(refuse(
            "this route is a WebSocket: send Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(refuse("only WebSocket version 13 is supported"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| refuse("the Sec-WebSocket-Key header is missing"))?;
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| refuse("the Sec-WebSocket-Key header is malformed"))?;
    let on_upgrade =
        on_upgrade.ok_or_else(|| refuse("this connection cannot be upgraded (HTTP/1.1 only)"))?;
    Ok((accept, on_upgrade))
}

/// The checks made before the upgrade: a valid token of a live session, the path's user is the
/// token's, and room for one more connection, which is taken here (the slot) so that upgrades racing
/// for the last places cannot all pass: the losers get 429 before any 101. (The origin was checked
/// in `http::front`, as for every request.)
async fn check(
    app: &App,
    path_user: Option<String>,
    token: Option<&str>,
) -> Result<Slot, ApiError> {
    let caller = app.auth.authenticate(token).await?;
    if let Some(path_user) = path_user
        && path_user.parse::<i64>().ok() != Some(caller.user)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this socket belongs to another user: the path's user id must be your own",
        ));
    }
    app.chat
        .reserve(caller.user, &caller.session)
        .map_err(|refusal| match refusal {
            Refusal::TooManyConnections { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                format!("you already have {limit} open sockets; close one first"),
            ),
            // Ended between the database's answer and now (see `Hub::close_session`).
            Refusal::SessionEnded => AuthError::SessionEnded.into(),
        })
}
