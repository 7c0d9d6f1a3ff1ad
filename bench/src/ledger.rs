//! The exactly-once bookkeeping: what was acknowledged, received, receipted, and what went wrong.
//! Pure: the scenarios feed it events, and `verdict` turns it into counts.

use std::collections::{BTreeMap, HashMap, HashSet, hash_map::Entry};

use serde::Serialize;

/// A message id as the server assigns it.
pub type MessageId = i64;

/// The verdict of a run: every acknowledged message arrived exactly once, in order, and its sender
/// heard that it did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExactlyOnce {
    /// Messages answered with `message_sent`.
    pub acknowledged: u64,
    /// Distinct messages of this run that a recipient got as `new_message`.
    pub received: u64,
    /// Acknowledged but never received within --settle.
    pub lost: u64,
    /// Receptions of a message id that one socket had already received.
    pub duplicated: u64,
    /// Receptions with a lower sequence number of a stream after a higher one, on one socket.
    pub reordered: u64,
    /// Received, but the sender never got `message_delivered` within --settle.
    pub unreceipted: u64,
    /// `error` events from the server.
    pub errors: u64,
    /// Sockets the server closed (or that failed to open) while the scenario needed them.
    pub dropped_sockets: u64,
}

impl ExactlyOnce {
    pub fn holds(&self) -> bool {
        self.wrong().is_empty()
    }

    /// The counts that break the guarantee, by name, for the closing message.
    pub fn wrong(&self) -> Vec<(&'static str, u64)> {
        [
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("reordered", self.reordered),
            ("unreceipted", self.unreceipted),
            ("errors", self.errors),
            ("dropped_sockets", self.dropped_sockets),
        ]
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .collect()
    }
}

/// One sender→recipient message stream and a sequence number in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub stream: u32,
    pub seq: u64,
}

/// Whether a `new_message` was the first of its id on that socket, and in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reception {
    First,
    /// First of its id, but after a higher sequence number of its stream (`after`).
    Reordered {
        after: u64,
    },
    Duplicate,
}

impl Reception {
    pub fn is_first(self) -> bool {
        self != Reception::Duplicate
    }
}

/// The events of one run, or of a part of it (one task) to be merged with the others.
#[derive(Debug, Default)]
pub struct Ledger {
    acked: HashMap<MessageId, Key>,
    /// Sockets each id arrived on (a socket is the scenario's own number for it).
    received: HashMap<MessageId, Vec<u32>>,
    receipted: HashSet<MessageId>,
    /// The highest sequence number so far of each (socket, stream).
    last_seq: HashMap<(u32, u32), u64>,
    duplicated: u64,
    reordered: u64,
    errors: BTreeMap<String, u64>,
    dropped_sockets: u64,
    /// Acknowledged ids not yet received / not yet receipted: what the settle phase waits for.
    awaiting_delivery: u64,
    awaiting_receipt: u64,
}

impl Ledger {
    pub fn acked(&mut self, key: Key, id: MessageId) {
        if let Entry::Vacant(slot) = self.acked.entry(id) {
            slot.insert(key);
            if !self.received.contains_key(&id) {
                self.awaiting_delivery += 1;
            }
            if !self.receipted.contains(&id) {
                self.awaiting_receipt += 1;
            }
        }
    }

    pub fn received(&mut self, socket: u32, key: Key, id: MessageId) -> Reception {
        let sockets = self.received.entry(id).or_default();
        if sockets.contains(&socket) {
            self.duplicated += 1;
            return Reception::Duplicate;
        }
        if sockets.is_empty() && self.acked.contains_key(&id) {
            self.awaiting_delivery = self.awaiting_delivery.saturating_sub(1);
        }
        sockets.push(socket);
        let last = self.last_seq.entry((socket, key.stream)).or_insert(key.seq);
        if key.seq < *last {
            self.reordered += 1;
            Reception::Reordered { after: *last }
        } else {
            *last = key.seq;
            Reception::First
        }
    }

    pub fn receipted(&mut self, id: MessageId) {
        if self.receipted.insert(id) && self.acked.contains_key(&id) {
            self.awaiting_receipt = self.awaiting_receipt.saturating_sub(1);
        }
    }

    pub fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }

    pub fn dropped_socket(&mut self) {
        self.dropped_sockets += 1;
    }

    /// The ids acknowledged so far and their keys (storm hands these to its recipients).
    pub fn acked_ids(&self) -> impl Iterator<Item = (MessageId, Key)> + '_ {
        self.acked.iter().map(|(id, key)| (*id, *key))
    }

    /// Whether something acknowledged here still waits for its delivery or its receipt. Only
    /// meaningful in a ledger that sees both ends of its messages.
    pub fn unsettled(&self) -> bool {
        self.awaiting_delivery > 0 || self.awaiting_receipt > 0
    }

    /// Acknowledged ids whose `message_delivered` has not come yet.
    pub fn awaiting_receipts(&self) -> u64 {
        self.awaiting_receipt
    }

    pub fn error_codes(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }

    pub fn merge(&mut self, other: Ledger) {
        for (id, key) in other.acked {
            self.acked(key, id);
        }
        for (id, sockets) in other.received {
            let mine = self.received.entry(id).or_default();
            if mine.is_empty() && !sockets.is_empty() && self.acked.contains_key(&id) {
                self.awaiting_delivery = self.awaiting_delivery.saturating_sub(1);
            }
            for socket in sockets {
                if mine.contains(&socket) {
                    self.duplicated += 1;
                } else {
                    mine.push(socket);
                }
            }
        }
        for id in other.receipted {
            self.receipted(id);
        }
        // Streams are read by one socket each, and a socket lives in one task: no orders to join.
        self.last_seq.extend(other.last_seq);
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
        self.dropped_sockets += other.dropped_sockets;
    }

    /// A few lost and unreceipted messages, named by stream, sequence number and id, for the notes.
    pub fn missing_examples(&self, at_most: usize) -> Vec<String> {
        let mut lost: Vec<(Key, MessageId)> = self
            .acked
            .iter()
            .filter(|(id, _)| !self.received.contains_key(id))
            .map(|(id, key)| (*key, *id))
            .collect();
        let mut unreceipted: Vec<MessageId> = self
            .received
            .keys()
            .filter(|id| !self.receipted.contains(id))
            .copied()
            .collect();
        lost.sort_unstable_by_key(|(key, id)| (key.stream, key.seq, *id));
        unreceipted.sort_unstable();
        let mut notes = Vec::new();
        if !lost.is_empty() {
            let named: Vec<String> = lost
                .iter()
                .take(at_most)
                .map(|(key, id)| format!("message {id} (stream {} seq {})", key.stream, key.seq))
                .collect();
            notes.push(format!("lost: {}", named.join(", ")));
        }
        if !unreceipted.is_empty() {
            let named: Vec<String> = unreceipted
                .iter()
                .take(at_most)
                .map(|id| match self.acked.get(id) {
                    Some(key) => format!("message {id} (stream {} seq {})", key.stream, key.seq),
                    None => format!("message {id}"),
                })
                .collect();
            notes.push(format!("unreceipted: {}", named.join(", ")));
        }
        notes
    }

    pub fn verdict(&self) -> ExactlyOnce {
        let lost = self
            .acked
            .keys()
            .filter(|id| !self.received.contains_key(id))
            .count();
        let unreceipted = self
            .received
            .keys()
            .filter(|id| !self.receipted.contains(id))
            .count();
        ExactlyOnce {
            acknowledged: self.acked.len() as u64,
            received: self.received.len() as u64,
            lost: lost as u64,
            duplicated: self.duplicated,
            reordered: self.reordered,
            unreceipted: unreceipted as u64,
            errors: self.errors.values().sum(),
            dropped_sockets: self.dropped_sockets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stream: u32, seq: u64) -> Key {
        Key { stream, seq }
    }

    #[test]
    fn every_message_once_in_order_holds() {
        let mut ledger = Ledger::default();
        for seq in 0..5 {
            ledger.acked(key(0, seq), 100 + seq as i64);
            assert!(ledger.unsettled());
            assert_eq!(
                ledger.received(7, key(0, seq), 100 + seq as i64),
                Reception::First
            );
            ledger.receipted(100 + seq as i64);
        }
        assert!(!ledger.unsettled());
        let verdict = ledger.verdict();
        assert_eq!(
            verdict,
            ExactlyOnce {
                acknowledged: 5,
                received: 5,
                ..ExactlyOnce::default()
            }
        );
        assert!(verdict.holds());
    }

    #[test]
    fn a_delivery_or_receipt_before_its_ack_still_settles() {
        let mut ledger = Ledger::default();
        ledger.received(1, key(0, 0), 9);
        ledger.receipted(9);
        ledger.acked(key(0, 0), 9);
        assert!(!ledger.unsettled());
        assert!(ledger.verdict().holds());
    }

    #[test]
    fn lost_duplicated_reordered_and_unreceipted_are_counted() {
        let mut ledger = Ledger::default();
        for seq in 0..4 {
            ledger.acked(key(3, seq), seq as i64);
        }
        // 0 and 2 arrive, then 1 after 2 (reordered), 2 again (duplicate); 3 never arrives (lost).
        ledger.received(1, key(3, 0), 0);
        ledger.received(1, key(3, 2), 2);
        assert_eq!(
            ledger.received(1, key(3, 1), 1),
            Reception::Reordered { after: 2 }
        );
        assert_eq!(ledger.received(1, key(3, 2), 2), Reception::Duplicate);
        // The same id on another socket of the user is no duplicate.
        assert_eq!(ledger.received(2, key(3, 2), 2), Reception::First);
        ledger.receipted(0);
        ledger.receipted(2);
        ledger.error("internal");
        ledger.error("internal");
        ledger.dropped_socket();
        assert!(ledger.unsettled());
        let verdict = ledger.verdict();
        assert_eq!(
            verdict,
            ExactlyOnce {
                acknowledged: 4,
                received: 3,
                lost: 1,
                duplicated: 1,
                reordered: 1,
                unreceipted: 1,
                errors: 2,
                dropped_sockets: 1,
            }
        );
        assert!(!verdict.holds());
        assert_eq!(
            verdict
                .wrong()
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>(),
            [
                "lost",
                "duplicated",
                "reordered",
                "unreceipted",
                "errors",
                "dropped_sockets"
            ]
        );
    }

    #[test]
    fn streams_are_ordered_each_on_their_own() {
        let mut ledger = Ledger::default();
        ledger.received(0, key(1, 5), 1);
        ledger.received(0, key(2, 0), 2);
        ledger.received(0, key(1, 6), 3);
        ledger.received(0, key(2, 1), 4);
        assert_eq!(ledger.verdict().reordered, 0);
    }

    #[test]
    fn merged_halves_judge_like_one_ledger() {
        // A sender's half (acks, receipts) and a recipient's half (deliveries), as storm keeps them.
        let mut sender = Ledger::default();
        let mut recipient = Ledger::default();
        for seq in 0..3 {
            sender.acked(key(0, seq), seq as i64);
        }
        sender.receipted(0);
        sender.receipted(1);
        recipient.received(4, key(0, 0), 0);
        recipient.received(4, key(0, 1), 1);
        recipient.received(4, key(0, 1), 1);
        recipient.error("rate_limited");
        sender.merge(recipient);
        assert_eq!(
            sender.verdict(),
            ExactlyOnce {
                acknowledged: 3,
                received: 2,
                lost: 1,
                duplicated: 1,
                errors: 1,
                ..ExactlyOnce::default()
            }
        );
        assert_eq!(sender.error_codes().get("rate_limited"), Some(&1));
        assert!(sender.unsettled());
    }
}
