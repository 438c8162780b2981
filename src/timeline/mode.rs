//! Delivery modes (README "Hot conversations"): small conversations fan out on write to every member's inbox;
//! hot ones (many members, or a high fan-out rate) are written once and read at sync time.
//!
//! A conversation's `mode_spans` say which conv_seqs are delivered which way, so readers know
//! where each message comes from. A switch:
//! 1. to hot: flags every member's `user_conversations` row first (Sync then reads the
//!    conversation as a hot source);
//! 2. fences the conversation's conv_seq allocation in the Cache and reads its current value
//!    `C`; publishes the span `(S = C + 1, mode)` to the Store; lifts the fence;
//! 3. to hot: flags again (members who joined meanwhile).
//!
//! So a span is durable before any seq it covers is allocated: every seq's mode is fixed when
//! it is handed out, and whoever learns of a seq (its sender after the durable write, a reader
//! of its inbox row or window entry, a re-drive) and then reads the conversation sees the mode
//! it is delivered in. Each message is delivered exactly one way — fan-out seqs only ever get
//! inbox rows, hot seqs only window entries — and each reader takes it from exactly one source
//! (see `sync.rs`). Senders held back by the fence wait for it (one Store write).

use std::collections::HashMap;
use std::sync::Mutex;

use super::error::{TimelineError, TimelineResult};
use super::reads::read_pages;
use super::{Broken, Timeline};
use crate::cache::SeqKey;
use crate::metrics;
use crate::store::*;

/// Members flagged per page of the member list during a switch to hot.
const FLAG_PAGE: usize = 1000;
/// Rows raised to hot at once during a switch.
const FLAG_CONCURRENCY: usize = 64;
/// How long a switch holds the conversation's switch claim at most.
const SWITCH_LEASE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a switch's fence holds allocation back at most: far longer than the one Store write
/// it covers (a switch that dies lets sends resume after it).
const FENCE_LEASE: std::time::Duration = std::time::Duration::from_secs(10);
/// The fan-out rate is measured over this window.
const RATE_WINDOW_MS: i64 = 10_000;

/// Inbox rows fanned out per conversation over a sliding window, measured on this node.
#[derive(Default)]
pub(crate) struct RateTracker {
    /// conversation -> (window start ms, rows in the current window, rows in the previous one)
    windows: Mutex<HashMap<String, (i64, u64, u64)>>,
}

impl RateTracker {
    /// Records `rows` at `now_ms`; returns the rate in rows per second over the last window
    /// (the previous window weighted by how much of it still overlaps).
    pub(crate) fn record(&self, conversation_id: &str, rows: u64, now_ms: i64) -> u64 {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        // Forget idle conversations so the map stays bounded by the active ones.
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _, _)| now_ms - *start < 2 * RATE_WINDOW_MS);
        }
        let w = windows
            .entry(conversation_id.to_owned())
            .or_insert((now_ms, 0, 0));
        let elapsed = now_ms - w.0;
        if elapsed >= 2 * RATE_WINDOW_MS {
            *w = (now_ms, 0, 0);
        } else if elapsed >= RATE_WINDOW_MS {
            *w = (w.0 + RATE_WINDOW_MS, 0, w.1);
        }
        w.1 += rows;
        let into = (now_ms - w.0).clamp(0, RATE_WINDOW_MS);
        let previous_share = w.2 * (RATE_WINDOW_MS - into) as u64 / RATE_WINDOW_MS as u64;
        (w.1 + previous_share) * 1000 / RATE_WINDOW_MS as u64
    }
}

impl Timeline {
    /// Switches the conversation to `mode` from its next conv_seq on, and records whether an
    /// operator forced it. Returns the conversation as it is afterwards.
    pub async fn switch_mode(
        &self,
        conversation_id: &str,
        mode: DeliveryMode,
        forced: bool,
    ) -> TimelineResult<ConversationRow> {
        let claim_key = format!("mode:{conversation_id}");
        let token = rand::random::<u64>();
        if self
            .take_claim(&claim_key, token, SWITCH_LEASE)
            .await?
            .is_some()
        {
            return Err(TimelineError::Aborted(format!(
                "a mode switch of {conversation_id} is in progress; retry"
            )));
        }
        let result = self
            .switch_mode_claimed(conversation_id, mode, forced)
            .await;
        self.release_claim(&claim_key, token, SWITCH_LEASE).await;
        result
    }

    /// The operator's `SetConversationMode`: `Some(mode)` forces it, `None` returns the
    /// conversation to automatic switching (and applies the thresholds right away).
    pub async fn set_conversation_mode(
        &self,
        caller: &super::Caller,
        conversation_id: &str,
        mode: Option<DeliveryMode>,
    ) -> TimelineResult<ConversationRow> {
        super::ids::validate_conversation_id(conversation_id)?;
        if !caller.admin {
            return Err(TimelineError::PermissionDenied(
                "forcing a delivery mode takes an operator token (timeline token --admin)".into(),
            ));
        }
        match mode {
            Some(mode) => self.switch_mode(conversation_id, mode, true).await,
            None => {
                let current = self
                    .store
                    .get_conversation(conversation_id)
                    .await?
                    .ok_or_else(|| {
                        TimelineError::NotFound(format!(
                            "conversation {conversation_id} does not exist"
                        ))
                    })?;
                let released = self
                    .switch_mode(conversation_id, current.mode(), false)
                    .await?;
                // Automatic from now on: no dwell applies to leaving an operator's choice.
                let automatic = ConversationRow {
                    mode_changed_at_ms: i64::MIN / 2,
                    ..released
                };
                self.maybe_switch(&automatic, self.current_rate(conversation_id))
                    .await?;
                Ok(self
                    .store
                    .get_conversation(conversation_id)
                    .await?
                    .unwrap_or(automatic))
            }
        }
    }

    async fn switch_mode_claimed(
        &self,
        conversation_id: &str,
        mode: DeliveryMode,
        forced: bool,
    ) -> TimelineResult<ConversationRow> {
        let conversation = self
            .store
            .get_conversation(conversation_id)
            .await?
            .ok_or_else(|| {
                TimelineError::NotFound(format!("conversation {conversation_id} does not exist"))
            })?;
        let now = self.clock.now_ms();
        if conversation.mode() == mode {
            if conversation.mode_forced != forced {
                self.store
                    .update_conversation_mode(
                        conversation_id,
                        &conversation.mode_spans,
                        forced,
                        now,
                    )
                    .await?;
            }
            return Ok(ConversationRow {
                mode_forced: forced,
                ..conversation
            });
        }
        if mode == DeliveryMode::Hot {
            self.flag_members_hot(conversation_id).await?;
        }
        let spans = if self.broken(Broken::SwitchWithoutFence) {
            let since = self
                .current_seq(&SeqKey::Conversation(conversation_id.to_owned()))
                .await?
                + 1;
            let spans = with_span(&conversation.mode_spans, since, mode);
            self.store
                .update_conversation_mode(conversation_id, &spans, forced, now)
                .await?;
            if mode == DeliveryMode::Fanout {
                self.backfill_fanout(conversation_id, since).await?;
            }
            spans
        } else {
            self.publish_span_fenced(&conversation, mode, forced, now)
                .await?
        };
        let since = spans.last().map_or(1, |s| s.since_seq);
        if mode == DeliveryMode::Hot {
            let members = self.flag_members_hot(conversation_id).await?;
            // Their streams re-sync and start listening to the conversation.
            self.notify(|l| l.memberships_changed(conversation_id, &members));
        }
        let label = match mode {
            DeliveryMode::Hot => "hot",
            DeliveryMode::Fanout => "fanout",
        };
        ::metrics::counter!(metrics::MODE_SWITCHES, "to" => label, "forced" => forced.to_string())
            .increment(1);
        tracing::info!(
            conversation_id,
            to = label,
            since,
            forced,
            "delivery mode switched"
        );
        Ok(ConversationRow {
            mode_spans: spans,
            mode_forced: forced,
            mode_changed_at_ms: now,
            ..conversation
        })
    }

    /// Publishes the span `(S, mode)` while the conversation's allocation is fenced, `S` being
    /// the first seq handed out after it; returns the spans written.
    async fn publish_span_fenced(
        &self,
        conversation: &ConversationRow,
        mode: DeliveryMode,
        forced: bool,
        now: i64,
    ) -> TimelineResult<Vec<ModeSpan>> {
        let id = &conversation.conversation_id;
        let holder = rand::random::<u64>();
        let current = self.fence_conversation(id, holder, FENCE_LEASE).await?;
        let spans = with_span(&conversation.mode_spans, current + 1, mode);
        let published = self
            .store
            .update_conversation_mode(id, &spans, forced, now)
            .await;
        // Lift the fence whatever happened (it lapses by itself if this fails too).
        let lifted = self.cache.unfence(id, holder).await;
        published?;
        if let Err(e) = lifted {
            tracing::warn!(conversation_id = %id, error = %e, "could not lift a switch fence: it lapses");
        }
        Ok(spans)
    }

    /// Flags every member's row hot; returns the members.
    async fn flag_members_hot(&self, conversation_id: &str) -> TimelineResult<Vec<String>> {
        let members = read_pages(
            FLAG_PAGE,
            usize::MAX,
            |after: Option<String>| async move {
                self.store
                    .list_members(conversation_id, after.as_deref(), FLAG_PAGE)
                    .await
            },
            |m| m.user_id.clone(),
            |_| true,
        )
        .await?;
        let users: Vec<String> = members.into_iter().map(|m| m.user_id).collect();
        self.flag_hot(conversation_id, &users).await?;
        Ok(users)
    }

    /// Raises the users' rows of the conversation to hot, many at once: a switch of a
    /// 100,000-member group must finish well inside its claim's lease.
    pub(crate) async fn flag_hot(
        &self,
        conversation_id: &str,
        users: &[String],
    ) -> TimelineResult<()> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        // Futures made up front: a closure inside the stream trips rustc's higher-ranked
        // lifetime inference for the callers' Send bounds.
        let writes: Vec<_> = users
            .iter()
            .map(|user| {
                self.store
                    .raise_user_conversation_mode(user, conversation_id, DeliveryMode::Hot)
            })
            .collect();
        stream::iter(writes)
            .buffer_unordered(FLAG_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The broken variant's catch-up for senders that delivered a new fan-out seq the hot way:
    /// fans out the messages from `since` on that are already written.
    async fn backfill_fanout(&self, conversation_id: &str, since: u64) -> TimelineResult<()> {
        let last = self
            .current_seq(&SeqKey::Conversation(conversation_id.to_owned()))
            .await?;
        for message in self
            .read_messages_ascending(conversation_id, since, last, usize::MAX)
            .await?
        {
            self.fan_out(&message, &[]).await?;
        }
        Ok(())
    }

    /// The measured fan-out rate of the conversation, rows per second.
    pub(crate) fn current_rate(&self, conversation_id: &str) -> u64 {
        self.fanout_rates
            .record(conversation_id, 0, self.clock.now_ms())
    }

    /// Switches automatically when the conversation's size or measured fan-out rate crosses
    /// the thresholds: hot at `hot_threshold` members or `hot_fanout_rows_per_sec`; back to
    /// fan-out below half of both; never sooner than `mode_min_dwell` after the last switch,
    /// never when an operator forced the mode.
    pub(crate) async fn maybe_switch(
        &self,
        conversation: &ConversationRow,
        fanout_rows_per_sec: u64,
    ) -> TimelineResult<()> {
        if conversation.mode_forced || conversation.kind == ConversationKind::Direct {
            return Ok(());
        }
        let dwell_ms = self.limits.mode_min_dwell.as_millis() as i64;
        if self.clock.now_ms() - conversation.mode_changed_at_ms < dwell_ms {
            return Ok(());
        }
        let members = conversation.member_count;
        let target = match conversation.mode() {
            DeliveryMode::Fanout
                if members >= self.limits.hot_threshold
                    || fanout_rows_per_sec > self.limits.hot_fanout_rows_per_sec =>
            {
                DeliveryMode::Hot
            }
            DeliveryMode::Hot
                if members < self.limits.hot_threshold / 2
                    && fanout_rows_per_sec < self.limits.hot_fanout_rows_per_sec / 2 =>
            {
                DeliveryMode::Fanout
            }
            _ => return Ok(()),
        };
        match self
            .switch_mode(&conversation.conversation_id, target, false)
            .await
        {
            // Another node is switching it right now: that is what we wanted.
            Err(TimelineError::Aborted(_)) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// `spans` with `(since, mode)` added, keeping the newest [`MAX_MODE_SPANS`].
fn with_span(spans: &[ModeSpan], since: u64, mode: DeliveryMode) -> Vec<ModeSpan> {
    let mut spans = spans.to_vec();
    // Spans starting at `since` or later cover no seq yet (`since` is the next one handed out):
    // the new one supersedes them instead of piling up behind them.
    while spans.len() > 1 && spans.last().is_some_and(|s| s.since_seq >= since) {
        spans.pop();
    }
    spans.push(ModeSpan {
        since_seq: since,
        mode,
    });
    if spans.len() > MAX_MODE_SPANS {
        spans.drain(..spans.len() - MAX_MODE_SPANS);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_rows_per_second_over_a_sliding_window() {
        let rates = RateTracker::default();
        let mut rate = 0;
        for i in 0..100 {
            // 500 rows every 100 ms: 5,000 rows/s.
            rate = rates.record("g:a", 500, i * 100);
        }
        assert!((4500..=5000).contains(&rate), "{rate}");
        // Quiet for two windows: the next sample starts over.
        assert_eq!(rates.record("g:a", 10, 100 * 100 + 2 * RATE_WINDOW_MS), 1);
        assert_eq!(rates.record("g:b", 20_000, 0), 2000);
    }
}
