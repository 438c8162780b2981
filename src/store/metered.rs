//! A `Store` decorator that records the latency and errors of every operation, per backend.

use std::sync::Arc;

use super::*;
use crate::metrics::timed_decorator;

pub struct MeteredStore {
    inner: Arc<dyn Store>,
}

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        crate::metrics::register_backend_operations("store", inner.backend(), Self::OPERATIONS);
        Arc::new(Self { inner })
    }
}

timed_decorator! {
    Store, MeteredStore, "store";
    fn insert_conversation_if_absent(&self, row: &ConversationRow) -> StoreResult<Option<ConversationRow>>;
    fn get_conversation(&self, conversation_id: &str) -> StoreResult<Option<ConversationRow>>;
        fn set_member_count(&self, conversation_id: &str, member_count: u32) -> StoreResult<()>;
    fn update_conversation_mode(&self, conversation_id: &str, spans: &[ModeSpan], forced: bool, changed_at_ms: i64) -> StoreResult<()>;
    fn raise_user_conversation_mode(&self, user_id: &str, conversation_id: &str, mode: DeliveryMode) -> StoreResult<()>;
    fn insert_hole_if_slot_empty(&self, hole: &MessageRow) -> StoreResult<Vec<MessageRow>>;
    fn add_member(&self, member: &MemberRow, user_row: &UserConversationRow) -> StoreResult<()>;
    fn delete_member(&self, conversation_id: &str, user_id: &str) -> StoreResult<()>;
    fn get_member(&self, conversation_id: &str, user_id: &str) -> StoreResult<Option<MemberRow>>;
    fn list_members(&self, conversation_id: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<MemberRow>>;
    fn count_members(&self, conversation_id: &str) -> StoreResult<u64>;
    fn upsert_user_conversation(&self, row: &UserConversationRow) -> StoreResult<()>;
    fn delete_user_conversation(&self, user_id: &str, conversation_id: &str) -> StoreResult<()>;
    fn get_user_conversation(&self, user_id: &str, conversation_id: &str) -> StoreResult<Option<UserConversationRow>>;
    fn list_user_conversations(&self, user_id: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<UserConversationRow>>;
    fn list_hot_conversations(&self, user_id: &str, limit: usize) -> StoreResult<Vec<UserConversationRow>>;
    fn advance_read_seq(&self, user_id: &str, conversation_id: &str, seq: u64) -> StoreResult<Option<UserConversationRow>>;
    fn write_message(&self, write: &MessageWrite) -> StoreResult<()>;
    fn read_messages(&self, conversation_id: &str, bucket: u64, range: SeqRange, order: ReadOrder, limit: usize) -> StoreResult<Vec<MessageRow>>;
    fn last_conv_seq(&self, conversation_id: &str) -> StoreResult<u64>;
    fn write_fanout(&self, write: &FanoutWrite) -> StoreResult<()>;
    fn read_inbox(&self, user_id: &str, bucket: u64, after: InboxPosition, limit: usize) -> StoreResult<Vec<InboxRow>>;
    fn last_inbox_seq(&self, user_id: &str) -> StoreResult<u64>;
    fn inbox_floor(&self, user_id: &str) -> StoreResult<u64>;
    fn drop_inbox_bucket(&self, user_id: &str, bucket: u64, bucket_size: u64) -> StoreResult<()>;
    fn get_idempotency(&self, sender_id: &str, client_msg_id: &str, now_ms: i64, ttl_ms: i64) -> StoreResult<Option<IdempotencyRow>>;
    fn list_pending(&self, shard: u32, limit: usize) -> StoreResult<Vec<PendingFanoutRow>>;
    fn get_pending(&self, shard: u32, message_id: u64) -> StoreResult<Option<PendingFanoutRow>>;
    fn delete_pending(&self, shard: u32, message_id: u64) -> StoreResult<()>;
}
