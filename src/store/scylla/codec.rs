//! Conversions between the Store's rows and their CQL form: the u64 ↔ bigint encodings
//! (message ids with the top bit flipped), enum names, and driver errors as `StoreError`.

use ::scylla::errors::ExecutionError;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::prepared::PreparedStatement;
use bytes::Bytes;

use super::*;

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("scylla: {e}"))
}

pub(super) fn execution(e: ExecutionError) -> StoreError {
    use ::scylla::errors::{DbError, RequestAttemptError};
    match &e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Overloaded | DbError::RateLimitReached { .. },
            _,
        )) => StoreError::Overloaded(format!("scylla: {e}")),
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid | DbError::SyntaxError | DbError::Unauthorized,
            _,
        )) => StoreError::Config(format!("scylla: {e}")),
        _ => unavailable(e),
    }
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("scylla row: {e}"))
}

/// A u64 sequence value as CQL `bigint`.
pub(super) fn int(v: u64) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("value {v} exceeds bigint")))
}

pub(super) fn uint(v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v}")))
}

pub(super) fn int32(v: usize) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// message_id with its top bit flipped: CQL's signed order equals the ids' unsigned order.
pub fn id_to_cql(id: u64) -> i64 {
    (id ^ (1 << 63)) as i64
}

pub fn id_from_cql(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

pub(super) fn kind_text(k: ConversationKind) -> &'static str {
    match k {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

pub(super) fn parse_kind(s: Option<&str>) -> StoreResult<ConversationKind> {
    match s {
        Some("direct") => Ok(ConversationKind::Direct),
        Some("group") => Ok(ConversationKind::Group),
        other => Err(corrupt(format!("conversation kind {other:?}"))),
    }
}

pub(super) fn mode_text(m: DeliveryMode) -> &'static str {
    match m {
        DeliveryMode::Fanout => "fanout",
        DeliveryMode::Hot => "hot",
    }
}

pub(super) fn parse_mode(s: &str) -> StoreResult<DeliveryMode> {
    match s {
        "fanout" => Ok(DeliveryMode::Fanout),
        "hot" => Ok(DeliveryMode::Hot),
        other => Err(corrupt(format!("delivery mode {other:?}"))),
    }
}

pub(super) fn role_text(r: Role) -> &'static str {
    match r {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

pub(super) fn parse_role(s: Option<&str>) -> StoreResult<Role> {
    match s {
        Some("member") => Ok(Role::Member),
        Some("admin") => Ok(Role::Admin),
        Some("owner") => Ok(Role::Owner),
        other => Err(corrupt(format!("role {other:?}"))),
    }
}

pub(super) fn message_kind_text(k: MessageKind) -> &'static str {
    match k {
        MessageKind::User => "user",
        MessageKind::Hole => "hole",
        MessageKind::Recall => "recall",
        MessageKind::Edit => "edit",
    }
}

pub(super) fn parse_message_kind(s: Option<&str>) -> StoreResult<MessageKind> {
    match s {
        Some("user") | None => Ok(MessageKind::User),
        Some("hole") => Ok(MessageKind::Hole),
        Some("recall") => Ok(MessageKind::Recall),
        Some("edit") => Ok(MessageKind::Edit),
        Some(other) => Err(corrupt(format!("message kind {other:?}"))),
    }
}

pub(super) fn conversation_from(c: ConversationCql) -> StoreResult<Option<ConversationRow>> {
    // Only `last_seq` written (never happens before creation, but then it is no row yet).
    if c.kind.is_none() {
        return Ok(None);
    }
    let spans = c
        .mode_spans
        .unwrap_or_default()
        .into_iter()
        .map(|(since, mode)| {
            Ok(ModeSpan {
                since_seq: uint(since)?,
                mode: parse_mode(&mode)?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(ConversationRow {
        kind: parse_kind(c.kind.as_deref())?,
        conversation_id: c.conversation_id,
        title: c.title.unwrap_or_default(),
        created_at_ms: c.created_at.map_or(0, |t| t.0),
        created_by: c.created_by.unwrap_or_default(),
        member_count: c.member_count.unwrap_or(0).max(0) as u32,
        mode_spans: if spans.is_empty() {
            ConversationRow::initial_spans()
        } else {
            spans
        },
        mode_forced: c.mode_forced.unwrap_or(false),
        mode_changed_at_ms: c.mode_changed_at.map_or(0, |t| t.0),
        slowmode_seconds: c.slowmode_seconds.unwrap_or(0).max(0) as u32,
    }))
}

pub(super) fn spans_cql(spans: &[ModeSpan]) -> StoreResult<Spans> {
    spans
        .iter()
        .map(|s| Ok((int(s.since_seq)?, mode_text(s.mode).to_owned())))
        .collect()
}

pub(super) fn member_from(m: MemberCql) -> StoreResult<MemberRow> {
    Ok(MemberRow {
        role: parse_role(m.role.as_deref())?,
        conversation_id: m.conversation_id,
        user_id: m.user_id,
        joined_seq: uint(m.joined_seq.unwrap_or(0))?,
        joined_at_ms: m.joined_at.map_or(0, |t| t.0),
    })
}

/// `None` for a row without membership (left, or only activity cells written).
pub(super) fn user_conversation_from(
    u: UserConversationCql,
) -> StoreResult<Option<UserConversationRow>> {
    let joined_seq = u.joined_seq.unwrap_or(0);
    if joined_seq <= 0 || u.kind.is_none() {
        return Ok(None);
    }
    Ok(Some(UserConversationRow {
        kind: parse_kind(u.kind.as_deref())?,
        mode: match u.mode.as_deref() {
            Some(m) => parse_mode(m)?,
            None => DeliveryMode::Fanout,
        },
        last_message_id: u.last_message_id.map_or(0, id_from_cql),
        last_seq: uint(u.last_seq.unwrap_or(0))?,
        read_seq: uint(u.read_seq.unwrap_or(0))?,
        joined_seq: uint(joined_seq)?,
        joined_at_ms: u.joined_at.map_or(0, |t| t.0),
        last_count: uint(u.last_count.unwrap_or(0))?,
        read_count: uint(u.read_count.unwrap_or(0))?,
        user_id: u.user_id,
        conversation_id: u.conversation_id,
    }))
}

pub(super) fn message_from(m: MessageCql) -> StoreResult<MessageRow> {
    let recalled_at_ms = m.recalled_at.map_or(0, |t| t.0);
    // An edit racing the recall may have written the body cell after it.
    let body = if recalled_at_ms != 0 {
        Bytes::new()
    } else {
        Bytes::from(m.body.unwrap_or_default())
    };
    Ok(MessageRow {
        conv_seq: uint(m.conv_seq)?,
        message_id: id_from_cql(m.message_id),
        sender_id: m.sender_id.unwrap_or_default(),
        sender_device_id: m.sender_device_id.unwrap_or_default(),
        client_msg_id: m.client_msg_id.unwrap_or_default(),
        content_type: m.content_type.unwrap_or_default(),
        body,
        created_at_ms: m.created_at.map_or(0, |t| t.0),
        kind: parse_message_kind(m.kind.as_deref())?,
        count_seq: uint(m.count_seq.unwrap_or(0))?,
        target_message_id: m.target_message_id.map_or(0, id_from_cql),
        edited_at_ms: m.edited_at.map_or(0, |t| t.0),
        recalled_at_ms,
        conversation_id: m.conversation_id,
    })
}

pub(super) fn message_binds(m: &MessageRow, bucket_size: u64) -> StoreResult<MessageBinds> {
    Ok(MessageBinds {
        conversation_id: m.conversation_id.clone(),
        bucket: int(m.conv_seq / bucket_size)?,
        conv_seq: int(m.conv_seq)?,
        message_id: id_to_cql(m.message_id),
        sender_id: m.sender_id.clone(),
        sender_device_id: m.sender_device_id.clone(),
        client_msg_id: m.client_msg_id.clone(),
        content_type: m.content_type.clone(),
        body: m.body.to_vec(),
        created_at: Millis(m.created_at_ms),
        kind: message_kind_text(m.kind).to_owned(),
        count_seq: int(m.count_seq)?,
        target_message_id: id_to_cql(m.target_message_id),
        edited_at: Millis(m.edited_at_ms),
        recalled_at: Millis(m.recalled_at_ms),
    })
}

pub(super) fn inbox_from(r: InboxCql) -> StoreResult<InboxRow> {
    let message = MessageCql {
        conversation_id: r.conversation_id.unwrap_or_default(),
        conv_seq: r.conv_seq.unwrap_or(0),
        message_id: r.message_id,
        sender_id: r.sender_id,
        sender_device_id: r.sender_device_id,
        client_msg_id: r.client_msg_id,
        content_type: r.content_type,
        body: r.body,
        created_at: r.created_at,
        kind: r.kind,
        count_seq: r.count_seq,
        target_message_id: r.target_message_id,
        edited_at: r.edited_at,
        recalled_at: r.recalled_at,
    };
    Ok(InboxRow {
        inbox_seq: uint(r.inbox_seq)?,
        allocated_at_ms: r.allocated_at.map_or(0, |t| t.0),
        message: message_from(message)?,
        user_id: r.user_id,
    })
}

pub(super) fn pending_from(p: PendingCql) -> StoreResult<PendingFanoutRow> {
    Ok(PendingFanoutRow {
        bucket: uint(p.bucket)?,
        shard: u32::try_from(p.shard).map_err(corrupt)?,
        message_id: id_from_cql(p.message_id),
        conversation_id: p.conversation_id.unwrap_or_default(),
        conv_seq: uint(p.conv_seq.unwrap_or(0))?,
        created_at_ms: p.created_at.map_or(0, |t| t.0),
        inbox_allocation: p
            .inbox_allocation
            .unwrap_or_default()
            .into_iter()
            .map(|(user, seq)| Ok((user, uint(seq)?)))
            .collect::<StoreResult<Vec<_>>>()?,
    })
}

/// One statement of a batch with its values, type-erased so batches can mix statements.
pub(super) type BatchPart = (
    PreparedStatement,
    Box<dyn SerializeRow + Send + Sync + 'static>,
);
