//! Fast shared state behind one trait: the sequencer and short-lived keys.
//!
//! `Cache` is Redis-shaped: each method is one atomic Redis operation (or one pipelined round
//! trip). Its state may be lost at any time (restart without persistence, flush): the pipeline
//! re-seeds the sequencer from the `Store` and never relies on the cache for durability.

pub mod local;
pub mod metered;

use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache is unavailable: {0}")]
    Unavailable(String),
    #[error("cache protocol error: {0}")]
    Protocol(String),
}

pub type CacheResult<T> = Result<T, CacheError>;

/// A sequence the sequencer hands out values of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SeqKey {
    /// conv_seq of a conversation.
    Conversation(String),
    /// inbox_seq of a user.
    Inbox(String),
}

/// Allocate `count` consecutive values of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRequest {
    pub key: SeqKey,
    pub count: u64,
}

#[async_trait]
pub trait Cache: Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    /// Allocates every request in one round trip. For each request, the first value of its
    /// range, or `None` when the key has no state (never seeded, or lost): nothing was
    /// allocated for it, and the caller seeds it from the Store before asking again.
    async fn allocate(&self, requests: &[SeqRequest]) -> CacheResult<Vec<Option<u64>>>;
    /// Sets the key's last handed-out value unless it already has one (`SET NX`).
    async fn seed(&self, key: &SeqKey, last_value: u64) -> CacheResult<()>;
    /// The key's last handed-out value, if it has state.
    async fn current(&self, key: &SeqKey) -> CacheResult<Option<u64>>;
    /// `SET key value NX PX ttl`: `None` when this call took the claim, else the value of the
    /// claim already held.
    async fn claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<Option<u64>>;
    /// Changes whenever the sequencer state was lost and rebuilt.
    async fn epoch(&self) -> CacheResult<u64>;
}
