//! The domain pipeline, written once over the [`Store`] and [`Cache`] traits (DESIGN §5–§6).
//!
//! It assumes only what ScyllaDB and Redis promise: single-partition atomic writes, clustered
//! range reads, atomic sequence allocation, and a cache whose state can vanish. The embedded
//! backends run exactly this code.

// The operations, each calling only down into the shared parts below.
mod conversation_list;
mod conversations;
mod history;
mod mode;
mod send;
mod sync;
// Shared by the operations: delivery, repair, reads, and the leaves under them.
mod cursor;
mod delivery;
mod error;
pub mod ids;
mod reads;
mod repair;
mod sequencer;

#[cfg(test)]
mod property_tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use conversation_list::{ConversationView, ListPage, Summary};
pub use conversations::CreateConversation;
pub use cursor::Cursor;
pub use error::{TimelineError, TimelineResult};
pub use history::HistoryPage;
pub use send::SendMessage;
pub use sync::SyncPage;

use crate::cache::Cache;
use crate::store::Store;

/// The authenticated caller, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub device_id: String,
    /// An operator (token minted with `--admin`): may force delivery modes.
    pub admin: bool,
}

/// Wall-clock milliseconds; a trait so that tests can move time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// The limits and timings of the pipeline (from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct Limits {
    pub node_id: u16,
    pub bucket_size: u64,
    pub max_body_bytes: usize,
    pub sync_default_limit: u32,
    pub sync_max_limit: u32,
    pub history_default_limit: u32,
    pub history_max_limit: u32,
    pub list_default_limit: u32,
    pub list_max_limit: u32,
    pub max_group_members: u32,
    pub max_members_per_call: usize,
    pub max_conversations_per_user: usize,
    pub inbox_retention: Duration,
    pub inbox_max_rows: u64,
    pub gap_grace: Duration,
    pub idempotency_ttl: Duration,
    /// How long a send holds its client_msg_id claim before a retry may take over.
    pub send_claim_lease: Duration,
    /// Outbox entries older than this are re-driven by the recovery loop.
    pub recovery_age: Duration,
    /// A conversation with this many members is hot.
    pub hot_threshold: u32,
    /// A conversation fanning out more inbox rows per second than this is hot.
    pub hot_fanout_rows_per_sec: u64,
    /// Least time between two automatic mode switches of a conversation.
    pub mode_min_dwell: Duration,
    /// Messages kept in a hot conversation's Cache window.
    pub hot_window: usize,
    /// How long a send whose client_msg_id another request holds waits for that one's result.
    pub send_claim_wait: Duration,
    /// A deliberately broken pipeline, to prove the property test catches it.
    #[cfg(test)]
    pub(crate) broken: Option<Broken>,
}

/// Deliberately broken variants of the pipeline: only tests construct them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Broken {
    /// The Sync merge does not deduplicate by message_id.
    MergeWithoutDedupe,
    /// Abandoned conv_seqs are skipped instead of filled with holes.
    GapsSkippedNotFilled,
    /// Sends write no outbox entry, so an interrupted fan-out is never re-driven.
    SendWithoutOutbox,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            node_id: 0,
            bucket_size: 4096,
            max_body_bytes: 64 * 1024,
            sync_default_limit: 100,
            sync_max_limit: 500,
            history_default_limit: 50,
            history_max_limit: 200,
            list_default_limit: 50,
            list_max_limit: 200,
            max_group_members: 100_000,
            max_members_per_call: 1000,
            max_conversations_per_user: 10_000,
            inbox_retention: Duration::from_secs(14 * 24 * 3600),
            inbox_max_rows: 10_000,
            gap_grace: Duration::from_secs(3),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            send_claim_lease: Duration::from_secs(30),
            recovery_age: Duration::from_secs(5),
            hot_threshold: 500,
            hot_fanout_rows_per_sec: 20_000,
            mode_min_dwell: Duration::from_secs(60),
            hot_window: 1000,
            send_claim_wait: Duration::from_secs(2),
            #[cfg(test)]
            broken: None,
        }
    }
}

pub struct Timeline {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cache: Arc<dyn Cache>,
    pub(crate) limits: Limits,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: ids::Snowflake,
    pub(crate) fanout_rates: mode::RateTracker,
}

impl Timeline {
    pub fn new(
        store: Arc<dyn Store>,
        cache: Arc<dyn Cache>,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            cache,
            ids: ids::Snowflake::new(limits.node_id),
            fanout_rates: mode::RateTracker::default(),
            limits,
            clock,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    #[cfg(test)]
    pub(crate) fn broken(&self, variant: Broken) -> bool {
        self.limits.broken == Some(variant)
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn broken(&self, _: Broken) -> bool {
        false
    }
}

impl Timeline {
    /// Succeeds when the store answers a read (readiness probe).
    pub async fn store_ready(&self) -> TimelineResult<()> {
        self.store.get_conversation("g:readiness-probe").await?;
        Ok(())
    }

    /// Whether the Cache answers. Without it the node still serves reads (from the Store) but
    /// not sends; every node shares the Cache, so readiness does not depend on it.
    pub async fn cache_ready(&self) -> TimelineResult<()> {
        self.cache.epoch().await?;
        Ok(())
    }
}
