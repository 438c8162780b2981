//! Rows of the tables in `schema.cql`, shared by every `Store` backend.

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

/// Most mode spans a conversation keeps; older ones are dropped (a reader whose position is that
/// far behind in a conversation that switched that often reads it from the inbox only).
pub const MAX_MODE_SPANS: usize = 64;

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
        self.mode_spans
            .iter()
            .find(|s| s.since_seq > seq && s.mode == DeliveryMode::Hot)
            .map(|s| s.since_seq)
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

/// `user_conversations`, partition key `user_id`, clustering `conversation_id`.
///
/// `joined_seq == 0` marks a partial row left by an activity update that raced with a leave
/// (a blind CQL `UPDATE` creates the row): readers ignore such rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserConversationRow {
    pub user_id: String,
    pub conversation_id: String,
    pub kind: ConversationKind,
    /// `Hot` once the conversation has had a hot span: Sync then reads it as a hot source.
    /// Only ever raised (a reader behind a past hot span still needs it).
    pub mode: DeliveryMode,
    pub last_message_id: u64,
    pub last_seq: u64,
    pub read_seq: u64,
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

/// `inbox`, partition key `(user_id, bucket)`, clustering `inbox_seq DESC, message_id`; a
/// denormalised copy of the message so that a sync reads nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxRow {
    pub user_id: String,
    pub inbox_seq: u64,
    /// When inbox_seq was allocated: the gap rule judges a missing seq by its successor's age.
    pub allocated_at_ms: i64,
    pub message: MessageRow,
}

/// `idempotency`, partition key `(sender_id, client_msg_id)`, TTL 24 h.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRow {
    pub sender_id: String,
    pub client_msg_id: String,
    pub message_id: u64,
    pub conversation_id: String,
    pub conv_seq: u64,
    pub created_at_ms: i64,
}

/// `pending_fanout`, partition key `shard`, clustering `message_id`: the outbox that crash
/// recovery re-drives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingFanoutRow {
    pub shard: u32,
    pub message_id: u64,
    pub conversation_id: String,
    pub conv_seq: u64,
    pub created_at_ms: i64,
    /// Inbox sequence numbers already allocated for this message, recorded by backends whose
    /// fan-out write is not atomic so that a re-drive rewrites the same rows instead of new ones.
    pub inbox_allocation: Vec<(String, u64)>,
}

/// Raises one member's `user_conversations` row after a fan-out: `last_seq` and
/// `last_message_id` move to this message when it is newer; `read_seq` moves forward when set.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityUpdate {
    pub user_id: String,
    pub conversation_id: String,
    pub last_seq: u64,
    pub last_message_id: u64,
    pub read_seq: Option<u64>,
    /// The member's inbox_seq for this message: backends may track the inbox head with it.
    pub inbox_seq: u64,
}

/// The durable step of a send: the message, its outbox entry and its idempotency record.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageWrite {
    pub message: MessageRow,
    pub pending: Option<PendingFanoutRow>,
    pub idempotency: Option<IdempotencyRow>,
}

/// The fan-out step of a send: inbox rows, activity updates, and clearing the outbox entry.
#[derive(Debug, Clone, PartialEq)]
pub struct FanoutWrite {
    pub inbox: Vec<InboxRow>,
    pub activity: Vec<ActivityUpdate>,
    /// `(shard, message_id)` of the outbox entry to clear once the rest is written.
    pub clear_pending: Option<(u32, u64)>,
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

/// A position in an inbox: its clustering key. Reads return rows strictly after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct InboxPosition {
    pub inbox_seq: u64,
    pub message_id: u64,
}

/// An inclusive range of conv_seq values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub from: u64,
    pub to: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOrder {
    Ascending,
    Descending,
}
