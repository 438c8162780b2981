//! GetHistory (DESIGN §6): one conversation backwards by conv_seq, members only, nothing
//! before the caller's joined_seq. Walks `(conversation_id, bucket)` partitions downwards.

use super::Broken;
use super::error::TimelineResult;
use super::ids::validate_conversation_id;
use super::sync::Filled;
use super::{Caller, Timeline, page_size};
use crate::cache::SeqKey;
use crate::store::{DeliveryMode, MessageRow, ReadOrder, SeqRange};

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// Newest first.
    pub messages: Vec<MessageRow>,
    pub has_more: bool,
    pub next_before_seq: u64,
}

impl Timeline {
    /// Fills the gaps between the rows of a history page (newest first) whose successor is
    /// older than gap_grace: conv_seqs abandoned by a writer that died. The sweeper does this
    /// for recent allocations; reading history repairs what it missed (its state lives in the
    /// Cache, which may have been lost). Each new hole is delivered the way its mode says.
    async fn repair_gaps(
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

    pub async fn history(
        &self,
        caller: &Caller,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> TimelineResult<HistoryPage> {
        validate_conversation_id(conversation_id)?;
        let limit = page_size(
            limit,
            self.limits.history_default_limit,
            self.limits.history_max_limit,
        );
        let (_, member) = self
            .require_member(&caller.user_id, conversation_id)
            .await?;
        let lowest = member.joined_seq.max(1);
        let highest = match before_seq {
            0 => {
                self.read_bound(&SeqKey::Conversation(conversation_id.to_owned()))
                    .await?
            }
            b => b - 1,
        };
        let mut messages = Vec::with_capacity(limit + 1);
        if highest >= lowest {
            let size = self.limits.bucket_size;
            let mut bucket = self.bucket(highest);
            loop {
                let range = SeqRange {
                    from: (bucket * size).max(lowest),
                    to: (bucket * size + size - 1).min(highest),
                };
                let want = limit + 1 - messages.len();
                let rows = self
                    .store
                    .read_messages(conversation_id, bucket, range, ReadOrder::Descending, want)
                    .await?;
                messages.extend(rows);
                if messages.len() > limit || bucket == 0 || bucket * size <= lowest {
                    break;
                }
                bucket -= 1;
            }
        }
        // Everything down to `lowest` was read when the page came back short.
        let bottom = (messages.len() <= limit).then_some(lowest);
        self.repair_gaps(conversation_id, &mut messages, bottom)
            .await?;
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        let next_before_seq = messages.last().map_or(0, |m| m.conv_seq);
        Ok(HistoryPage {
            messages,
            has_more,
            next_before_seq,
        })
    }
}
