//! Every CQL statement the ScyllaDB backend runs, prepared once at start, each with the Rust
//! types it binds and reads: the always-on schema check (`tests/scylla_schema.rs`) parses each
//! against `schema.cql` and type-checks those Rust types with the driver's own checks.

use ::scylla::client::session::Session;
use ::scylla::deserialize::row::{ColumnIterator, DeserializeRow};
use ::scylla::deserialize::value::DeserializeValue;
use ::scylla::deserialize::{DeserializationError, FrameSlice, TypeCheckError};
use ::scylla::errors::PrepareError;
use ::scylla::frame::response::result::{ColumnSpec, ColumnType};
use ::scylla::serialize::SerializationError;
use ::scylla::serialize::row::{RowSerializationContext, SerializeRow};
use ::scylla::serialize::value::SerializeValue;
use ::scylla::serialize::writers::{CellWriter, RowWriter, WrittenCellProof};
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::statement::{Consistency, SerialConsistency};
use ::scylla::value::CqlTimestamp;
use ::scylla::{DeserializeRow, SerializeRow};
use std::collections::BTreeMap;

/// A CQL `timestamp` (milliseconds since the Unix epoch) with a `Default`, so that every bind
/// tuple can be instantiated by the type check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Millis(pub i64);

impl SerializeValue for Millis {
    fn serialize<'b>(
        &self,
        typ: &ColumnType,
        writer: CellWriter<'b>,
    ) -> Result<WrittenCellProof<'b>, SerializationError> {
        CqlTimestamp(self.0).serialize(typ, writer)
    }
}

impl<'frame, 'metadata> DeserializeValue<'frame, 'metadata> for Millis {
    fn type_check(typ: &ColumnType) -> Result<(), TypeCheckError> {
        <CqlTimestamp as DeserializeValue>::type_check(typ)
    }
    fn deserialize(
        typ: &'metadata ColumnType<'metadata>,
        v: Option<FrameSlice<'frame>>,
    ) -> Result<Self, DeserializationError> {
        <CqlTimestamp as DeserializeValue>::deserialize(typ, v).map(|t| Millis(t.0))
    }
}

/// The "row type" of statements that return no rows.
pub struct NoRows;

impl<'frame, 'metadata> DeserializeRow<'frame, 'metadata> for NoRows {
    fn type_check(specs: &[ColumnSpec]) -> Result<(), TypeCheckError> {
        // Lightweight transactions answer with `[applied]` (and the existing row): read untyped.
        if specs.is_empty() {
            Ok(())
        } else {
            <(bool,) as DeserializeRow>::type_check(&specs[..1])
        }
    }
    fn deserialize(_row: ColumnIterator<'frame, 'metadata>) -> Result<Self, DeserializationError> {
        Ok(NoRows)
    }
}

/// `conversations` as read.
#[derive(Debug, DeserializeRow)]
pub struct ConversationCql {
    pub conversation_id: String,
    pub kind: Option<String>,
    pub title: Option<String>,
    pub created_at: Option<Millis>,
    pub created_by: Option<String>,
    pub member_count: Option<i32>,
    pub mode_spans: Option<Vec<(i64, String)>>,
    pub mode_forced: Option<bool>,
    pub mode_changed_at: Option<Millis>,
    pub slowmode_seconds: Option<i32>,
}

#[derive(Debug, DeserializeRow)]
pub struct MemberCql {
    pub conversation_id: String,
    pub user_id: String,
    pub role: Option<String>,
    pub joined_seq: Option<i64>,
    pub joined_at: Option<Millis>,
}

#[derive(Debug, DeserializeRow)]
pub struct UserConversationCql {
    pub user_id: String,
    pub conversation_id: String,
    pub kind: Option<String>,
    pub mode: Option<String>,
    pub last_message_id: Option<i64>,
    pub last_seq: Option<i64>,
    pub read_seq: Option<i64>,
    pub joined_seq: Option<i64>,
    pub joined_at: Option<Millis>,
    pub last_count: Option<i64>,
    pub read_count: Option<i64>,
}

#[derive(Debug, DeserializeRow)]
pub struct InboxMarksCql {
    pub inbox_head: Option<i64>,
    pub inbox_floor: Option<i64>,
}

#[derive(Debug, DeserializeRow)]
pub struct MessageCql {
    pub conversation_id: String,
    pub conv_seq: i64,
    pub message_id: i64,
    pub sender_id: Option<String>,
    pub sender_device_id: Option<String>,
    pub client_msg_id: Option<String>,
    pub content_type: Option<String>,
    pub body: Option<Vec<u8>>,
    pub created_at: Option<Millis>,
    pub kind: Option<String>,
    pub count_seq: Option<i64>,
    pub target_message_id: Option<i64>,
    pub edited_at: Option<Millis>,
    pub recalled_at: Option<Millis>,
}

#[derive(Debug, DeserializeRow)]
pub struct InboxCql {
    pub user_id: String,
    pub inbox_seq: i64,
    pub message_id: i64,
    pub allocated_at: Option<Millis>,
    pub conversation_id: Option<String>,
    pub conv_seq: Option<i64>,
    pub sender_id: Option<String>,
    pub sender_device_id: Option<String>,
    pub client_msg_id: Option<String>,
    pub content_type: Option<String>,
    pub body: Option<Vec<u8>>,
    pub created_at: Option<Millis>,
    pub kind: Option<String>,
    pub count_seq: Option<i64>,
    pub target_message_id: Option<i64>,
    pub edited_at: Option<Millis>,
    pub recalled_at: Option<Millis>,
}

#[derive(Debug, DeserializeRow)]
pub struct IdempotencyCql {
    pub sender_id: String,
    pub client_msg_id: String,
    pub message_id: Option<i64>,
    pub conversation_id: Option<String>,
    pub conv_seq: Option<i64>,
    pub created_at: Option<Millis>,
}

#[derive(Debug, DeserializeRow)]
pub struct PendingCql {
    pub bucket: i64,
    pub shard: i32,
    pub message_id: i64,
    pub conversation_id: Option<String>,
    pub conv_seq: Option<i64>,
    pub created_at: Option<Millis>,
    pub inbox_allocation: Option<BTreeMap<String, i64>>,
}

#[derive(Debug, DeserializeRow)]
pub struct PushTargetCql {
    pub user_id: String,
    pub device_id: String,
    pub platform: Option<String>,
    pub token: Option<String>,
    pub app_id: Option<String>,
    pub locale: Option<String>,
    pub registered_at: Option<Millis>,
}

pub type Spans = Vec<(i64, String)>;
pub type Allocation = BTreeMap<String, i64>;

/// Binds of `insert_message`, also used inside batches.
#[derive(Debug, Default, SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
pub struct MessageBinds {
    pub conversation_id: String,
    pub bucket: i64,
    pub conv_seq: i64,
    pub message_id: i64,
    pub sender_id: String,
    pub sender_device_id: String,
    pub client_msg_id: String,
    pub content_type: String,
    pub body: Vec<u8>,
    pub created_at: Millis,
    pub kind: String,
    pub count_seq: i64,
    pub target_message_id: i64,
    pub edited_at: Millis,
    pub recalled_at: Millis,
}
/// Binds of `insert_inbox`, in statement order (the last is `USING TTL`).
#[derive(Debug, Default, SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
pub struct InboxBinds {
    pub user_id: String,
    pub bucket: i64,
    pub inbox_seq: i64,
    pub message_id: i64,
    pub allocated_at: Millis,
    pub conversation_id: String,
    pub conv_seq: i64,
    pub sender_id: String,
    pub sender_device_id: String,
    pub client_msg_id: String,
    pub content_type: String,
    pub body: Vec<u8>,
    pub created_at: Millis,
    pub kind: String,
    pub count_seq: i64,
    pub target_message_id: i64,
    pub edited_at: Millis,
    pub recalled_at: Millis,
    pub ttl: i32,
}

macro_rules! statements {
    ($( $(#[$doc:meta])* $name:ident ($idempotent:literal): $binds:ty => $row:ty = $cql:literal; )*) => {
        /// Every statement, prepared.
        pub struct Prepared {
            $( $(#[$doc])* pub $name: PreparedStatement, )*
        }

        /// `(name, CQL)` of every statement, for the schema check.
        pub const STATEMENTS: &[(&str, &str)] = &[ $( (stringify!($name), $cql) ),* ];

        impl Prepared {
            pub async fn prepare(
                session: &Session,
                levels: Levels,
            ) -> Result<Self, PrepareError> {
                Ok(Self {
                    $( $name: prepare(session, $cql, $idempotent, levels.of($cql)).await?, )*
                })
            }
        }

        /// Checks each statement's Rust bind and row types against the column specs that
        /// `specs(name)` derives from the schema: `(binds, result columns)`.
        pub fn type_check(
            specs: impl Fn(&str) -> (Vec<ColumnSpec<'static>>, Vec<ColumnSpec<'static>>),
        ) -> Vec<String> {
            let mut problems = Vec::new();
            $(
                let (binds, results) = specs(stringify!($name));
                check_types::<$binds, $row>(stringify!($name), &binds, &results, &mut problems);
            )*
            problems
        }

        /// Whether each statement is marked idempotent (retried and speculated).
        pub const IDEMPOTENT: &[(&str, bool)] = &[ $( (stringify!($name), $idempotent) ),* ];
    };
}

/// The consistency levels of reads and of writes (ScyllaDB refuses `EACH_QUORUM` for reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub read: Consistency,
    pub write: Consistency,
}

impl Levels {
    /// The level a statement runs at: a `SELECT` reads, everything else writes.
    pub fn of(&self, cql: &str) -> Consistency {
        let verb = cql.split_whitespace().next().unwrap_or("");
        if verb.eq_ignore_ascii_case("SELECT") {
            self.read
        } else {
            self.write
        }
    }
}

async fn prepare(
    session: &Session,
    cql: &str,
    idempotent: bool,
    consistency: Consistency,
) -> Result<PreparedStatement, PrepareError> {
    let mut p = session.prepare(cql).await?;
    p.set_is_idempotent(idempotent);
    p.set_consistency(consistency);
    p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
    Ok(p)
}

fn check_types<B, R>(
    name: &str,
    binds: &[ColumnSpec<'static>],
    results: &[ColumnSpec<'static>],
    problems: &mut Vec<String>,
) where
    B: SerializeRow + Default,
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    let ctx = RowSerializationContext::from_specs(binds);
    let mut buf = Vec::new();
    if let Err(e) = B::default().serialize(&ctx, &mut RowWriter::new(&mut buf)) {
        problems.push(format!("{name}: binds: {e}"));
    }
    if let Err(e) = R::type_check(results) {
        problems.push(format!("{name}: rows: {e}"));
    }
}

statements! {
    // --- conversations ------------------------------------------------------------------
    /// Lightweight transaction: the loser reads the winner's row. It writes only the cells no
    /// plain write ever touches (ScyllaDB advises against LWT and plain writes on one cell:
    /// their timestamps come from different clocks); the mutable ones start unset (their
    /// defaults) or by plain writes.
    insert_conversation(false): (String, String, String, Millis, String) => NoRows =
        "INSERT INTO conversations (conversation_id, kind, title, created_at, created_by) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS";
    get_conversation(true): (String,) => ConversationCql =
        "SELECT conversation_id, kind, title, created_at, created_by, member_count, mode_spans, mode_forced, mode_changed_at, slowmode_seconds FROM conversations WHERE conversation_id = ?";
    /// Write timestamp = when the count started: the count that started last wins.
    set_member_count(true): (i64, i32, String) => NoRows =
        "UPDATE conversations USING TIMESTAMP ? SET member_count = ? WHERE conversation_id = ?";
    update_conversation_mode(true): (Spans, bool, Millis, String) => NoRows =
        "UPDATE conversations SET mode_spans = ?, mode_forced = ?, mode_changed_at = ? WHERE conversation_id = ?";
    set_slowmode(true): (i32, String) => NoRows =
        "UPDATE conversations SET slowmode_seconds = ? WHERE conversation_id = ?";
    /// Write timestamp = the seq: the highest seq wins whatever the arrival order.
    raise_last_conv_seq(true): (i64, i64, String) => NoRows =
        "UPDATE conversations USING TIMESTAMP ? SET last_seq = ? WHERE conversation_id = ?";
    /// With a message (not a hole, which has no count): counts rise with seqs.
    raise_last_conv_seq_and_count(true): (i64, i64, i64, String) => NoRows =
        "UPDATE conversations USING TIMESTAMP ? SET last_seq = ?, last_count = ? WHERE conversation_id = ?";
    get_last_count(true): (String,) => (Option<i64>,) =
        "SELECT last_count FROM conversations WHERE conversation_id = ?";
    get_last_conv_seq(true): (String,) => (Option<i64>,) =
        "SELECT last_seq FROM conversations WHERE conversation_id = ?";

    // --- members ------------------------------------------------------------------------
    insert_member(true): (String, String, String, i64, Millis) => NoRows =
        "INSERT INTO members (conversation_id, user_id, role, joined_seq, joined_at) VALUES (?, ?, ?, ?, ?)";
    delete_member(true): (String, String) => NoRows =
        "DELETE FROM members WHERE conversation_id = ? AND user_id = ?";
    get_member(true): (String, String) => MemberCql =
        "SELECT conversation_id, user_id, role, joined_seq, joined_at FROM members WHERE conversation_id = ? AND user_id = ?";
    list_members(true): (String, i32) => MemberCql =
        "SELECT conversation_id, user_id, role, joined_seq, joined_at FROM members WHERE conversation_id = ? LIMIT ?";
    list_members_after(true): (String, String, i32) => MemberCql =
        "SELECT conversation_id, user_id, role, joined_seq, joined_at FROM members WHERE conversation_id = ? AND user_id > ? LIMIT ?";
    count_members(true): (String,) => (i64,) =
        "SELECT COUNT(*) FROM members WHERE conversation_id = ?";

    // --- user_conversations -------------------------------------------------------------
    /// The membership columns (ordinary write timestamps).
    insert_user_conversation(true): (String, String, String, i64, Millis) => NoRows =
        "INSERT INTO user_conversations (user_id, conversation_id, kind, joined_seq, joined_at) VALUES (?, ?, ?, ?, ?)";
    /// `mode` is only ever written as 'hot' (never lowered), and deleted with the membership.
    set_user_conversation_hot(true): (String, String) => NoRows =
        "UPDATE user_conversations SET mode = 'hot' WHERE user_id = ? AND conversation_id = ?";
    /// Write timestamp = last_seq: concurrent and late updates keep the highest (counts rise
    /// with seqs).
    raise_activity(true): (i64, i64, i64, i64, String, String) => NoRows =
        "UPDATE user_conversations USING TIMESTAMP ? SET last_seq = ?, last_message_id = ?, last_count = ? WHERE user_id = ? AND conversation_id = ?";
    /// For a hole, which has no count (a write of 0 at its seq would shadow the count).
    raise_activity_of_hole(true): (i64, i64, i64, String, String) => NoRows =
        "UPDATE user_conversations USING TIMESTAMP ? SET last_seq = ?, last_message_id = ? WHERE user_id = ? AND conversation_id = ?";
    /// Write timestamp = read_seq: read positions never move back.
    raise_read_seq(true): (i64, i64, i64, String, String) => NoRows =
        "UPDATE user_conversations USING TIMESTAMP ? SET read_seq = ?, read_count = ? WHERE user_id = ? AND conversation_id = ?";
    raise_inbox_head(true): (i64, i64, String) => NoRows =
        "UPDATE user_conversations USING TIMESTAMP ? SET inbox_head = ? WHERE user_id = ?";
    raise_inbox_floor(true): (i64, i64, String) => NoRows =
        "UPDATE user_conversations USING TIMESTAMP ? SET inbox_floor = ? WHERE user_id = ?";
    /// A leave deletes the membership columns, never the row: a row tombstone would shadow
    /// the seq-timestamped activity cells of a later re-join.
    delete_user_membership(true): (String, String) => NoRows =
        "DELETE kind, mode, joined_seq, joined_at FROM user_conversations WHERE user_id = ? AND conversation_id = ?";
    get_user_conversation(true): (String, String) => UserConversationCql =
        "SELECT user_id, conversation_id, kind, mode, last_message_id, last_seq, read_seq, joined_seq, joined_at, last_count, read_count FROM user_conversations WHERE user_id = ? AND conversation_id = ?";
    list_user_conversations(true): (String,) => UserConversationCql =
        "SELECT user_id, conversation_id, kind, mode, last_message_id, last_seq, read_seq, joined_seq, joined_at, last_count, read_count FROM user_conversations WHERE user_id = ?";
    list_user_conversations_after(true): (String, String) => UserConversationCql =
        "SELECT user_id, conversation_id, kind, mode, last_message_id, last_seq, read_seq, joined_seq, joined_at, last_count, read_count FROM user_conversations WHERE user_id = ? AND conversation_id > ?";
    get_inbox_marks(true): (String,) => InboxMarksCql =
        "SELECT inbox_head, inbox_floor FROM user_conversations WHERE user_id = ? LIMIT 1";

    // --- user_hot_conversations ---------------------------------------------------------
    insert_user_hot(true): (String, String) => NoRows =
        "INSERT INTO user_hot_conversations (user_id, conversation_id) VALUES (?, ?)";
    delete_user_hot(true): (String, String) => NoRows =
        "DELETE FROM user_hot_conversations WHERE user_id = ? AND conversation_id = ?";
    list_user_hot(true): (String,) => (String,) =
        "SELECT conversation_id FROM user_hot_conversations WHERE user_id = ?";

    // --- messages -----------------------------------------------------------------------
    insert_message(true): MessageBinds => NoRows =
        "INSERT INTO messages (conversation_id, bucket, conv_seq, message_id, sender_id, sender_device_id, client_msg_id, content_type, body, created_at, kind, count_seq, target_message_id, edited_at, recalled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    /// Write timestamp = the recall's time: cells of a change are ordered by when it was
    /// made, after the row's insert. A later edit may rewrite the body cell; readers show a
    /// recalled message without it.
    recall_message(true): (i64, Vec<u8>, Millis, String, i64, i64, i64) => NoRows =
        "UPDATE messages USING TIMESTAMP ? SET body = ?, recalled_at = ? WHERE conversation_id = ? AND bucket = ? AND conv_seq = ? AND message_id = ?";
    /// Write timestamp = the edit's time: the later of two edits wins.
    edit_message(true): (i64, String, Vec<u8>, Millis, String, i64, i64, i64) => NoRows =
        "UPDATE messages USING TIMESTAMP ? SET content_type = ?, body = ?, edited_at = ? WHERE conversation_id = ? AND bucket = ? AND conv_seq = ? AND message_id = ?";
    read_messages_ascending(true): (String, i64, i64, i64, i32) => MessageCql =
        "SELECT conversation_id, conv_seq, message_id, sender_id, sender_device_id, client_msg_id, content_type, body, created_at, kind, count_seq, target_message_id, edited_at, recalled_at FROM messages WHERE conversation_id = ? AND bucket = ? AND conv_seq >= ? AND conv_seq <= ? ORDER BY conv_seq ASC LIMIT ?";
    read_messages_descending(true): (String, i64, i64, i64, i32) => MessageCql =
        "SELECT conversation_id, conv_seq, message_id, sender_id, sender_device_id, client_msg_id, content_type, body, created_at, kind, count_seq, target_message_id, edited_at, recalled_at FROM messages WHERE conversation_id = ? AND bucket = ? AND conv_seq >= ? AND conv_seq <= ? LIMIT ?";
    read_messages_at(true): (String, i64, i64) => MessageCql =
        "SELECT conversation_id, conv_seq, message_id, sender_id, sender_device_id, client_msg_id, content_type, body, created_at, kind, count_seq, target_message_id, edited_at, recalled_at FROM messages WHERE conversation_id = ? AND bucket = ? AND conv_seq = ?";

    // --- inbox --------------------------------------------------------------------------
    insert_inbox(true): InboxBinds => NoRows =
        "INSERT INTO inbox (user_id, bucket, inbox_seq, message_id, allocated_at, conversation_id, conv_seq, sender_id, sender_device_id, client_msg_id, content_type, body, created_at, kind, count_seq, target_message_id, edited_at, recalled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?";
    read_inbox_after(true): (String, i64, i64, i64, i32) => InboxCql =
        "SELECT user_id, inbox_seq, message_id, allocated_at, conversation_id, conv_seq, sender_id, sender_device_id, client_msg_id, content_type, body, created_at, kind, count_seq, target_message_id, edited_at, recalled_at FROM inbox WHERE user_id = ? AND bucket = ? AND (inbox_seq, message_id) > (?, ?) LIMIT ?";
    drop_inbox_bucket(true): (String, i64) => NoRows =
        "DELETE FROM inbox WHERE user_id = ? AND bucket = ?";

    // --- idempotency --------------------------------------------------------------------
    insert_idempotency(true): (String, String, i64, String, i64, Millis, i32) => NoRows =
        "INSERT INTO idempotency (sender_id, client_msg_id, message_id, conversation_id, conv_seq, created_at) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?";
    get_idempotency(true): (String, String) => IdempotencyCql =
        "SELECT sender_id, client_msg_id, message_id, conversation_id, conv_seq, created_at FROM idempotency WHERE sender_id = ? AND client_msg_id = ?";

    // --- outbox -------------------------------------------------------------------------
    insert_pending(true): (i64, i32, i64, String, i64, Millis, Allocation) => NoRows =
        "INSERT INTO outbox (bucket, shard, message_id, conversation_id, conv_seq, created_at, inbox_allocation) VALUES (?, ?, ?, ?, ?, ?, ?)";
    /// Before the inbox writes of a fan-out; the TTL bounds a row this recreates after a
    /// concurrent delete (recovery then finds it without a message and deletes it).
    record_inbox_allocation(true): (i32, Allocation, i64, i32, i64) => NoRows =
        "UPDATE outbox USING TTL ? SET inbox_allocation = ? WHERE bucket = ? AND shard = ? AND message_id = ?";
    list_pending(true): (i64, i32, i32) => PendingCql =
        "SELECT bucket, shard, message_id, conversation_id, conv_seq, created_at, inbox_allocation FROM outbox WHERE bucket = ? AND shard = ? LIMIT ?";
    get_pending(true): (i64, i32, i64) => PendingCql =
        "SELECT bucket, shard, message_id, conversation_id, conv_seq, created_at, inbox_allocation FROM outbox WHERE bucket = ? AND shard = ? AND message_id = ?";
    delete_pending(true): (i64, i32, i64) => NoRows =
        "DELETE FROM outbox WHERE bucket = ? AND shard = ? AND message_id = ?";

    // --- hidden_messages ----------------------------------------------------------------
    hide_message(true): (String, String, i64, i64) => NoRows =
        "INSERT INTO hidden_messages (user_id, conversation_id, conv_seq, message_id) VALUES (?, ?, ?, ?)";
    list_hidden(true): (String, String, i64, i64, i32) => (i64, i64) =
        "SELECT conv_seq, message_id FROM hidden_messages WHERE user_id = ? AND conversation_id = ? AND conv_seq >= ? AND conv_seq <= ? LIMIT ?";

    // --- push_targets -------------------------------------------------------------------
    /// Write timestamp = registration time: the later registration wins.
    insert_push_target(true): (String, String, String, String, String, String, Millis, i64) => NoRows =
        "INSERT INTO push_targets (user_id, device_id, platform, token, app_id, locale, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    /// Timestamp = the registration removed: a newer one is not shadowed.
    delete_push_target(true): (i64, String, String) => NoRows =
        "DELETE FROM push_targets USING TIMESTAMP ? WHERE user_id = ? AND device_id = ?";
    list_push_targets(true): (String,) => PushTargetCql =
        "SELECT user_id, device_id, platform, token, app_id, locale, registered_at FROM push_targets WHERE user_id = ?";
}
