//! Conversations and membership: creating groups and direct chats, joining (with the
//! backfill that owes a joiner what was sent since its joined_seq), leaving, and the
//! membership checks the other operations start from.

use std::collections::BTreeSet;

use futures::stream::{self, StreamExt, TryStreamExt};

use super::error::{TimelineError, TimelineResult, invalid, not_a_member};
use super::ids::*;
use super::{Broken, Caller, Timeline};
use crate::cache::SeqKey;
use crate::store::*;

const MAX_TITLE_LEN: usize = 256;
/// The longest slowmode: six hours, as Discord's.
pub const MAX_SLOWMODE_SECONDS: u32 = 21_600;
/// Membership writes in flight at once: the embedded writer commits them under one fsync.
const JOIN_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct CreateConversation {
    pub kind: ConversationKind,
    pub conversation_id: String,
    pub title: String,
    pub member_ids: Vec<String>,
}

fn validate_members(ids: &[String], limit: usize) -> TimelineResult<BTreeSet<String>> {
    if ids.len() > limit {
        return Err(invalid(format!(
            "at most {limit} users per call, got {}",
            ids.len()
        )));
    }
    let mut set = BTreeSet::new();
    for id in ids {
        validate_user_id("member id", id)?;
        set.insert(id.clone());
    }
    Ok(set)
}

impl Timeline {
    pub async fn create_conversation(
        &self,
        caller: &Caller,
        req: CreateConversation,
    ) -> TimelineResult<(ConversationRow, bool)> {
        if req.title.len() > MAX_TITLE_LEN || req.title.chars().any(char::is_control) {
            return Err(invalid(format!(
                "title must be at most {MAX_TITLE_LEN} bytes without control characters"
            )));
        }
        match req.kind {
            ConversationKind::Direct => {
                if !req.conversation_id.is_empty() {
                    return Err(invalid(
                        "a direct conversation's id is derived: leave conversation_id empty",
                    ));
                }
                let [peer] = req.member_ids.as_slice() else {
                    return Err(invalid(
                        "a direct conversation takes exactly one member_id, the peer",
                    ));
                };
                validate_user_id("member id", peer)?;
                let id = direct_id(&caller.user_id, peer)?;
                self.ensure_direct(caller, &id).await
            }
            ConversationKind::Group => self.create_group(caller, req).await,
        }
    }

    async fn create_group(
        &self,
        caller: &Caller,
        req: CreateConversation,
    ) -> TimelineResult<(ConversationRow, bool)> {
        let id = match req.conversation_id.as_str() {
            "" => format!("{GROUP_PREFIX}{:016x}", rand::random::<u64>()),
            given if given.starts_with(GROUP_PREFIX) => given.to_owned(),
            given => format!("{GROUP_PREFIX}{given}"),
        };
        validate_group_id(&id)?;
        let mut members = validate_members(&req.member_ids, self.limits.max_members_per_call)?;
        members.remove(&caller.user_id);
        if members.len() + 1 > self.limits.max_group_members as usize {
            return Err(TimelineError::ResourceExhausted(format!(
                "a group has at most {} members",
                self.limits.max_group_members
            )));
        }
        let now = self.clock.now_ms();
        let row = ConversationRow {
            conversation_id: id.clone(),
            kind: ConversationKind::Group,
            title: req.title,
            created_at_ms: now,
            created_by: caller.user_id.clone(),
            member_count: (members.len() + 1) as u32,
            mode_spans: ConversationRow::initial_spans(),
            mode_forced: false,
            // Never switched: the dwell holds back a second switch, not the first (a group
            // created or grown past hot_threshold turns hot at once).
            mode_changed_at_ms: 0,
            slowmode_seconds: 0,
        };
        match self.store.insert_conversation_if_absent(&row).await? {
            None => {
                let everyone = std::iter::once((caller.user_id.clone(), Role::Owner))
                    .chain(members.into_iter().map(|m| (m, Role::Member)));
                self.join_all(&row, everyone, 1).await?;
                // Created at hot size: hot before its first message (the switch's own steps).
                self.maybe_switch(&row, 0).await?;
                let row = self.store.get_conversation(&id).await?.unwrap_or(row);
                Ok((row, true))
            }
            // A retried creation (the first may have died half-way): complete it.
            Some(existing) if existing.created_by == caller.user_id => {
                let joined_seq = self.next_join_seq(&id).await?;
                if self.store.get_member(&id, &caller.user_id).await?.is_none() {
                    self.join_all(
                        &existing,
                        [(caller.user_id.clone(), Role::Owner)],
                        joined_seq,
                    )
                    .await?;
                }
                let (conversation, _) =
                    self.add_new_members(&existing, members, joined_seq).await?;
                Ok((conversation, false))
            }
            Some(_) => Err(TimelineError::AlreadyExists(format!("{id} already exists"))),
        }
    }

    /// Creates the direct conversation if needed and makes sure both users are members.
    async fn ensure_direct(
        &self,
        caller: &Caller,
        id: &str,
    ) -> TimelineResult<(ConversationRow, bool)> {
        let (a, b) = parse_direct_id(id)?;
        if caller.user_id != a && caller.user_id != b {
            return Err(not_a_member(id));
        }
        let row = ConversationRow {
            conversation_id: id.to_owned(),
            kind: ConversationKind::Direct,
            title: String::new(),
            created_at_ms: self.clock.now_ms(),
            created_by: caller.user_id.clone(),
            member_count: 2,
            mode_spans: ConversationRow::initial_spans(),
            mode_forced: false,
            mode_changed_at_ms: 0,
            slowmode_seconds: 0,
        };
        // Both memberships first: a direct conversation row then always has its two members,
        // however a creation was interrupted (the next send completes it).
        for user in [a, b] {
            if self.store.get_member(id, &user).await?.is_none() {
                // Direct chats show their whole history to both users.
                self.join_all(&row, [(user, Role::Member)], 1).await?;
            }
        }
        let existing = self.store.insert_conversation_if_absent(&row).await?;
        let created = existing.is_none();
        let conversation = existing.unwrap_or(row);
        Ok((conversation, created))
    }

    /// Writes member and user_conversations rows for each user, joined at `joined_seq`.
    async fn join_all(
        &self,
        conversation: &ConversationRow,
        users: impl IntoIterator<Item = (String, Role)>,
        joined_seq: u64,
    ) -> TimelineResult<Vec<MemberRow>> {
        let now = self.clock.now_ms();
        let id = &conversation.conversation_id;
        let mode_of = |c: &ConversationRow| {
            if c.ever_hot() {
                DeliveryMode::Hot
            } else {
                DeliveryMode::Fanout
            }
        };
        let mode = mode_of(conversation);
        // Nothing before the join counts as unread. A message allocated below joined_seq and
        // not yet written counts once for the joiner until read.
        let count = if joined_seq > 1 {
            self.count_at(id, joined_seq - 1).await?
        } else {
            0
        };
        let members: Vec<MemberRow> = users
            .into_iter()
            .map(|(user_id, role)| MemberRow {
                conversation_id: id.clone(),
                user_id,
                role,
                joined_seq,
                joined_at_ms: now,
            })
            .collect();
        let joiners: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
        self.check_conversation_cap(&joiners).await?;
        let rows: Vec<UserConversationRow> = members
            .iter()
            .map(|m| UserConversationRow {
                user_id: m.user_id.clone(),
                conversation_id: id.clone(),
                kind: conversation.kind,
                mode,
                last_message_id: 0,
                // Nothing before the join is unread.
                last_seq: joined_seq - 1,
                read_seq: joined_seq - 1,
                joined_seq,
                joined_at_ms: now,
                last_count: count,
                read_count: count,
            })
            .collect();
        let writes: Vec<_> = members
            .iter()
            .zip(&rows)
            .map(|(m, r)| self.store.add_member(m, r))
            .collect();
        stream::iter(writes)
            .buffer_unordered(JOIN_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        // The mode is read again after the member rows exist: a concurrent switch to hot
        // either is seen here, or its flagging pass (which lists members after publishing)
        // sees them.
        if mode == DeliveryMode::Fanout
            && let Some(current) = self.store.get_conversation(id).await?
            && mode_of(&current) == DeliveryMode::Hot
        {
            let users: Vec<String> = members.iter().map(|m| m.user_id.clone()).collect();
            self.flag_hot(id, &users).await?;
        }
        Ok(members)
    }

    /// Refuses the join of a user who is in `max_conversations_per_user` conversations
    /// already: the list and Sync's hot sources read that many, and would silently leave out
    /// the rest.
    async fn check_conversation_cap(&self, users: &[&str]) -> TimelineResult<()> {
        let cap = self.limits.max_conversations_per_user;
        let reads: Vec<_> = users
            .iter()
            .map(|user| self.store.list_user_conversations(user, None, cap))
            .collect();
        let counts: Vec<usize> = stream::iter(reads)
            .buffered(JOIN_CONCURRENCY)
            .map_ok(|rows| rows.len())
            .try_collect()
            .await?;
        if let Some((user, _)) = users.iter().zip(counts).find(|(_, n)| *n >= cap) {
            return Err(TimelineError::ResourceExhausted(format!(
                "{user} is in {cap} conversations, the most a user may be in \
                 (max_conversations_per_user)"
            )));
        }
        Ok(())
    }

    /// The conversation a send goes to, creating a direct chat on first use.
    /// The conversation a send goes to and the sender's role in it (a direct chat's users are
    /// plain members).
    pub(crate) async fn conversation_for_send(
        &self,
        caller: &Caller,
        id: &str,
    ) -> TimelineResult<(ConversationRow, Role)> {
        if let Some(conversation) = self.store.get_conversation(id).await?
            && let Some(member) = self.store.get_member(id, &caller.user_id).await?
        {
            return Ok((conversation, member.role));
        }
        if id.starts_with(DIRECT_PREFIX) {
            return Ok((self.ensure_direct(caller, id).await?.0, Role::Member));
        }
        self.require_member(&caller.user_id, id)
            .await
            .map(|(c, m)| (c, m.role))
    }

    /// Sets a group's slowmode (`0` turns it off): owners and admins only, who are exempt from
    /// it. Members then send at most one message per `seconds`, across all nodes.
    pub async fn set_slowmode(
        &self,
        caller: &Caller,
        id: &str,
        seconds: u32,
    ) -> TimelineResult<ConversationRow> {
        validate_conversation_id(id)?;
        if seconds > MAX_SLOWMODE_SECONDS {
            return Err(invalid(format!(
                "slowmode_seconds is {seconds}, more than the most of {MAX_SLOWMODE_SECONDS} (6 hours)"
            )));
        }
        let (conversation, me) = self.require_member(&caller.user_id, id).await?;
        if conversation.kind == ConversationKind::Direct {
            return Err(TimelineError::FailedPrecondition(
                "a direct conversation has no slowmode".into(),
            ));
        }
        if me.role < Role::Admin {
            return Err(TimelineError::PermissionDenied(
                "only the owner or an admin sets slowmode".into(),
            ));
        }
        self.store.set_slowmode(id, seconds).await?;
        Ok(ConversationRow {
            slowmode_seconds: seconds,
            ..conversation
        })
    }

    /// The conversation and the user's membership: the same NOT_FOUND for an unknown
    /// conversation and for one the user does not belong to. The membership is read first, so
    /// a non-member's answer costs the same read either way.
    pub(crate) async fn require_member(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> TimelineResult<(ConversationRow, MemberRow)> {
        let member = self
            .store
            .get_member(conversation_id, user_id)
            .await?
            .ok_or_else(|| not_a_member(conversation_id))?;
        let conversation = self
            .store
            .get_conversation(conversation_id)
            .await?
            .ok_or_else(|| not_a_member(conversation_id))?;
        Ok((conversation, member))
    }

    /// What adding or removing members starts from: the validated users, the group, and the
    /// caller's membership of it.
    async fn membership_change(
        &self,
        caller: &Caller,
        id: &str,
        user_ids: &[String],
    ) -> TimelineResult<(BTreeSet<String>, ConversationRow, MemberRow)> {
        validate_conversation_id(id)?;
        let users = validate_members(user_ids, self.limits.max_members_per_call)?;
        let (conversation, me) = self.require_member(&caller.user_id, id).await?;
        if conversation.kind == ConversationKind::Direct {
            return Err(TimelineError::FailedPrecondition(
                "a direct conversation has exactly its two users".into(),
            ));
        }
        Ok((users, conversation, me))
    }

    pub async fn add_members(
        &self,
        caller: &Caller,
        id: &str,
        user_ids: &[String],
    ) -> TimelineResult<(ConversationRow, Vec<MemberRow>)> {
        let (users, conversation, me) = self.membership_change(caller, id, user_ids).await?;
        if me.role < Role::Admin {
            return Err(TimelineError::PermissionDenied(
                "only the owner or an admin adds members".into(),
            ));
        }
        let joined_seq = self.next_join_seq(id).await?;
        self.add_new_members(&conversation, users, joined_seq).await
    }

    /// Where new members start: after the last conv_seq *persisted*. The sequencer's value may
    /// include a seq a crashed send never wrote; after a Cache loss the sequencer re-seeds from
    /// the Store and hands that seq out again, which must not land below the join. A message
    /// in flight during the join is thereby delivered to the new member (see `add_new_members`).
    async fn next_join_seq(&self, conversation_id: &str) -> TimelineResult<u64> {
        Ok(self.store.last_conv_seq(conversation_id).await? + 1)
    }

    /// Joins the users who are not members yet, then backfills messages at or after
    /// `joined_seq` already written: a send that read the member list before these joins
    /// landed wrote its message before this backfill reads, so every such message reaches the
    /// new members one way or the other.
    async fn add_new_members(
        &self,
        conversation: &ConversationRow,
        users: BTreeSet<String>,
        joined_seq: u64,
    ) -> TimelineResult<(ConversationRow, Vec<MemberRow>)> {
        let id = &conversation.conversation_id;
        let mut new_users = Vec::new();
        for user in users {
            if self.store.get_member(id, &user).await?.is_none() {
                new_users.push(user);
            }
        }
        if new_users.is_empty() {
            return Ok((conversation.clone(), Vec::new()));
        }
        let count = self.store.count_members(id).await? as usize;
        if count + new_users.len() > self.limits.max_group_members as usize {
            return Err(TimelineError::ResourceExhausted(format!(
                "a group has at most {} members",
                self.limits.max_group_members
            )));
        }
        let added = self
            .join_all(
                conversation,
                new_users.iter().map(|u| (u.clone(), Role::Member)),
                joined_seq,
            )
            .await?;
        self.backfill(id, &new_users, joined_seq).await?;
        // A hot conversation's joiners' streams learn of it by re-syncing.
        self.notify(|l| l.memberships_changed(id, &new_users));
        let conversation = self.refresh_member_count(conversation).await?;
        self.maybe_switch(&conversation, self.current_rate(id))
            .await?;
        Ok((conversation, added))
    }

    /// Fans out to the joiners what was sent from their joined_seq on before senders could see
    /// them. Hot seqs are left out: joiners read those from the conversation (the spans, read
    /// after the messages, are final for them).
    async fn backfill(&self, id: &str, users: &[String], from_seq: u64) -> TimelineResult<()> {
        let to_seq = self
            .current_seq(&SeqKey::Conversation(id.to_owned()))
            .await?;
        let messages = self
            .read_messages_ascending(id, from_seq, to_seq, usize::MAX)
            .await?;
        if messages.is_empty() {
            return Ok(());
        }
        let Some(conversation) = self.store.get_conversation(id).await? else {
            return Ok(());
        };
        for message in messages {
            if conversation.mode_at(message.conv_seq) == DeliveryMode::Fanout {
                self.write_to_inboxes(&message, users.to_vec(), None, false)
                    .await?;
            }
        }
        Ok(())
    }

    async fn refresh_member_count(
        &self,
        conversation: &ConversationRow,
    ) -> TimelineResult<ConversationRow> {
        // Taken before counting: racing refreshes keep the count that started last.
        let counted_at_ms = self.clock.now_ms();
        let count = self
            .store
            .count_members(&conversation.conversation_id)
            .await?;
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        self.store
            .set_member_count(&conversation.conversation_id, count, counted_at_ms)
            .await?;
        Ok(ConversationRow {
            member_count: count,
            ..conversation.clone()
        })
    }

    pub async fn remove_members(
        &self,
        caller: &Caller,
        id: &str,
        user_ids: &[String],
    ) -> TimelineResult<(ConversationRow, Vec<String>)> {
        let (users, conversation, me) = self.membership_change(caller, id, user_ids).await?;
        let mut targets = Vec::new();
        for user in users {
            let Some(member) = self.store.get_member(id, &user).await? else {
                continue;
            };
            // Anyone may leave; removing others takes a higher role than theirs.
            if user != caller.user_id && (me.role < Role::Admin || member.role >= me.role) {
                return Err(TimelineError::PermissionDenied(format!(
                    "you may not remove {user}: it takes the owner, or an admin for plain members"
                )));
            }
            targets.push(user);
        }
        for user in &targets {
            let kept = if self.broken(Broken::LeaveKeepsMembership) {
                self.store.get_user_conversation(user, id).await?
            } else {
                None
            };
            self.store.remove_member(id, user).await?;
            if let Some(row) = kept {
                self.store.upsert_user_conversation(&row).await?;
            }
        }
        self.notify(|l| l.memberships_changed(id, &targets));
        let conversation = if targets.is_empty() {
            conversation
        } else {
            let refreshed = self.refresh_member_count(&conversation).await?;
            self.maybe_switch(&refreshed, self.current_rate(id)).await?;
            refreshed
        };
        Ok((conversation, targets))
    }
}
