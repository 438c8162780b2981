//! Sequence allocation over the Cache, with the re-seed rule (README "Sequencer re-seed"): a
//! key whose state was lost is seeded from the Store's last persisted value (read once, then
//! `SET NX`), never from zero, so no value at or below a persisted one is handed out again.

use futures::stream::{self, StreamExt, TryStreamExt};

use super::Timeline;
use super::error::{TimelineError, TimelineResult};
use crate::cache::{SeqKey, SeqRequest};
use crate::metrics;

/// Store reads in flight at once while re-seeding many keys (a large fan-out after a restart).
const RESEED_CONCURRENCY: usize = 32;

impl Timeline {
    /// Allocates every request in one Cache round trip (two after a loss of state); returns the
    /// first value of each range, in request order.
    pub(crate) async fn allocate(&self, requests: &[SeqRequest]) -> TimelineResult<Vec<u64>> {
        let first = self.cache.allocate(requests, self.clock.now_ms()).await?;
        let missing: Vec<usize> = (0..requests.len())
            .filter(|&i| first[i].is_none())
            .collect();
        if missing.is_empty() {
            return Ok(first.into_iter().flatten().collect());
        }
        let seeds: Vec<_> = missing
            .iter()
            .map(|&i| self.seed(&requests[i].key))
            .collect();
        stream::iter(seeds)
            .buffer_unordered(RESEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let retry: Vec<SeqRequest> = missing.iter().map(|&i| requests[i].clone()).collect();
        let second = self.cache.allocate(&retry, self.clock.now_ms()).await?;
        let mut out = first;
        for (slot, value) in missing.into_iter().zip(second) {
            out[slot] = Some(value.ok_or_else(|| {
                TimelineError::Cache(crate::cache::CacheError::Unavailable(
                    "sequencer lost its state again while re-seeding".into(),
                ))
            })?);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The next conv_seq of the conversation and its count after this message (see
    /// `Cache::allocate_message`), re-seeding both from the Store when the Cache lost them.
    pub(crate) async fn allocate_message_seqs(
        &self,
        conversation_id: &str,
        countable: bool,
    ) -> TimelineResult<(u64, u64)> {
        let now = self.clock.now_ms();
        if let Some(seqs) = self
            .cache
            .allocate_message(conversation_id, countable, now)
            .await?
        {
            return Ok(seqs);
        }
        // Seeding is `SET NX`: a key that kept its state keeps it.
        let (seq_key, count_key) = (
            SeqKey::Conversation(conversation_id.to_owned()),
            SeqKey::Count(conversation_id.to_owned()),
        );
        futures::try_join!(self.seed(&seq_key), self.seed(&count_key))?;
        self.cache
            .allocate_message(conversation_id, countable, self.clock.now_ms())
            .await?
            .ok_or_else(|| {
                TimelineError::Cache(crate::cache::CacheError::Unavailable(
                    "sequencer lost its state again while re-seeding".into(),
                ))
            })
    }

    /// The key's last handed-out value, re-seeding it from the Store when the Cache lost it.
    pub(crate) async fn current_seq(&self, key: &SeqKey) -> TimelineResult<u64> {
        if let Some(v) = self.cache.current(key).await? {
            return Ok(v);
        }
        self.seed(key).await?;
        Ok(self.cache.current(key).await?.unwrap_or(0))
    }

    /// Fences the conversation's conv_seq allocations for `holder` (see `Cache::fence`) and
    /// returns the last value handed out, re-seeding the sequencer from the Store when the
    /// Cache lost it.
    pub(crate) async fn fence_conversation(
        &self,
        conversation_id: &str,
        holder: u64,
        ttl: std::time::Duration,
    ) -> TimelineResult<u64> {
        if let Some(v) = self.cache.fence(conversation_id, holder, ttl).await? {
            return Ok(v);
        }
        self.seed(&SeqKey::Conversation(conversation_id.to_owned()))
            .await?;
        self.cache
            .fence(conversation_id, holder, ttl)
            .await?
            .ok_or_else(|| {
                TimelineError::Cache(crate::cache::CacheError::Unavailable(
                    "sequencer lost its state again while re-seeding".into(),
                ))
            })
    }

    /// The key's last handed-out value as a bound for reads: from the Cache, or, while the
    /// Cache fails, the Store's last persisted value (what readers can be given anyway; sends
    /// need the sequencer, so they fail meanwhile instead).
    pub(crate) async fn read_bound(&self, key: &SeqKey) -> TimelineResult<u64> {
        match self.current_seq(key).await {
            Err(TimelineError::Cache(e)) => {
                self.cache_fallback("sequence", &e);
                self.store_last(key).await
            }
            other => other,
        }
    }

    /// Counts (and logs at debug) a read served without the Cache.
    pub(crate) fn cache_fallback(&self, read: &'static str, error: &crate::cache::CacheError) {
        tracing::debug!(read, %error, "cache failed: reading from the store");
        ::metrics::counter!(metrics::CACHE_FALLBACKS, "read" => read).increment(1);
    }

    async fn store_last(&self, key: &SeqKey) -> TimelineResult<u64> {
        Ok(match key {
            SeqKey::Conversation(c) => self.store.last_conv_seq(c).await?,
            SeqKey::Inbox(u) => self.store.last_inbox_seq(u).await?,
            SeqKey::Count(c) => self.store.last_count(c).await?,
        })
    }

    async fn seed(&self, key: &SeqKey) -> TimelineResult<()> {
        let last = self.store_last(key).await?;
        self.cache.seed(key, last).await?;
        ::metrics::counter!(metrics::SEQUENCER_RESEEDS).increment(1);
        Ok(())
    }
}
