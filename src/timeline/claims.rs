//! Cache claims (`SET NX PX` leases) that let one operation at a time act on a key: a send's
//! client_msg_id, the re-drive of an outbox entry, a mode switch.
//!
//! A claim whose call failed may still take effect: the reply was lost to a timeout, or a
//! paused Redis runs the queued command when it resumes. Left alone, such a claim would block
//! everyone for its whole lease with no holder at work, so every failed claim or release is
//! taken back in the background.

use std::time::Duration;

use super::Timeline;
use super::error::TimelineResult;

impl Timeline {
    /// Takes `key` for `holder` for `lease`: `None` when taken, else the current holder.
    pub(crate) async fn take_claim(
        &self,
        key: &str,
        holder: u64,
        lease: Duration,
    ) -> TimelineResult<Option<u64>> {
        match self.cache.claim(key, holder, lease).await {
            Ok(current) => Ok(current),
            Err(e) => {
                self.release_claim_soon(key.to_owned(), holder, lease);
                Err(e.into())
            }
        }
    }

    /// Releases a claim `holder` took, in the background when the Cache fails now.
    pub(crate) async fn release_claim(&self, key: &str, holder: u64, lease: Duration) {
        if let Err(e) = self.cache.release_claim(key, holder).await {
            tracing::debug!(error = %e, key, "claim not released: retrying in the background");
            self.release_claim_soon(key.to_owned(), holder, lease);
        }
    }

    /// Releases a claim in the background, retrying with backoff for up to its `lease` (after
    /// which it has lapsed anyway). The Cache just failed, so the first try may fail too.
    pub(crate) fn release_claim_soon(&self, key: String, holder: u64, lease: Duration) {
        let cache = self.cache.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut delay = Duration::from_millis(50);
            while cache.release_claim(&key, holder).await.is_err() && started.elapsed() < lease {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        });
    }
}
