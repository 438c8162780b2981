//! Request coalescing for the node's push streams: one read of a hot conversation per node,
//! not one per stream.
//!
//! When a hot group's message wakes ten thousand streams on a node, each of them runs Sync, and
//! each Sync would ask the Cache for the same things: the epoch, the hot heads, the
//! conversation's sequencer value, the window's new entries. `CoalescedReads` wraps the node's
//! Cache for the streams' Syncs only: those four reads are shared — concurrent identical reads
//! are one call, and a result is reused until a hint says it changed:
//!
//! - a hint on `c:<conversation>` drops what was read of that conversation;
//! - a hint on `u:<user>` drops that user's inbox head;
//! - a new subscription drops what was read of its conversations before it was confirmed
//!   (a hint published before it was missed);
//! - a pub/sub reconnect (hints lost) drops everything;
//! - a stream's heartbeat drops its user's inbox head (a hint the publisher dropped is caught
//!   there, as without sharing);
//! - nothing is reused longer than its age: a conversation's reads for the hot interval (one
//!   read per conversation per interval at most), the user's inbox head and the epoch for a
//!   heartbeat interval (they change only with a hint or with the Cache's state).
//!
//! A reused result is never newer than the truth, only older, and Sync treats an old head, bound
//! or window like one read a moment earlier: it delivers less now, never wrongly. Writes and
//! every other read go straight to the inner Cache.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::cache::*;

/// A shared read: its error as text (CacheError is not Clone; every read error is a transient
/// unavailability to the caller).
type Read<T> = Shared<BoxFuture<'static, Result<T, String>>>;

/// What a memoized read belongs to: invalidations drop a whole scope.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Scope {
    Node,
    Conversation(String),
    User(String),
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Epoch,
    Current(SeqKey),
    Head(String),
    Window { after: u64, limit: usize },
}

#[derive(Clone)]
enum Value {
    Epoch(Read<u64>),
    Current(Read<Option<u64>>),
    Head(Read<Option<HotHead>>),
    Window(Read<Option<HotWindow>>),
}

struct Memo {
    at: Instant,
    /// Identifies this read, so that a failed one is dropped without dropping a newer one.
    id: u64,
    value: Value,
}

#[derive(Default)]
struct Memos {
    scopes: HashMap<Scope, HashMap<Key, Memo>>,
    count: usize,
    next_id: u64,
}

/// Past this many memos, expired ones are pruned before adding more.
const PRUNE_AT: usize = 100_000;

pub struct CoalescedReads {
    inner: Arc<dyn Cache>,
    /// How long a conversation's reads are reused.
    conversation_age: Duration,
    /// How long the epoch and users' inbox heads are reused.
    node_age: Duration,
    memos: Mutex<Memos>,
}

fn lock(memos: &Mutex<Memos>) -> std::sync::MutexGuard<'_, Memos> {
    memos.lock().unwrap_or_else(|p| p.into_inner())
}

fn shared<T: Clone + Send + Sync + 'static>(
    read: impl Future<Output = CacheResult<T>> + Send + 'static,
) -> Read<T> {
    read.map(|r| r.map_err(|e| e.to_string())).boxed().shared()
}

fn unavailable(e: String) -> CacheError {
    CacheError::Unavailable(e)
}

impl CoalescedReads {
    pub fn wrap(
        inner: Arc<dyn Cache>,
        conversation_age: Duration,
        node_age: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner,
            conversation_age,
            node_age,
            memos: Mutex::default(),
        })
    }

    /// Something changed in the conversation (a hint on its channel, a new subscription).
    pub fn conversation_changed(&self, conversation_id: &str) {
        self.drop_scope(&Scope::Conversation(conversation_id.to_owned()));
    }

    /// Something was delivered to the user's inbox.
    pub fn user_changed(&self, user_id: &str) {
        self.drop_scope(&Scope::User(user_id.to_owned()));
    }

    /// Hints were lost: nothing read so far is trusted.
    pub fn forget_all(&self) {
        let mut memos = lock(&self.memos);
        memos.scopes.clear();
        memos.count = 0;
    }

    fn drop_scope(&self, scope: &Scope) {
        let mut memos = lock(&self.memos);
        if let Some(dropped) = memos.scopes.remove(scope) {
            memos.count -= dropped.len();
        }
    }

    /// The fresh memo of `key`, or a new one made by `make` (not awaited under the lock).
    fn memo(&self, scope: Scope, key: Key, make: impl FnOnce() -> Value) -> (u64, Value) {
        let mut memos = lock(&self.memos);
        if let Some(found) = self.fresh(&memos, &scope, &key) {
            return found;
        }
        let value = make();
        (self.insert(&mut memos, scope, key, value.clone()), value)
    }

    fn max_age(&self, scope: &Scope) -> Duration {
        match scope {
            Scope::Conversation(_) => self.conversation_age,
            Scope::Node | Scope::User(_) => self.node_age,
        }
    }

    fn fresh(&self, memos: &Memos, scope: &Scope, key: &Key) -> Option<(u64, Value)> {
        let max_age = self.max_age(scope);
        memos
            .scopes
            .get(scope)
            .and_then(|s| s.get(key))
            .filter(|memo| memo.at.elapsed() < max_age)
            .map(|memo| (memo.id, memo.value.clone()))
    }

    fn insert(&self, memos: &mut Memos, scope: Scope, key: Key, value: Value) -> u64 {
        let now = Instant::now();
        if memos.count >= PRUNE_AT {
            for (scope, memos) in memos.scopes.iter_mut() {
                let max_age = self.max_age(scope);
                memos.retain(|_, m| now.duration_since(m.at) < max_age);
            }
            memos.scopes.retain(|_, m| !m.is_empty());
            memos.count = memos.scopes.values().map(HashMap::len).sum();
        }
        memos.next_id += 1;
        let id = memos.next_id;
        let replaced = memos
            .scopes
            .entry(scope)
            .or_default()
            .insert(key, Memo { at: now, id, value });
        if replaced.is_none() {
            memos.count += 1;
        }
        id
    }

    /// Drops memo `id` of `key` (it failed, or holds what must not be reused).
    fn discard(&self, scope: &Scope, key: &Key, id: u64) {
        let mut memos = lock(&self.memos);
        let removed = memos
            .scopes
            .get_mut(scope)
            .is_some_and(|s| s.get(key).is_some_and(|m| m.id == id) && s.remove(key).is_some());
        if removed {
            memos.count -= 1;
        }
    }

    async fn epoch(&self) -> CacheResult<u64> {
        let inner = self.inner.clone();
        let (id, value) = self.memo(Scope::Node, Key::Epoch, || {
            Value::Epoch(shared(async move { inner.epoch().await }))
        });
        let Value::Epoch(read) = value else {
            unreachable!("an epoch memo holds an epoch read")
        };
        let result = read.await;
        if result.is_err() {
            self.discard(&Scope::Node, &Key::Epoch, id);
        }
        result.map_err(unavailable)
    }

    async fn current(&self, key: &SeqKey) -> CacheResult<Option<u64>> {
        let scope = match key {
            SeqKey::Conversation(c) | SeqKey::Count(c) => Scope::Conversation(c.clone()),
            SeqKey::Inbox(u) => Scope::User(u.clone()),
        };
        let memo_key = Key::Current(key.clone());
        let (inner, owned) = (self.inner.clone(), key.clone());
        let (id, value) = self.memo(scope.clone(), memo_key.clone(), || {
            Value::Current(shared(async move { inner.current(&owned).await }))
        });
        let Value::Current(read) = value else {
            unreachable!("a sequencer memo holds a sequencer read")
        };
        let result = read.await;
        // No state: the caller seeds it and asks again, and must then see the seeded value.
        if !matches!(result, Ok(Some(_))) {
            self.discard(&scope, &memo_key, id);
        }
        result.map_err(unavailable)
    }

    async fn hot_heads(&self, conversation_ids: &[String]) -> CacheResult<Vec<Option<HotHead>>> {
        // Under one lock: the heads not memoized are read in one call, shared by their memos.
        let reads = {
            let mut memos = lock(&self.memos);
            let mut reads = Vec::with_capacity(conversation_ids.len());
            let mut missing = Vec::new();
            for (i, id) in conversation_ids.iter().enumerate() {
                let scope = Scope::Conversation(id.clone());
                match self.fresh(&memos, &scope, &Key::Head(id.clone())) {
                    Some((memo_id, Value::Head(read))) => reads.push(Some((memo_id, read))),
                    _ => {
                        missing.push((i, id.clone()));
                        reads.push(None);
                    }
                }
            }
            if !missing.is_empty() {
                let inner = self.inner.clone();
                let ids: Vec<String> = missing.iter().map(|(_, id)| id.clone()).collect();
                let batch = shared(async move { inner.hot_heads(&ids).await });
                for (n, (i, id)) in missing.into_iter().enumerate() {
                    let of_batch = batch.clone();
                    let head: Read<Option<HotHead>> =
                        async move { of_batch.await.map(|heads| heads.get(n).copied().flatten()) }
                            .boxed()
                            .shared();
                    let scope = Scope::Conversation(id.clone());
                    let memo_id =
                        self.insert(&mut memos, scope, Key::Head(id), Value::Head(head.clone()));
                    reads[i] = Some((memo_id, head));
                }
            }
            reads
        };
        let mut heads = Vec::with_capacity(reads.len());
        for (id, read) in conversation_ids.iter().zip(reads) {
            let Some((memo_id, read)) = read else {
                unreachable!("every id has a read")
            };
            let result = read.await;
            if result.is_err() {
                self.discard(
                    &Scope::Conversation(id.clone()),
                    &Key::Head(id.clone()),
                    memo_id,
                );
            }
            heads.push(result.map_err(unavailable)?);
        }
        Ok(heads)
    }

    async fn hot_read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> CacheResult<Option<HotWindow>> {
        let scope = Scope::Conversation(conversation_id.to_owned());
        let key = Key::Window {
            after: after_seq,
            limit,
        };
        let (inner, id) = (self.inner.clone(), conversation_id.to_owned());
        let (memo_id, value) = self.memo(scope.clone(), key.clone(), || {
            Value::Window(shared(async move {
                inner.hot_read(&id, after_seq, limit).await
            }))
        });
        let Value::Window(read) = value else {
            unreachable!("a window memo holds a window read")
        };
        let result = read.await;
        if result.is_err() {
            self.discard(&scope, &key, memo_id);
        }
        result.map_err(unavailable)
    }
}

/// The four coalesced reads; every other method goes to the inner Cache.
macro_rules! coalesce_or_forward {
    ($self:ident, epoch, ()) => {
        CoalescedReads::epoch($self).await
    };
    ($self:ident, current, ($key:ident)) => {
        CoalescedReads::current($self, $key).await
    };
    ($self:ident, hot_heads, ($ids:ident)) => {
        CoalescedReads::hot_heads($self, $ids).await
    };
    ($self:ident, hot_read, ($id:ident, $after:ident, $limit:ident)) => {
        CoalescedReads::hot_read($self, $id, $after, $limit).await
    };
    ($self:ident, $name:ident, ($($arg:ident),*)) => {
        $self.inner.$name($($arg),*).await
    };
}

macro_rules! coalescing_decorator {
    ($( $(#[$attr:meta])* fn $name:ident(&self $(, $arg:ident: $argty:ty)* ) -> $ret:ty $(= $dropped:expr)?; )*) => {
        #[async_trait::async_trait]
        impl Cache for CoalescedReads {
            fn backend(&self) -> &'static str {
                self.inner.backend()
            }
            $(
                async fn $name(&self $(, $arg: $argty)*) -> $ret {
                    coalesce_or_forward!(self, $name, ($($arg),*))
                }
            )*
        }
    };
}

with_cache_methods!(coalescing_decorator {});

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::cache::local::LocalCache;

    /// Counts the hot reads that reach the inner Cache.
    struct Counting {
        inner: Arc<dyn Cache>,
        heads: AtomicUsize,
        windows: AtomicUsize,
    }

    macro_rules! count_or_forward {
        ($self:ident, hot_heads, ($ids:ident)) => {{
            $self.heads.fetch_add(1, Ordering::Relaxed);
            $self.inner.hot_heads($ids).await
        }};
        ($self:ident, hot_read, ($id:ident, $after:ident, $limit:ident)) => {{
            $self.windows.fetch_add(1, Ordering::Relaxed);
            $self.inner.hot_read($id, $after, $limit).await
        }};
        ($self:ident, $name:ident, ($($arg:ident),*)) => {
            $self.inner.$name($($arg),*).await
        };
    }

    macro_rules! counting_decorator {
        ($( $(#[$attr:meta])* fn $name:ident(&self $(, $arg:ident: $argty:ty)* ) -> $ret:ty $(= $dropped:expr)?; )*) => {
            #[async_trait::async_trait]
            impl Cache for Counting {
                fn backend(&self) -> &'static str {
                    "counting"
                }
                $(
                    async fn $name(&self $(, $arg: $argty)*) -> $ret {
                        count_or_forward!(self, $name, ($($arg),*))
                    }
                )*
            }
        };
    }

    with_cache_methods!(counting_decorator {});

    fn counting() -> (Arc<Counting>, Arc<CoalescedReads>) {
        let counting = Arc::new(Counting {
            inner: Arc::new(LocalCache::new()),
            heads: AtomicUsize::new(0),
            windows: AtomicUsize::new(0),
        });
        let reads = CoalescedReads::wrap(
            counting.clone(),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        (counting, reads)
    }

    async fn append(cache: &dyn Cache, id: &str, seq: u64) {
        cache
            .hot_append(
                id,
                HotEntry {
                    conv_seq: seq,
                    payload: bytes::Bytes::from(format!("m{seq}")),
                },
                seq,
                seq,
                100,
                0,
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn reads_are_reused_until_a_hint_says_the_conversation_changed() {
        let (inner, reads) = counting();
        append(inner.as_ref(), "g:a", 1).await;
        let ids = vec!["g:a".to_owned(), "g:b".to_owned()];
        let heads = reads.hot_heads(&ids).await.unwrap();
        assert_eq!(heads[0].map(|h| h.last_seq), Some(1));
        assert_eq!(heads[1], None);
        let window = reads.hot_read("g:a", 0, 10).await.unwrap().unwrap();
        assert_eq!(window.entries.len(), 1);

        // A new entry without a hint: the memos stand (Sync would deliver it a moment later).
        append(inner.as_ref(), "g:a", 2).await;
        assert_eq!(reads.hot_heads(&ids).await.unwrap()[0].unwrap().last_seq, 1);
        assert_eq!(
            reads
                .hot_read("g:a", 0, 10)
                .await
                .unwrap()
                .unwrap()
                .entries
                .len(),
            1
        );
        assert_eq!(inner.heads.load(Ordering::Relaxed), 1);
        // The hint: read again, only what changed.
        reads.conversation_changed("g:a");
        assert_eq!(reads.hot_heads(&ids).await.unwrap()[0].unwrap().last_seq, 2);
        assert_eq!(
            reads
                .hot_read("g:a", 0, 10)
                .await
                .unwrap()
                .unwrap()
                .entries
                .len(),
            2
        );
        assert_eq!(inner.heads.load(Ordering::Relaxed), 2);
        assert_eq!(inner.windows.load(Ordering::Relaxed), 2);

        // A sequencer value without state is not reused: the caller seeds and asks again.
        let key = SeqKey::Inbox("bob".into());
        assert_eq!(reads.current(&key).await.unwrap(), None);
        reads.seed(&key, 7).await.unwrap();
        assert_eq!(reads.current(&key).await.unwrap(), Some(7));
        let next = SeqRequest {
            key: key.clone(),
            count: 1,
        };
        inner.allocate(&[next], 0).await.unwrap();
        assert_eq!(reads.current(&key).await.unwrap(), Some(7), "reused");
        reads.user_changed("bob");
        assert_eq!(reads.current(&key).await.unwrap(), Some(8));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_identical_reads_are_one_call() {
        let (inner, reads) = counting();
        append(inner.as_ref(), "g:herd", 1).await;
        let herd: Vec<_> = (0..1000)
            .map(|_| {
                let reads = reads.clone();
                tokio::spawn(async move {
                    let ids = vec!["g:herd".to_owned(), "g:other".to_owned()];
                    let heads = reads.hot_heads(&ids).await.unwrap();
                    let window = reads.hot_read("g:herd", 0, 16).await.unwrap();
                    (
                        heads[0].map(|h| h.last_seq),
                        window.map(|w| w.entries.len()),
                    )
                })
            })
            .collect();
        for task in herd {
            assert_eq!(task.await.unwrap(), (Some(1), Some(1)));
        }
        assert_eq!(inner.heads.load(Ordering::Relaxed), 1);
        assert_eq!(inner.windows.load(Ordering::Relaxed), 1);
        reads.forget_all();
        reads.hot_read("g:herd", 0, 16).await.unwrap();
        assert_eq!(inner.windows.load(Ordering::Relaxed), 2);
    }
}
