//! Presence queries and typing indicators: what is said about streams, never stored.

use tokio::time::Instant;

use super::Hub;
use super::channels::{Ephemeral, conversation_channel, encode_ephemeral, user_channel};
use crate::cache::UserPresence;
use crate::timeline::{Audience, Caller, TimelineResult};

/// Rate-limit entries kept before old ones are swept.
const TYPING_ENTRIES: usize = 100_000;

/// One user's presence as a caller may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceView {
    pub user_id: String,
    /// Devices with a stream open on some node, sorted.
    pub devices: Vec<String>,
    /// When a device of the user was last seen connected (Unix ms; 0: unknown).
    pub last_seen_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypingOutcome {
    Sent,
    /// Within `typing_interval` of the sender's previous event in the conversation: dropped.
    RateLimited,
}

impl Hub {
    /// The presence of each user who shares a conversation with the caller; anyone else is
    /// answered as never seen, so presence cannot be probed.
    pub async fn presence(
        &self,
        caller: &Caller,
        user_ids: &[String],
    ) -> TimelineResult<Vec<PresenceView>> {
        let visible = self.timeline.share_a_conversation(caller, user_ids).await?;
        let shown: Vec<String> = user_ids
            .iter()
            .zip(&visible)
            .filter(|(_, v)| **v)
            .map(|(u, _)| u.clone())
            .collect();
        let mut found = self.cache.presence(&shown).await?.into_iter();
        Ok(user_ids
            .iter()
            .zip(visible)
            .map(|(user, visible)| {
                let p = if visible {
                    found.next().unwrap_or_default()
                } else {
                    UserPresence::default()
                };
                let online = !p.devices.is_empty();
                PresenceView {
                    user_id: user.clone(),
                    devices: p.devices.into_iter().map(|d| d.device_id).collect(),
                    // An online user is seen now, whatever the last refresh said.
                    last_seen_ms: if online {
                        self.timeline.now_ms()
                    } else {
                        p.last_seen_ms
                    },
                }
            })
            .collect())
    }

    /// Tells the conversation's other online members that the caller is typing, at most once
    /// per `typing_interval` per sender and conversation.
    pub async fn send_typing(
        &self,
        caller: &Caller,
        conversation_id: &str,
    ) -> TimelineResult<TypingOutcome> {
        let audience = self.timeline.audience(caller, conversation_id).await?;
        if !self.typing_allowed(caller, conversation_id) {
            return Ok(TypingOutcome::RateLimited);
        }
        let payload = encode_ephemeral(&Ephemeral::Typing {
            conversation_id: conversation_id.to_owned(),
            user_id: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
        });
        let hints = match audience {
            Audience::Hot => vec![(conversation_channel(conversation_id), payload)],
            Audience::Members(members) => members
                .iter()
                .map(|m| (user_channel(m), payload.clone()))
                .collect(),
        };
        self.publisher.send(hints, "typing");
        Ok(TypingOutcome::Sent)
    }

    fn typing_allowed(&self, caller: &Caller, conversation_id: &str) -> bool {
        let interval = self.options.typing_interval;
        let now = Instant::now();
        let mut last = self.typing.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= TYPING_ENTRIES {
            last.retain(|_, at| now.duration_since(*at) < interval);
        }
        let key = (caller.user_id.clone(), conversation_id.to_owned());
        match last.get(&key) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}
