//! Delivery of a durably written message, shared by the send path, mode switches and the
//! backfills of joins and switches: fan-out to the inboxes of the entitled members (with the
//! activity updates and inbox retention), the hot append to a conversation's Cache window,
//! the outbox entry and its re-drive, and the encoding of window entries.
//!
//! A write that lands later than `gap_grace / 2` after its seq was allocated may have been
//! given up by a reader as abandoned: [`Timeline::late`] says so and the writer repeats it
//! under a fresh seq, at most [`MAX_LATE_REWRITES`] times.

use super::error::{TimelineError, TimelineResult};
use super::reads::read_pages;
use super::{Broken, Timeline};
use crate::cache::{HotEntry, SeqKey, SeqRequest};
use crate::metrics;
use crate::store::*;

/// Members read per page while fanning out.
const MEMBER_PAGE: usize = 1000;
/// Outbox entries read per partition per recovery pass.
const RECOVERY_BATCH: usize = 256;
/// How far behind another node's clock may be: it stamps its outbox entries with its own time,
/// so a bucket is drained for good only this long after it ended.
const OUTBOX_CLOCK_SKEW_MS: i64 = 10_000;
/// A send rewritten this often and still late gives up rewriting (its last copy stands).
pub(crate) const MAX_LATE_REWRITES: u32 = 3;

/// The payload of a hot window entry.
pub(crate) fn encode_message(message: &MessageRow) -> TimelineResult<bytes::Bytes> {
    postcard::to_stdvec(message)
        .map(bytes::Bytes::from)
        .map_err(|e| TimelineError::Store(StoreError::Corrupt(format!("encoding a message: {e}"))))
}

pub(crate) fn decode_message(payload: &[u8]) -> TimelineResult<MessageRow> {
    // A window may still hold entries a node of an older version appended.
    crate::model::decode_with_appended_fields(payload).map_err(|e| {
        TimelineError::Store(StoreError::Corrupt(format!(
            "decoding a hot window entry: {e}"
        )))
    })
}

impl Timeline {
    pub(crate) fn outbox_entry(&self, message: &MessageRow) -> PendingFanoutRow {
        let key = OutboxKey::for_message(message);
        PendingFanoutRow {
            bucket: key.bucket,
            shard: key.shard,
            message_id: message.message_id,
            conversation_id: message.conversation_id.clone(),
            conv_seq: message.conv_seq,
            created_at_ms: message.created_at_ms,
            inbox_allocation: Vec::new(),
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
                message.count_seq,
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
                count_seq: message.count_seq,
                inbox_seq: *seq,
            })
            .collect();
        self.store
            .write_fanout(&FanoutWrite {
                inbox,
                activity,
                clear_pending: clear_pending.then(|| OutboxKey::for_message(message)),
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
                message.count_seq,
            )
            .await?;
        if clear_outbox {
            self.store
                .delete_pending(OutboxKey::for_message(message))
                .await?;
        }
        Ok(())
    }

    /// Completes an outbox entry: fans the message out or — when its seq is hot (the sender
    /// wrote the entry on a stale hint and stopped before delivering) — appends it to the
    /// window and clears the entry, so a hot seq never gets inbox rows. The conversation is
    /// read after the message, so its spans are final for the message's seq.
    ///
    /// One re-drive at a time per message (a Cache claim): recovery on every node and a
    /// client's retry may find the same entry, and two re-drives would each add inbox rows.
    /// Returns false when another holds the claim (the entry is left to it).
    pub(crate) async fn redrive(
        &self,
        message: &MessageRow,
        entry: &PendingFanoutRow,
    ) -> TimelineResult<bool> {
        let key = redrive_claim_key(message.message_id);
        let holder = rand::random::<u64>();
        let lease = self.limits.send_claim_lease;
        let claimed = if self.broken(Broken::FailedClaimKept) {
            self.cache.claim(&key, holder, lease).await?
        } else {
            self.take_claim(&key, holder, lease).await?
        };
        if claimed.is_some() && !self.broken(Broken::RedriveWithoutClaim) {
            return Ok(false);
        }
        let done = self.redrive_claimed(message, entry).await;
        self.release_claim(&key, holder, lease).await;
        done.map(|()| true)
    }

    async fn redrive_claimed(
        &self,
        message: &MessageRow,
        entry: &PendingFanoutRow,
    ) -> TimelineResult<()> {
        // Someone else finished it between our read of the entry and the claim.
        if self.store.get_pending(entry.key()).await?.is_none() {
            return Ok(());
        }
        let hot = self
            .store
            .get_conversation(&message.conversation_id)
            .await?
            .is_some_and(|c| c.mode_at(message.conv_seq) == DeliveryMode::Hot);
        if hot {
            self.deliver_hot(message, true).await?;
        } else if entry.inbox_allocation.is_empty() || !self.late(entry.created_at_ms) {
            // Young enough that no reader gave the recorded seqs up: rewrite the same rows.
            self.fan_out(message, &entry.inbox_allocation).await?;
        } else {
            // A reader may have passed a recorded seq whose row never landed: the users whose
            // row did land are done, the others get fresh seqs.
            let mut missing = Vec::new();
            for (user, seq) in &entry.inbox_allocation {
                if !self
                    .inbox_row_landed(user, *seq, message.message_id)
                    .await?
                {
                    missing.push(user.clone());
                }
            }
            let written = self.write_to_inboxes(message, missing, None, true).await?;
            ::metrics::histogram!(metrics::SEND_FANOUT_WIDTH).record(written as f64);
        }
        Ok(())
    }

    /// Whether `user`'s inbox holds `message_id` at `inbox_seq`.
    async fn inbox_row_landed(
        &self,
        user: &str,
        inbox_seq: u64,
        message_id: u64,
    ) -> TimelineResult<bool> {
        let Some(before) = inbox_seq.checked_sub(1) else {
            return Ok(false);
        };
        let rows = self
            .store
            .read_inbox(
                user,
                inbox_seq / self.limits.bucket_size,
                InboxPosition {
                    inbox_seq: before,
                    message_id: u64::MAX,
                },
                4,
            )
            .await?;
        Ok(rows
            .iter()
            .take_while(|r| r.inbox_seq == inbox_seq)
            .any(|r| r.message.message_id == message_id))
    }

    /// Re-drives every outbox entry created at or before `created_before_ms`; returns how many.
    ///
    /// Reads the time buckets from the first one this node has not drained (at its first pass:
    /// `recovery_lookback` back) to the one `created_before_ms` falls in. A bucket whose every
    /// entry was re-driven, and which ended long enough ago that no node can still add to it,
    /// is drained and not read again.
    pub async fn recover_pending(&self, created_before_ms: i64) -> TimelineResult<usize> {
        // No entry is stamped later than now (give or take another node's clock): a caller
        // asking for everything reads up to there.
        let created_before_ms =
            created_before_ms.min(self.clock.now_ms().saturating_add(OUTBOX_CLOCK_SKEW_MS));
        let first = {
            let lookback = self.limits.recovery_lookback.as_millis() as i64;
            let mut undrained = self
                .outbox_undrained
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *undrained.get_or_insert(outbox_bucket(created_before_ms.saturating_sub(lookback)))
        };
        let last = outbox_bucket(created_before_ms);
        let mut redriven = 0;
        let mut undrained = first;
        for bucket in first..=last {
            let ended_ms = (bucket as i64 + 1) * OUTBOX_BUCKET_MS;
            let mut drained = ended_ms + OUTBOX_CLOCK_SKEW_MS <= created_before_ms;
            // The bucket's shards read at once (a starting node reads a whole lookback).
            let reads: Vec<_> = (0..OUTBOX_SHARDS)
                .map(|shard| self.store.list_pending(bucket, shard, RECOVERY_BATCH))
                .collect();
            for entries in futures::future::try_join_all(reads).await? {
                drained &= entries.len() < RECOVERY_BATCH;
                for entry in entries {
                    if entry.created_at_ms > created_before_ms {
                        drained = false;
                        continue;
                    }
                    if self.redrive_entry(&entry).await? {
                        ::metrics::counter!(metrics::RECOVERY_REDRIVES, "trigger" => "recovery")
                            .increment(1);
                        redriven += 1;
                    } else {
                        drained = false;
                    }
                }
            }
            if drained && undrained == bucket {
                undrained = bucket + 1;
            }
        }
        *self
            .outbox_undrained
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(undrained);
        Ok(redriven)
    }

    /// Re-drives one entry unless another node holds its claim; false when it was left.
    async fn redrive_entry(&self, entry: &PendingFanoutRow) -> TimelineResult<bool> {
        match self
            .find_message(&entry.conversation_id, entry.conv_seq, entry.message_id)
            .await?
        {
            Some(message) => self.redrive(&message, entry).await,
            // The entry is written with its message: without one there is nothing to deliver
            // (or it is what a late allocation record recreated), and keeping it would re-drive
            // it forever.
            None => {
                self.store.delete_pending(entry.key()).await?;
                Ok(true)
            }
        }
    }
}

/// The Cache claim a re-drive of the message holds.
pub(crate) fn redrive_claim_key(message_id: u64) -> String {
    format!("redrive:{message_id}")
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
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cache::Cache;
    use crate::cache::local::LocalCache;
    use crate::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
    use crate::testkit::faults::ManualClock;
    use crate::testkit::groups::group;
    use crate::timeline::{Clock, Limits};

    /// Another node is re-driving an interrupted send (it holds the claim) when this node's
    /// recovery finds the entry: this node leaves it, and keeps the bucket to read again.
    /// Returns bob's inbox copies after that pass and after a pass once the claim is gone.
    /// (Sync hides a second copy landing next to the first, so the property test's client
    /// view cannot see a double re-drive: the rows are counted here.)
    async fn copies_while_another_node_redrives(broken: Option<Broken>) -> (usize, usize) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Buffered, 64))
            .unwrap();
        let cache = Arc::new(LocalCache::new());
        let clock = ManualClock::new(1_800_000_000_000);
        let node = |id| {
            Timeline::new(
                store.clone(),
                cache.clone(),
                Limits {
                    node_id: id,
                    broken,
                    ..Limits::default()
                },
                clock.clone(),
            )
        };
        let a = node(1);
        let group = group(&a, "alice", &["bob"]).await;
        // What a crash after the durable step leaves: the message and its outbox entry.
        let message = MessageRow {
            conversation_id: group.conversation_id.clone(),
            conv_seq: 1,
            message_id: 77,
            sender_id: "alice".into(),
            sender_device_id: "d".into(),
            client_msg_id: "c".into(),
            content_type: "text/plain".into(),
            body: bytes::Bytes::from_static(b"hi"),
            created_at_ms: clock.now_ms(),
            kind: MessageKind::User,
            count_seq: 1,
            target_message_id: 0,
            edited_at_ms: 0,
            recalled_at_ms: 0,
        };
        store
            .write_message(&MessageWrite {
                pending: Some(a.outbox_entry(&message)),
                message: message.clone(),
                idempotency: None,
            })
            .await
            .unwrap();
        clock.advance(Duration::from_secs(10));
        let other_node = 999;
        let key = redrive_claim_key(message.message_id);
        let lease = Duration::from_secs(30);
        assert_eq!(cache.claim(&key, other_node, lease).await.unwrap(), None);
        let copies = || async {
            let rows = store
                .read_inbox("bob", 0, InboxPosition::default(), 100)
                .await
                .unwrap();
            rows.iter()
                .filter(|r| r.message.message_id == message.message_id)
                .count()
        };
        a.recover_pending(clock.now_ms()).await.unwrap();
        let while_claimed = copies().await;
        cache.release_claim(&key, other_node).await.unwrap();
        a.recover_pending(clock.now_ms()).await.unwrap();
        (while_claimed, copies().await)
    }

    #[tokio::test]
    async fn a_redrive_leaves_an_entry_another_node_is_redriving() {
        assert_eq!(copies_while_another_node_redrives(None).await, (0, 1));
        // Without the claim both nodes would write a copy: the check catches it.
        assert_eq!(
            copies_while_another_node_redrives(Some(Broken::RedriveWithoutClaim))
                .await
                .0,
            1
        );
    }

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
