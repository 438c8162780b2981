//! The in-process `Cache`: the default for one node. Its state dies with the process, which the
//! pipeline handles exactly like a Redis restart without persistence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::*;

pub struct LocalCache {
    epoch: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    seqs: HashMap<SeqKey, u64>,
    claims: HashMap<String, (u64, Instant)>,
    claims_since_sweep: usize,
}

impl LocalCache {
    pub fn new() -> Self {
        Self {
            epoch: rand::random::<u64>() >> 1,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated (each operation
        // is a single insert or lookup), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
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

    async fn allocate(&self, requests: &[SeqRequest]) -> CacheResult<Vec<Option<u64>>> {
        let mut state = self.state();
        Ok(requests
            .iter()
            .map(|r| {
                state.seqs.get_mut(&r.key).map(|last| {
                    let first = *last + 1;
                    *last += r.count;
                    first
                })
            })
            .collect())
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

    async fn epoch(&self) -> CacheResult<u64> {
        Ok(self.epoch)
    }
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
        assert_eq!(cache.allocate(&req).await.unwrap(), vec![None]);
        cache.seed(&key, 10).await.unwrap();
        cache.seed(&key, 0).await.unwrap(); // NX: ignored
        assert_eq!(cache.allocate(&req).await.unwrap(), vec![Some(11)]);
        assert_eq!(cache.allocate(&req).await.unwrap(), vec![Some(14)]);
        assert_eq!(cache.current(&key).await.unwrap(), Some(16));
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
