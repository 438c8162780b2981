//! Who may hear what is never stored: the members an ephemeral event of a conversation goes to
//! (typing, later receipts), and which users share a conversation with the caller (presence is
//! shown only to them, so nobody can probe strangers).

use std::collections::HashSet;

use super::error::{TimelineResult, invalid};
use super::ids::{validate_conversation_id, validate_user_id};
use super::reads::read_pages;
use super::{Caller, Timeline};
use crate::store::*;

/// Members and conversations read per page.
const PAGE: usize = 1000;
/// Users one presence query may name.
pub const MAX_PRESENCE_USERS: usize = 100;

/// Where an ephemeral event of a conversation goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// A small conversation: to each of these members (the caller included; its own stream
    /// filters its device out).
    Members(Vec<String>),
    /// A hot conversation: once, to whoever listens to it.
    Hot,
}

impl Timeline {
    /// The audience of `caller`'s ephemeral event in `conversation_id`: NOT_FOUND or
    /// PERMISSION_DENIED unless the caller is a member.
    pub async fn audience(
        &self,
        caller: &Caller,
        conversation_id: &str,
    ) -> TimelineResult<Audience> {
        validate_conversation_id(conversation_id)?;
        let (conversation, _) = self
            .require_member(&caller.user_id, conversation_id)
            .await?;
        if conversation.mode() == DeliveryMode::Hot {
            return Ok(Audience::Hot);
        }
        let members = read_pages(
            PAGE,
            usize::MAX,
            |after: Option<String>| async move {
                self.store
                    .list_members(conversation_id, after.as_deref(), PAGE)
                    .await
            },
            |m| m.user_id.clone(),
            |_| true,
        )
        .await?;
        Ok(Audience::Members(
            members.into_iter().map(|m| m.user_id).collect(),
        ))
    }

    /// One page of a conversation's member ids, after `after`, in id order.
    pub(crate) async fn member_ids(
        &self,
        conversation_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> TimelineResult<Vec<String>> {
        let page = self
            .store
            .list_members(conversation_id, after, limit)
            .await?;
        Ok(page.into_iter().map(|m| m.user_id).collect())
    }

    /// For each user, whether it shares a conversation with the caller (the caller itself:
    /// yes). Invalid ids and more than [`MAX_PRESENCE_USERS`] are INVALID_ARGUMENT.
    pub async fn share_a_conversation(
        &self,
        caller: &Caller,
        user_ids: &[String],
    ) -> TimelineResult<Vec<bool>> {
        if user_ids.len() > MAX_PRESENCE_USERS {
            return Err(invalid(format!(
                "at most {MAX_PRESENCE_USERS} users per presence query, got {}",
                user_ids.len()
            )));
        }
        for user in user_ids {
            validate_user_id("user_ids", user)?;
        }
        let mine = self.conversations_of(&caller.user_id).await?;
        let mut shared = Vec::with_capacity(user_ids.len());
        for user in user_ids {
            let yes = *user == caller.user_id
                || self
                    .conversations_of(user)
                    .await?
                    .iter()
                    .any(|c| mine.contains(c));
            shared.push(yes);
        }
        Ok(shared)
    }

    /// The ids of the conversations `user` belongs to (up to `max_conversations_per_user`).
    async fn conversations_of(&self, user: &str) -> TimelineResult<HashSet<String>> {
        let rows = read_pages(
            PAGE,
            self.limits.max_conversations_per_user,
            |after: Option<String>| async move {
                self.store
                    .list_user_conversations(user, after.as_deref(), PAGE)
                    .await
            },
            |r| r.conversation_id.clone(),
            // Partial rows (an activity raise racing a leave) are not memberships.
            |r| r.joined_seq > 0,
        )
        .await?;
        Ok(rows.into_iter().map(|r| r.conversation_id).collect())
    }
}
