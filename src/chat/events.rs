//! Server → client events (SPEC §5), serialized once and shared by every socket that gets them.

use std::sync::Arc;

use serde::Serialize;
use sqlx::types::time::OffsetDateTime;

use crate::{
    domain::{Message, MessageId, UserId},
    hub::Outbound,
};

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServerEvent<'a> {
    UserConnected {
        user_id: UserId,
    },
    UserDisconnected {
        user_id: UserId,
        #[serde(with = "time::serde::rfc3339")]
        last_seen_at: OffsetDateTime,
    },
    MessageSent {
        message: &'a Message,
    },
    NewMessage {
        message: &'a Message,
    },
    MessageDelivered {
        message_id: MessageId,
        #[serde(with = "time::serde::rfc3339")]
        delivered_at: OffsetDateTime,
    },
    MessageSeen {
        message_id: MessageId,
        #[serde(with = "time::serde::rfc3339")]
        seen_at: OffsetDateTime,
    },
    Typing {
        from: UserId,
    },
    Pong,
    Error {
        code: &'a str,
        detail: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerEvent<'_> {
    pub fn to_frame(&self) -> Arc<str> {
        // Serializing these plain structs cannot fail; an empty object is the harmless fallback.
        serde_json::to_string(self)
            .unwrap_or_else(|_| "{}".into())
            .into()
    }

    pub fn to_outbound(&self) -> Outbound {
        match self {
            ServerEvent::NewMessage { message } => {
                Outbound::new_message(self.to_frame(), message.id)
            }
            _ => Outbound::event(self.to_frame()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_names_and_fields() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let frame = ServerEvent::MessageDelivered {
            message_id: 9,
            delivered_at: at,
        }
        .to_frame();
        assert_eq!(
            &*frame,
            r#"{"event":"message_delivered","message_id":9,"delivered_at":"2023-11-14T22:13:20Z"}"#
        );
        assert_eq!(&*ServerEvent::Pong.to_frame(), r#"{"event":"pong"}"#);
        let error = ServerEvent::Error {
            code: "rate_limited",
            detail: "slow down",
            client_id: None,
            retry_after_ms: Some(250),
        };
        assert_eq!(
            &*error.to_frame(),
            r#"{"event":"error","code":"rate_limited","detail":"slow down","retry_after_ms":250}"#
        );
    }
}
