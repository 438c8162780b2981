//! The domain pipeline, written once over the [`Store`] and [`Cache`] traits (README "How it works").
//!
//! It assumes only what ScyllaDB and Redis promise: single-partition atomic writes, clustered
//! range reads, atomic sequence allocation, and a cache whose state can vanish. The embedded
//! backends run exactly this code.

// The operations, each calling only down into the shared parts below.
mod audience;
mod conversation_list;
mod conversations;
mod history;
mod lifecycle;
mod mode;
mod push_targets;
mod send;
mod sync;
// Shared by the operations: delivery, repair, reads, and the leaves under them.
mod claims;
mod cursor;
mod delivery;
mod error;
pub mod ids;
mod limits;
mod listener;
mod reads;
mod repair;
mod sequencer;

#[cfg(test)]
mod property_tests;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use audience::{Audience, MAX_PRESENCE_USERS};
pub use conversation_list::{ConversationView, ListPage, Summary};
pub use conversations::CreateConversation;
pub use cursor::Cursor;
pub use error::{TimelineError, TimelineResult};
pub use history::HistoryPage;
pub use lifecycle::{Changed, EditMessage, MAX_HIDE_PER_CALL};
pub(crate) use limits::Broken;
pub use limits::Limits;
pub use listener::DeliveryListener;
pub use push_targets::{PushPlatform, PushTarget, token_fingerprint};
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

pub struct Timeline {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cache: Arc<dyn Cache>,
    pub(crate) limits: Limits,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: Arc<ids::Snowflake>,
    pub(crate) fanout_rates: mode::RateTracker,
    /// Told of every delivery (push wakes streams with it, offline notifications follow it);
    /// added by the node as it starts.
    listeners: std::sync::RwLock<Vec<Arc<dyn DeliveryListener>>>,
    /// The first outbox bucket this node's recovery has not drained yet (`None` before its
    /// first pass).
    pub(crate) outbox_undrained: std::sync::Mutex<Option<u64>>,
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
            ids: Arc::new(ids::Snowflake::new(limits.node_id)),
            fanout_rates: mode::RateTracker::default(),
            listeners: Default::default(),
            outbox_undrained: std::sync::Mutex::new(None),
            limits,
            clock,
        })
    }

    /// The same pipeline over another Cache (a decorator of this one's): same Store, limits,
    /// clock and message ids, no listener. Push streams read through one that shares reads.
    pub fn reading_through(&self, cache: Arc<dyn Cache>) -> Arc<Self> {
        Arc::new(Self {
            store: self.store.clone(),
            cache,
            ids: self.ids.clone(),
            fanout_rates: mode::RateTracker::default(),
            listeners: Default::default(),
            outbox_undrained: std::sync::Mutex::new(None),
            limits: self.limits.clone(),
            clock: self.clock.clone(),
        })
    }

    /// Adds a listener told of every delivery from now on.
    pub fn add_listener(&self, listener: Arc<dyn DeliveryListener>) {
        self.listeners
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(listener);
    }

    /// Tells every listener.
    pub(crate) fn notify(&self, tell: impl Fn(&dyn DeliveryListener)) {
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for listener in listeners.iter() {
            tell(listener.as_ref());
        }
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
        Ok(self.store.ping().await?)
    }

    /// Makes every acknowledged write durable (on shutdown).
    pub async fn flush_store(&self) -> crate::store::StoreResult<()> {
        self.store.flush().await
    }

    /// Whether the Cache answers. Without it the node still serves reads (from the Store) but
    /// not sends; every node shares the Cache, so readiness does not depend on it.
    pub async fn cache_ready(&self) -> TimelineResult<()> {
        self.cache.epoch().await?;
        Ok(())
    }
}
