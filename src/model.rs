//! The domain's vocabulary, shared by the pipeline, the API and every backend: conversation
//! kinds, delivery modes and their spans, roles, conversations, members and messages. The
//! `Store` persists these as rows of `schema.cql`; the API converts them to protobuf.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationKind {
    Direct,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeliveryMode {
    /// Copied to one inbox row per member on write.
    Fanout,
    /// Written once; members read the conversation at sync time.
    Hot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    User,
    /// A conv_seq that was allocated but never written.
    Hole,
    /// The sender (or an owner/admin) recalled `target_message_id`: its body is gone.
    Recall,
    /// The sender replaced the body of `target_message_id` with this entry's body.
    Edit,
}

impl MessageKind {
    /// Whether a message of this kind counts as unread: what a user reads, not the timeline's
    /// bookkeeping (holes) or changes to messages already counted (recalls, edits).
    pub fn counts_as_unread(self) -> bool {
        self == MessageKind::User
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

/// From `since_seq` on (until the next span), messages are delivered in `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeSpan {
    pub since_seq: u64,
    pub mode: DeliveryMode,
}

/// Most mode spans a conversation keeps (about 1.2 KiB embedded, 5 KiB on ScyllaDB); older ones
/// are dropped, and a reader whose position lies behind the oldest one kept reads the dropped
/// spans as fan-out (so it misses their hot messages): see the README's known limits.
pub const MAX_MODE_SPANS: usize = 256;

/// `conversations`, partition key `conversation_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRow {
    pub conversation_id: String,
    pub kind: ConversationKind,
    pub title: String,
    pub created_at_ms: i64,
    pub created_by: String,
    pub member_count: u32,
    /// The delivery mode history, ascending by `since_seq`, never empty; the last is current.
    pub mode_spans: Vec<ModeSpan>,
    /// An operator fixed the mode: automatic switching leaves it alone.
    pub mode_forced: bool,
    pub mode_changed_at_ms: i64,
    /// Least seconds between two messages of one member (owners and admins are exempt); 0 is
    /// off. Stored beside the row (embedded: a key of its own; ScyllaDB: a column) so that rows
    /// written before it existed still decode.
    #[serde(skip)]
    pub slowmode_seconds: u32,
}

impl ConversationRow {
    pub fn initial_spans() -> Vec<ModeSpan> {
        vec![ModeSpan {
            since_seq: 1,
            mode: DeliveryMode::Fanout,
        }]
    }

    pub fn mode(&self) -> DeliveryMode {
        self.mode_spans
            .last()
            .map_or(DeliveryMode::Fanout, |s| s.mode)
    }

    pub fn mode_since_seq(&self) -> u64 {
        self.mode_spans.last().map_or(1, |s| s.since_seq)
    }

    /// The mode conv_seq `seq` is delivered in.
    pub fn mode_at(&self, seq: u64) -> DeliveryMode {
        self.mode_spans
            .iter()
            .rev()
            .find(|s| s.since_seq <= seq)
            .map_or(DeliveryMode::Fanout, |s| s.mode)
    }

    pub fn ever_hot(&self) -> bool {
        self.mode_spans.iter().any(|s| s.mode == DeliveryMode::Hot)
    }

    /// The first hot conv_seq at or after `seq`, if any: where a hot reader continues.
    pub fn next_hot_seq(&self, seq: u64) -> Option<u64> {
        if self.mode_at(seq) == DeliveryMode::Hot {
            return Some(seq);
        }
        // By the mode in force at each span's start: a span superseded at the same seq (a
        // switch undone before any seq was handed out) does not count.
        self.mode_spans
            .iter()
            .map(|s| s.since_seq)
            .find(|&since| since > seq && self.mode_at(since) == DeliveryMode::Hot)
    }
}

/// `members`, partition key `conversation_id`, clustering `user_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRow {
    pub conversation_id: String,
    pub user_id: String,
    pub role: Role,
    pub joined_seq: u64,
    pub joined_at_ms: i64,
}

/// `messages`, partition key `(conversation_id, bucket)`, clustering `conv_seq DESC, message_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRow {
    pub conversation_id: String,
    pub conv_seq: u64,
    pub message_id: u64,
    pub sender_id: String,
    pub sender_device_id: String,
    pub client_msg_id: String,
    pub content_type: String,
    pub body: Bytes,
    pub created_at_ms: i64,
    pub kind: MessageKind,
    // Fields appended since the first row format: rows written before them decode with zeros
    // (see the embedded store's encoding); keep appending, never reorder.
    /// The conversation's countable messages up to and including this one (see
    /// `MessageKind::counts_as_unread`): unread is a difference of two of these. A recall or an
    /// edit carries the count of the messages before it; a hole carries 0.
    pub count_seq: u64,
    /// The message a recall or an edit changes (0 for other kinds).
    pub target_message_id: u64,
    /// When the body was last edited (0: never).
    pub edited_at_ms: i64,
    /// When the message was recalled (0: it was not); its body is then empty.
    pub recalled_at_ms: i64,
}

impl MessageRow {
    /// Whether the message was recalled: its body is gone whatever a racing edit wrote.
    pub fn recalled(&self) -> bool {
        self.recalled_at_ms != 0
    }
}

/// Most fields appended to a row since a value was written that still decode.
const MAX_APPENDED_FIELDS: usize = 8;

/// Decodes a postcard value written before fields were appended to its row: each appended
/// field is an integer whose zero encodes as one 0 byte, so a short value is padded with zeros
/// until it decodes. Only for values of an older format: a current value must decode as is.
pub fn decode_with_appended_fields<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, postcard::Error> {
    let mut padded = bytes.to_vec();
    loop {
        match postcard::from_bytes(&padded) {
            Err(postcard::Error::DeserializeUnexpectedEnd)
                if padded.len() < bytes.len() + MAX_APPENDED_FIELDS =>
            {
                padded.push(0);
            }
            other => return other,
        }
    }
}

/// The message_id of the hole at `(conversation_id, conv_seq)`: the same for every filler, so
/// concurrent fills converge; the top bit (never set in a snowflake) keeps it apart from them.
pub fn hole_message_id(conversation_id: &str, conv_seq: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in conversation_id.bytes().chain(conv_seq.to_be_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | (1 << 63)
}

/// A hole marker: conv_seq `conv_seq` was allocated but its message was never written.
pub fn hole_message(conversation_id: &str, conv_seq: u64, created_at_ms: i64) -> MessageRow {
    MessageRow {
        conversation_id: conversation_id.to_owned(),
        conv_seq,
        message_id: hole_message_id(conversation_id, conv_seq),
        sender_id: String::new(),
        sender_device_id: String::new(),
        client_msg_id: String::new(),
        content_type: String::new(),
        body: Bytes::new(),
        created_at_ms,
        kind: MessageKind::Hole,
        count_seq: 0,
        target_message_id: 0,
        edited_at_ms: 0,
        recalled_at_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(spans: &[(u64, DeliveryMode)]) -> ConversationRow {
        ConversationRow {
            conversation_id: "g:spans".into(),
            kind: ConversationKind::Group,
            title: String::new(),
            created_at_ms: 0,
            created_by: String::new(),
            member_count: 0,
            mode_spans: spans
                .iter()
                .map(|&(since_seq, mode)| ModeSpan { since_seq, mode })
                .collect(),
            mode_forced: false,
            mode_changed_at_ms: 0,
            slowmode_seconds: 0,
        }
    }

    /// A message row as the first format wrote it, before fields were appended.
    #[derive(Serialize)]
    struct FirstMessageRow {
        conversation_id: String,
        conv_seq: u64,
        message_id: u64,
        sender_id: String,
        sender_device_id: String,
        client_msg_id: String,
        content_type: String,
        body: Bytes,
        created_at_ms: i64,
        kind: MessageKind,
    }

    #[test]
    fn a_row_written_before_fields_were_appended_decodes_with_them_zero() {
        let old = FirstMessageRow {
            conversation_id: "g:old".into(),
            conv_seq: 7,
            message_id: 42,
            sender_id: "alice".into(),
            sender_device_id: "d".into(),
            client_msg_id: "c".into(),
            content_type: "text/plain".into(),
            body: Bytes::from_static(b"hi"),
            created_at_ms: 1000,
            kind: MessageKind::User,
        };
        let bytes = postcard::to_stdvec(&old).unwrap();
        assert!(
            postcard::from_bytes::<MessageRow>(&bytes).is_err(),
            "a plain decode refuses it"
        );
        let row: MessageRow = decode_with_appended_fields(&bytes).unwrap();
        assert_eq!(
            (row.conv_seq, row.message_id, row.body.as_ref()),
            (7, 42, &b"hi"[..])
        );
        assert_eq!(
            (
                row.count_seq,
                row.target_message_id,
                row.edited_at_ms,
                row.recalled_at_ms
            ),
            (0, 0, 0, 0)
        );
        // A value cut short by more than the appended fields stays an error.
        assert!(decode_with_appended_fields::<MessageRow>(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn a_hot_span_undone_at_the_same_seq_is_not_where_hot_reading_continues() {
        use DeliveryMode::*;
        let c = conversation(&[
            (1, Fanout),
            (1, Hot),
            (2, Fanout),
            (3, Hot),
            (3, Fanout),
            (4, Hot),
        ]);
        assert_eq!(c.mode_at(1), Hot);
        assert_eq!(c.mode_at(3), Fanout);
        assert_eq!(c.next_hot_seq(2), Some(4));
        assert_eq!(c.next_hot_seq(1), Some(1));
        assert_eq!(
            conversation(&[(1, Fanout), (5, Hot), (5, Fanout)]).next_hot_seq(1),
            None
        );
    }
}
