//! The send path: validation, idempotency, allocation, durable write, delivery, ack.
//!
//! Order matters for the guarantees:
//! 1. idempotency: a known `(sender, client_msg_id)` answers with the first result;
//! 2. message_id (local snowflake) and conv_seq (sequencer);
//! 3. durable write: message row + outbox entry + idempotency record, atomically;
//! 4. members are read *after* that write, so a concurrent join either is seen here or finds
//!    the message in its backfill (see `add_members`);
//! 5. fan-out: inbox rows, activity, clearing the outbox entry — one batched write;
//! 6. ack. A crash anywhere after 3 leaves the outbox entry, which recovery re-drives
//!    (`delivery.rs`).

use std::time::Duration;

use bytes::Bytes;

use super::delivery::MAX_LATE_REWRITES;
use super::error::{TimelineError, TimelineResult, invalid};
use super::ids::{
    MAX_CLIENT_MSG_ID_LEN, MAX_CONTENT_TYPE_LEN, validate_conversation_id, validate_token,
};
use super::{Broken, Caller, Timeline};
use crate::cache::CacheError;
use crate::metrics;
use crate::store::*;

const DEFAULT_CONTENT_TYPE: &str = "text/plain";
/// How often a send held back by a mode switch's fence tries to allocate again.
const FENCE_POLL: Duration = Duration::from_millis(2);
/// How often a send that found its client_msg_id claimed looks for the first one's result.
const CLAIM_POLL: Duration = Duration::from_millis(25);

/// The Cache key that makes one `(sender, client_msg_id)` create at most one message.
fn send_claim_key(caller: &Caller, client_msg_id: &str) -> String {
    format!("send:{}:{client_msg_id}", caller.user_id)
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
        self.validate_content(
            &req.conversation_id,
            &req.client_msg_id,
            &req.content_type,
            &req.body,
        )?;
        let (conversation, role) = self
            .conversation_for_send(caller, &req.conversation_id)
            .await?;
        self.append(caller, &conversation, role, req, MessageKind::User, 0)
            .await
    }

    /// The checks of what a client sends as a message's content (a send's, an edit's).
    pub(crate) fn validate_content(
        &self,
        conversation_id: &str,
        client_msg_id: &str,
        content_type: &str,
        body: &[u8],
    ) -> TimelineResult<()> {
        validate_conversation_id(conversation_id)?;
        validate_token("client_msg_id", client_msg_id, MAX_CLIENT_MSG_ID_LEN)?;
        validate_token("content_type", content_type, MAX_CONTENT_TYPE_LEN)?;
        if body.len() > self.limits.max_body_bytes {
            return Err(invalid(format!(
                "body is {} bytes, more than the limit of {}",
                body.len(),
                self.limits.max_body_bytes
            )));
        }
        Ok(())
    }

    /// Appends one entry to the conversation through the send pipeline (the steps in the
    /// module docs): a user message, or a change to one (`target_message_id`) that travels to
    /// every device the way messages do. Idempotent by `req.client_msg_id`; rate limits and
    /// slowmode apply to user messages only.
    pub(crate) async fn append(
        &self,
        caller: &Caller,
        conversation: &ConversationRow,
        role: Role,
        req: SendMessage,
        kind: MessageKind,
        target_message_id: u64,
    ) -> TimelineResult<MessageRow> {
        let idempotent = !req.client_msg_id.is_empty();
        if idempotent && let Some(first) = self.replay(caller, &req).await? {
            return Ok(first);
        }
        // After the replay: a retry of a message already sent costs no quota.
        let user_message = kind == MessageKind::User;
        if user_message {
            self.admit_send_rate(conversation).await?;
            if !self.broken(Broken::SlowmodeAfterWrite) {
                self.admit_slowmode(conversation, role, caller).await?;
            }
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
            kind,
            count_seq: 0,
            target_message_id,
            edited_at_ms: 0,
            recalled_at_ms: 0,
        };
        // Only fan-out needs the outbox (a hot message is read from `messages` itself); the
        // mode read here is a hint, the one read after the write decides.
        let with_outbox =
            conversation.mode() == DeliveryMode::Fanout && !self.broken(Broken::SendWithoutOutbox);
        let mut abandoned = Vec::new();
        // A write that lands later than gap_grace/2 after its seq was allocated may have been
        // given up by a reader as abandoned: it is written again under a fresh seq.
        for attempt in 0.. {
            (message.conv_seq, message.count_seq) = match self
                .allocate_conv_seq(
                    &message.conversation_id,
                    kind.counts_as_unread() || self.broken(Broken::ChangesCountAsUnread),
                )
                .await
            {
                Ok(seqs) => seqs,
                Err(e) => {
                    if idempotent && attempt == 0 {
                        // It failed before writing anything: the retry may proceed at once.
                        self.release_claim_soon(
                            send_claim_key(caller, &req.client_msg_id),
                            message_id,
                            self.limits.send_claim_lease,
                        );
                    }
                    return Err(e);
                }
            };
            // Taken after the allocation: a reader judges a gap by its successor's age.
            message.created_at_ms = self.clock.now_ms();
            let written = self
                .store
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
                .await;
            if let Err(e) = written {
                if idempotent {
                    self.hold_claim_after_failed_write(caller, &message, &e)
                        .await;
                }
                return Err(e.into());
            }
            if user_message && self.broken(Broken::SlowmodeAfterWrite) {
                self.admit_slowmode(conversation, role, caller).await?;
            }
            if !self.late(message.created_at_ms) || attempt == MAX_LATE_REWRITES {
                break;
            }
            ::metrics::counter!(metrics::LATE_REWRITES, "what" => "message").increment(1);
            abandoned.push((message.conv_seq, message.count_seq));
        }
        let conversation = self.deliver(&message, with_outbox).await?;
        // A seq given up by a late rewrite holds a stale copy in `messages` (hot readers turn
        // the second copy into a hole); fan-out readers get a hole for it explicitly.
        for (seq, count) in abandoned {
            if conversation.mode_at(seq) == DeliveryMode::Fanout {
                let mut hole = hole_message(&message.conversation_id, seq, self.clock.now_ms());
                // The count the first attempt took: a reader past the hole has read it.
                hole.count_seq = count;
                self.fan_out(&hole, &[]).await?;
            }
        }
        Ok(message)
    }

    /// Holds a hot conversation to its send rate, cluster-wide through the Cache.
    async fn admit_send_rate(&self, conversation: &ConversationRow) -> TimelineResult<()> {
        let per_sec = self.limits.hot_conversation_sends_per_sec;
        if per_sec == 0 || conversation.mode() != DeliveryMode::Hot {
            return Ok(());
        }
        let id = &conversation.conversation_id;
        let period = Duration::from_secs(1) / per_sec;
        let burst = self.limits.hot_conversation_send_burst;
        self.admit_send(
            &format!("send:{id}"),
            period,
            burst,
            "conversation",
            |wait| {
                format!(
                    "{id} takes at most {per_sec} messages per second: retry in {} ms",
                    wait.as_millis()
                )
            },
        )
        .await
    }

    /// A member of a conversation in slowmode sends at most one message per its seconds, held
    /// across nodes through the Cache; owners and admins are exempt.
    async fn admit_slowmode(
        &self,
        conversation: &ConversationRow,
        role: Role,
        caller: &Caller,
    ) -> TimelineResult<()> {
        let seconds = conversation.slowmode_seconds;
        if seconds == 0 || role >= Role::Admin {
            return Ok(());
        }
        let id = &conversation.conversation_id;
        let key = format!("slow:{id}:{}", caller.user_id);
        let period = Duration::from_secs(u64::from(seconds));
        self.admit_send(&key, period, 1, "slowmode", |wait| {
            format!(
                "{id} is in slowmode: one message per {seconds} s; retry in {} s",
                wait.as_millis().div_ceil(1000)
            )
        })
        .await
    }

    /// One GCRA step on `key` for a send: refused with when to retry. Without the Cache the
    /// send is admitted: it then fails or succeeds on the sequencer, as it would have without
    /// a limit.
    async fn admit_send(
        &self,
        key: &str,
        period: Duration,
        burst: u32,
        scope: &'static str,
        message: impl FnOnce(Duration) -> String,
    ) -> TimelineResult<()> {
        match self.cache.admit_rate(key, period, burst).await {
            Ok(None) => Ok(()),
            Ok(Some(retry_after)) => {
                metrics::record_limited("send", scope);
                Err(TimelineError::Throttled {
                    message: message(retry_after),
                    retry_after,
                })
            }
            Err(e) => {
                self.cache_fallback("send_rate", &e);
                Ok(())
            }
        }
    }

    /// After a durable write that failed, the write may still land: ScyllaDB's batchlog
    /// replays a timed-out logged batch up to about a minute later. Until then a retry must
    /// not write a second message, so the client_msg_id stays claimed past that horizon; a
    /// retry meanwhile is told to retry, and finds the first message if it landed. A write
    /// that certainly did not happen (an overloaded store refused it) frees the id at once.
    async fn hold_claim_after_failed_write(
        &self,
        caller: &Caller,
        message: &MessageRow,
        error: &StoreError,
    ) {
        let key = send_claim_key(caller, &message.client_msg_id);
        if matches!(error, StoreError::Overloaded(_)) {
            self.release_claim_soon(key, message.message_id, self.limits.send_claim_lease);
            return;
        }
        if self.broken(Broken::ClaimLapsesAfterFailedWrite) {
            return;
        }
        match self
            .cache
            .extend_claim(&key, message.message_id, self.limits.uncertain_write_hold)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                client_msg_id = %message.client_msg_id,
                "a failed send's claim had lapsed: a retry may write a second message"
            ),
            Err(e) => tracing::warn!(error = %e, "could not hold a failed send's claim"),
        }
    }

    /// The next conv_seq and the conversation's count after it. While a mode switch fences the
    /// conversation (for the one Store write that publishes its span), waits up to
    /// `send_fence_wait` for it to lift.
    async fn allocate_conv_seq(
        &self,
        conversation_id: &str,
        countable: bool,
    ) -> TimelineResult<(u64, u64)> {
        let waited = tokio::time::Instant::now();
        loop {
            match self.allocate_message_seqs(conversation_id, countable).await {
                Ok(seqs) => return Ok(seqs),
                Err(TimelineError::Cache(CacheError::Fenced(_)))
                    if waited.elapsed() < self.limits.send_fence_wait =>
                {
                    tokio::time::sleep(FENCE_POLL).await;
                }
                Err(e) => return Err(e),
            }
        }
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
                self.deliver_hot(message, outbox_written).await?;
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

    /// The first result of this `(sender, client_msg_id)`, completing its fan-out if a crash
    /// left it pending, so that the retry's ack means delivered just like the first's.
    pub(crate) async fn replay(
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
        if let Some(pending) = self
            .store
            .get_pending(OutboxKey::for_message(&message))
            .await?
        {
            if self.redrive(&message, &pending).await? {
                ::metrics::counter!(metrics::RECOVERY_REDRIVES, "trigger" => "retry").increment(1);
            } else {
                self.await_redrive(&message, &req.client_msg_id).await?;
            }
        }
        ::metrics::counter!(metrics::IDEMPOTENT_REPLAYS).increment(1);
        Ok(Some(message))
    }

    /// Another re-drive of `message` holds its claim: waits up to `send_claim_wait` for it to
    /// clear the outbox entry, so that this ack too means delivered; else the client retries.
    async fn await_redrive(&self, message: &MessageRow, client_msg_id: &str) -> TimelineResult<()> {
        let waited = tokio::time::Instant::now();
        loop {
            if self
                .store
                .get_pending(OutboxKey::for_message(message))
                .await?
                .is_none()
            {
                return Ok(());
            }
            if waited.elapsed() >= self.limits.send_claim_wait {
                return Err(TimelineError::Aborted(format!(
                    "the message of client_msg_id {client_msg_id:?} is still being delivered; retry"
                )));
            }
            tokio::time::sleep(CLAIM_POLL).await;
        }
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
        let claimed = self
            .take_claim(&key, message_id, self.limits.send_claim_lease)
            .await?;
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cache::local::LocalCache;
    use crate::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
    use crate::testkit::faults::{FaultPlan, FaultyStore, ManualClock};
    use crate::testkit::groups::{caller, group};
    use crate::timeline::Limits;

    /// A send's durable write fails (on ScyllaDB it may still land by the batchlog); the
    /// client retries after the usual claim lease. Returns what each retry got: while the
    /// write may still land, and once that is over.
    async fn retries_after_a_failed_write(
        broken: Option<Broken>,
    ) -> (TimelineResult<MessageRow>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let embedded =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Buffered, 64))
                .unwrap();
        let cache = Arc::new(LocalCache::new());
        let clock = ManualClock::new(1_800_000_000_000);
        let plan = FaultPlan::new(clock.clone(), cache.clone());
        let store = Arc::new(FaultyStore {
            inner: embedded,
            plan: plan.clone(),
        });
        let timeline = Timeline::new(
            store,
            cache,
            Limits {
                send_claim_lease: Duration::from_millis(100),
                send_claim_wait: Duration::from_millis(50),
                uncertain_write_hold: Duration::from_millis(800),
                broken,
                ..Limits::default()
            },
            clock,
        );
        let alice = caller("alice");
        let group = group(&timeline, "alice", &["bob"]).await;
        let send = || {
            timeline.send(
                &alice,
                SendMessage {
                    conversation_id: group.conversation_id.clone(),
                    client_msg_id: "c1".into(),
                    content_type: String::new(),
                    body: bytes::Bytes::from_static(b"hi"),
                },
            )
        };
        plan.crash_next("write_message");
        assert!(send().await.is_err(), "the write failed");
        // Past the claim's lease, within the hold.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let early = send().await;
        // Past the hold: a retry now writes the message.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = send().await;
        let history = timeline
            .history(&alice, &group.conversation_id, 0, 10)
            .await
            .unwrap();
        (early, history.messages.len())
    }

    #[tokio::test]
    async fn a_failed_write_keeps_its_client_msg_id_until_it_can_no_longer_land() {
        let (early, messages) = retries_after_a_failed_write(None).await;
        assert!(
            matches!(early, Err(TimelineError::Aborted(_))),
            "a retry while the first write may land is told to retry: {early:?}"
        );
        assert_eq!(messages, 1);
        // The broken variant lets the claim lapse with its lease: the early retry writes a
        // message of its own, which a late landing of the first would duplicate.
        let (early, _) =
            retries_after_a_failed_write(Some(Broken::ClaimLapsesAfterFailedWrite)).await;
        assert!(early.is_ok(), "{early:?}");
    }
}
