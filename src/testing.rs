//! Test-only fault injection: a clock tests move by hand, and `Store` / `Cache` wrappers that
//! fail, drop or delay the n-th operation after a fault is armed.
//!
//! A *crash* between two steps of the send path is an injected error at the operation that
//! would come next: everything before it happened, nothing after it does. A *late write* is
//! applied but returns after the clock moved past `gap_grace`. A *dropped* Cache write reports
//! success without effect (Redis may lose writes; the Store is the truth). A *sequencer reset*
//! loses all Cache state before the operation, as a Redis restart without persistence does.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::cache::local::LocalCache;
use crate::cache::redis::process::RedisProcess;
use crate::cache::*;
use crate::store::*;
use crate::timeline::Clock;

/// Wall-clock time that moves only when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(start_ms)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The operation fails: the caller stops there, as a crashed node would.
    Crash,
    /// A write is applied, but the clock moves this much before it returns.
    Late(Duration),
    /// A Cache write reports success without effect (a Store operation crashes instead).
    Drop,
    /// The Cache loses all its state before the operation.
    ResetCache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Which operation, counting Store and Cache operations together from when it was armed.
    pub at: usize,
    pub kind: FaultKind,
}

/// A Cache backend whose state a test can wipe, as a Redis restart without persistence does.
pub trait LoseState: Send + Sync {
    fn lose_state(&self);
}

impl LoseState for LocalCache {
    fn lose_state(&self) {
        LocalCache::lose_state(self);
    }
}

impl LoseState for RedisProcess {
    fn lose_state(&self) {
        self.flushall().expect("FLUSHALL");
    }
}

/// The fault armed for the operations that follow, shared by both wrappers.
pub struct FaultPlan {
    state: Mutex<(Option<Fault>, usize)>,
    clock: Arc<ManualClock>,
    cache: Arc<dyn LoseState>,
}

enum Verdict {
    Proceed,
    Fail,
    Drop,
}

impl FaultPlan {
    pub fn new(clock: Arc<ManualClock>, cache: Arc<dyn LoseState>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((None, 0)),
            clock,
            cache,
        })
    }

    pub fn arm(&self, fault: Option<Fault>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (fault, 0);
    }

    /// Whether the armed fault fired (it fires once).
    pub fn disarm(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let fired = state.0.is_some_and(|f| state.1 > f.at);
        *state = (None, 0);
        fired
    }

    fn next(&self, is_cache: bool) -> Verdict {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let index = state.1;
        state.1 += 1;
        match state.0 {
            Some(f) if f.at == index => match f.kind {
                FaultKind::Crash => Verdict::Fail,
                FaultKind::Drop if is_cache => Verdict::Drop,
                FaultKind::Drop => Verdict::Fail,
                FaultKind::Late(by) => {
                    self.clock.advance(by);
                    Verdict::Proceed
                }
                FaultKind::ResetCache => {
                    self.cache.lose_state();
                    Verdict::Proceed
                }
            },
            _ => Verdict::Proceed,
        }
    }
}

pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    pub plan: Arc<FaultPlan>,
}

pub struct FaultyCache {
    pub inner: Arc<dyn Cache>,
    pub plan: Arc<FaultPlan>,
}

fn store_crash() -> StoreError {
    StoreError::Unavailable("injected crash".into())
}

fn cache_crash() -> CacheError {
    CacheError::Unavailable("injected crash".into())
}

/// Forwards each listed method to `self.inner` after consulting the plan. `$dropped` is what a
/// dropped call returns.
macro_rules! faulty {
    ($trait:path, $ty:ty, $crash:expr, $is_cache:expr; $( fn $name:ident(&self $(, $arg:ident: $argty:ty)* ) -> $ret:ty = $dropped:expr; )*) => {
        #[async_trait]
        impl $trait for $ty {
            fn backend(&self) -> &'static str {
                self.inner.backend()
            }
            $(
                async fn $name(&self $(, $arg: $argty)*) -> $ret {
                    match self.plan.next($is_cache) {
                        Verdict::Fail => Err($crash),
                        Verdict::Drop => Ok($dropped),
                        Verdict::Proceed => self.inner.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

faulty! {
    Store, FaultyStore, store_crash(), false;
    fn insert_conversation_if_absent(&self, row: &ConversationRow) -> StoreResult<Option<ConversationRow>> = None;
    fn get_conversation(&self, conversation_id: &str) -> StoreResult<Option<ConversationRow>> = None;
    fn set_member_count(&self, conversation_id: &str, member_count: u32) -> StoreResult<()> = ();
    fn update_conversation_mode(&self, conversation_id: &str, spans: &[ModeSpan], forced: bool, changed_at_ms: i64) -> StoreResult<()> = ();
    fn add_member(&self, member: &MemberRow, user_row: &UserConversationRow) -> StoreResult<()> = ();
    fn delete_member(&self, conversation_id: &str, user_id: &str) -> StoreResult<()> = ();
    fn get_member(&self, conversation_id: &str, user_id: &str) -> StoreResult<Option<MemberRow>> = None;
    fn list_members(&self, conversation_id: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<MemberRow>> = Vec::new();
    fn count_members(&self, conversation_id: &str) -> StoreResult<u64> = 0;
    fn upsert_user_conversation(&self, row: &UserConversationRow) -> StoreResult<()> = ();
    fn raise_user_conversation_mode(&self, user_id: &str, conversation_id: &str, mode: DeliveryMode) -> StoreResult<()> = ();
    fn delete_user_conversation(&self, user_id: &str, conversation_id: &str) -> StoreResult<()> = ();
    fn get_user_conversation(&self, user_id: &str, conversation_id: &str) -> StoreResult<Option<UserConversationRow>> = None;
    fn list_user_conversations(&self, user_id: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<UserConversationRow>> = Vec::new();
    fn list_hot_conversations(&self, user_id: &str, limit: usize) -> StoreResult<Vec<UserConversationRow>> = Vec::new();
    fn advance_read_seq(&self, user_id: &str, conversation_id: &str, seq: u64) -> StoreResult<Option<UserConversationRow>> = None;
    fn write_message(&self, write: &MessageWrite) -> StoreResult<()> = ();
    fn read_messages(&self, conversation_id: &str, bucket: u64, range: SeqRange, order: ReadOrder, limit: usize) -> StoreResult<Vec<MessageRow>> = Vec::new();
    fn insert_hole_if_slot_empty(&self, hole: &MessageRow) -> StoreResult<Vec<MessageRow>> = Vec::new();
    fn last_conv_seq(&self, conversation_id: &str) -> StoreResult<u64> = 0;
    fn write_fanout(&self, write: &FanoutWrite) -> StoreResult<()> = ();
    fn read_inbox(&self, user_id: &str, bucket: u64, after: InboxPosition, limit: usize) -> StoreResult<Vec<InboxRow>> = Vec::new();
    fn last_inbox_seq(&self, user_id: &str) -> StoreResult<u64> = 0;
    fn inbox_floor(&self, user_id: &str) -> StoreResult<u64> = 0;
    fn drop_inbox_bucket(&self, user_id: &str, bucket: u64, bucket_size: u64) -> StoreResult<()> = ();
    fn get_idempotency(&self, sender_id: &str, client_msg_id: &str, now_ms: i64, ttl_ms: i64) -> StoreResult<Option<IdempotencyRow>> = None;
    fn list_pending(&self, shard: u32, limit: usize) -> StoreResult<Vec<PendingFanoutRow>> = Vec::new();
    fn get_pending(&self, shard: u32, message_id: u64) -> StoreResult<Option<PendingFanoutRow>> = None;
    fn delete_pending(&self, shard: u32, message_id: u64) -> StoreResult<()> = ();
}

faulty! {
    Cache, FaultyCache, cache_crash(), true;
    fn allocate(&self, requests: &[SeqRequest], now_ms: i64) -> CacheResult<Vec<Option<u64>>> = vec![None; requests.len()];
    fn seed(&self, key: &SeqKey, last_value: u64) -> CacheResult<()> = ();
    fn current(&self, key: &SeqKey) -> CacheResult<Option<u64>> = None;
    fn claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<Option<u64>> = None;
    fn release_claim(&self, key: &str, value: u64) -> CacheResult<()> = ();
    fn epoch(&self) -> CacheResult<u64> = 0;
    fn hot_append(&self, conversation_id: &str, entry: HotEntry, message_id: u64, window: usize, now_ms: i64) -> CacheResult<()> = ();
    fn hot_heads(&self, conversation_ids: &[String]) -> CacheResult<Vec<Option<HotHead>>> = vec![None; conversation_ids.len()];
    fn hot_read(&self, conversation_id: &str, after_seq: u64, limit: usize) -> CacheResult<Option<HotWindow>> = None;
    fn active_conversations(&self, before_ms: i64, limit: usize) -> CacheResult<Vec<(String, i64)>> = Vec::new();
    fn verified_seq(&self, conversation_id: &str) -> CacheResult<Option<u64>> = None;
    fn mark_verified(&self, conversation_id: &str, seq: u64, allocated_at_ms: i64) -> CacheResult<()> = ();
    fn set_presence(&self, user_id: &str, device_id: &str, node: &str, ttl: Duration) -> CacheResult<()> = ();
    fn clear_presence(&self, user_id: &str, device_id: &str) -> CacheResult<()> = ();
    fn presence(&self, user_ids: &[String]) -> CacheResult<Vec<Vec<Presence>>> = vec![Vec::new(); user_ids.len()];
    fn publish(&self, channel: &str, payload: bytes::Bytes) -> CacheResult<u64> = 0;
    fn subscribe(&self, channel: &str) -> CacheResult<Subscription> = Box::pin(futures::stream::empty());
}
