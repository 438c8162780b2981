//! The Sync cursor: a versioned protobuf (`SyncCursor` in the proto), base64url without padding.
//! Clients treat it as opaque; the server rejects malformed, foreign and future cursors.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;

use super::error::{TimelineResult, invalid};
use crate::proto::SyncCursor;
use crate::store::InboxPosition;

pub const CURSOR_VERSION: u32 = 1;
/// Generous bound on an encoded cursor; rejects garbage before decoding it.
const MAX_ENCODED_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// No cursor at all (the empty string): start at the oldest retained row. An issued cursor
    /// is never fresh, even at position 0, so that rows expiring while the device was away are
    /// reported rather than skipped.
    pub fresh: bool,
    /// The last inbox row delivered.
    pub inbox: InboxPosition,
    /// When that row's inbox_seq was allocated (ms): rows after it are younger.
    pub position_time_ms: i64,
    pub epoch: u64,
}

impl Cursor {
    pub fn start() -> Self {
        Self {
            fresh: true,
            ..Self::default()
        }
    }

    pub fn encode(&self, user_id: &str) -> String {
        let msg = SyncCursor {
            version: CURSOR_VERSION,
            user_tag: user_tag(user_id),
            inbox_seq: self.inbox.inbox_seq,
            inbox_message_id: self.inbox.message_id,
            epoch: self.epoch,
            position_time_ms: self.position_time_ms,
        };
        URL_SAFE_NO_PAD.encode(msg.encode_to_vec())
    }

    /// An empty string is the start cursor.
    pub fn decode(encoded: &str, user_id: &str) -> TimelineResult<Self> {
        if encoded.is_empty() {
            return Ok(Self::start());
        }
        if encoded.len() > MAX_ENCODED_LEN {
            return Err(invalid("cursor is too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| invalid("cursor is malformed: not base64url"))?;
        let msg = SyncCursor::decode(bytes.as_slice())
            .map_err(|_| invalid("cursor is malformed: not a sync cursor"))?;
        if msg.version != CURSOR_VERSION {
            return Err(invalid(format!(
                "cursor version {} is not supported",
                msg.version
            )));
        }
        if msg.user_tag != user_tag(user_id) {
            return Err(invalid("cursor belongs to another user"));
        }
        Ok(Self {
            fresh: false,
            inbox: InboxPosition {
                inbox_seq: msg.inbox_seq,
                message_id: msg.inbox_message_id,
            },
            position_time_ms: msg.position_time_ms,
            epoch: msg.epoch,
        })
    }
}

/// FNV-1a of the user id: catches a cursor passed to the wrong account (a client bug). The
/// inbox read is scoped to the authenticated user anyway, so this is no security boundary.
fn user_tag(user_id: &str) -> u64 {
    user_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_for_its_user_only() {
        let c = Cursor {
            fresh: false,
            inbox: InboxPosition {
                inbox_seq: 42,
                message_id: 7,
            },
            position_time_ms: 1_700_000_000_000,
            epoch: 9,
        };
        let s = c.encode("alice");
        assert_eq!(Cursor::decode(&s, "alice").unwrap(), c);
        assert!(Cursor::decode(&s, "bob").is_err());
        assert!(Cursor::decode("", "alice").unwrap().fresh);
        let issued_at_zero = Cursor::default().encode("alice");
        assert!(!Cursor::decode(&issued_at_zero, "alice").unwrap().fresh);
    }

    #[test]
    fn garbage_is_invalid_argument_not_a_panic() {
        for bad in ["!!!", "AAAA", "____", "x", &"A".repeat(70_000)] {
            assert!(matches!(
                Cursor::decode(bad, "alice"),
                Err(crate::timeline::TimelineError::InvalidArgument(_))
            ));
        }
        let future = SyncCursor {
            version: 99,
            ..Default::default()
        };
        let s = URL_SAFE_NO_PAD.encode(future.encode_to_vec());
        assert!(Cursor::decode(&s, "alice").is_err());
    }
}
