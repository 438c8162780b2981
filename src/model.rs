//! The domain's vocabulary, shared by the pipeline, the API and every backend: conversation
//! kinds, delivery modes and their spans, roles, conversations, members and messages. The
//! `Store` persists these as rows of `schema.cql`; the API converts them to protobuf.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationKind {
    Direct,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeliveryMode {
    /// Copied to one inbox row per member on write.
    Fanout,
    /// Written once; members read the conversation at sync time.
    Hot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    User,
    /// A conv_seq that was allocated but never written.
    Hole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

/// From `since_seq` on (until the next span), messages are delivered in `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeSpan {
    pub since_seq: u64,
    pub mode: DeliveryMode,
}

/// Most mode spans a conversation keeps (about 1.2 KiB embedded, 5 KiB on ScyllaDB); older ones
/// are dropped, and a reader whose position lies behind the oldest one kept reads the dropped
/// spans as fan-out (so it misses their hot messages): see the README's known limits.
pub const MAX_MODE_SPANS: usize = 256;

/// `conversations`, partition key `conversation_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRow {
    pub conversation_id: String,
    pub kind: ConversationKind,
    pub title: String,
    pub created_at_ms: i64,
    pub created_by: String,
    pub member_count: u32,
    /// The delivery mode history, ascending by `since_seq`, never empty; the last is current.
    pub mode_spans: Vec<ModeSpan>,
    /// An operator fixed the mode: automatic switching leaves it alone.
    pub mode_forced: bool,
    pub mode_changed_at_ms: i64,
    /// Least seconds between two messages of one member (owners and admins are exempt); 0 is
    /// off. Stored beside the row (embedded: a key of its own; ScyllaDB: a column) so that rows
    /// written before it existed still decode.
    #[serde(skip)]
    pub slowmode_seconds: u32,
}

impl ConversationRow {
    pub fn initial_spans() -> Vec<ModeSpan> {
        vec![ModeSpan {
            since_seq: 1,
            mode: DeliveryMode::Fanout,
        }]
    }

    pub fn mode(&self) -> DeliveryMode {
        self.mode_spans
            .last()
            .map_or(DeliveryMode::Fanout, |s| s.mode)
    }

    pub fn mode_since_seq(&self) -> u64 {
        self.mode_spans.last().map_or(1, |s| s.since_seq)
    }

    /// The mode conv_seq `seq` is delivered in.
    pub fn mode_at(&self, seq: u64) -> DeliveryMode {
        self.mode_spans
            .iter()
            .rev()
            .find(|s| s.since_seq <= seq)
            .map_or(DeliveryMode::Fanout, |s| s.mode)
    }

    pub fn ever_hot(&self) -> bool {
        self.mode_spans.iter().any(|s| s.mode == DeliveryMode::Hot)
    }

    /// The first hot conv_seq at or after `seq`, if any: where a hot reader continues.
    pub fn next_hot_seq(&self, seq: u64) -> Option<u64> {
        if self.mode_at(seq) == DeliveryMode::Hot {
            return Some(seq);
        }
        // By the mode in force at each span's start: a span superseded at the same seq (a
        // switch undone before any seq was handed out) does not count.
        self.mode_spans
            .iter()
            .map(|s| s.since_seq)
            .find(|&since| since > seq && self.mode_at(since) == DeliveryMode::Hot)
    }
}

/// `members`, partition key `conversation_id`, clustering `user_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRow {
    pub conversation_id: String,
    pub user_id: String,
    pub role: Role,
    pub joined_seq: u64,
    pub joined_at_ms: i64,
}

/// `messages`, partition key `(conversation_id, bucket)`, clustering `conv_seq DESC, message_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRow {
    pub conversation_id: String,
    pub conv_seq: u64,
    pub message_id: u64,
    pub sender_id: String,
    pub sender_device_id: String,
    pub client_msg_id: String,
    pub content_type: String,
    pub body: Bytes,
    pub created_at_ms: i64,
    pub kind: MessageKind,
}

/// The message_id of the hole at `(conversation_id, conv_seq)`: the same for every filler, so
/// concurrent fills converge; the top bit (never set in a snowflake) keeps it apart from them.
pub fn hole_message_id(conversation_id: &str, conv_seq: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in conversation_id.bytes().chain(conv_seq.to_be_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | (1 << 63)
}

/// A hole marker: conv_seq `conv_seq` was allocated but its message was never written.
pub fn hole_message(conversation_id: &str, conv_seq: u64, created_at_ms: i64) -> MessageRow {
    MessageRow {
        conversation_id: conversation_id.to_owned(),
        conv_seq,
        message_id: hole_message_id(conversation_id, conv_seq),
        sender_id: String::new(),
        sender_device_id: String::new(),
        client_msg_id: String::new(),
        content_type: String::new(),
        body: Bytes::new(),
        created_at_ms,
        kind: MessageKind::Hole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(spans: &[(u64, DeliveryMode)]) -> ConversationRow {
        ConversationRow {
            conversation_id: "g:spans".into(),
            kind: ConversationKind::Group,
            title: String::new(),
            created_at_ms: 0,
            created_by: String::new(),
            member_count: 0,
            mode_spans: spans
                .iter()
                .map(|&(since_seq, mode)| ModeSpan { since_seq, mode })
                .collect(),
            mode_forced: false,
            mode_changed_at_ms: 0,
            slowmode_seconds: 0,
        }
    }

    #[test]
    fn a_hot_span_undone_at_the_same_seq_is_not_where_hot_reading_continues() {
        use DeliveryMode::*;
        let c = conversation(&[
            (1, Fanout),
            (1, Hot),
            (2, Fanout),
            (3, Hot),
            (3, Fanout),
            (4, Hot),
        ]);
        assert_eq!(c.mode_at(1), Hot);
        assert_eq!(c.mode_at(3), Fanout);
        assert_eq!(c.next_hot_seq(2), Some(4));
        assert_eq!(c.next_hot_seq(1), Some(1));
        assert_eq!(
            conversation(&[(1, Fanout), (5, Hot), (5, Fanout)]).next_hot_seq(1),
            None
        );
    }
}
