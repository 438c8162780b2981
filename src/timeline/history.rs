//! GetHistory: one conversation backwards by conv_seq, members only, nothing
//! before the caller's joined_seq. Walks `(conversation_id, bucket)` partitions downwards.

use super::error::TimelineResult;
use super::ids::validate_conversation_id;
use super::reads::page_size;
use super::{Caller, Timeline};
use crate::cache::SeqKey;
use crate::store::{MessageRow, ReadOrder, SeqRange};

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// Newest first.
    pub messages: Vec<MessageRow>,
    pub has_more: bool,
    pub next_before_seq: u64,
}

impl Timeline {
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
        self.mask_hidden(&caller.user_id, &mut messages).await?;
        let next_before_seq = messages.last().map_or(0, |m| m.conv_seq);
        Ok(HistoryPage {
            messages,
            has_more,
            next_before_seq,
        })
    }

    /// The newest message (not a hole) of a conversation among its last few seqs, read
    /// without a caller: for notifying about it, never shown to anyone not entitled to it.
    pub(crate) async fn newest_message(
        &self,
        conversation_id: &str,
    ) -> TimelineResult<Option<MessageRow>> {
        let highest = self
            .read_bound(&SeqKey::Conversation(conversation_id.to_owned()))
            .await?;
        if highest == 0 {
            return Ok(None);
        }
        let bucket = self.bucket(highest);
        let range = SeqRange {
            from: bucket * self.limits.bucket_size,
            to: highest,
        };
        let rows = self
            .store
            .read_messages(conversation_id, bucket, range, ReadOrder::Descending, 8)
            .await?;
        Ok(rows
            .into_iter()
            .find(|m| m.kind == crate::store::MessageKind::User))
    }
}
