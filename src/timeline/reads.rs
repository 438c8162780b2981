//! Paged reads the other parts share: one conversation's messages across its
//! `(conversation_id, bucket)` partitions, one conv_seq, partitions page by page, and the
//! bucket arithmetic every partitioned table uses.

use super::Timeline;
use super::error::TimelineResult;
use crate::store::{MessageKind, MessageRow, ReadOrder, SeqRange};

impl Timeline {
    /// Rows of `messages` with conv_seq in `from..=to`, ascending, at most `limit`, walking the
    /// `(conversation_id, bucket)` partitions in order.
    pub(crate) async fn read_messages_ascending(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> TimelineResult<Vec<crate::store::MessageRow>> {
        use crate::store::{ReadOrder, SeqRange};
        let size = self.limits.bucket_size;
        let mut out = Vec::new();
        let mut bucket = self.bucket(from);
        while from <= to && out.len() < limit && bucket <= self.bucket(to) {
            let range = SeqRange {
                from: (bucket * size).max(from),
                to: (bucket * size + size - 1).min(to),
            };
            let rows = self
                .store
                .read_messages(
                    conversation_id,
                    bucket,
                    range,
                    ReadOrder::Ascending,
                    limit - out.len(),
                )
                .await?;
            out.extend(rows);
            bucket += 1;
        }
        Ok(out)
    }

    pub(crate) async fn find_message(
        &self,
        conversation_id: &str,
        conv_seq: u64,
        message_id: u64,
    ) -> TimelineResult<Option<MessageRow>> {
        let rows = self
            .store
            .read_messages(
                conversation_id,
                self.bucket(conv_seq),
                SeqRange {
                    from: conv_seq,
                    to: conv_seq,
                },
                ReadOrder::Ascending,
                16,
            )
            .await?;
        Ok(rows.into_iter().find(|m| m.message_id == message_id))
    }

    /// Every row stored at conv_seq `seq` (a late rewrite or a hole may share it).
    pub(crate) async fn read_seq(
        &self,
        conversation_id: &str,
        seq: u64,
    ) -> TimelineResult<Vec<MessageRow>> {
        Ok(self
            .store
            .read_messages(
                conversation_id,
                self.bucket(seq),
                SeqRange { from: seq, to: seq },
                ReadOrder::Ascending,
                16,
            )
            .await?)
    }

    /// The conversation's count (`MessageRow::count_seq`) through conv_seq `seq`: what a
    /// reader at `seq` has read. That of the first message above it less its own (which also
    /// covers counts taken by seqs abandoned in between, which no message shows); with nothing
    /// written above, that of the newest row at or below it that carries one.
    pub(crate) async fn count_at(&self, conversation_id: &str, seq: u64) -> TimelineResult<u64> {
        let bound = self
            .read_bound(&crate::cache::SeqKey::Conversation(
                conversation_id.to_owned(),
            ))
            .await?;
        if seq < bound {
            let above = self
                .read_messages_ascending(conversation_id, seq + 1, bound, 16)
                .await?;
            if let Some(next) = above.iter().find(|m| m.kind != MessageKind::Hole) {
                return Ok(next
                    .count_seq
                    .saturating_sub(u64::from(next.kind.counts_as_unread())));
            }
        }
        let mut bucket = self.bucket(seq);
        loop {
            let range = SeqRange {
                from: bucket * self.limits.bucket_size,
                to: seq,
            };
            let rows = self
                .store
                .read_messages(conversation_id, bucket, range, ReadOrder::Descending, 16)
                .await?;
            if let Some(m) = rows
                .iter()
                .find(|m| m.kind != MessageKind::Hole || m.count_seq > 0)
            {
                return Ok(m.count_seq);
            }
            if bucket == 0 || rows.len() == 16 {
                return Ok(0);
            }
            bucket -= 1;
        }
    }

    pub(crate) fn bucket(&self, seq: u64) -> u64 {
        seq / self.limits.bucket_size
    }
}

/// Reads a partition page by page (each page strictly after the last key of the previous one),
/// keeping the rows `keep` accepts, until the partition ends or `cap` rows are kept.
pub(crate) async fn read_pages<T, F, Fut>(
    page_size: usize,
    cap: usize,
    mut fetch: F,
    key: impl Fn(&T) -> String,
    keep: impl Fn(&T) -> bool,
) -> TimelineResult<Vec<T>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = crate::store::StoreResult<Vec<T>>>,
{
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = fetch(after).await?;
        let done = page.len() < page_size;
        after = page.last().map(&key);
        out.extend(page.into_iter().filter(|row| keep(row)));
        if done || out.len() >= cap {
            return Ok(out);
        }
    }
}

/// Clamps a requested page size: 0 means the default.
pub(crate) fn page_size(requested: u32, default: u32, max: u32) -> usize {
    (if requested == 0 {
        default
    } else {
        requested.min(max)
    }) as usize
}
