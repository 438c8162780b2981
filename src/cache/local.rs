//! The in-process `Cache`: the default for one node. Its state dies with the process, which the
//! pipeline handles exactly like a Redis restart without persistence.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::*;

/// Payloads a slow local subscriber may have unread before newer ones are dropped.
const CHANNEL_CAPACITY: usize = 4096;

pub struct LocalCache {
    state: Mutex<State>,
    /// Subscribers are connections, not state: they survive `lose_state`.
    pubsub: Arc<Mutex<PubSub>>,
}

/// The in-process pub/sub: subscribers by id, and the channels each holds.
#[derive(Default)]
struct PubSub {
    next_id: u64,
    subscribers: HashMap<u64, mpsc::Sender<PubSubEvent>>,
    channels: HashMap<String, HashSet<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every operation leaves the maps consistent before it can panic (single inserts and
    // lookups), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One local subscriber's channels.
struct LocalControl {
    pubsub: Arc<Mutex<PubSub>>,
    id: u64,
}

#[async_trait]
impl SubscriberControl for LocalControl {
    async fn subscribe(&self, channels: &[String]) -> CacheResult<()> {
        let mut pubsub = lock(&self.pubsub);
        for channel in channels {
            pubsub
                .channels
                .entry(channel.clone())
                .or_default()
                .insert(self.id);
        }
        Ok(())
    }

    async fn unsubscribe(&self, channels: &[String]) -> CacheResult<()> {
        let mut pubsub = lock(&self.pubsub);
        for channel in channels {
            if let Some(ids) = pubsub.channels.get_mut(channel) {
                ids.remove(&self.id);
                if ids.is_empty() {
                    pubsub.channels.remove(channel);
                }
            }
        }
        Ok(())
    }
}

/// Drops a subscriber's channels when its event stream is dropped.
struct Unsubscribe(Arc<Mutex<PubSub>>, u64);

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let mut pubsub = lock(&self.0);
        pubsub.subscribers.remove(&self.1);
        pubsub.channels.retain(|_, ids| {
            ids.remove(&self.1);
            !ids.is_empty()
        });
    }
}

#[derive(Default)]
struct State {
    epoch: u64,
    seqs: HashMap<SeqKey, u64>,
    claims: HashMap<String, (u64, Instant)>,
    /// Fenced conversations: holder and expiry.
    fences: HashMap<String, (u64, Instant)>,
    claims_since_sweep: usize,
    /// Rate keys -> GCRA theoretical arrival time.
    rates: HashMap<String, Instant>,
    rates_since_sweep: usize,
    hot: HashMap<String, Window>,
    /// conversation -> last conv_seq allocation (ms).
    active: HashMap<String, i64>,
    verified: HashMap<String, u64>,
    /// user -> device -> (node, expiry).
    presence: HashMap<String, HashMap<String, (String, Instant)>>,
    /// user -> last refresh or close of any device (ms).
    last_seen: HashMap<String, i64>,
}

#[derive(Default)]
struct Window {
    /// (conv_seq, message_id) -> encoded message: two messages may share a conv_seq after a
    /// sequencer reset.
    entries: BTreeMap<(u64, u64), Bytes>,
    head: Option<HotHead>,
}

impl LocalCache {
    pub fn new() -> Self {
        let cache = Self {
            state: Mutex::new(State::default()),
            pubsub: Arc::default(),
        };
        cache.state().epoch = new_epoch();
        cache
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Loses every piece of state, as a Redis restart without persistence or a FLUSHALL does
    /// (fault injection and tests).
    pub fn lose_state(&self) {
        *self.state() = State {
            epoch: new_epoch(),
            ..State::default()
        };
    }
}

fn new_epoch() -> u64 {
    rand::random::<u64>() >> 1
}

impl Default for LocalCache {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Cache for LocalCache {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn allocate(
        &self,
        requests: &[SeqRequest],
        now_ms: i64,
    ) -> CacheResult<Vec<Option<u64>>> {
        let mut state = self.state();
        let now = Instant::now();
        state.fences.retain(|_, (_, expires)| *expires > now);
        if let Some(c) = requests.iter().find_map(|r| match &r.key {
            SeqKey::Conversation(c) if state.fences.contains_key(c) => Some(c),
            _ => None,
        }) {
            return Err(CacheError::Fenced(c.clone()));
        }
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            let first = state.seqs.get_mut(&r.key).map(|last| {
                let first = *last + 1;
                *last += r.count;
                first
            });
            if let (Some(_), SeqKey::Conversation(c)) = (first, &r.key) {
                state.active.insert(c.clone(), now_ms);
            }
            out.push(first);
        }
        Ok(out)
    }

    async fn allocate_message(
        &self,
        conversation_id: &str,
        countable: bool,
        now_ms: i64,
    ) -> CacheResult<Option<(u64, u64)>> {
        let mut state = self.state();
        let now = Instant::now();
        state.fences.retain(|_, (_, expires)| *expires > now);
        if state.fences.contains_key(conversation_id) {
            return Err(CacheError::Fenced(conversation_id.to_owned()));
        }
        let seq_key = SeqKey::Conversation(conversation_id.to_owned());
        let count_key = SeqKey::Count(conversation_id.to_owned());
        let (Some(&seq), Some(&count)) = (state.seqs.get(&seq_key), state.seqs.get(&count_key))
        else {
            return Ok(None);
        };
        let count = count + u64::from(countable);
        state.seqs.insert(seq_key, seq + 1);
        state.seqs.insert(count_key, count);
        state.active.insert(conversation_id.to_owned(), now_ms);
        Ok(Some((seq + 1, count)))
    }

    async fn fence(
        &self,
        conversation_id: &str,
        holder: u64,
        ttl: Duration,
    ) -> CacheResult<Option<u64>> {
        let now = Instant::now();
        let mut state = self.state();
        match state.fences.get(conversation_id) {
            Some((held, expires)) if *held != holder && *expires > now => {
                return Err(CacheError::Fenced(conversation_id.to_owned()));
            }
            _ => {}
        }
        let key = SeqKey::Conversation(conversation_id.to_owned());
        let Some(current) = state.seqs.get(&key).copied() else {
            return Ok(None);
        };
        state
            .fences
            .insert(conversation_id.to_owned(), (holder, now + ttl));
        Ok(Some(current))
    }

    async fn unfence(&self, conversation_id: &str, holder: u64) -> CacheResult<()> {
        let mut state = self.state();
        if state
            .fences
            .get(conversation_id)
            .is_some_and(|(held, _)| *held == holder)
        {
            state.fences.remove(conversation_id);
        }
        Ok(())
    }

    async fn seed(&self, key: &SeqKey, last_value: u64) -> CacheResult<()> {
        self.state().seqs.entry(key.clone()).or_insert(last_value);
        Ok(())
    }

    async fn current(&self, key: &SeqKey) -> CacheResult<Option<u64>> {
        Ok(self.state().seqs.get(key).copied())
    }

    async fn claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<Option<u64>> {
        let now = Instant::now();
        let mut state = self.state();
        // Expired claims are swept now and then so the map stays bounded by the live ones.
        state.claims_since_sweep += 1;
        if state.claims_since_sweep >= 1024 {
            state.claims.retain(|_, (_, expires)| *expires > now);
            state.claims_since_sweep = 0;
        }
        match state.claims.get(key) {
            Some((held, expires)) if *expires > now => Ok(Some(*held)),
            _ => {
                state.claims.insert(key.to_owned(), (value, now + ttl));
                Ok(None)
            }
        }
    }

    async fn admit_rate(
        &self,
        key: &str,
        period: Duration,
        burst: u32,
    ) -> CacheResult<Option<Duration>> {
        let now = Instant::now();
        let mut state = self.state();
        // Keys whose quota is whole again are forgotten now and then: the map stays bounded by
        // the keys in use.
        state.rates_since_sweep += 1;
        if state.rates_since_sweep >= 1024 {
            state.rates.retain(|_, tat| *tat > now);
            state.rates_since_sweep = 0;
        }
        match super::gcra(state.rates.get(key).copied(), now, period, burst) {
            Ok(tat) => {
                state.rates.insert(key.to_owned(), tat);
                Ok(None)
            }
            Err(wait) => Ok(Some(wait)),
        }
    }

    async fn release_claim(&self, key: &str, value: u64) -> CacheResult<()> {
        let mut state = self.state();
        if state
            .claims
            .get(key)
            .is_some_and(|(held, _)| *held == value)
        {
            state.claims.remove(key);
        }
        Ok(())
    }

    async fn extend_claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<bool> {
        let now = Instant::now();
        let mut state = self.state();
        match state.claims.get_mut(key) {
            Some((held, expires)) if *held == value && *expires > now => {
                *expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn epoch(&self) -> CacheResult<u64> {
        Ok(self.state().epoch)
    }

    async fn hot_append(
        &self,
        conversation_id: &str,
        entry: HotEntry,
        message_id: u64,
        count_seq: u64,
        window: usize,
        now_ms: i64,
    ) -> CacheResult<()> {
        let mut state = self.state();
        let w = state.hot.entry(conversation_id.to_owned()).or_default();
        w.entries
            .insert((entry.conv_seq, message_id), entry.payload);
        while w.entries.len() > window.max(1) {
            w.entries.pop_first();
        }
        let newer = w.head.is_none_or(|h| entry.conv_seq >= h.last_seq);
        let head = w.head.get_or_insert(HotHead {
            last_seq: 0,
            last_message_id: 0,
            last_activity_ms: 0,
            last_count: 0,
        });
        if newer {
            head.last_seq = entry.conv_seq;
            head.last_message_id = message_id;
        }
        head.last_count = head.last_count.max(count_seq);
        head.last_activity_ms = head.last_activity_ms.max(now_ms);
        Ok(())
    }

    async fn hot_heads(&self, conversation_ids: &[String]) -> CacheResult<Vec<Option<HotHead>>> {
        let state = self.state();
        Ok(conversation_ids
            .iter()
            .map(|c| state.hot.get(c).and_then(|w| w.head))
            .collect())
    }

    async fn hot_read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> CacheResult<Option<HotWindow>> {
        let state = self.state();
        let Some(w) = state.hot.get(conversation_id) else {
            return Ok(None);
        };
        let Some(((low_seq, _), _)) = w.entries.first_key_value() else {
            return Ok(None);
        };
        let entries = w
            .entries
            .range((after_seq + 1, 0)..)
            .take(limit)
            .map(|((conv_seq, _), payload)| HotEntry {
                conv_seq: *conv_seq,
                payload: payload.clone(),
            })
            .collect();
        Ok(Some(HotWindow {
            low_seq: *low_seq,
            entries,
        }))
    }

    async fn active_conversations(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> CacheResult<Vec<(String, i64)>> {
        let state = self.state();
        let mut out: Vec<(String, i64)> = state
            .active
            .iter()
            .filter(|(_, at)| **at <= before_ms)
            .map(|(c, at)| (c.clone(), *at))
            .collect();
        out.sort_by_key(|(c, at)| (*at, c.clone()));
        out.truncate(limit);
        Ok(out)
    }

    async fn verified_seq(&self, conversation_id: &str) -> CacheResult<Option<u64>> {
        Ok(self.state().verified.get(conversation_id).copied())
    }

    async fn mark_verified(
        &self,
        conversation_id: &str,
        seq: u64,
        allocated_at_ms: i64,
    ) -> CacheResult<()> {
        let mut state = self.state();
        let v = state
            .verified
            .entry(conversation_id.to_owned())
            .or_insert(0);
        *v = (*v).max(seq);
        if state.active.get(conversation_id) == Some(&allocated_at_ms) {
            state.active.remove(conversation_id);
        }
        Ok(())
    }

    async fn set_presence(
        &self,
        user_id: &str,
        device_id: &str,
        node: &str,
        ttl: Duration,
    ) -> CacheResult<()> {
        let now = Instant::now();
        let mut state = self.state();
        state.last_seen.insert(user_id.to_owned(), wall_ms());
        let devices = state.presence.entry(user_id.to_owned()).or_default();
        devices.retain(|_, (_, expires)| *expires > now);
        devices.insert(device_id.to_owned(), (node.to_owned(), now + ttl));
        Ok(())
    }

    async fn clear_presence(&self, user_id: &str, device_id: &str) -> CacheResult<()> {
        let mut state = self.state();
        state.last_seen.insert(user_id.to_owned(), wall_ms());
        if let Some(devices) = state.presence.get_mut(user_id) {
            devices.remove(device_id);
            if devices.is_empty() {
                state.presence.remove(user_id);
            }
        }
        Ok(())
    }

    async fn presence(&self, user_ids: &[String]) -> CacheResult<Vec<UserPresence>> {
        let now = Instant::now();
        let state = self.state();
        Ok(user_ids
            .iter()
            .map(|u| {
                let mut devices: Vec<Presence> = state
                    .presence
                    .get(u)
                    .into_iter()
                    .flatten()
                    .filter(|(_, (_, expires))| *expires > now)
                    .map(|(device, (node, _))| Presence {
                        device_id: device.clone(),
                        node: node.clone(),
                    })
                    .collect();
                devices.sort();
                UserPresence {
                    devices,
                    last_seen_ms: state.last_seen.get(u).copied().unwrap_or(0),
                }
            })
            .collect())
    }

    async fn publish(&self, messages: &[(String, Bytes)]) -> CacheResult<u64> {
        let pubsub = lock(&self.pubsub);
        let mut received = 0;
        for (channel, payload) in messages {
            for id in pubsub.channels.get(channel).into_iter().flatten() {
                if let Some(sender) = pubsub.subscribers.get(id) {
                    received += 1;
                    // At most once, like Redis pub/sub: a full buffer drops the payload.
                    let _ = sender.try_send(PubSubEvent::Message {
                        channel: channel.clone(),
                        payload: payload.clone(),
                    });
                }
            }
        }
        Ok(received)
    }

    async fn subscriber(&self) -> CacheResult<Subscriber> {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let id = {
            let mut pubsub = lock(&self.pubsub);
            pubsub.next_id += 1;
            let id = pubsub.next_id;
            pubsub.subscribers.insert(id, sender);
            id
        };
        let guard = Unsubscribe(self.pubsub.clone(), id);
        let events = futures::stream::unfold((receiver, guard), |(mut r, guard)| async move {
            r.recv().await.map(|event| (event, (r, guard)))
        });
        Ok(Subscriber {
            control: Arc::new(LocalControl {
                pubsub: self.pubsub.clone(),
                id,
            }),
            events: events.boxed(),
        })
    }
}

/// Wall-clock milliseconds (last-seen times are wall-clock, as Redis's `TIME` is).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unseeded_keys_allocate_nothing_until_seeded() {
        let cache = LocalCache::new();
        let key = SeqKey::Inbox("u".into());
        let req = [SeqRequest {
            key: key.clone(),
            count: 3,
        }];
        assert_eq!(cache.allocate(&req, 0).await.unwrap(), vec![None]);
        cache.seed(&key, 10).await.unwrap();
        cache.seed(&key, 0).await.unwrap(); // NX: ignored
        assert_eq!(cache.allocate(&req, 0).await.unwrap(), vec![Some(11)]);
        assert_eq!(cache.allocate(&req, 0).await.unwrap(), vec![Some(14)]);
        assert_eq!(cache.current(&key).await.unwrap(), Some(16));
        cache.lose_state();
        assert_eq!(cache.current(&key).await.unwrap(), None);
    }

    #[tokio::test]
    async fn claims_are_exclusive_until_they_expire() {
        let cache = LocalCache::new();
        assert_eq!(
            cache
                .claim("k", 1, Duration::from_millis(30))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            cache
                .claim("k", 2, Duration::from_millis(30))
                .await
                .unwrap(),
            Some(1)
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(
            cache
                .claim("k", 3, Duration::from_millis(30))
                .await
                .unwrap(),
            None
        );
    }
}
