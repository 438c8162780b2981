//! Rows of the tables in `schema.cql` that only storage deals in, shared by every `Store`
//! backend; the domain rows they embed are in [`crate::model`] (re-exported here).

use serde::{Deserialize, Serialize};

pub use crate::model::*;

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
    // Appended since the first row format (older rows decode with zeros).
    /// `count_seq` of the newest message: with `read_count`, unread is `last_count - read_count`.
    pub last_count: u64,
    /// `count_seq` of the message at `read_seq` (or, at a join, of the last one before it).
    pub read_count: u64,
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

/// `push_targets`, partition key `user_id`, clustering `device_id`: where a device that has no
/// open stream is notified (the app's push token, opaque to us).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTargetRow {
    pub user_id: String,
    pub device_id: String,
    /// `apns`, `fcm`, `webpush` or `other`.
    pub platform: String,
    pub token: String,
    pub app_id: String,
    /// BCP 47 tag or empty.
    pub locale: String,
    /// When this registration was written: a removal for an older one leaves it alone.
    pub registered_at_ms: i64,
}

/// `outbox`, partition key `(bucket, shard)`, clustering `message_id`: the fan-outs still to
/// do, which crash recovery re-drives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingFanoutRow {
    pub bucket: u64,
    pub shard: u32,
    pub message_id: u64,
    pub conversation_id: String,
    pub conv_seq: u64,
    pub created_at_ms: i64,
    /// Inbox sequence numbers already allocated for this message, recorded by backends whose
    /// fan-out write is not atomic so that a re-drive rewrites the same rows instead of new ones.
    pub inbox_allocation: Vec<(String, u64)>,
}

impl PendingFanoutRow {
    pub fn key(&self) -> super::OutboxKey {
        super::OutboxKey {
            bucket: self.bucket,
            shard: self.shard,
            message_id: self.message_id,
        }
    }
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
    /// The message's `count_seq`: raises `last_count` with `last_seq`, and `read_count` with
    /// `read_seq` when that is set (0, a hole's: leaves them).
    pub count_seq: u64,
    /// The member's inbox_seq for this message: backends may track the inbox head with it.
    pub inbox_seq: u64,
}

/// A change to a stored message, in place (see `Store::update_message`).
#[derive(Debug, Clone, PartialEq)]
pub enum MessageChange {
    /// Clears the body and sets `recalled_at_ms`: final, nothing restores the body.
    Recall { at_ms: i64 },
    /// Replaces body and content type and sets `edited_at_ms`, unless a later edit is there.
    Edit {
        content_type: String,
        body: bytes::Bytes,
        at_ms: i64,
    },
}

impl MessageChange {
    /// The change applied to a copy of the message, converging as `Store::update_message`
    /// says whatever the order changes arrive in.
    pub fn apply(&self, m: &mut MessageRow) {
        match self {
            MessageChange::Recall { at_ms } => {
                if !m.recalled() {
                    m.recalled_at_ms = (*at_ms).max(1);
                }
                m.body = bytes::Bytes::new();
            }
            MessageChange::Edit {
                content_type,
                body,
                at_ms,
            } => {
                if m.recalled() || *at_ms < m.edited_at_ms {
                    return;
                }
                m.content_type.clone_from(content_type);
                m.body = body.clone();
                m.edited_at_ms = *at_ms;
            }
        }
    }
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
    /// The outbox entry to clear once the rest is written.
    pub clear_pending: Option<super::OutboxKey>,
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
