//! Changes to messages already sent: recall and edit, and delete-for-me.
//!
//! A change is an entry of its own kind (`Recall`, `Edit`) appended at the conversation's next
//! conv_seq through the send pipeline, naming its target by message_id: every device following
//! a cursor learns of it the way it learns of messages, whatever the conversation's mode. The
//! stored original is then changed in place (`Store::update_message`), so history, the
//! conversation list and a device reading afresh show the current state.
//!
//! The entry is durable before the original changes. A crash between the two leaves the change
//! announced and the original as it was until the client retries: the retry (same
//! client_msg_id; a recall's is derived from its target) replays the entry and applies the
//! change again, which converges however often it is applied.
//!
//! Delete-for-me hides messages from the caller only, on all their devices: one row per hidden
//! message (`Store::hide_messages`), and every history or Sync page shows each hidden message to
//! that user as a hole at its conv_seq — the conversation stays contiguous and pages keep their
//! exact counts. Other members are unaffected.

use bytes::Bytes;

use super::error::{TimelineError, TimelineResult, invalid};
use super::ids::validate_conversation_id;
use super::{Broken, Caller, SendMessage, Timeline};
use crate::store::*;

#[derive(Debug, Clone, PartialEq)]
pub struct EditMessage {
    pub conversation_id: String,
    /// The message edited: its conv_seq and message_id, as the client received them.
    pub conv_seq: u64,
    pub message_id: u64,
    /// Makes the edit idempotent like a send (empty: not idempotent).
    pub client_msg_id: String,
    pub content_type: String,
    pub body: Bytes,
}

/// Most messages one DeleteMessagesForMe call hides.
pub const MAX_HIDE_PER_CALL: usize = 100;

/// What a change produced: its own timeline entry and the target as it now is.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    pub entry: MessageRow,
    pub message: MessageRow,
}

/// A recall's client_msg_id: derived from its target, so a retried recall replays the first.
/// The space keeps it apart from every client's ids (printable ASCII without spaces).
fn recall_client_msg_id(message_id: u64) -> String {
    format!("recall {message_id}")
}

fn window_text(window: std::time::Duration) -> String {
    let secs = window.as_secs();
    match secs {
        s if s % 3600 == 0 && s > 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

impl Timeline {
    /// Recalls a message: its sender within `recall_window` of sending it, or an owner or
    /// admin of the group at any time. Its body is gone for everyone.
    pub async fn recall(
        &self,
        caller: &Caller,
        conversation_id: &str,
        conv_seq: u64,
        message_id: u64,
    ) -> TimelineResult<Changed> {
        validate_conversation_id(conversation_id)?;
        let (conversation, member) = self
            .require_member(&caller.user_id, conversation_id)
            .await?;
        let role = member.role;
        let target = self
            .change_target(conversation_id, member.joined_seq, conv_seq, message_id)
            .await?;
        let client_msg_id = recall_client_msg_id(message_id);
        let own = target.sender_id == caller.user_id;
        let moderator = conversation.kind == ConversationKind::Group && role >= Role::Admin;
        if !own && !moderator {
            return Err(TimelineError::PermissionDenied(format!(
                "only its sender, or an owner or admin of the group, may recall message {message_id}"
            )));
        }
        // A retry of this caller's recall replays it, even once the window has passed.
        if let Some(entry) = self
            .replayed_change(caller, conversation_id, &client_msg_id)
            .await?
        {
            return self.apply_change(entry, target).await;
        }
        if target.recalled() {
            return Err(TimelineError::FailedPrecondition(format!(
                "message {message_id} was already recalled"
            )));
        }
        if !moderator {
            self.check_window(&target, self.limits.recall_window, "recall")?;
        }
        let entry = self
            .append_change(
                caller,
                &conversation,
                role,
                SendMessage {
                    conversation_id: conversation_id.to_owned(),
                    client_msg_id,
                    content_type: String::new(),
                    body: Bytes::new(),
                },
                MessageKind::Recall,
                message_id,
            )
            .await?;
        self.apply_change(entry, target).await
    }

    /// Edits a message: its sender only, within `edit_window` of sending it, and never once it
    /// was recalled. Idempotent by `client_msg_id` like a send.
    pub async fn edit(&self, caller: &Caller, req: EditMessage) -> TimelineResult<Changed> {
        self.validate_content(
            &req.conversation_id,
            &req.client_msg_id,
            &req.content_type,
            &req.body,
        )?;
        let (conversation, member) = self
            .require_member(&caller.user_id, &req.conversation_id)
            .await?;
        let role = member.role;
        let target = self
            .change_target(
                &req.conversation_id,
                member.joined_seq,
                req.conv_seq,
                req.message_id,
            )
            .await?;
        if target.sender_id != caller.user_id {
            return Err(TimelineError::PermissionDenied(format!(
                "only its sender may edit message {}",
                req.message_id
            )));
        }
        if !req.client_msg_id.is_empty()
            && let Some(entry) = self
                .replayed_change(caller, &req.conversation_id, &req.client_msg_id)
                .await?
        {
            if entry.target_message_id != req.message_id || entry.kind != MessageKind::Edit {
                return Err(invalid(format!(
                    "client_msg_id {:?} was already used for another message",
                    req.client_msg_id
                )));
            }
            return self.apply_change(entry, target).await;
        }
        if target.recalled() {
            return Err(TimelineError::FailedPrecondition(format!(
                "message {} was recalled: it cannot be edited",
                req.message_id
            )));
        }
        self.check_window(&target, self.limits.edit_window, "edit")?;
        let content_type = if req.content_type.is_empty() {
            target.content_type.clone()
        } else {
            req.content_type
        };
        let entry = self
            .append_change(
                caller,
                &conversation,
                role,
                SendMessage {
                    conversation_id: req.conversation_id,
                    client_msg_id: req.client_msg_id,
                    content_type,
                    body: req.body,
                },
                MessageKind::Edit,
                req.message_id,
            )
            .await?;
        self.apply_change(entry, target).await
    }

    /// Hides messages of one conversation from the caller (all their devices); hiding one
    /// again is no error. Each must be a message the caller can read (else NOT_FOUND). Returns
    /// how many were named.
    pub async fn delete_for_me(
        &self,
        caller: &Caller,
        conversation_id: &str,
        messages: &[(u64, u64)],
    ) -> TimelineResult<usize> {
        validate_conversation_id(conversation_id)?;
        if messages.is_empty() || messages.len() > MAX_HIDE_PER_CALL {
            return Err(invalid(format!(
                "name 1 to {MAX_HIDE_PER_CALL} messages, not {}",
                messages.len()
            )));
        }
        let (_, member) = self
            .require_member(&caller.user_id, conversation_id)
            .await?;
        let mut named = messages.to_vec();
        named.sort_unstable();
        named.dedup();
        let mut pairs = Vec::with_capacity(named.len());
        for &(conv_seq, message_id) in &named {
            let message = self
                .visible_entry(conversation_id, member.joined_seq, conv_seq, message_id)
                .await?;
            // Every copy a late rewrite left: history may show any of them.
            for seq in self.stored_copies(&message).await? {
                pairs.push((seq, message_id));
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        if !self.broken(Broken::HiddenStillShown) {
            self.store
                .hide_messages(&caller.user_id, conversation_id, &pairs)
                .await?;
        }
        ::metrics::counter!(crate::metrics::MESSAGE_CHANGES, "kind" => "hide")
            .increment(named.len() as u64);
        Ok(named.len())
    }

    /// Shows each message the user hid as a hole at its conv_seq (one Store read per
    /// conversation the messages belong to).
    pub(crate) async fn mask_hidden(
        &self,
        user_id: &str,
        messages: &mut [MessageRow],
    ) -> TimelineResult<()> {
        let mut ranges: std::collections::BTreeMap<&str, (u64, u64, usize)> = Default::default();
        for m in messages.iter().filter(|m| m.kind != MessageKind::Hole) {
            let r = ranges
                .entry(m.conversation_id.as_str())
                .or_insert((m.conv_seq, m.conv_seq, 0));
            r.0 = r.0.min(m.conv_seq);
            r.1 = r.1.max(m.conv_seq);
            r.2 += 1;
        }
        let reads: Vec<_> = ranges
            .into_iter()
            .map(|(id, (from, to, n))| async move {
                let hidden = self
                    .store
                    .list_hidden(user_id, id, SeqRange { from, to }, n.max(1) * 4)
                    .await?;
                Ok::<_, TimelineError>((id.to_owned(), hidden))
            })
            .collect();
        let hidden: Vec<(String, Vec<(u64, u64)>)> = futures::future::try_join_all(reads).await?;
        let hidden: std::collections::HashSet<(&str, u64, u64)> = hidden
            .iter()
            .flat_map(|(id, pairs)| pairs.iter().map(move |&(s, m)| (id.as_str(), s, m)))
            .collect();
        if hidden.is_empty() {
            return Ok(());
        }
        for m in messages.iter_mut() {
            if hidden.contains(&(m.conversation_id.as_str(), m.conv_seq, m.message_id)) {
                let mut hole = hole_message(&m.conversation_id, m.conv_seq, m.created_at_ms);
                hole.count_seq = m.count_seq;
                *m = hole;
            }
        }
        Ok(())
    }

    /// Appends the change's entry through the send pipeline.
    async fn append_change(
        &self,
        caller: &Caller,
        conversation: &ConversationRow,
        role: Role,
        req: SendMessage,
        kind: MessageKind,
        target_message_id: u64,
    ) -> TimelineResult<MessageRow> {
        if self.broken(Broken::ChangeWithoutEntry) {
            // What the entry would have been, never written nor delivered.
            let now = self.clock.now_ms();
            return Ok(MessageRow {
                conversation_id: req.conversation_id,
                conv_seq: 0,
                message_id: self.ids.next(now),
                sender_id: caller.user_id.clone(),
                sender_device_id: caller.device_id.clone(),
                client_msg_id: req.client_msg_id,
                content_type: req.content_type,
                body: req.body,
                created_at_ms: now,
                kind,
                count_seq: 0,
                target_message_id,
                edited_at_ms: 0,
                recalled_at_ms: 0,
            });
        }
        self.append(caller, conversation, role, req, kind, target_message_id)
            .await
    }

    /// The entry at `(conv_seq, message_id)` (not a hole) a member who joined at `joined_seq`
    /// may see; anything else is NOT_FOUND.
    async fn visible_entry(
        &self,
        conversation_id: &str,
        joined_seq: u64,
        conv_seq: u64,
        message_id: u64,
    ) -> TimelineResult<MessageRow> {
        let found = if conv_seq > 0 && conv_seq >= joined_seq {
            self.find_message(conversation_id, conv_seq, message_id)
                .await?
        } else {
            None
        };
        found
            .filter(|m| m.kind != MessageKind::Hole)
            .ok_or_else(|| {
                TimelineError::NotFound(format!(
                    "message {message_id} at conv_seq {conv_seq} is not in {conversation_id}"
                ))
            })
    }

    /// The user message a change names: a change entry is not one (NOT_FOUND).
    async fn change_target(
        &self,
        conversation_id: &str,
        joined_seq: u64,
        conv_seq: u64,
        message_id: u64,
    ) -> TimelineResult<MessageRow> {
        let m = self
            .visible_entry(conversation_id, joined_seq, conv_seq, message_id)
            .await?;
        if m.kind != MessageKind::User {
            return Err(TimelineError::NotFound(format!(
                "message {message_id} at conv_seq {conv_seq} is not in {conversation_id}"
            )));
        }
        Ok(m)
    }

    /// The entry this caller already appended under `client_msg_id`, if any.
    async fn replayed_change(
        &self,
        caller: &Caller,
        conversation_id: &str,
        client_msg_id: &str,
    ) -> TimelineResult<Option<MessageRow>> {
        // The send pipeline's replay: it checks the record's conversation and completes a
        // delivery a crash interrupted.
        let req = SendMessage {
            conversation_id: conversation_id.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            content_type: String::new(),
            body: Bytes::new(),
        };
        self.replay(caller, &req).await
    }

    fn check_window(
        &self,
        target: &MessageRow,
        window: std::time::Duration,
        what: &str,
    ) -> TimelineResult<()> {
        let age_ms = self.clock.now_ms() - target.created_at_ms;
        if age_ms > window.as_millis() as i64 {
            return Err(TimelineError::FailedPrecondition(format!(
                "message {} was sent {} s ago: its sender may {what} it within {} of sending it",
                target.message_id,
                age_ms / 1000,
                window_text(window)
            )));
        }
        Ok(())
    }

    /// Changes the stored original (every copy of it) as `entry` says and answers both.
    async fn apply_change(
        &self,
        entry: MessageRow,
        mut target: MessageRow,
    ) -> TimelineResult<Changed> {
        let change = change_of(&entry);
        for seq in self.stored_copies(&target).await? {
            self.store
                .update_message(&target.conversation_id, seq, target.message_id, &change)
                .await?;
        }
        change.apply(&mut target);
        let kind = match change {
            MessageChange::Recall { .. } => "recall",
            MessageChange::Edit { .. } => "edit",
        };
        ::metrics::counter!(crate::metrics::MESSAGE_CHANGES, "kind" => kind).increment(1);
        Ok(Changed {
            entry,
            message: target,
        })
    }
}

/// Rows read per step while looking for copies.
const COPIES_PAGE: usize = 64;
/// Most rows read each way while looking for copies: bounds a recall's cost in a busy group.
const COPIES_SCAN: usize = 1024;

impl Timeline {
    /// The conv_seqs holding a copy of `target` (its own included). A send whose write landed
    /// late (past gap_grace/2) wrote the message again under a fresh seq, up to
    /// `MAX_LATE_REWRITES` times, leaving the earlier copies (same message_id) in place;
    /// history and hot readers may show any of them. Every copy's seq was allocated after the
    /// message_id was minted (less a second for other nodes' clocks), and the next copy soon
    /// after a late write returned: the walk down stops at the first row allocated before the
    /// mint, the walk up at the first allocated `gap_grace` per rewrite after the target —
    /// each after `COPIES_SCAN` rows at most.
    async fn stored_copies(&self, target: &MessageRow) -> TimelineResult<Vec<u64>> {
        let id = &target.conversation_id;
        let minted = super::ids::snowflake_time_ms(target.message_id) - 1_000;
        let rewrites = super::delivery::MAX_LATE_REWRITES as i64 + 1;
        let latest = target.created_at_ms + rewrites * self.limits.gap_grace.as_millis() as i64;
        let mut seqs = vec![target.conv_seq];
        let mut scanned = 0;
        // Downwards.
        let mut to = target.conv_seq;
        'down: while to > 1 && scanned < COPIES_SCAN {
            let bucket = self.bucket(to - 1);
            let range = SeqRange {
                from: bucket * self.limits.bucket_size,
                to: to - 1,
            };
            let rows = self
                .store
                .read_messages(id, bucket, range, ReadOrder::Descending, COPIES_PAGE)
                .await?;
            scanned += rows.len().max(1);
            for m in &rows {
                if m.kind != MessageKind::Hole && m.created_at_ms < minted {
                    break 'down;
                }
                if m.message_id == target.message_id {
                    seqs.push(m.conv_seq);
                }
            }
            to = match rows.last() {
                Some(m) if rows.len() == COPIES_PAGE => m.conv_seq,
                _ => range.from,
            };
        }
        // Upwards.
        let bound = self
            .read_bound(&crate::cache::SeqKey::Conversation(id.clone()))
            .await?;
        let mut from = target.conv_seq + 1;
        scanned = 0;
        'up: while from <= bound && scanned < COPIES_SCAN {
            let rows = self
                .read_messages_ascending(id, from, bound, COPIES_PAGE)
                .await?;
            scanned += rows.len().max(1);
            for m in &rows {
                if m.kind != MessageKind::Hole && m.created_at_ms > latest {
                    break 'up;
                }
                if m.message_id == target.message_id {
                    seqs.push(m.conv_seq);
                }
            }
            match rows.last() {
                Some(m) if rows.len() == COPIES_PAGE => from = m.conv_seq + 1,
                _ => break,
            }
        }
        seqs.sort_unstable();
        seqs.dedup();
        Ok(seqs)
    }
}

/// The in-place change a recall or edit entry stands for.
pub(crate) fn change_of(entry: &MessageRow) -> MessageChange {
    match entry.kind {
        MessageKind::Edit => MessageChange::Edit {
            content_type: entry.content_type.clone(),
            body: entry.body.clone(),
            at_ms: entry.created_at_ms,
        },
        _ => MessageChange::Recall {
            at_ms: entry.created_at_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cache::local::LocalCache;
    use crate::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
    use crate::testkit::faults::ManualClock;
    use crate::testkit::groups::{caller, group};
    use crate::timeline::Limits;

    struct Fixture {
        timeline: Arc<Timeline>,
        clock: Arc<ManualClock>,
        group: ConversationRow,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Buffered, 64))
            .unwrap();
        let clock = ManualClock::new(1_800_000_000_000);
        let timeline = Timeline::new(
            store,
            Arc::new(LocalCache::new()),
            Limits::default(),
            clock.clone(),
        );
        // alice owns the group; bob and carol are members.
        let group = group(&timeline, "alice", &["bob", "carol"]).await;
        Fixture {
            timeline,
            clock,
            group,
            _dir: dir,
        }
    }

    impl Fixture {
        async fn send(&self, user: &str, text: &str) -> MessageRow {
            self.timeline
                .send(
                    &caller(user),
                    SendMessage {
                        conversation_id: self.group.conversation_id.clone(),
                        client_msg_id: String::new(),
                        content_type: String::new(),
                        body: Bytes::from(text.to_owned()),
                    },
                )
                .await
                .unwrap()
        }

        async fn recall(&self, user: &str, m: &MessageRow) -> TimelineResult<Changed> {
            self.timeline
                .recall(&caller(user), &m.conversation_id, m.conv_seq, m.message_id)
                .await
        }

        async fn edit(&self, user: &str, m: &MessageRow, text: &str) -> TimelineResult<Changed> {
            self.timeline
                .edit(
                    &caller(user),
                    EditMessage {
                        conversation_id: m.conversation_id.clone(),
                        conv_seq: m.conv_seq,
                        message_id: m.message_id,
                        client_msg_id: format!("edit-{text}"),
                        content_type: String::new(),
                        body: Bytes::from(text.to_owned()),
                    },
                )
                .await
        }
    }

    #[tokio::test]
    async fn a_sender_recalls_within_the_window_up_to_its_last_millisecond() {
        let f = fixture().await;
        let window = f.timeline.limits.recall_window;
        let at_edge = f.send("bob", "one").await;
        f.clock.advance(window);
        let changed = f.recall("bob", &at_edge).await.unwrap();
        assert!(changed.message.recalled() && changed.message.body.is_empty());
        assert_eq!(
            (changed.entry.kind, changed.entry.target_message_id),
            (MessageKind::Recall, at_edge.message_id)
        );

        let past = f.send("bob", "two").await;
        f.clock.advance(window + Duration::from_millis(1));
        let refused = f.recall("bob", &past).await;
        match refused {
            Err(TimelineError::FailedPrecondition(m)) => {
                assert!(m.contains("within 2 min"), "names the window: {m}")
            }
            other => panic!("a recall past the window is refused: {other:?}"),
        }
        // The group's owner recalls any message at any time.
        assert!(f.recall("alice", &past).await.unwrap().message.recalled());
    }

    #[tokio::test]
    async fn a_sender_edits_within_the_window_and_never_a_recalled_message() {
        let f = fixture().await;
        let window = f.timeline.limits.edit_window;
        let m = f.send("bob", "helo").await;
        f.clock.advance(window);
        let changed = f.edit("bob", &m, "hello").await.unwrap();
        assert_eq!(changed.message.body, Bytes::from("hello"));
        assert_eq!(changed.message.edited_at_ms, changed.entry.created_at_ms);
        f.clock.advance(Duration::from_millis(1));
        assert!(matches!(
            f.edit("bob", &m, "late").await,
            Err(TimelineError::FailedPrecondition(_))
        ));

        let fresh = f.send("bob", "oops").await;
        assert!(matches!(
            f.edit("carol", &fresh, "mine").await,
            Err(TimelineError::PermissionDenied(_))
        ));
        assert!(matches!(
            f.recall("carol", &fresh).await,
            Err(TimelineError::PermissionDenied(_))
        ));
        f.recall("bob", &fresh).await.unwrap();
        assert!(matches!(
            f.edit("bob", &fresh, "back").await,
            Err(TimelineError::FailedPrecondition(_))
        ));
        // A retried recall replays the first; another moderator's is refused as done.
        let again = f.recall("bob", &fresh).await.unwrap();
        assert_eq!(again.entry.target_message_id, fresh.message_id);
        assert!(matches!(
            f.recall("alice", &fresh).await,
            Err(TimelineError::FailedPrecondition(_))
        ));
        let history = f
            .timeline
            .history(&caller("carol"), &f.group.conversation_id, 0, 50)
            .await
            .unwrap();
        let recalls = history
            .messages
            .iter()
            .filter(|m| m.kind == MessageKind::Recall)
            .count();
        assert_eq!(recalls, 1, "one recall entry however often it was asked");
    }
}
