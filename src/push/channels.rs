//! Pub/sub channels and the hints carried on them.
//!
//! - `u:<user>`: small-chat deliveries, membership changes and ephemeral events for one user.
//!   A fan-out send publishes once per recipient, all in one pipelined round trip; a node
//!   holds the channels of the users with a stream open on it.
//! - `c:<conversation>`: hot conversations. A hot send publishes once, whatever the member
//!   count; a node holds the channel while one of its streams reads the conversation.
//!
//! A payload is one byte of kind, then its body: a wake-up has none, an ephemeral event is its
//! encoded [`Ephemeral`].

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

const WAKE: u8 = 0;
const EPHEMERAL: u8 = 1;

pub fn user_channel(user_id: &str) -> String {
    format!("u:{user_id}")
}

pub fn conversation_channel(conversation_id: &str) -> String {
    format!("c:{conversation_id}")
}

/// What a channel name names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    User(&'a str),
    Conversation(&'a str),
}

pub fn parse_channel(channel: &str) -> Option<Target<'_>> {
    if let Some(user) = channel.strip_prefix("u:") {
        Some(Target::User(user))
    } else {
        channel.strip_prefix("c:").map(Target::Conversation)
    }
}

/// An event that is never stored, sent to the streams that hear it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ephemeral {
    Typing {
        conversation_id: String,
        user_id: String,
        device_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Something is new: sync.
    Wake,
    Ephemeral(Ephemeral),
}

pub fn wake_payload() -> Bytes {
    Bytes::from_static(&[WAKE])
}

pub fn encode_ephemeral(event: &Ephemeral) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(EPHEMERAL);
    // Serializing these plain owned fields cannot fail.
    buf.extend_from_slice(&postcard::to_stdvec(event).unwrap_or_default());
    buf.freeze()
}

/// Unknown or malformed payloads (another version's) count as a wake-up: syncing is always safe.
pub fn decode(payload: &[u8]) -> Hint {
    match payload.split_first() {
        Some((&EPHEMERAL, body)) => postcard::from_bytes(body)
            .map(Hint::Ephemeral)
            .unwrap_or(Hint::Wake),
        _ => Hint::Wake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_payloads_round_trip() {
        assert_eq!(
            parse_channel(&user_channel("alice")),
            Some(Target::User("alice"))
        );
        assert_eq!(
            parse_channel(&conversation_channel("g:team")),
            Some(Target::Conversation("g:team"))
        );
        assert_eq!(parse_channel("x:y"), None);
        let typing = Ephemeral::Typing {
            conversation_id: "g:team".into(),
            user_id: "bob".into(),
            device_id: "phone".into(),
        };
        assert_eq!(decode(&encode_ephemeral(&typing)), Hint::Ephemeral(typing));
        assert_eq!(decode(&wake_payload()), Hint::Wake);
        assert_eq!(decode(b"\x01garbage"), Hint::Wake);
        assert_eq!(decode(b""), Hint::Wake);
    }
}
