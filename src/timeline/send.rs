//! The send path (DESIGN §5) and the re-drive of its outbox.
//!
//! Order matters for the guarantees:
//! 1. idempotency: a known `(sender, client_msg_id)` answers with the first result;
//! 2. message_id (local snowflake) and conv_seq (sequencer);
//! 3. durable write: message row + outbox entry + idempotency record, atomically;
//! 4. members are read *after* that write, so a concurrent join either is seen here or finds
//!    the message in its backfill (see `add_members`);
//! 5. fan-out: inbox rows, activity, clearing the outbox entry — one batched write;
//! 6. ack. A crash anywhere after 3 leaves the outbox entry, which recovery re-drives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::error::{TimelineError, TimelineResult, invalid};
use super::ids::{
    MAX_CLIENT_MSG_ID_LEN, MAX_CONTENT_TYPE_LEN, validate_conversation_id, validate_token,
};
use super::sync::Filled;
use super::{Broken, Caller, Timeline, read_pages};
use crate::cache::{HotEntry, SeqKey, SeqRequest};
use crate::metrics;
use crate::store::*;

const DEFAULT_CONTENT_TYPE: &str = "text/plain";
/// Members read per page while fanning out.
const MEMBER_PAGE: usize = 1000;
/// Conversations the sweeper checks per pass.
const SWEEP_BATCH: usize = 256;
/// Outbox entries read per shard per recovery pass.
const RECOVERY_BATCH: usize = 256;
/// How often a send that found its client_msg_id claimed looks for the first one's result.
const CLAIM_POLL: Duration = Duration::from_millis(25);
/// A send rewritten this often and still late gives up rewriting (its last copy stands).
const MAX_LATE_REWRITES: u32 = 3;

/// The Cache key that makes one `(sender, client_msg_id)` create at most one message.
fn send_claim_key(caller: &Caller, client_msg_id: &str) -> String {
    format!("send:{}:{client_msg_id}", caller.user_id)
}

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

#[derive(Debug, Clone, PartialEq)]
pub struct SendMessage {
    pub conversation_id: String,
    pub client_msg_id: String,
    pub content_type: String,
    pub body: Bytes,
}

impl Timeline {
    pub async fn send(&self, caller: &Caller, req: SendMessage) -> TimelineResult<MessageRow> {
        validate_conversation_id(&req.conversation_id)?;
        validate_token("client_msg_id", &req.client_msg_id, MAX_CLIENT_MSG_ID_LEN)?;
        validate_token("content_type", &req.content_type, MAX_CONTENT_TYPE_LEN)?;
        if req.body.len() > self.limits.max_body_bytes {
            return Err(invalid(format!(
                "body is {} bytes, more than the limit of {}",
                req.body.len(),
                self.limits.max_body_bytes
            )));
        }
        let conversation = self
            .conversation_for_send(caller, &req.conversation_id)
            .await?;
        let idempotent = !req.client_msg_id.is_empty();
        if idempotent && let Some(first) = self.replay(caller, &req).await? {
            return Ok(first);
        }

        let now = self.clock.now_ms();
        let message_id = self.ids.next(now);
        if idempotent
            && let Some(first) = self.claim_client_msg_id(caller, &req, message_id).await?
        {
            return Ok(first);
        }

        let content_type = if req.content_type.is_empty() {
            DEFAULT_CONTENT_TYPE.to_owned()
        } else {
            req.content_type
        };
        let mut message = MessageRow {
            conversation_id: conversation.conversation_id.clone(),
            conv_seq: 0,
            message_id,
            sender_id: caller.user_id.clone(),
            sender_device_id: caller.device_id.clone(),
            client_msg_id: req.client_msg_id.clone(),
            content_type,
            body: req.body,
            created_at_ms: 0,
            kind: MessageKind::User,
        };
        // Only fan-out needs the outbox (a hot message is read from `messages` itself); the
        // mode read here is a hint, the one read after the write decides.
        let with_outbox =
            conversation.mode() == DeliveryMode::Fanout && !self.broken(Broken::SendWithoutOutbox);
        let mut abandoned = Vec::new();
        // A write that lands later than gap_grace/2 after its seq was allocated may have been
        // given up by a reader as abandoned: it is written again under a fresh seq.
        for attempt in 0.. {
            message.conv_seq = match self.allocate_conv_seq(&message.conversation_id).await {
                Ok(seq) => seq,
                Err(e) => {
                    if idempotent && attempt == 0 {
                        self.release_claim_soon(
                            send_claim_key(caller, &req.client_msg_id),
                            message_id,
                        );
                    }
                    return Err(e);
                }
            };
            // Taken after the allocation: a reader judges a gap by its successor's age.
            message.created_at_ms = self.clock.now_ms();
            self.store
                .write_message(&MessageWrite {
                    message: message.clone(),
                    pending: with_outbox.then(|| self.outbox_entry(&message)),
                    idempotency: idempotent.then(|| IdempotencyRow {
                        sender_id: caller.user_id.clone(),
                        client_msg_id: message.client_msg_id.clone(),
                        message_id,
                        conversation_id: message.conversation_id.clone(),
                        conv_seq: message.conv_seq,
                        created_at_ms: message.created_at_ms,
                    }),
                })
                .await?;
            if !self.late(message.created_at_ms) || attempt == MAX_LATE_REWRITES {
                break;
            }
            ::metrics::counter!(metrics::LATE_REWRITES, "what" => "message").increment(1);
            abandoned.push(message.conv_seq);
        }
        let conversation = self.deliver(&message, with_outbox).await?;
        // A seq given up by a late rewrite holds a stale copy in `messages` (hot readers turn
        // the second copy into a hole); fan-out readers get a hole for it explicitly.
        for seq in abandoned {
            if conversation.mode_at(seq) == DeliveryMode::Fanout {
                let hole = hole_message(&message.conversation_id, seq, self.clock.now_ms());
                self.fan_out(&hole, &[]).await?;
            }
        }
        Ok(message)
    }

    /// Frees a send's client_msg_id after it failed before writing anything, so the client's
    /// retry proceeds at once instead of waiting out the lease. The Cache just failed, so the
    /// release is retried in the background for up to the lease.
    fn release_claim_soon(&self, key: String, holder: u64) {
        let cache = self.cache.clone();
        let lease = self.limits.send_claim_lease;
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut delay = Duration::from_millis(50);
            while cache.release_claim(&key, holder).await.is_err() && started.elapsed() < lease {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        });
    }

    async fn allocate_conv_seq(&self, conversation_id: &str) -> TimelineResult<u64> {
        let request = SeqRequest {
            key: SeqKey::Conversation(conversation_id.to_owned()),
            count: 1,
        };
        Ok(self.allocate(&[request]).await?[0])
    }

    fn outbox_entry(&self, message: &MessageRow) -> PendingFanoutRow {
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
    fn still_valid<'a>(&self, entry: &'a PendingFanoutRow) -> &'a [(String, u64)] {
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

    /// Delivers a durably written message the way its conv_seq's mode says, as read *after*
    /// the write (see `mode.rs` for why that ordering never loses a message), then lets the
    /// conversation switch mode if its size or fan-out rate calls for it.
    async fn deliver(
        &self,
        message: &MessageRow,
        outbox_written: bool,
    ) -> TimelineResult<ConversationRow> {
        let conversation = self
            .store
            .get_conversation(&message.conversation_id)
            .await?
            .ok_or_else(|| {
                TimelineError::Store(StoreError::Corrupt(format!(
                    "conversation {} vanished under a send",
                    message.conversation_id
                )))
            })?;
        let rows = match conversation.mode_at(message.conv_seq) {
            DeliveryMode::Fanout => {
                if !outbox_written && !self.broken(Broken::SendWithoutOutbox) {
                    self.store
                        .write_message(&MessageWrite {
                            message: message.clone(),
                            pending: Some(self.outbox_entry(message)),
                            idempotency: None,
                        })
                        .await?;
                }
                ::metrics::counter!(metrics::MESSAGES_SENT, "mode" => "fanout").increment(1);
                self.fan_out(message, &[]).await? as u64
            }
            DeliveryMode::Hot => {
                self.append_hot(message).await?;
                self.store
                    .advance_read_seq(
                        &message.sender_id,
                        &message.conversation_id,
                        message.conv_seq,
                    )
                    .await?;
                if outbox_written {
                    self.store
                        .delete_pending(pending_shard(message.message_id), message.message_id)
                        .await?;
                }
                ::metrics::counter!(metrics::MESSAGES_SENT, "mode" => "hot").increment(1);
                u64::from(conversation.member_count)
            }
        };
        let rate =
            self.fanout_rates
                .record(&conversation.conversation_id, rows, self.clock.now_ms());
        self.maybe_switch(&conversation, rate).await?;
        Ok(conversation)
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
        Ok(())
    }

    /// The first result of this `(sender, client_msg_id)`, completing its fan-out if a crash
    /// left it pending, so that the retry's ack means delivered just like the first's.
    async fn replay(
        &self,
        caller: &Caller,
        req: &SendMessage,
    ) -> TimelineResult<Option<MessageRow>> {
        let ttl = self.limits.idempotency_ttl.as_millis() as i64;
        let Some(record) = self
            .store
            .get_idempotency(
                &caller.user_id,
                &req.client_msg_id,
                self.clock.now_ms(),
                ttl,
            )
            .await?
        else {
            return Ok(None);
        };
        if record.conversation_id != req.conversation_id {
            return Err(invalid(format!(
                "client_msg_id {:?} was already used for conversation {}",
                req.client_msg_id, record.conversation_id
            )));
        }
        let message = self
            .find_message(&record.conversation_id, record.conv_seq, record.message_id)
            .await?
            .ok_or_else(|| {
                TimelineError::Store(StoreError::Corrupt(format!(
                    "idempotency record points at missing message {}",
                    record.message_id
                )))
            })?;
        let shard = pending_shard(record.message_id);
        if let Some(pending) = self.store.get_pending(shard, record.message_id).await? {
            self.fan_out(&message, self.still_valid(&pending)).await?;
            ::metrics::counter!(metrics::RECOVERY_REDRIVES, "trigger" => "retry").increment(1);
        }
        ::metrics::counter!(metrics::IDEMPOTENT_REPLAYS).increment(1);
        Ok(Some(message))
    }

    /// Takes the client_msg_id for this send so that concurrent duplicates cannot both create a
    /// message. A duplicate that finds the claim held waits briefly for the first result.
    async fn claim_client_msg_id(
        &self,
        caller: &Caller,
        req: &SendMessage,
        message_id: u64,
    ) -> TimelineResult<Option<MessageRow>> {
        let key = send_claim_key(caller, &req.client_msg_id);
        let claimed = match self
            .cache
            .claim(&key, message_id, self.limits.send_claim_lease)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                // The claim may still take effect (a reply lost, a paused Redis resuming):
                // take it back, or the retry would wait out the lease.
                self.release_claim_soon(key, message_id);
                return Err(e.into());
            }
        };
        if claimed.is_none() {
            // The claim may have expired after a first send completed: the record decides.
            return self.replay(caller, req).await;
        }
        let waited = tokio::time::Instant::now();
        while waited.elapsed()
            < self
                .limits
                .send_claim_wait
                .min(self.limits.send_claim_lease)
        {
            tokio::time::sleep(CLAIM_POLL).await;
            if let Some(first) = self.replay(caller, req).await? {
                return Ok(Some(first));
            }
        }
        Err(TimelineError::Aborted(format!(
            "a send with client_msg_id {:?} is still in progress; retry",
            req.client_msg_id
        )))
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
                    Some(message) => {
                        self.fan_out(&message, self.still_valid(&entry)).await?;
                    }
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
