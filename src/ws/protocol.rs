//! Client → server frames (SPEC §5), parsed without trusting a byte of them: every refusal names its
//! error code and the connection stays open.

use serde_json::Value;

use crate::domain::{MessageId, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Message {
        to: UserId,
        message: String,
        client_id: Option<String>,
    },
    MessageSeen {
        message_id: MessageId,
    },
    Typing {
        to: UserId,
    },
    Ping,
}

/// A refused frame: the `error` event's code and detail, and the client id when one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub detail: String,
    pub client_id: Option<String>,
}

impl FrameError {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            client_id: None,
        }
    }
}

pub fn parse(frame: &str) -> Result<ClientEvent, FrameError> {
    let value: Value = serde_json::from_str(frame)
        .map_err(|_| FrameError::new("invalid_json", "the frame is not valid JSON"))?;
    let Value::Object(object) = value else {
        return Err(FrameError::new(
            "invalid_json",
            "a frame must be a JSON object with an \"event\" field",
        ));
    };
    let event = match object.get("event") {
        Some(Value::String(event)) => event.as_str(),
        Some(_) => {
            return Err(FrameError::new(
                "invalid_field",
                "\"event\" must be a string",
            ));
        }
        None => {
            return Err(FrameError::new(
                "invalid_field",
                "the frame has no \"event\" field",
            ));
        }
    };
    match event {
        "message" => parse_message(&object),
        "message_seen" => Ok(ClientEvent::MessageSeen {
            message_id: id_field(&object, "message_id")?,
        }),
        "typing" => Ok(ClientEvent::Typing {
            to: id_field(&object, "to")?,
        }),
        "ping" => Ok(ClientEvent::Ping),
        _ => Err(FrameError::new(
            "unknown_event",
            "unknown event; send message, message_seen, typing or ping",
        )),
    }
}

fn parse_message(object: &serde_json::Map<String, Value>) -> Result<ClientEvent, FrameError> {
    // The client id is read first so that every later refusal can carry it back.
    let client_id = match object.get("client_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            return Err(FrameError::new(
                "invalid_field",
                "\"client_id\" must be a string",
            ));
        }
    };
    let with_client_id = |mut error: FrameError| {
        error.client_id.clone_from(&client_id);
        error
    };
    let to = id_field(object, "to").map_err(with_client_id)?;
    let message = match object.get("message") {
        Some(Value::String(text)) => text.clone(),
        Some(_) => {
            return Err(with_client_id(FrameError::new(
                "invalid_field",
                "\"message\" must be a string",
            )));
        }
        None => {
            return Err(with_client_id(FrameError::new(
                "invalid_field",
                "the message event needs a \"message\" field",
            )));
        }
    };
    Ok(ClientEvent::Message {
        to,
        message,
        client_id,
    })
}

/// A positive id, written as a JSON integer or a string of digits.
fn id_field(object: &serde_json::Map<String, Value>, name: &str) -> Result<i64, FrameError> {
    let invalid = || {
        FrameError::new(
            "invalid_field",
            format!("\"{name}\" must be a positive whole number"),
        )
    };
    let id = match object.get(name) {
        Some(Value::Number(number)) => number.as_i64().ok_or_else(invalid)?,
        Some(Value::String(text)) => text.trim().parse::<i64>().map_err(|_| invalid())?,
        Some(_) => return Err(invalid()),
        None => {
            return Err(FrameError::new(
                "invalid_field",
                format!("the frame needs a \"{name}\" field"),
            ));
        }
    };
    if id > 0 { Ok(id) } else { Err(invalid()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(frame: &str) -> &'static str {
        parse(frame).unwrap_err().code
    }

    #[test]
    fn reads_every_event() {
        assert_eq!(
            parse(r#"{"event":"message","to":"12","message":"hi","client_id":"c1"}"#),
            Ok(ClientEvent::Message {
                to: 12,
                message: "hi".into(),
                client_id: Some("c1".into())
            })
        );
        assert_eq!(
            parse(r#"{"event":"message_seen","message_id":5}"#),
            Ok(ClientEvent::MessageSeen { message_id: 5 })
        );
        assert_eq!(
            parse(r#"{"event":"typing","to":3}"#),
            Ok(ClientEvent::Typing { to: 3 })
        );
        assert_eq!(parse(r#"{"event":"ping"}"#), Ok(ClientEvent::Ping));
    }

    #[test]
    fn refuses_bad_frames_with_their_code() {
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_json");
        assert_eq!(code("\"message\""), "invalid_json");
        assert_eq!(code(r#"{"event":"dance"}"#), "unknown_event");
        assert_eq!(code(r#"{"to":1}"#), "invalid_field");
        assert_eq!(code(r#"{"event":7}"#), "invalid_field");
        assert_eq!(
            code(r#"{"event":"message","message":"x"}"#),
            "invalid_field"
        );
        assert_eq!(code(r#"{"event":"message","to":1}"#), "invalid_field");
        assert_eq!(
            code(r#"{"event":"message","to":1,"message":5}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"event":"message","to":1.5,"message":"x"}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"event":"message","to":-1,"message":"x"}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"event":"message","to":99999999999999999999999,"message":"x"}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"event":"message","to":"12abc","message":"x"}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"event":"message_seen","message_id":null}"#),
            "invalid_field"
        );
        assert_eq!(code(r#"{"event":"typing"}"#), "invalid_field");
    }

    #[test]
    fn refusals_of_a_message_carry_its_client_id() {
        let error =
            parse(r#"{"event":"message","to":"x","message":"hi","client_id":"abc"}"#).unwrap_err();
        assert_eq!(error.client_id.as_deref(), Some("abc"));
    }

    proptest! {
        #[test]
        fn never_panics(frame in ".*") {
            let _ = parse(&frame);
        }

        #[test]
        fn any_positive_id_is_read_back(id in 1i64..i64::MAX, quoted: bool) {
            let to = if quoted { format!("\"{id}\"") } else { id.to_string() };
            let frame = format!(r#"{{"event":"typing","to":{to}}}"#);
            prop_assert_eq!(parse(&frame), Ok(ClientEvent::Typing { to: id }));
        }
    }
}
