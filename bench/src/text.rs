//! What a message carries: chat-like words, and a client id from which the receiver recovers the
//! sender's stream, sequence number and send instant, so latency needs no map shared between tasks.

use std::fmt;

const WORDS: [&str; 48] = [
    "the",
    "lesson",
    "about",
    "fractions",
    "starts",
    "after",
    "lunch",
    "please",
    "bring",
    "your",
    "notebook",
    "and",
    "the",
    "worksheet",
    "from",
    "monday",
    "we",
    "will",
    "review",
    "chapter",
    "three",
    "before",
    "moving",
    "on",
    "to",
    "geometry",
    "if",
    "you",
    "have",
    "questions",
    "send",
    "them",
    "here",
    "thanks",
    "see",
    "tomorrow",
    "great",
    "work",
    "on",
    "the",
    "homework",
    "essay",
    "draft",
    "is",
    "due",
    "friday",
    "morning",
    "ok",
];

/// About 64 bytes of plain words (nothing the server's sanitizer or link rules change), different
/// for every (stream, seq): a real client never sends the same text twice in a row.
pub fn chat_text(stream: u32, seq: u64) -> String {
    let mut seed = u64::from(stream).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ seq.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut text = String::with_capacity(96);
    while text.len() < 48 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        text.push_str(WORDS[(seed >> 33) as usize % WORDS.len()]);
        text.push(' ');
    }
    text.push_str(&format!("(note {seq} of {stream})"));
    text
}

/// `<run>-<stream>-<seq>-<micros>`: the run's random tag, the sender→recipient stream, the sender's
/// sequence number in it, and the send (or scheduled) instant in µs since the run's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId {
    pub run: String,
    pub stream: u32,
    pub seq: u64,
    pub micros: u64,
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}-{}",
            self.run, self.stream, self.seq, self.micros
        )
    }
}

impl ClientId {
    /// Reads a client id this tool wrote; `None` for anything else (another client's message).
    pub fn parse(text: &str) -> Option<ClientId> {
        let mut parts = text.split('-');
        let run = parts.next()?;
        let stream = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let micros = parts.next()?.parse().ok()?;
        if parts.next().is_some()
            || run.is_empty()
            || !run.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return None;
        }
        Some(ClientId {
            run: run.to_owned(),
            stream,
            seq,
            micros,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_reads_back_what_was_written() {
        let id = ClientId {
            run: "a1b2c3d4".into(),
            stream: 99_999,
            seq: 123_456_789,
            micros: 86_400_000_000,
        };
        let text = id.to_string();
        assert!(
            text.len() <= 64,
            "the server takes client ids up to 64 chars"
        );
        assert_eq!(ClientId::parse(&text), Some(id));
        for foreign in [
            "",
            "abc",
            "r-1-2",
            "r-1-2-3-4",
            "r-x-2-3",
            "-1-2-3",
            "r!-1-2-3",
        ] {
            assert_eq!(ClientId::parse(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn texts_are_plain_words_of_about_64_bytes_and_never_repeat() {
        let mut seen = std::collections::HashSet::new();
        for stream in 0..20 {
            for seq in 0..200 {
                let text = chat_text(stream, seq);
                assert!((48..=96).contains(&text.len()), "{text:?}");
                assert!(!text.contains([':', '<', '>', '&', '@', '/']), "{text:?}");
                assert!(seen.insert(text));
            }
        }
    }
}
