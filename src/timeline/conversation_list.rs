//! The conversation list, one conversation's state for its member, and read state.
//!
//! Unread is derived, never counted: `last_count - read_count` per (user, conversation). Each
//! message carries the conversation's count of messages that count as unread (user messages:
//! not holes, recalls or edits) up to it, allocated with its conv_seq; `last_count` is raised
//! by each fan-out (for hot conversations, read from the Cache head) and `read_count` moves
//! forward with `read_seq`. One's own messages do not count: sending marks the conversation
//! read up to the message sent.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::error::{TimelineError, TimelineResult, invalid, not_a_member};
use super::ids::*;
use super::reads::{page_size, read_pages};
use super::{Caller, Timeline};
use crate::cache::SeqKey;
use crate::store::*;

const LIST_PAGE: usize = 1000;
/// Conversation rows and last messages read in parallel for one list page.
const ENRICH_CONCURRENCY: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct ConversationView {
    pub conversation: ConversationRow,
    pub membership: MemberRow,
    pub last_seq: u64,
    pub read_seq: u64,
    pub unread: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub conversation: ConversationRow,
    pub last_message: Option<MessageRow>,
    pub last_seq: u64,
    pub read_seq: u64,
    pub unread: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    pub conversations: Vec<Summary>,
    pub next_page_token: String,
}

/// Orders the conversation list: the last message, or the join for a conversation without one.
fn activity_key(row: &UserConversationRow) -> u64 {
    row.last_message_id.max(snowflake_floor(row.joined_at_ms))
}

fn unread(row: &UserConversationRow) -> u64 {
    row.last_count.saturating_sub(row.read_count)
}

fn encode_page_token(activity: u64, conversation_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{activity}/{conversation_id}"))
}

fn decode_page_token(token: &str) -> TimelineResult<Option<(u64, String)>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("page_token is malformed");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (activity, conversation_id) = text.split_once('/').ok_or_else(bad)?;
    Ok(Some((
        activity.parse().map_err(|_| bad())?,
        conversation_id.to_owned(),
    )))
}

impl Timeline {
    /// Raises `last_seq` / `last_message_id` of the rows of hot conversations to their Cache
    /// heads (one round trip; a head the Cache lost is read from the Store): hot messages do
    /// not touch the members' rows.
    async fn with_hot_activity(&self, rows: &mut [UserConversationRow]) -> TimelineResult<()> {
        let hot: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].mode == DeliveryMode::Hot)
            .collect();
        if hot.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = hot
            .iter()
            .map(|&i| rows[i].conversation_id.clone())
            .collect();
        let heads = self.cache.hot_heads(&ids).await.unwrap_or_else(|e| {
            self.cache_fallback("hot_heads", &e);
            vec![None; ids.len()]
        });
        for (&i, head) in hot.iter().zip(heads) {
            let row = &mut rows[i];
            let (last_seq, last_message_id, last_count) = match head {
                Some(h) => (h.last_seq, h.last_message_id, h.last_count),
                None => {
                    let last = self
                        .read_bound(&SeqKey::Conversation(row.conversation_id.clone()))
                        .await?;
                    let newest = self
                        .store
                        .read_messages(
                            &row.conversation_id,
                            self.bucket(last),
                            SeqRange { from: 0, to: last },
                            ReadOrder::Descending,
                            1,
                        )
                        .await?;
                    match newest.first() {
                        Some(m) => (
                            m.conv_seq,
                            m.message_id,
                            self.count_at(&row.conversation_id, m.conv_seq).await?,
                        ),
                        None => (0, 0, 0),
                    }
                }
            };
            if last_seq > row.last_seq {
                row.last_seq = last_seq;
                row.last_message_id = last_message_id;
            }
            row.last_count = row.last_count.max(last_count);
        }
        Ok(())
    }

    pub async fn get_conversation(
        &self,
        caller: &Caller,
        id: &str,
    ) -> TimelineResult<ConversationView> {
        validate_conversation_id(id)?;
        let (conversation, membership) = self.require_member(&caller.user_id, id).await?;
        let mut state = self
            .store
            .get_user_conversation(&caller.user_id, id)
            .await?;
        if let Some(row) = state.as_mut() {
            self.with_hot_activity(std::slice::from_mut(row)).await?;
        }
        let (last_seq, read_seq, unread) = state
            .as_ref()
            .map_or((0, 0, 0), |s| (s.last_seq, s.read_seq, unread(s)));
        Ok(ConversationView {
            conversation,
            membership,
            last_seq,
            read_seq,
            unread,
        })
    }

    pub async fn list_conversations(
        &self,
        caller: &Caller,
        page_token: &str,
        limit: u32,
    ) -> TimelineResult<ListPage> {
        let limit = page_size(
            limit,
            self.limits.list_default_limit,
            self.limits.list_max_limit,
        );
        let after = decode_page_token(page_token)?;
        let mut rows = read_pages(
            LIST_PAGE,
            self.limits.max_conversations_per_user,
            |after: Option<String>| async move {
                self.store
                    .list_user_conversations(&caller.user_id, after.as_deref(), LIST_PAGE)
                    .await
            },
            |r| r.conversation_id.clone(),
            // Partial rows (an activity raise racing a leave) are not memberships.
            |r| r.joined_seq > 0,
        )
        .await?;
        self.with_hot_activity(&mut rows).await?;
        // Newest activity first; the id breaks ties so that pages never overlap.
        rows.sort_by(|x, y| {
            activity_key(y)
                .cmp(&activity_key(x))
                .then_with(|| x.conversation_id.cmp(&y.conversation_id))
        });
        let start = match &after {
            None => 0,
            Some((activity, id)) => rows.partition_point(|r| {
                let a = activity_key(r);
                a > *activity || (a == *activity && r.conversation_id <= *id)
            }),
        };
        let page: Vec<UserConversationRow> = rows.iter().skip(start).take(limit).cloned().collect();
        let next_page_token = match page.last() {
            Some(r) if start + page.len() < rows.len() => {
                encode_page_token(activity_key(r), &r.conversation_id)
            }
            _ => String::new(),
        };
        let reads: Vec<_> = page
            .into_iter()
            .map(|row| async move {
                let Some(conversation) = self.store.get_conversation(&row.conversation_id).await?
                else {
                    return Ok::<_, TimelineError>(None);
                };
                let last_message = if row.last_message_id != 0 {
                    self.find_message(&row.conversation_id, row.last_seq, row.last_message_id)
                        .await?
                } else {
                    None
                };
                Ok(Some(Summary {
                    conversation,
                    last_message,
                    last_seq: row.last_seq,
                    read_seq: row.read_seq,
                    unread: unread(&row),
                }))
            })
            .collect();
        let conversations: Vec<Option<Summary>> = stream::iter(reads)
            .buffered(ENRICH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(ListPage {
            conversations: conversations.into_iter().flatten().collect(),
            next_page_token,
        })
    }

    /// Moves the caller's read_seq forward to `seq` (capped at the last message), and the read
    /// count with it; returns the read_seq and unread count after the call.
    pub async fn mark_read(
        &self,
        caller: &Caller,
        id: &str,
        seq: u64,
    ) -> TimelineResult<(u64, u64)> {
        validate_conversation_id(id)?;
        let Some(mut row) = self
            .store
            .get_user_conversation(&caller.user_id, id)
            .await?
        else {
            self.require_member(&caller.user_id, id).await?;
            return Err(not_a_member(id));
        };
        self.with_hot_activity(std::slice::from_mut(&mut row))
            .await?;
        // Hot conversations' last_seq comes from the Cache head, not the stored row.
        let (last_seq, last_count) = (row.last_seq, row.last_count);
        let seq = seq.min(last_seq);
        let count = if seq == last_seq {
            last_count
        } else if seq <= row.read_seq {
            row.read_count
        } else {
            self.count_at(id, seq).await?
        };
        let updated = self
            .store
            .advance_read_seq(&caller.user_id, id, seq, count)
            .await?
            .ok_or_else(|| not_a_member(id))?;
        Ok((
            updated.read_seq,
            last_count
                .max(updated.last_count)
                .saturating_sub(updated.read_count),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let t = encode_page_token(42, "g:x/y");
        assert_eq!(
            decode_page_token(&t).unwrap(),
            Some((42, "g:x/y".to_owned()))
        );
        assert_eq!(decode_page_token("").unwrap(), None);
        assert!(decode_page_token("%%%").is_err());
        assert!(decode_page_token(&URL_SAFE_NO_PAD.encode("nope")).is_err());
    }
}
