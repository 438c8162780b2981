//! Delivery of a durably written message, shared by the send path, mode switches and the
//! backfills of joins and switches: fan-out to the inboxes of the entitled members (with the
//! activity updates and inbox retention), the hot append to a conversation's Cache window,
//! the outbox entry and its re-drive, and the encoding of window entries.
//!
//! A write that lands later than `gap_grace / 2` after its seq was allocated may have been
//! given up by a reader as abandoned: [`Timeline::late`] says so and the writer repeats it
//! under a fresh seq, at most [`MAX_LATE_REWRITES`] times.

use super::Timeline;
use super::error::{TimelineError, TimelineResult};
use super::reads::read_pages;
use crate::cache::{HotEntry, SeqKey, SeqRequest};
use crate::metrics;
use crate::store::*;

/// Members read per page while fanning out.
const MEMBER_PAGE: usize = 1000;
/// Outbox entries read per shard per recovery pass.
const RECOVERY_BATCH: usize = 256;
/// A send rewritten this often and still late gives up rewriting (its last copy stands).
pub(crate) const MAX_LATE_REWRITES: u32 = 3;

/// The payload of a hot window entry.
pub(crate) fn encode_message(message: &MessageRow) -> TimelineResult<bytes::Bytes> {
    postcard::to_stdvec(message)
        .map(bytes::Bytes::from)
        .map_err(|e| TimelineError::Store(StoreError::Corrupt(format!("encoding a message: {e}"))))
}

pub(crate) fn decode_message(payload: &[u8]) -> TimelineResult<MessageRow> {
    postcard::from_bytes(payload).map_err(|e| {
        TimelineError::Store(StoreError::Corrupt(format!(
            "decoding a hot window entry: {e}"
        )))
    })
}

impl Timeline {
    pub(crate) fn outbox_entry(&self, message: &MessageRow) -> PendingFanoutRow {
        PendingFanoutRow {
            shard: pending_shard(message.message_id),
            message_id: message.message_id,
            conversation_id: message.conversation_id.clone(),
            conv_seq: message.conv_seq,
            created_at_ms: message.created_at_ms,
            inbox_allocation: Vec::new(),
        }
    }

    /// The inbox allocation an outbox entry recorded, while it is young enough that no reader
    /// can have given its seqs up; otherwise none (the re-drive allocates afresh).
    pub(crate) fn still_valid<'a>(&self, entry: &'a PendingFanoutRow) -> &'a [(String, u64)] {
        if self.late(entry.created_at_ms) {
            &[]
        } else {
            &entry.inbox_allocation
        }
    }

    /// Whether a write started at `since_ms` finished too late to be trusted at its seq.
    pub(crate) fn late(&self, since_ms: i64) -> bool {
        self.clock.now_ms() - since_ms > self.limits.gap_grace.as_millis() as i64 / 2
    }

    /// Adds a message to its hot conversation's Cache window: one atomic append, whatever the
    /// member count.
    pub(crate) async fn append_hot(&self, message: &MessageRow) -> TimelineResult<()> {
        let entry = HotEntry {
            conv_seq: message.conv_seq,
            payload: encode_message(message)?,
        };
        self.cache
            .hot_append(
                &message.conversation_id,
                entry,
                message.message_id,
                self.limits.hot_window,
                self.clock.now_ms(),
            )
            .await?;
        self.notify(|l| l.appended_hot(message));
        Ok(())
    }

    /// Copies `message` into the inbox of every member entitled to it and clears its outbox
    /// entry. `recorded` is an inbox allocation a previous attempt persisted: reusing it makes
    /// the re-drive rewrite the same rows instead of adding duplicates.
    pub(crate) async fn fan_out(
        &self,
        message: &MessageRow,
        recorded: &[(String, u64)],
    ) -> TimelineResult<usize> {
        let written = if recorded.is_empty() {
            let members = self.entitled_members(message).await?;
            self.write_to_inboxes(message, members, None, true).await?
        } else {
            let users = recorded.iter().map(|(u, _)| u.clone()).collect();
            self.write_to_inboxes(message, users, Some(recorded), true)
                .await?
        };
        ::metrics::histogram!(metrics::SEND_FANOUT_WIDTH).record(written as f64);
        Ok(written)
    }

    /// Writes `message` into the inbox of each user under a new inbox_seq (or the `recorded`
    /// ones), with the activity updates, clearing the outbox entry when `clear_pending`. A write
    /// that finished late is repeated under fresh seqs (see `send`). Then drops inbox buckets
    /// that fell out of retention.
    pub(crate) async fn write_to_inboxes(
        &self,
        message: &MessageRow,
        users: Vec<String>,
        recorded: Option<&[(String, u64)]>,
        clear_pending: bool,
    ) -> TimelineResult<usize> {
        let mut recorded = recorded.map(<[_]>::to_vec);
        let mut attempt = 0;
        loop {
            let allocation = match recorded.take() {
                Some(allocation) => allocation,
                None => self.allocate_inboxes(users.iter().cloned()).await?,
            };
            let allocated_at_ms = self.clock.now_ms();
            self.write_inbox_rows(message, &allocation, allocated_at_ms, clear_pending)
                .await?;
            if !self.late(allocated_at_ms) || attempt == MAX_LATE_REWRITES {
                return Ok(allocation.len());
            }
            ::metrics::counter!(metrics::LATE_REWRITES, "what" => "inbox").increment(1);
            attempt += 1;
        }
    }

    async fn write_inbox_rows(
        &self,
        message: &MessageRow,
        allocation: &[(String, u64)],
        allocated_at_ms: i64,
        clear_pending: bool,
    ) -> TimelineResult<()> {
        let inbox = allocation
            .iter()
            .map(|(user, seq)| InboxRow {
                user_id: user.clone(),
                inbox_seq: *seq,
                allocated_at_ms,
                message: message.clone(),
            })
            .collect();
        let activity = allocation
            .iter()
            .map(|(user, seq)| ActivityUpdate {
                user_id: user.clone(),
                conversation_id: message.conversation_id.clone(),
                last_seq: message.conv_seq,
                last_message_id: message.message_id,
                // Sending marks everything up to one's own message as read.
                read_seq: (*user == message.sender_id).then_some(message.conv_seq),
                inbox_seq: *seq,
            })
            .collect();
        self.store
            .write_fanout(&FanoutWrite {
                inbox,
                activity,
                clear_pending: clear_pending
                    .then(|| (pending_shard(message.message_id), message.message_id)),
            })
            .await?;
        ::metrics::counter!(metrics::INBOX_ROWS_WRITTEN).increment(allocation.len() as u64);
        self.notify(|l| {
            let users: Vec<&str> = allocation.iter().map(|(u, _)| u.as_str()).collect();
            l.fanned_out(message, &users);
        });
        for (user, seq) in allocation {
            if let Some(bucket) =
                droppable_bucket(*seq, self.limits.bucket_size, self.limits.inbox_max_rows)
            {
                self.store
                    .drop_inbox_bucket(user, bucket, self.limits.bucket_size)
                    .await?;
            }
        }
        Ok(())
    }

    /// Members whose membership covers the message: joined at or before its conv_seq.
    async fn entitled_members(&self, message: &MessageRow) -> TimelineResult<Vec<String>> {
        let members = read_pages(
            MEMBER_PAGE,
            usize::MAX,
            |after: Option<String>| async move {
                self.store
                    .list_members(&message.conversation_id, after.as_deref(), MEMBER_PAGE)
                    .await
            },
            |m| m.user_id.clone(),
            |m| m.joined_seq <= message.conv_seq,
        )
        .await?;
        Ok(members.into_iter().map(|m| m.user_id).collect())
    }

    /// One new inbox_seq for each user, in one sequencer round trip.
    pub(crate) async fn allocate_inboxes(
        &self,
        users: impl IntoIterator<Item = String>,
    ) -> TimelineResult<Vec<(String, u64)>> {
        let users: Vec<String> = users.into_iter().collect();
        let requests: Vec<SeqRequest> = users
            .iter()
            .map(|u| SeqRequest {
                key: SeqKey::Inbox(u.clone()),
                count: 1,
            })
            .collect();
        let seqs = self.allocate(&requests).await?;
        Ok(users.into_iter().zip(seqs).collect())
    }

    /// Delivers a hot message: the window append, the sender's read position, and clearing
    /// its outbox entry when one was written.
    pub(crate) async fn deliver_hot(
        &self,
        message: &MessageRow,
        clear_outbox: bool,
    ) -> TimelineResult<()> {
        self.append_hot(message).await?;
        self.store
            .advance_read_seq(
                &message.sender_id,
                &message.conversation_id,
                message.conv_seq,
            )
            .await?;
        if clear_outbox {
            self.store
                .delete_pending(pending_shard(message.message_id), message.message_id)
                .await?;
        }
        Ok(())
    }

    /// Completes an outbox entry: fans the message out or — when its seq is hot (the sender
    /// wrote the entry on a stale hint and stopped before delivering) — appends it to the
    /// window and clears the entry, so a hot seq never gets inbox rows. The conversation is
    /// read after the message, so its spans are final for the message's seq.
    pub(crate) async fn redrive(
        &self,
        message: &MessageRow,
        entry: &PendingFanoutRow,
    ) -> TimelineResult<()> {
        let hot = self
            .store
            .get_conversation(&message.conversation_id)
            .await?
            .is_some_and(|c| c.mode_at(message.conv_seq) == DeliveryMode::Hot);
        if hot {
            self.deliver_hot(message, true).await?;
        } else {
            self.fan_out(message, self.still_valid(entry)).await?;
        }
        Ok(())
    }

    /// Re-drives every outbox entry created at or before `created_before_ms`; returns how many.
    pub async fn recover_pending(&self, created_before_ms: i64) -> TimelineResult<usize> {
        let mut redriven = 0;
        for shard in 0..PENDING_SHARDS {
            for entry in self.store.list_pending(shard, RECOVERY_BATCH).await? {
                if entry.created_at_ms > created_before_ms {
                    continue;
                }
                match self
                    .find_message(&entry.conversation_id, entry.conv_seq, entry.message_id)
                    .await?
                {
                    Some(message) => self.redrive(&message, &entry).await?,
                    // The entry is written with its message: without one there is nothing to
                    // deliver, and keeping it would re-drive forever.
                    None => self.store.delete_pending(shard, entry.message_id).await?,
                }
                ::metrics::counter!(metrics::RECOVERY_REDRIVES, "trigger" => "recovery")
                    .increment(1);
                redriven += 1;
            }
        }
        Ok(redriven)
    }
}

/// When an inbox's head enters a new bucket, the one bucket that just fell entirely below
/// `head - inbox_max_rows`: retention drops a whole partition at a time, so an inbox keeps
/// between `inbox_max_rows` and `inbox_max_rows + bucket_size` rows.
fn droppable_bucket(head: u64, size: u64, max_rows: u64) -> Option<u64> {
    if head == 0 || !head.is_multiple_of(size) {
        return None;
    }
    let threshold = head.checked_sub(max_rows)?;
    ((threshold + 1) / size).checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_drops_each_bucket_once_the_head_leaves_it_far_enough_behind() {
        let dropped: Vec<(u64, u64)> = (1..=30_000u64)
            .filter_map(|h| droppable_bucket(h, 4096, 10_000).map(|b| (h, b)))
            .collect();
        assert_eq!(
            dropped,
            vec![(16384, 0), (20480, 1), (24576, 2), (28672, 3)]
        );
        for (head, bucket) in dropped {
            // Everything dropped is below the rows to keep; at least inbox_max_rows remain.
            assert!((bucket + 1) * 4096 - 1 <= head - 10_000);
            assert!(head - (bucket + 1) * 4096 + 1 >= 10_000);
        }
    }
}
