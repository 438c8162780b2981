//! Test-only fault injection: a clock tests move by hand, and `Store` / `Cache` wrappers that
//! fail, drop or delay the n-th operation after a fault is armed.
//!
//! A *crash* between two steps of the send path is an injected error at the operation that
//! would come next: everything before it happened, nothing after it does. A *late write* is
//! applied but returns after the clock moved past `gap_grace`. A *dropped* Cache write reports
//! success without effect (Redis may lose writes; the Store is the truth). A *sequencer reset*
//! loses all Cache state before the operation, as a Redis restart without persistence does.
//! An *interleaving* runs other work (a send, a sync) just before the operation, as a
//! concurrent request would: every point of a call can be explored deterministically.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::redis_server::RedisProcess;
use crate::cache::local::LocalCache;
use bytes::Bytes;

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
    /// The operation takes effect but its caller sees it fail, as when a reply is lost to a
    /// timeout (a paused Redis runs the queued command when it resumes; a timed-out ScyllaDB
    /// write may still be applied).
    Lost,
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

/// Work an interleaving runs in the middle of another call.
pub type Interleaved = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// The fault armed for the operations that follow, shared by both wrappers.
pub struct FaultPlan {
    state: Mutex<(Option<Fault>, usize)>,
    /// Run before operation `.0` (counted like faults), once.
    interleaved: Mutex<Option<(usize, Interleaved)>>,
    /// The next call of this method fails without effect, once (see `crash_next`).
    crash_next: Mutex<Option<&'static str>>,
    clock: Arc<ManualClock>,
    cache: Arc<dyn LoseState>,
}

enum Verdict {
    Proceed,
    Fail,
    Drop,
    Lost,
}

impl FaultPlan {
    pub fn new(clock: Arc<ManualClock>, cache: Arc<dyn LoseState>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((None, 0)),
            interleaved: Mutex::new(None),
            crash_next: Mutex::new(None),
            clock,
            cache,
        })
    }

    pub fn arm(&self, fault: Option<Fault>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (fault, 0);
    }

    /// Runs `work` just before the `at`-th operation from now (counted with faults; the
    /// operations of `work` itself count too, and nothing fires inside it twice).
    pub fn interleave(&self, at: usize, work: Interleaved) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (None, 0);
        *self.interleaved.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, work));
    }

    /// Makes the next call of the Store or Cache method `method` (e.g. "write_message") fail
    /// without effect, whichever operation it is.
    pub fn crash_next(&self, method: &'static str) {
        *self.crash_next.lock().unwrap_or_else(|p| p.into_inner()) = Some(method);
    }

    /// Whether this call of `method` is the one `crash_next` named (it fires once).
    fn crashes(&self, method: &str) -> bool {
        let mut slot = self.crash_next.lock().unwrap_or_else(|p| p.into_inner());
        if *slot == Some(method) {
            *slot = None;
            true
        } else {
            false
        }
    }

    /// The interleaved work due before the operation about to run, if any.
    fn due(&self) -> Option<Interleaved> {
        let index = self.state.lock().unwrap_or_else(|p| p.into_inner()).1;
        let mut slot = self.interleaved.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some((at, _)) if *at == index => slot.take().map(|(_, work)| work),
            _ => None,
        }
    }

    /// Whether the armed fault fired (it fires once).
    pub fn disarm(&self) -> bool {
        *self.interleaved.lock().unwrap_or_else(|p| p.into_inner()) = None;
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
                FaultKind::Lost => Verdict::Lost,
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

/// What a dropped call returns: its listed value, or (a Store call, whose drop is a crash)
/// the crash.
macro_rules! dropped_or_crash {
    ($crash:expr;) => {
        Err($crash)
    };
    ($crash:expr; $dropped:expr) => {
        Ok($dropped)
    };
}

/// Forwards each listed method to `self.inner` after consulting the plan.
macro_rules! faulty {
    ($trait:path, $ty:ty, $crash:expr, $is_cache:expr; $( $(#[$attr:meta])* fn $name:ident(&self $(, $arg:ident: $argty:ty)* ) -> $ret:ty $(= $dropped:expr)?; )*) => {
        #[async_trait]
        impl $trait for $ty {
            fn backend(&self) -> &'static str {
                self.inner.backend()
            }
            $(
                async fn $name(&self $(, $arg: $argty)*) -> $ret {
                    if let Some(work) = self.plan.due() {
                        work().await;
                    }
                    if self.plan.crashes(stringify!($name)) {
                        return Err($crash);
                    }
                    match self.plan.next($is_cache) {
                        Verdict::Fail => Err($crash),
                        Verdict::Drop => dropped_or_crash!($crash; $($dropped)?),
                        Verdict::Proceed => self.inner.$name($($arg),*).await,
                        Verdict::Lost => {
                            let _applied = self.inner.$name($($arg),*).await;
                            Err($crash)
                        }
                    }
                }
            )*
        }
    };
}

with_store_methods!(faulty { Store, FaultyStore, store_crash(), false; });
with_cache_methods!(faulty { Cache, FaultyCache, cache_crash(), true; });
