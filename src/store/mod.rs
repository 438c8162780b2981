//! The durable tables (`schema.cql`) behind one trait.
//!
//! `Store` is Scylla-shaped: every method is one CQL query (or one batch) on the tables of
//! `schema.cql`: single-partition writes and clustered range reads. It promises no
//! multi-partition atomicity beyond what each method documents, so the pipeline in
//! [`crate::timeline`] stays correct on ScyllaDB as well as on the embedded engine.
//! Walking buckets, dedupe and ordering across partitions are the pipeline's job, done once.

pub mod embedded;
pub mod metered;
mod rows;
pub mod scylla;

pub use rows::*;

use crate::method_list::backend_trait;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store is overloaded: {0}")]
    Overloaded(String),
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    #[error("store configuration mismatch: {0}")]
    Config(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Width of an outbox time bucket: an entry lives in the partition `(created_at / width,
/// message_id % OUTBOX_SHARDS)`, so recovery reads only the buckets it has not drained yet and
/// never pages through the tombstones of every send ever made.
pub const OUTBOX_BUCKET_MS: i64 = 10_000;
/// Partitions per outbox time bucket: the sends of one bucket spread over this many.
pub const OUTBOX_SHARDS: u32 = 16;

/// The primary key of an outbox entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxKey {
    pub bucket: u64,
    pub shard: u32,
    pub message_id: u64,
}

impl OutboxKey {
    /// The key of the entry a message written at `created_at_ms` gets.
    pub fn of(message_id: u64, created_at_ms: i64) -> Self {
        Self {
            bucket: outbox_bucket(created_at_ms),
            shard: (message_id % u64::from(OUTBOX_SHARDS)) as u32,
            message_id,
        }
    }

    pub fn for_message(message: &MessageRow) -> Self {
        Self::of(message.message_id, message.created_at_ms)
    }
}

/// The outbox time bucket of an instant (instants before the epoch share bucket 0).
pub fn outbox_bucket(at_ms: i64) -> u64 {
    u64::try_from(at_ms.max(0) / OUTBOX_BUCKET_MS).unwrap_or(0)
}

/// The `Store` methods, written once: the trait below is declared from this list, and so is
/// every decorator (see [`crate::method_list`]). `$callback` gets the list after `$prefix`.
macro_rules! with_store_methods {
    ($callback:ident { $($prefix:tt)* }) => {
        $callback! { $($prefix)*
        // --- conversations ---------------------------------------------------------------------
        /// `INSERT ... IF NOT EXISTS`: returns the existing row when there was one. Its
        /// `member_count` counts as counted at `created_at_ms` (see `set_member_count`).
        fn insert_conversation_if_absent(&self, row: &ConversationRow) -> StoreResult<Option<ConversationRow>>;
        fn get_conversation(&self, conversation_id: &str) -> StoreResult<Option<ConversationRow>>;
        /// Sets a count that started at `counted_at_ms`, unless a count that started later was
        /// already set: of two racing counts the later one saw every change the earlier did.
        fn set_member_count(&self, conversation_id: &str, member_count: u32, counted_at_ms: i64) -> StoreResult<()>;
        /// Replaces the mode history (`UPDATE conversations SET mode_spans = ?, ...`).
        fn update_conversation_mode(&self, conversation_id: &str, spans: &[ModeSpan], forced: bool, changed_at_ms: i64) -> StoreResult<()>;
        /// `UPDATE conversations SET slowmode_seconds = ?`: read back by `get_conversation`.
        fn set_slowmode(&self, conversation_id: &str, seconds: u32) -> StoreResult<()>;
        // --- members -----------------------------------------------------------------------------
        /// The member row and the member's `user_conversations` row, as one unit (a logged batch
        /// on ScyllaDB): no member exists without its read state. The user row's `mode` never goes
        /// down (as in `upsert_user_conversation`).
        fn add_member(&self, member: &MemberRow, user_row: &UserConversationRow) -> StoreResult<()>;
        /// The member row and the member's `user_conversations` membership (its hot flag
        /// included), as one unit (a logged batch on ScyllaDB): a removed member keeps nothing
        /// that would make Sync, or a push stream, read the conversation.
        fn remove_member(&self, conversation_id: &str, user_id: &str) -> StoreResult<()>;
        fn get_member(&self, conversation_id: &str, user_id: &str) -> StoreResult<Option<MemberRow>>;
        /// Members ordered by user_id, strictly after `after`.
        fn list_members(&self, conversation_id: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<MemberRow>>;
        /// Counts the partition (one request on ScyllaDB, with its own longer timeout): run on
        /// membership changes, never per message.
        fn count_members(&self, conversation_id: &str) -> StoreResult<u64>;
        // --- user_conversations -----------------------------------------------------------------
        /// Writes the row; its `mode` never goes down (an existing `Hot` stays: on ScyllaDB the
        /// column is written only when `Hot`).
        fn upsert_user_conversation(&self, row: &UserConversationRow) -> StoreResult<()>;
        /// Raises `mode` of an existing row (no row: nothing happens).
        fn raise_user_conversation_mode(&self, user_id: &str, conversation_id: &str, mode: DeliveryMode) -> StoreResult<()>;
        fn get_user_conversation(&self, user_id: &str, conversation_id: &str) -> StoreResult<Option<UserConversationRow>>;
        /// The user's rows ordered by conversation_id, strictly after `after`.
        fn list_user_conversations(&self, user_id: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<UserConversationRow>>;
        /// The user's rows whose `mode` is `Hot` (`SELECT ... FROM user_conversations WHERE
        /// user_id = ?`, filtered on mode): the conversations Sync reads as hot sources.
        fn list_hot_conversations(&self, user_id: &str, limit: usize) -> StoreResult<Vec<UserConversationRow>>;
        /// Moves `read_seq` forward to `seq` and `read_count` to `count` (never back); returns
        /// the row after the update, or `None` when the user has no row for the conversation.
        fn advance_read_seq(&self, user_id: &str, conversation_id: &str, seq: u64, count: u64) -> StoreResult<Option<UserConversationRow>>;
        // --- messages ----------------------------------------------------------------------------
        /// The durable step of a send: the message row, its outbox entry and its idempotency
        /// record, atomically (a logged batch on ScyllaDB).
        fn write_message(&self, write: &MessageWrite) -> StoreResult<()>;
        /// Changes the message at `(conv_seq, message_id)` in place; the caller has read it (on
        /// ScyllaDB an UPDATE of a missing row would create one). Concurrent changes converge:
        /// a recall wins over any edit, the later of two edits wins (by `at_ms`).
        fn update_message(&self, conversation_id: &str, conv_seq: u64, message_id: u64, change: &MessageChange) -> StoreResult<()>;
        /// Rows of one `(conversation_id, bucket)` partition with conv_seq in `range`, in `order`.
        fn read_messages(&self, conversation_id: &str, bucket: u64, range: SeqRange, order: ReadOrder, limit: usize) -> StoreResult<Vec<MessageRow>>;
        /// Writes the hole unless a row already occupies its conv_seq; returns the rows found there
        /// (empty: the hole was written). Not atomic against a writer of that very seq: a late
        /// writer's row may land beside the hole, and that writer then rewrites under a fresh seq.
        fn insert_hole_if_slot_empty(&self, hole: &MessageRow) -> StoreResult<Vec<MessageRow>>;
        /// The highest conv_seq written for the conversation (0 if none): read once when the
        /// sequencer has lost its state.
        fn last_conv_seq(&self, conversation_id: &str) -> StoreResult<u64>;
        /// The highest `count_seq` written for the conversation (0 if none): read once when
        /// the sequencer has lost its state.
        fn last_count(&self, conversation_id: &str) -> StoreResult<u64>;
        // --- inbox -------------------------------------------------------------------------------
        /// The fan-out step: inbox rows, activity updates and clearing the outbox entry. After a
        /// crash either all of it is visible, or the outbox entry is still there so a re-drive
        /// completes it; a backend that writes in several steps first records the inbox
        /// allocation in the entry, so the re-drive rewrites the same rows.
        fn write_fanout(&self, write: &FanoutWrite) -> StoreResult<()>;
        /// Rows of one `(user_id, bucket)` partition strictly after `after`, ascending.
        fn read_inbox(&self, user_id: &str, bucket: u64, after: InboxPosition, limit: usize) -> StoreResult<Vec<InboxRow>>;
        /// The highest inbox_seq written for the user (0 if none): read once when the sequencer
        /// has lost its state.
        fn last_inbox_seq(&self, user_id: &str) -> StoreResult<u64>;
        /// Every inbox_seq below this was dropped by retention.
        fn inbox_floor(&self, user_id: &str) -> StoreResult<u64>;
        /// Drops one `(user_id, bucket)` partition and raises the floor past it.
        fn drop_inbox_bucket(&self, user_id: &str, bucket: u64, bucket_size: u64) -> StoreResult<()>;
        // --- idempotency ------------------------------------------------------------------------
        /// The record, unless it is older than `ttl_ms` (rows expire by TTL on ScyllaDB).
        fn get_idempotency(&self, sender_id: &str, client_msg_id: &str, now_ms: i64, ttl_ms: i64) -> StoreResult<Option<IdempotencyRow>>;
        // --- outbox -------------------------------------------------------------------------------
        /// The entries of one `(bucket, shard)` partition, by message_id.
        fn list_pending(&self, bucket: u64, shard: u32, limit: usize) -> StoreResult<Vec<PendingFanoutRow>>;
        fn get_pending(&self, key: OutboxKey) -> StoreResult<Option<PendingFanoutRow>>;
        fn delete_pending(&self, key: OutboxKey) -> StoreResult<()>;
        // --- hidden messages (delete for me) ---------------------------------------------------
        /// Hides messages of one conversation from one user (one partition): `(conv_seq,
        /// message_id)` pairs; hiding one again changes nothing.
        fn hide_messages(&self, user_id: &str, conversation_id: &str, messages: &[(u64, u64)]) -> StoreResult<()>;
        /// The `(conv_seq, message_id)` the user hid in the conversation with conv_seq in
        /// `range`, ascending, at most `limit`.
        fn list_hidden(&self, user_id: &str, conversation_id: &str, range: SeqRange, limit: usize) -> StoreResult<Vec<(u64, u64)>>;
        // --- push targets --------------------------------------------------------------------
        /// Registers (or replaces) one device's push target.
        fn put_push_target(&self, row: &PushTargetRow) -> StoreResult<()>;
        /// Removes the device's target if it was registered at or before `registered_at_ms`: a
        /// removal decided on an old registration (its token was refused) keeps a newer one.
        fn delete_push_target(&self, user_id: &str, device_id: &str, registered_at_ms: i64) -> StoreResult<()>;
        /// The user's targets, by device (a user has a few devices).
        fn list_push_targets(&self, user_id: &str) -> StoreResult<Vec<PushTargetRow>>;
        // --- the node ------------------------------------------------------------------------
        /// Answers once the store can serve reads and writes (readiness).
        fn ping(&self) -> StoreResult<()>;
        /// Makes every acknowledged write durable before the node stops (the embedded store
        /// syncs its journal; a cluster's writes are durable when acknowledged).
        fn flush(&self) -> StoreResult<()>;
        }
    };
}
pub(crate) use with_store_methods;

with_store_methods!(backend_trait {
    /// The durable tables behind one trait; see the module docs.
    pub trait Store;
});
