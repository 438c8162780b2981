//! A `Cache` decorator that records the latency and errors of every operation, per backend.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::metrics::timed_decorator;

pub struct MeteredCache {
    inner: Arc<dyn Cache>,
}

impl MeteredCache {
    pub fn wrap(inner: Arc<dyn Cache>) -> Arc<dyn Cache> {
        crate::metrics::register_backend_operations("cache", inner.backend(), Self::OPERATIONS);
        Arc::new(Self { inner })
    }
}

timed_decorator! {
    Cache, MeteredCache, "cache";
        fn allocate(&self, requests: &[SeqRequest], now_ms: i64) -> CacheResult<Vec<Option<u64>>>;
    fn seed(&self, key: &SeqKey, last_value: u64) -> CacheResult<()>;
    fn current(&self, key: &SeqKey) -> CacheResult<Option<u64>>;
    fn claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<Option<u64>>;
            fn epoch(&self) -> CacheResult<u64>;
    fn release_claim(&self, key: &str, value: u64) -> CacheResult<()>;
    fn hot_append(&self, conversation_id: &str, entry: HotEntry, message_id: u64, window: usize, now_ms: i64) -> CacheResult<()>;
    fn hot_heads(&self, conversation_ids: &[String]) -> CacheResult<Vec<Option<HotHead>>>;
    fn hot_read(&self, conversation_id: &str, after_seq: u64, limit: usize) -> CacheResult<Option<HotWindow>>;
    fn active_conversations(&self, before_ms: i64, limit: usize) -> CacheResult<Vec<(String, i64)>>;
    fn verified_seq(&self, conversation_id: &str) -> CacheResult<Option<u64>>;
    fn mark_verified(&self, conversation_id: &str, seq: u64, allocated_at_ms: i64) -> CacheResult<()>;
    fn set_presence(&self, user_id: &str, device_id: &str, node: &str, ttl: Duration) -> CacheResult<()>;
    fn clear_presence(&self, user_id: &str, device_id: &str) -> CacheResult<()>;
    fn presence(&self, user_ids: &[String]) -> CacheResult<Vec<Vec<Presence>>>;
    fn publish(&self, channel: &str, payload: Bytes) -> CacheResult<u64>;
    fn subscribe(&self, channel: &str) -> CacheResult<Subscription>;
}
