//! Repairs: conv_seqs abandoned by writers that died between allocating and writing become
//! hole markers (found by the sweeper, by Sync and by history reads), hot appends lost with
//! the Cache are redone, and the recovery loop runs the outbox re-drive and the sweeper.

use std::sync::Arc;
use std::time::Duration;

use super::error::{TimelineError, TimelineResult};
use super::{Broken, Timeline};
use crate::cache::SeqKey;
use crate::metrics;
use crate::store::*;

/// Conversations the sweeper checks per pass.
const SWEEP_BATCH: usize = 256;

/// What occupies an abandoned slot after [`Timeline::fill_hole`].
pub(crate) enum Filled {
    /// This call wrote the hole: deliver it.
    Hole(MessageRow),
    /// Rows already there (a late write, or a hole delivered before).
    Present(Vec<MessageRow>),
}

impl Timeline {
    /// Fills an abandoned conv_seq with a hole marker, unless a row landed there meanwhile.
    pub(crate) async fn fill_hole(
        &self,
        conversation_id: &str,
        conv_seq: u64,
        found_by: &'static str,
    ) -> TimelineResult<Filled> {
        let mut hole = hole_message(conversation_id, conv_seq, self.clock.now_ms());
        hole.count_seq = self.count_of_abandoned(conversation_id, conv_seq).await?;
        let present = self.store.insert_hole_if_slot_empty(&hole).await?;
        if !present.is_empty() {
            return Ok(Filled::Present(present));
        }
        ::metrics::counter!(metrics::HOLES_FILLED, "found_by" => found_by).increment(1);
        Ok(Filled::Hole(hole))
    }

    /// The count through an abandoned seq, which its allocation may have raised (a user
    /// message's) though no message shows it: carried by the hole, so that a reader who reads
    /// up to it has read that count too. From the first message above it; when nothing was
    /// allocated after it, the sequencer's count; else 0 (unknown: the message above will
    /// tell when it lands).
    async fn count_of_abandoned(&self, conversation_id: &str, seq: u64) -> TimelineResult<u64> {
        let id = conversation_id.to_owned();
        let current = self.cache.current(&SeqKey::Conversation(id.clone())).await;
        if matches!(current, Ok(Some(last)) if last == seq) {
            return Ok(self
                .cache
                .current(&SeqKey::Count(id))
                .await
                .ok()
                .flatten()
                .unwrap_or(0));
        }
        let bound = current.ok().flatten().unwrap_or(seq);
        let above = self
            .read_messages_ascending(conversation_id, seq + 1, bound, 16)
            .await?;
        Ok(above
            .iter()
            .find(|m| m.kind != MessageKind::Hole)
            .map_or(0, |next| {
                next.count_seq
                    .saturating_sub(u64::from(next.kind.counts_as_unread()))
            }))
    }

    /// Adds a repaired entry (a hole) to the conversation's window if it has one. A window
    /// lost with the Cache is not recreated from an old seq: its head would claim the
    /// conversation ends there; readers read `messages` until a send recreates it.
    pub(crate) async fn append_hot_repair(&self, message: &MessageRow) -> TimelineResult<()> {
        // Best effort: readers that miss the hole in the window find it in the Store.
        let id = std::slice::from_ref(&message.conversation_id);
        let appended = match self.cache.hot_heads(id).await {
            Ok(heads) if heads[0].is_some() => self.append_hot(message).await,
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(TimelineError::Cache(e)) = &appended {
            self.cache_fallback("hole_append", e);
            return Ok(());
        }
        appended
    }

    /// Fills the gaps between the rows of a history page (newest first) whose successor is
    /// older than gap_grace: conv_seqs abandoned by a writer that died. The sweeper does this
    /// for recent allocations; reading history repairs what it missed (its state lives in the
    /// Cache, which may have been lost). Each new hole is delivered the way its mode says.
    pub(crate) async fn repair_gaps(
        &self,
        conversation_id: &str,
        messages: &mut Vec<MessageRow>,
        bottom: Option<u64>,
    ) -> TimelineResult<()> {
        let grace_ms = self.limits.gap_grace.as_millis() as i64;
        let now = self.clock.now_ms();
        let mut gaps = Vec::new();
        for pair in messages.windows(2) {
            let (newer, older) = (&pair[0], &pair[1]);
            if newer.conv_seq > older.conv_seq + 1 && now - newer.created_at_ms >= grace_ms {
                gaps.extend(older.conv_seq + 1..newer.conv_seq);
            }
        }
        // Below the oldest row, down to the first seq the page covers.
        if let (Some(lowest), Some(oldest)) = (bottom, messages.last())
            && oldest.conv_seq > lowest
            && now - oldest.created_at_ms >= grace_ms
        {
            gaps.extend(lowest..oldest.conv_seq);
        }
        if gaps.is_empty() || self.broken(Broken::GapsSkippedNotFilled) {
            return Ok(());
        }
        let Some(conversation) = self.store.get_conversation(conversation_id).await? else {
            return Ok(());
        };
        // A hole must be delivered where it is written (fan-out allocates inbox seqs): while
        // the Cache fails, the page goes out with its gaps and a later read repairs them.
        if let Err(e) = self.cache.epoch().await {
            self.cache_fallback("history_repair", &e);
            return Ok(());
        }
        for seq in gaps {
            match self.fill_hole(conversation_id, seq, "history").await? {
                Filled::Hole(hole) => {
                    match conversation.mode_at(seq) {
                        DeliveryMode::Fanout => {
                            self.fan_out(&hole, &[]).await?;
                        }
                        DeliveryMode::Hot => self.append_hot_repair(&hole).await?,
                    }
                    messages.push(hole);
                }
                Filled::Present(rows) => messages.extend(rows),
            }
        }
        messages.sort_by(|a, b| {
            b.conv_seq
                .cmp(&a.conv_seq)
                .then(a.message_id.cmp(&b.message_id))
        });
        Ok(())
    }

    /// Fills conv_seqs abandoned by writers that died between allocating and writing: for each
    /// conversation whose last allocation is at least `gap_grace` old, every seq up to the
    /// sequencer's value that has no row becomes a hole, delivered the way its mode says (a
    /// late writer rewrites under a fresh seq, so no message hides behind a hole).
    pub async fn sweep_abandoned(&self) -> TimelineResult<usize> {
        if self.broken(Broken::GapsSkippedNotFilled) {
            return Ok(0);
        }
        let cutoff = self.clock.now_ms() - self.limits.gap_grace.as_millis() as i64;
        let mut filled = 0;
        for (conversation_id, allocated_at) in
            self.cache.active_conversations(cutoff, SWEEP_BATCH).await?
        {
            let current = self
                .current_seq(&SeqKey::Conversation(conversation_id.clone()))
                .await?;
            // Without a verified mark (new conversation, or the Cache lost it) look back a
            // bucket at most.
            let from = match self.cache.verified_seq(&conversation_id).await? {
                Some(v) => v + 1,
                None => current.saturating_sub(self.limits.bucket_size) + 1,
            };
            if let Some(conversation) = self.store.get_conversation(&conversation_id).await? {
                let (present, missing) = self.scan_seqs(&conversation_id, from, current).await?;
                // A hot message whose window append never happened (its sender died after the
                // durable write) is appended now: the head is what tells Sync it moved.
                let head = self
                    .cache
                    .hot_heads(std::slice::from_ref(&conversation_id))
                    .await?[0];
                for row in present.iter().filter(|m| {
                    conversation.mode_at(m.conv_seq) == DeliveryMode::Hot
                        && head.is_none_or(|h| m.conv_seq > h.last_seq)
                }) {
                    self.append_hot(row).await?;
                }
                for seq in missing {
                    if let Filled::Hole(hole) =
                        self.fill_hole(&conversation_id, seq, "sweeper").await?
                    {
                        match conversation.mode_at(seq) {
                            DeliveryMode::Fanout => {
                                self.fan_out(&hole, &[]).await?;
                            }
                            DeliveryMode::Hot => self.append_hot_repair(&hole).await?,
                        }
                        filled += 1;
                    }
                }
            }
            self.cache
                .mark_verified(&conversation_id, current, allocated_at)
                .await?;
        }
        Ok(filled)
    }

    /// The rows of `from..=to` in `messages`, and the conv_seqs there without one.
    async fn scan_seqs(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
    ) -> TimelineResult<(Vec<MessageRow>, Vec<u64>)> {
        let present = self
            .read_messages_ascending(conversation_id, from, to, usize::MAX)
            .await?;
        let mut missing = Vec::new();
        let mut expected = from;
        for row in &present {
            missing.extend(expected..row.conv_seq);
            expected = expected.max(row.conv_seq + 1);
        }
        missing.extend(expected..=to);
        Ok((present, missing))
    }

    /// Runs [`Timeline::recover_pending`] and [`Timeline::sweep_abandoned`] every `interval`
    /// (outbox entries older than `recovery_age`), logging (not stopping on) failures.
    pub fn spawn_recovery(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let timeline = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let cutoff =
                    timeline.clock.now_ms() - timeline.limits.recovery_age.as_millis() as i64;
                match timeline.recover_pending(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(redriven = n, "recovery re-drove pending fan-outs"),
                    Err(e) => tracing::warn!(error = %e, "recovery pass failed"),
                }
                match timeline.sweep_abandoned().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(holes = n, "filled abandoned conv_seqs"),
                    Err(e) => tracing::warn!(error = %e, "sweep for abandoned seqs failed"),
                }
            }
        })
    }
}
