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
        Arc::new(Self { inner })
    }
}

timed_decorator! {
    Cache, MeteredCache, "cache";
    fn allocate(&self, requests: &[SeqRequest]) -> CacheResult<Vec<Option<u64>>>;
    fn seed(&self, key: &SeqKey, last_value: u64) -> CacheResult<()>;
    fn current(&self, key: &SeqKey) -> CacheResult<Option<u64>>;
    fn claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<Option<u64>>;
    fn epoch(&self) -> CacheResult<u64>;
}
