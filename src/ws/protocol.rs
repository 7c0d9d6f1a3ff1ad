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

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        for depth in [200, 100_000] {
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            let frame = format!(r#"{{"event":"message","to":1,"message":"x","extra":{nested}}}"#);
            assert_eq!(code(&frame), "invalid_json", "depth {depth}");
        }
    }

    const CODES: [&str; 3] = ["invalid_json", "invalid_field", "unknown_event"];
    const FIELDS: [&str; 6] = ["event", "to", "message", "message_id", "client_id", "extra"];

    /// Any JSON value a client could put in a field, nested a few levels.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop_oneof![
                Just("message".to_owned()),
                Just("message_seen".to_owned()),
                Just("typing".to_owned()),
                Just("ping".to_owned()),
                "-?[0-9]{1,20}",
                " ?\\+?[0-9]{1,4} ?",
                ".{0,12}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::vec((prop::sample::select(FIELDS.to_vec()), inner), 0..4)
                    .prop_map(|fields| {
                        Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                    }),
            ]
        })
    }

    /// A frame that is an object whose fields are the protocol's names with values of any type.
    fn object_frame() -> impl Strategy<Value = serde_json::Map<String, Value>> {
        let event = prop_oneof![
            4 => prop::sample::select(vec!["message", "message_seen", "typing", "ping"])
                .prop_map(Value::from),
            1 => any_json(),
        ];
        let field = (prop::sample::select(FIELDS[1..].to_vec()), any_json());
        (
            prop::option::weighted(0.95, event),
            prop::collection::vec(field, 0..5),
        )
            .prop_map(|(event, fields)| {
                let mut object: serde_json::Map<String, Value> = fields
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect();
                if let Some(event) = event {
                    object.insert("event".into(), event);
                }
                object
            })
    }

    /// The id a field holds, as the contract reads it: a positive JSON integer or digits in a string.
    fn expected_id(value: Option<&Value>) -> Option<i64> {
        let id = match value? {
            Value::Number(number) => number.as_i64()?,
            Value::String(text) => text.trim().parse().ok()?,
            _ => return None,
        };
        (id > 0).then_some(id)
    }

    proptest! {
        #[test]
        fn never_panics(frame in ".*") {
            let _ = parse(&frame);
        }

        /// Every object a client could build from the protocol's own names is either read exactly as
        /// the contract says or refused with one of the three codes, and a message's refusal carries
        /// back the client id it could read.
        #[test]
        fn an_object_is_read_as_the_contract_says_or_refused_with_a_code(object in object_frame()) {
            let frame = Value::Object(object.clone()).to_string();
            let event = object.get("event").and_then(Value::as_str);
            match parse(&frame) {
                Ok(ClientEvent::Ping) => prop_assert_eq!(event, Some("ping")),
                Ok(ClientEvent::Typing { to }) => {
                    prop_assert_eq!(event, Some("typing"));
                    prop_assert_eq!(Some(to), expected_id(object.get("to")));
                }
                Ok(ClientEvent::MessageSeen { message_id }) => {
                    prop_assert_eq!(event, Some("message_seen"));
                    prop_assert_eq!(Some(message_id), expected_id(object.get("message_id")));
                }
                Ok(ClientEvent::Message { to, message, client_id }) => {
                    prop_assert_eq!(event, Some("message"));
                    prop_assert_eq!(Some(to), expected_id(object.get("to")));
                    prop_assert_eq!(Some(&Value::from(message)), object.get("message"));
                    let sent_id = object.get("client_id").and_then(Value::as_str);
                    prop_assert_eq!(client_id.as_deref(), sent_id);
                }
                Err(error) => {
                    prop_assert!(CODES.contains(&error.code), "{:?}", error);
                    prop_assert!(!error.detail.is_empty());
                    let read_everything = match event {
                        Some("ping") => true,
                        Some("typing") => expected_id(object.get("to")).is_some(),
                        Some("message_seen") => expected_id(object.get("message_id")).is_some(),
                        Some("message") => {
                            expected_id(object.get("to")).is_some()
                                && object.get("message").is_some_and(Value::is_string)
                                && object.get("client_id").is_none_or(|id| id.is_null() || id.is_string())
                        }
                        _ => false,
                    };
                    prop_assert!(!read_everything, "{} refused: {:?}", frame, error);
                    if event == Some("message") && error.code == "invalid_field" {
                        let sent_id = object.get("client_id").and_then(Value::as_str);
                        prop_assert_eq!(error.client_id.as_deref(), sent_id);
                    }
                }
            }
        }

        /// Bytes cut anywhere or changed in a frame the parser reads are refused with a code or read;
        /// never a panic, and never an error without its code.
        #[test]
        fn a_damaged_frame_is_refused_with_a_code(
            object in object_frame(),
            cut in any::<prop::sample::Index>(),
            noise in "[\\x00-\\x7f]{0,3}",
        ) {
            let frame = Value::Object(object).to_string();
            let mut at = cut.index(frame.len() + 1);
            while !frame.is_char_boundary(at) {
                at -= 1;
            }
            let mut rest = frame[at..].chars();
            rest.next();
            let damaged = format!("{}{noise}{}", &frame[..at], rest.as_str());
            if let Err(error) = parse(&damaged) {
                prop_assert!(CODES.contains(&error.code), "{:?}", error);
            }
        }

        #[test]
        fn any_positive_id_is_read_back(id in 1i64..i64::MAX, quoted: bool) {
            let to = if quoted { format!("\"{id}\"") } else { id.to_string() };
            let frame = format!(r#"{{"event":"typing","to":{to}}}"#);
            prop_assert_eq!(parse(&frame), Ok(ClientEvent::Typing { to: id }));
        }
    }
}
