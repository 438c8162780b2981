//! Fast shared state behind one trait: the sequencer and short-lived keys.
//!
//! `Cache` is Redis-shaped: each method is one atomic Redis operation (or one pipelined round
//! trip). Its state may be lost at any time (restart without persistence, flush): the pipeline
//! re-seeds the sequencer from the `Store` and never relies on the cache for durability.

pub mod local;
pub mod metered;
pub mod redis;

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::method_list::backend_trait;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache is unavailable: {0}")]
    Unavailable(String),
    #[error("cache protocol error: {0}")]
    Protocol(String),
    /// A conversation's conv_seq allocation is held back while a mode switch publishes its
    /// span; retry shortly.
    #[error("conv_seq allocation is fenced: {0}")]
    Fenced(String),
}

pub type CacheResult<T> = Result<T, CacheError>;

/// A sequence the sequencer hands out values of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SeqKey {
    /// conv_seq of a conversation.
    Conversation(String),
    /// inbox_seq of a user.
    Inbox(String),
    /// How many messages of a conversation count as unread (`MessageRow::count_seq`):
    /// allocated with its conv_seq by `Cache::allocate_message`.
    Count(String),
}

/// One connected device of a user and the node its connection lives on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Presence {
    pub device_id: String,
    pub node: String,
}

/// A user's connected devices and when one of them was last seen connected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPresence {
    /// Sorted by device.
    pub devices: Vec<Presence>,
    /// Milliseconds since the epoch (the Cache's clock) of the last refresh or close of any of
    /// the user's devices; 0 when never seen (or forgotten with the Cache's state).
    pub last_seen_ms: i64,
}

/// What a node's subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSubEvent {
    /// A payload published on a channel this subscriber holds.
    Message { channel: String, payload: Bytes },
    /// The subscriber's connection was lost and is back, with every channel subscribed again:
    /// whatever was published meanwhile is lost (the listener re-syncs).
    Reconnected,
}

/// Adds and drops channels of one subscriber connection.
#[async_trait::async_trait]
pub trait SubscriberControl: Send + Sync + 'static {
    /// Subscribes to `channels` (already held ones are kept); returns once the server
    /// confirmed, so that everything published afterwards is heard.
    async fn subscribe(&self, channels: &[String]) -> CacheResult<()>;
    async fn unsubscribe(&self, channels: &[String]) -> CacheResult<()>;
}

/// One node's subscriber: a single connection that carries every channel it subscribes to.
/// Delivery is at most once: what is published while it reconnects is lost (it then yields
/// [`PubSubEvent::Reconnected`]), so publishers send hints (sync now) and never data that
/// exists nowhere else. Dropping `events` closes the connection.
pub struct Subscriber {
    pub control: std::sync::Arc<dyn SubscriberControl>,
    pub events: BoxStream<'static, PubSubEvent>,
}

impl Subscriber {
    /// A subscriber that hears nothing (what a dropped Cache call hands out).
    pub fn closed() -> Self {
        struct Nothing;
        #[async_trait::async_trait]
        impl SubscriberControl for Nothing {
            async fn subscribe(&self, _: &[String]) -> CacheResult<()> {
                Ok(())
            }
            async fn unsubscribe(&self, _: &[String]) -> CacheResult<()> {
                Ok(())
            }
        }
        Self {
            control: std::sync::Arc::new(Nothing),
            events: Box::pin(futures::stream::pending()),
        }
    }
}

/// Allocate `count` consecutive values of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRequest {
    pub key: SeqKey,
    pub count: u64,
}

/// The newest state of a hot conversation's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotHead {
    /// The highest conv_seq appended.
    pub last_seq: u64,
    pub last_message_id: u64,
    pub last_activity_ms: i64,
    /// The highest `count_seq` appended (a hole's 0 leaves it).
    pub last_count: u64,
}

/// One message of a hot window: its conv_seq and its encoded row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotEntry {
    pub conv_seq: u64,
    pub payload: Bytes,
}

/// Entries of a hot window after some position, and the lowest conv_seq the window holds: a
/// position below it is not covered and must be read from the Store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotWindow {
    pub low_seq: u64,
    pub entries: Vec<HotEntry>,
}

/// The `Cache` methods, written once: the trait below is declared from this list, and so is
/// every decorator (see [`crate::method_list`]). `= value` is what a caller sees when the
/// write is lost (Redis may lose writes: the Store is the truth). `$callback` gets the list
/// after `$prefix`.
macro_rules! with_cache_methods {
    ($callback:ident { $($prefix:tt)* }) => {
        $callback! { $($prefix)*
        /// Allocates every request in one round trip. For each request, the first value of its
        /// range, or `None` when the key has no state (never seeded, or lost): nothing was
        /// allocated for it, and the caller seeds it from the Store before asking again.
        /// Allocating a conv_seq also records the conversation as active at `now_ms` (same round
        /// trip), for the sweeper that fills abandoned seqs.
        fn allocate(&self, requests: &[SeqRequest], now_ms: i64) -> CacheResult<Vec<Option<u64>>> = vec![None; requests.len()];
        /// Allocates the next conv_seq of the conversation and, when `countable`, the next value
        /// of its `SeqKey::Count`, atomically: of two messages, the one with the higher conv_seq
        /// never has the lower count. Returns the conv_seq and the count after it, or `None`
        /// when either key has no state (nothing was allocated). Fenced and recorded as active
        /// like a conversation's `allocate`.
        fn allocate_message(&self, conversation_id: &str, countable: bool, now_ms: i64) -> CacheResult<Option<(u64, u64)>> = None;
        /// Sets the key's last handed-out value unless it already has one (`SET NX`).
        /// Holds back the conversation's conv_seq allocations until `unfence` (or `ttl`), and
        /// returns the last value handed out (`None`: no state; seed it, then fence again).
        /// While fenced, an `allocate` of the conversation fails with `CacheError::Fenced`
        /// (allocate a conversation's seq alone: other keys of the same call may be allocated
        /// regardless). Fails with `Fenced` while another holder has the fence.
        fn fence(&self, conversation_id: &str, holder: u64, ttl: Duration) -> CacheResult<Option<u64>> = None;
        /// Lifts a fence this holder set (another holder's stays).
        fn unfence(&self, conversation_id: &str, holder: u64) -> CacheResult<()> = ();
        fn seed(&self, key: &SeqKey, last_value: u64) -> CacheResult<()> = ();
        /// The key's last handed-out value, if it has state.
        fn current(&self, key: &SeqKey) -> CacheResult<Option<u64>> = None;
        /// `SET key value NX PX ttl`: `None` when this call took the claim, else the value of the
        /// claim already held.
        fn claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<Option<u64>> = None;
        /// Releases a claim this caller holds (`value` must match; another holder's is kept).
        fn release_claim(&self, key: &str, value: u64) -> CacheResult<()> = ();
        /// Makes a claim this caller holds last `ttl` from now; false when it is not held by
        /// `value` (expired, or another's).
        fn extend_claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<bool> = false;
        /// Changes whenever the sequencer state was lost and rebuilt.
        fn epoch(&self) -> CacheResult<u64> = 0;
        /// One step of GCRA (the generic cell rate algorithm) on `key`, by the Cache's clock so
        /// that every node shares the limit: one call per `period` sustained, `burst` at once.
        /// `None` when this call is admitted (and counted), else how long until one would be.
        fn admit_rate(&self, key: &str, period: Duration, burst: u32) -> CacheResult<Option<Duration>> = None;

        /// Atomically adds a message to a hot conversation's window (score = conv_seq), trims the
        /// window to its newest `window` entries, and raises the head (last seq, last activity).
        fn hot_append(&self, conversation_id: &str, entry: HotEntry, message_id: u64, count_seq: u64, window: usize, now_ms: i64) -> CacheResult<()> = ();
        /// The heads of many hot conversations in one round trip (`None`: no window state).
        fn hot_heads(&self, conversation_ids: &[String]) -> CacheResult<Vec<Option<HotHead>>> = vec![None; conversation_ids.len()];
        /// Up to `limit` entries with conv_seq > `after_seq`, ascending (`None`: no window state).
        fn hot_read(&self, conversation_id: &str, after_seq: u64, limit: usize) -> CacheResult<Option<HotWindow>> = None;

        /// Conversations whose last conv_seq allocation happened at or before `before_ms`, with
        /// that time, oldest first.
        fn active_conversations(&self, before_ms: i64, limit: usize) -> CacheResult<Vec<(String, i64)>> = Vec::new();
        /// Up to which conv_seq the sweeper has verified the conversation.
        fn verified_seq(&self, conversation_id: &str) -> CacheResult<Option<u64>> = None;
        /// Records the verified position, and drops the conversation from the active set unless
        /// it allocated again after `allocated_at_ms`.
        fn mark_verified(&self, conversation_id: &str, seq: u64, allocated_at_ms: i64) -> CacheResult<()> = ();

        /// Records that `device_id` of `user_id` is connected to `node`, for `ttl` from now
        /// (connections refresh it before it lapses).
        fn set_presence(&self, user_id: &str, device_id: &str, node: &str, ttl: Duration) -> CacheResult<()> = ();
        /// Forgets a device's connection (it closed) and records it as last seen now.
        fn clear_presence(&self, user_id: &str, device_id: &str) -> CacheResult<()> = ();
        /// The connected devices of each user and their last-seen time, in one round trip.
        fn presence(&self, user_ids: &[String]) -> CacheResult<Vec<UserPresence>> = vec![UserPresence::default(); user_ids.len()];

        /// Sends each payload to the current subscribers of its channel, all in one round trip;
        /// returns how many subscribers received them, summed (nodes, not devices).
        fn publish(&self, messages: &[(String, Bytes)]) -> CacheResult<u64> = 0;
        /// Opens a subscriber: one connection for every channel it will hold. A node opens one.
        fn subscriber(&self) -> CacheResult<Subscriber> = Subscriber::closed();
        }
    };
}
pub(crate) use with_cache_methods;

with_cache_methods!(backend_trait {
    /// Fast shared state behind one trait; see the module docs.
    pub trait Cache;
});

/// One GCRA step at `now` for a key whose theoretical arrival time is `tat` (`None`: unknown):
/// `Ok(new_tat)` admits the call, `Err(wait)` refuses it. The Redis script computes the same.
pub(crate) fn gcra(
    tat: Option<std::time::Instant>,
    now: std::time::Instant,
    period: Duration,
    burst: u32,
) -> Result<std::time::Instant, Duration> {
    let tat = tat.map_or(now, |t| t.max(now));
    let tolerance = period * burst.saturating_sub(1);
    let ahead = tat - now;
    if ahead > tolerance {
        Err(ahead - tolerance)
    } else {
        Ok(tat + period)
    }
}
