//! The `Store` on ScyllaDB: one `Session` (token- and shard-aware, preferring the local
//! datacenter), every statement prepared once at start (`statements.rs`), typed rows, manual
//! paging, logged batches where a step must be one unit.
//!
//! Two encodings keep CQL's semantics equal to the trait's:
//! - **Monotonic cells by write timestamp.** `last_seq`/`last_message_id`, `read_seq`,
//!   `inbox_head`, `inbox_floor` and `conversations.last_seq` only ever rise. They are written
//!   `USING TIMESTAMP <the value>`, so last-write-wins keeps the highest whatever the arrival
//!   order (a late re-drive never moves them back), without a read before the write. Rows
//!   holding such cells are never deleted as a whole (a row tombstone, timestamped now, would
//!   shadow them forever): a leave deletes the membership columns, and readers skip rows
//!   without `joined_seq`.
//! - **message_id order.** Ids are u64 (holes set the top bit); CQL `bigint` is signed. Columns
//!   holding a message_id store it with the top bit flipped, so CQL's order is the id's order.

mod options;
pub mod script;
pub mod statements;

pub use self::options::{Keyspace, ScyllaOptions, parse_consistency, valid_keyspace};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::scylla::client::execution_profile::ExecutionProfile;
use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::deserialize::row::DeserializeRow;
use ::scylla::errors::ExecutionError;
use ::scylla::policies::load_balancing::DefaultPolicy;
use ::scylla::policies::retry::DefaultRetryPolicy;
use ::scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use ::scylla::response::{PagingState, PagingStateResponse};
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::batch::{Batch, BatchType};
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::statement::{Consistency, SerialConsistency};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use self::statements::*;
use super::*;

/// The schema this backend's statements are checked against; `timeline migrate` applies it.
pub const SCHEMA_CQL: &str = include_str!("../../../schema.cql");

/// Fan-out writes in flight at once per send (each is one single-partition statement).
const FANOUT_CONCURRENCY: usize = 64;

pub struct ScyllaStore {
    session: Session,
    st: Prepared,
    consistency: Consistency,
    bucket_size: u64,
    inbox_ttl_secs: i32,
    idempotency_ttl_secs: i32,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("scylla: {e}"))
}

fn execution(e: ExecutionError) -> StoreError {
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

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("scylla row: {e}"))
}

/// A u64 sequence value as CQL `bigint`.
fn int(v: u64) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("value {v} exceeds bigint")))
}

fn uint(v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v}")))
}

fn int32(v: usize) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// message_id with its top bit flipped: CQL's signed order equals the ids' unsigned order.
pub fn id_to_cql(id: u64) -> i64 {
    (id ^ (1 << 63)) as i64
}

pub fn id_from_cql(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

fn kind_text(k: ConversationKind) -> &'static str {
    match k {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

fn parse_kind(s: Option<&str>) -> StoreResult<ConversationKind> {
    match s {
        Some("direct") => Ok(ConversationKind::Direct),
        Some("group") => Ok(ConversationKind::Group),
        other => Err(corrupt(format!("conversation kind {other:?}"))),
    }
}

fn mode_text(m: DeliveryMode) -> &'static str {
    match m {
        DeliveryMode::Fanout => "fanout",
        DeliveryMode::Hot => "hot",
    }
}

fn parse_mode(s: &str) -> StoreResult<DeliveryMode> {
    match s {
        "fanout" => Ok(DeliveryMode::Fanout),
        "hot" => Ok(DeliveryMode::Hot),
        other => Err(corrupt(format!("delivery mode {other:?}"))),
    }
}

fn role_text(r: Role) -> &'static str {
    match r {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

fn parse_role(s: Option<&str>) -> StoreResult<Role> {
    match s {
        Some("member") => Ok(Role::Member),
        Some("admin") => Ok(Role::Admin),
        Some("owner") => Ok(Role::Owner),
        other => Err(corrupt(format!("role {other:?}"))),
    }
}

fn message_kind_text(k: MessageKind) -> &'static str {
    match k {
        MessageKind::User => "user",
        MessageKind::Hole => "hole",
    }
}

fn parse_message_kind(s: Option<&str>) -> StoreResult<MessageKind> {
    match s {
        Some("user") | None => Ok(MessageKind::User),
        Some("hole") => Ok(MessageKind::Hole),
        Some(other) => Err(corrupt(format!("message kind {other:?}"))),
    }
}

fn conversation_from(c: ConversationCql) -> StoreResult<Option<ConversationRow>> {
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
    }))
}

fn spans_cql(spans: &[ModeSpan]) -> StoreResult<Spans> {
    spans
        .iter()
        .map(|s| Ok((int(s.since_seq)?, mode_text(s.mode).to_owned())))
        .collect()
}

fn member_from(m: MemberCql) -> StoreResult<MemberRow> {
    Ok(MemberRow {
        role: parse_role(m.role.as_deref())?,
        conversation_id: m.conversation_id,
        user_id: m.user_id,
        joined_seq: uint(m.joined_seq.unwrap_or(0))?,
        joined_at_ms: m.joined_at.map_or(0, |t| t.0),
    })
}

/// `None` for a row without membership (left, or only activity cells written).
fn user_conversation_from(u: UserConversationCql) -> StoreResult<Option<UserConversationRow>> {
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
        user_id: u.user_id,
        conversation_id: u.conversation_id,
    }))
}

fn message_from(m: MessageCql) -> StoreResult<MessageRow> {
    Ok(MessageRow {
        conv_seq: uint(m.conv_seq)?,
        message_id: id_from_cql(m.message_id),
        sender_id: m.sender_id.unwrap_or_default(),
        sender_device_id: m.sender_device_id.unwrap_or_default(),
        client_msg_id: m.client_msg_id.unwrap_or_default(),
        content_type: m.content_type.unwrap_or_default(),
        body: Bytes::from(m.body.unwrap_or_default()),
        created_at_ms: m.created_at.map_or(0, |t| t.0),
        kind: parse_message_kind(m.kind.as_deref())?,
        conversation_id: m.conversation_id,
    })
}

fn message_binds(m: &MessageRow, bucket_size: u64) -> StoreResult<MessageBinds> {
    Ok((
        m.conversation_id.clone(),
        int(m.conv_seq / bucket_size)?,
        int(m.conv_seq)?,
        id_to_cql(m.message_id),
        m.sender_id.clone(),
        m.sender_device_id.clone(),
        m.client_msg_id.clone(),
        m.content_type.clone(),
        m.body.to_vec(),
        Millis(m.created_at_ms),
        message_kind_text(m.kind).to_owned(),
    ))
}

fn inbox_from(r: InboxCql) -> StoreResult<InboxRow> {
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
    };
    Ok(InboxRow {
        inbox_seq: uint(r.inbox_seq)?,
        allocated_at_ms: r.allocated_at.map_or(0, |t| t.0),
        message: message_from(message)?,
        user_id: r.user_id,
    })
}

fn pending_from(p: PendingCql) -> StoreResult<PendingFanoutRow> {
    Ok(PendingFanoutRow {
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
type BatchPart = (
    PreparedStatement,
    Box<dyn SerializeRow + Send + Sync + 'static>,
);

impl ScyllaStore {
    fn profile(options: &ScyllaOptions) -> ExecutionProfile {
        let mut balancing = DefaultPolicy::builder()
            .token_aware(true)
            .permit_dc_failover(false);
        if !options.local_dc.is_empty() {
            balancing = balancing.prefer_datacenter(options.local_dc.clone());
        }
        ExecutionProfile::builder()
            .consistency(options.consistency)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(options.request_timeout))
            .load_balancing_policy(balancing.build())
            .retry_policy(Arc::new(DefaultRetryPolicy::new()))
            // A second try at another replica when the first is slow; idempotent statements only.
            .speculative_execution_policy(Some(Arc::new(SimpleSpeculativeExecutionPolicy {
                max_retry_count: 1,
                retry_interval: options.request_timeout / 10,
            })))
            .build()
    }

    async fn session(options: &ScyllaOptions, keyspace: Option<&str>) -> StoreResult<Session> {
        if options.nodes.is_empty() {
            return Err(StoreError::Config("scylla_nodes is empty".into()));
        }
        let mut builder = SessionBuilder::new()
            .known_nodes(&options.nodes)
            .connection_timeout(options.connect_timeout)
            .default_execution_profile_handle(Self::profile(options).into_handle());
        if let (Some(user), Some(password)) = (&options.username, &options.password) {
            builder = builder.user(user, password);
        }
        if let Some(ks) = keyspace {
            builder = builder.use_keyspace(ks, false);
        }
        builder.build().await.map_err(unavailable)
    }

    /// Connects and prepares every statement (fails when the schema is not there: run
    /// `timeline migrate` first).
    pub async fn connect(options: &ScyllaOptions) -> StoreResult<Arc<Self>> {
        let session = Self::session(options, Some(options.keyspace.as_str())).await?;
        let st = Prepared::prepare(&session, options.consistency)
            .await
            .map_err(|e| {
                StoreError::Config(format!(
                    "scylla: preparing statements: {e} (run `timeline migrate`?)"
                ))
            })?;
        let secs = |d: Duration| i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX);
        Ok(Arc::new(Self {
            session,
            st,
            consistency: options.consistency,
            bucket_size: options.bucket_size,
            inbox_ttl_secs: secs(options.inbox_ttl),
            idempotency_ttl_secs: secs(options.idempotency_ttl),
        }))
    }

    /// Applies `schema.cql` to `options.keyspace` (every statement is `IF NOT EXISTS`, so
    /// running it again changes nothing) and waits for schema agreement.
    pub async fn migrate(options: &ScyllaOptions) -> StoreResult<Vec<String>> {
        let statements = migration_statements(options)?;
        let session = Self::session(options, None).await?;
        for cql in &statements {
            session
                .query_unpaged(cql.as_str(), ())
                .await
                .map_err(execution)?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(unavailable)?;
        Ok(statements)
    }

    /// Drops a keyspace (the conformance tests' cleanup).
    #[cfg(feature = "testkit")]
    pub async fn drop_keyspace(options: &ScyllaOptions) -> StoreResult<()> {
        let session = Self::session(options, None).await?;
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", options.keyspace), ())
            .await
            .map_err(execution)?;
        Ok(())
    }

    /// Empties every table of the schema (tests reuse one keyspace across cases).
    #[cfg(feature = "testkit")]
    pub async fn truncate_tables(&self) -> StoreResult<()> {
        let schema = crate::testkit::cql::Schema::parse(SCHEMA_CQL)
            .map_err(|e| StoreError::Config(e.to_string()))?;
        for table in schema.tables.keys() {
            self.session
                .query_unpaged(format!("TRUNCATE {table}"), ())
                .await
                .map_err(execution)?;
        }
        Ok(())
    }

    async fn exec(&self, st: &PreparedStatement, values: impl SerializeRow) -> StoreResult<()> {
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(execution)?;
        Ok(())
    }

    /// Up to `limit` rows, page by page (a page may come back short while more rows exist).
    async fn rows<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        limit: usize,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.rows_filtered(st, values, limit, |r| Ok(Some(r))).await
    }

    /// Rows mapped by `keep` (which may drop them) until `limit` are kept or none are left.
    async fn rows_filtered<R, T>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        limit: usize,
        mut keep: impl FnMut(R) -> StoreResult<Option<T>>,
    ) -> StoreResult<Vec<T>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut st = st.clone();
        st.set_page_size(int32(limit.clamp(16, 5000)));
        let mut paging = PagingState::start();
        loop {
            let (result, next) = self
                .session
                .execute_single_page(&st, &values, paging)
                .await
                .map_err(execution)?;
            let rows = result.into_rows_result().map_err(corrupt)?;
            for row in rows.rows::<R>().map_err(corrupt)? {
                if let Some(t) = keep(row.map_err(corrupt)?)? {
                    out.push(t);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            match next {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => return Ok(out),
            }
        }
    }

    async fn first<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<Option<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        Ok(self.rows(st, values, 1).await?.into_iter().next())
    }

    async fn batch(&self, kind: BatchType, parts: Vec<BatchPart>) -> StoreResult<()> {
        let mut batch = Batch::new(kind);
        batch.set_consistency(self.consistency);
        batch.set_is_idempotent(true);
        let mut values = Vec::with_capacity(parts.len());
        for (st, v) in parts {
            batch.append_statement(st);
            values.push(v);
        }
        self.session
            .batch(&batch, values)
            .await
            .map_err(execution)?;
        Ok(())
    }

    /// The statements writing one `user_conversations` row (one partition): membership
    /// columns, `mode` only when hot, activity and read position by their timestamps.
    fn user_row_parts(&self, row: &UserConversationRow) -> StoreResult<Vec<BatchPart>> {
        let (u, c) = (row.user_id.clone(), row.conversation_id.clone());
        let mut parts: Vec<BatchPart> = vec![(
            self.st.insert_user_conversation.clone(),
            Box::new((
                u.clone(),
                c.clone(),
                kind_text(row.kind).to_owned(),
                int(row.joined_seq)?,
                Millis(row.joined_at_ms),
            )),
        )];
        if row.mode == DeliveryMode::Hot {
            parts.push((
                self.st.set_user_conversation_hot.clone(),
                Box::new((u.clone(), c.clone())),
            ));
        }
        let last = int(row.last_seq)?;
        parts.push((
            self.st.raise_activity.clone(),
            Box::new((
                last,
                last,
                id_to_cql(row.last_message_id),
                u.clone(),
                c.clone(),
            )),
        ));
        let read = int(row.read_seq)?;
        parts.push((self.st.raise_read_seq.clone(), Box::new((read, read, u, c))));
        Ok(parts)
    }

    fn raise_conv_seq_part(&self, conversation_id: &str, seq: u64) -> StoreResult<BatchPart> {
        let seq = int(seq)?;
        Ok((
            self.st.raise_last_conv_seq.clone(),
            Box::new((seq, seq, conversation_id.to_owned())),
        ))
    }

    async fn inbox_marks(&self, user_id: &str) -> StoreResult<(u64, u64)> {
        let marks: Option<InboxMarksCql> = self.first(&self.st.get_inbox_marks, (user_id,)).await?;
        Ok(match marks {
            Some(m) => (
                uint(m.inbox_head.unwrap_or(0))?,
                uint(m.inbox_floor.unwrap_or(0))?,
            ),
            None => (0, 0),
        })
    }
}

/// The statements `timeline migrate` runs: the keyspace with the configured replication, then
/// every table and index of `schema.cql`, re-targeted at `options.keyspace`.
pub fn migration_statements(options: &ScyllaOptions) -> StoreResult<Vec<String>> {
    let ks = &options.keyspace;
    if options.replication_factor == 0 {
        return Err(StoreError::Config(
            "scylla_replication_factor must be positive".into(),
        ));
    }
    let replication = if options.local_dc.is_empty() {
        format!(
            "{{'class': 'NetworkTopologyStrategy', 'replication_factor': {}}}",
            options.replication_factor
        )
    } else {
        format!(
            "{{'class': 'NetworkTopologyStrategy', '{}': {}}}",
            options.local_dc.replace('\'', "''"),
            options.replication_factor
        )
    };
    let mut out = vec![format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication} AND durable_writes = true"
    )];
    for cql in script::split_statements(SCHEMA_CQL) {
        let upper = cql.to_ascii_uppercase();
        if upper.starts_with("CREATE KEYSPACE") {
            continue;
        }
        out.push(cql.replace("timeline.", &format!("{ks}.")));
    }
    Ok(out)
}

#[async_trait]
impl Store for ScyllaStore {
    fn backend(&self) -> &'static str {
        "scylla"
    }

    /// A coordinator answers a read of its own system table (the tables of `schema.cql` are
    /// checked when the statements are prepared at start).
    async fn ping(&self) -> StoreResult<()> {
        self.session
            .query_unpaged("SELECT key FROM system.local WHERE key = 'local'", ())
            .await
            .map_err(execution)?;
        Ok(())
    }

    /// Writes are durable at their consistency level once acknowledged.
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn insert_conversation_if_absent(
        &self,
        row: &ConversationRow,
    ) -> StoreResult<Option<ConversationRow>> {
        let result = self
            .session
            .execute_unpaged(
                &self.st.insert_conversation,
                (
                    row.conversation_id.clone(),
                    kind_text(row.kind).to_owned(),
                    row.title.clone(),
                    Millis(row.created_at_ms),
                    row.created_by.clone(),
                    i32::try_from(row.member_count).map_err(corrupt)?,
                    spans_cql(&row.mode_spans)?,
                    row.mode_forced,
                    Millis(row.mode_changed_at_ms),
                ),
            )
            .await
            .map_err(execution)?;
        let rows = result.into_rows_result().map_err(corrupt)?;
        let applied = rows
            .first_row::<::scylla::value::Row>()
            .map_err(corrupt)?
            .columns
            .first()
            .cloned()
            .flatten()
            .and_then(|v| v.as_boolean())
            .ok_or_else(|| corrupt("LWT answer without [applied]"))?;
        if applied {
            return Ok(None);
        }
        // Lost the race: the winner's row, read at the LWT's consistency.
        match self.get_conversation(&row.conversation_id).await? {
            Some(existing) => Ok(Some(existing)),
            None => Err(unavailable(
                "conversation row not readable after a lost insert",
            )),
        }
    }

    async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> StoreResult<Option<ConversationRow>> {
        let row: Option<ConversationCql> = self
            .first(&self.st.get_conversation, (conversation_id,))
            .await?;
        row.map(conversation_from).transpose().map(Option::flatten)
    }

    async fn set_member_count(&self, conversation_id: &str, member_count: u32) -> StoreResult<()> {
        let count = i32::try_from(member_count).map_err(corrupt)?;
        self.exec(&self.st.set_member_count, (count, conversation_id))
            .await
    }

    async fn update_conversation_mode(
        &self,
        conversation_id: &str,
        spans: &[ModeSpan],
        forced: bool,
        changed_at_ms: i64,
    ) -> StoreResult<()> {
        self.exec(
            &self.st.update_conversation_mode,
            (
                spans_cql(spans)?,
                forced,
                Millis(changed_at_ms),
                conversation_id,
            ),
        )
        .await
    }

    async fn add_member(
        &self,
        member: &MemberRow,
        user_row: &UserConversationRow,
    ) -> StoreResult<()> {
        let mut parts: Vec<BatchPart> = vec![(
            self.st.insert_member.clone(),
            Box::new((
                member.conversation_id.clone(),
                member.user_id.clone(),
                role_text(member.role).to_owned(),
                int(member.joined_seq)?,
                Millis(member.joined_at_ms),
            )),
        )];
        parts.extend(self.user_row_parts(user_row)?);
        // Two partitions as one unit: no member without its read state.
        self.batch(BatchType::Logged, parts).await
    }

    async fn delete_member(&self, conversation_id: &str, user_id: &str) -> StoreResult<()> {
        self.exec(&self.st.delete_member, (conversation_id, user_id))
            .await
    }

    async fn get_member(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> StoreResult<Option<MemberRow>> {
        let row: Option<MemberCql> = self
            .first(&self.st.get_member, (conversation_id, user_id))
            .await?;
        row.map(member_from).transpose()
    }

    async fn list_members(
        &self,
        conversation_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<MemberRow>> {
        let rows: Vec<MemberCql> = match after {
            Some(after) => {
                self.rows(
                    &self.st.list_members_after,
                    (conversation_id, after, int32(limit)),
                    limit,
                )
                .await?
            }
            None => {
                self.rows(
                    &self.st.list_members,
                    (conversation_id, int32(limit)),
                    limit,
                )
                .await?
            }
        };
        rows.into_iter().map(member_from).collect()
    }

    async fn count_members(&self, conversation_id: &str) -> StoreResult<u64> {
        let row: Option<(i64,)> = self
            .first(&self.st.count_members, (conversation_id,))
            .await?;
        uint(row.map_or(0, |r| r.0))
    }

    async fn upsert_user_conversation(&self, row: &UserConversationRow) -> StoreResult<()> {
        // One partition: an unlogged batch is atomic and isolated there.
        self.batch(BatchType::Unlogged, self.user_row_parts(row)?)
            .await
    }

    async fn raise_user_conversation_mode(
        &self,
        user_id: &str,
        conversation_id: &str,
        mode: DeliveryMode,
    ) -> StoreResult<()> {
        if mode != DeliveryMode::Hot {
            return Ok(()); // modes never go down
        }
        // Only existing rows: a leave racing this leaves at most a row without membership.
        if self
            .get_user_conversation(user_id, conversation_id)
            .await?
            .is_some()
        {
            self.exec(
                &self.st.set_user_conversation_hot,
                (user_id, conversation_id),
            )
            .await?;
        }
        Ok(())
    }

    async fn delete_user_conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> StoreResult<()> {
        self.exec(&self.st.delete_user_membership, (user_id, conversation_id))
            .await
    }

    async fn get_user_conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<UserConversationRow>> {
        let row: Option<UserConversationCql> = self
            .first(&self.st.get_user_conversation, (user_id, conversation_id))
            .await?;
        row.map(user_conversation_from)
            .transpose()
            .map(Option::flatten)
    }

    async fn list_user_conversations(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<UserConversationRow>> {
        match after {
            Some(after) => {
                self.rows_filtered(
                    &self.st.list_user_conversations_after,
                    (user_id, after),
                    limit,
                    user_conversation_from,
                )
                .await
            }
            None => {
                self.rows_filtered(
                    &self.st.list_user_conversations,
                    (user_id,),
                    limit,
                    user_conversation_from,
                )
                .await
            }
        }
    }

    async fn list_hot_conversations(
        &self,
        user_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<UserConversationRow>> {
        self.rows_filtered(
            &self.st.list_hot_conversations,
            (user_id,),
            limit,
            user_conversation_from,
        )
        .await
    }

    async fn advance_read_seq(
        &self,
        user_id: &str,
        conversation_id: &str,
        seq: u64,
    ) -> StoreResult<Option<UserConversationRow>> {
        let Some(mut row) = self.get_user_conversation(user_id, conversation_id).await? else {
            return Ok(None);
        };
        if seq > row.read_seq {
            let s = int(seq)?;
            self.exec(&self.st.raise_read_seq, (s, s, user_id, conversation_id))
                .await?;
            row.read_seq = seq;
        }
        Ok(Some(row))
    }

    async fn write_message(&self, write: &MessageWrite) -> StoreResult<()> {
        let m = &write.message;
        let bucket_size = self.bucket_size;
        let mut parts: Vec<BatchPart> = vec![
            (
                self.st.insert_message.clone(),
                Box::new(message_binds(m, bucket_size)?),
            ),
            self.raise_conv_seq_part(&m.conversation_id, m.conv_seq)?,
        ];
        if let Some(p) = &write.pending {
            let allocation: Allocation = p
                .inbox_allocation
                .iter()
                .map(|(u, s)| Ok((u.clone(), int(*s)?)))
                .collect::<StoreResult<BTreeMap<_, _>>>()?;
            parts.push((
                self.st.insert_pending.clone(),
                Box::new((
                    i32::try_from(p.shard).map_err(corrupt)?,
                    id_to_cql(p.message_id),
                    p.conversation_id.clone(),
                    int(p.conv_seq)?,
                    Millis(p.created_at_ms),
                    allocation,
                )),
            ));
        }
        if let Some(i) = &write.idempotency {
            parts.push((
                self.st.insert_idempotency.clone(),
                Box::new((
                    i.sender_id.clone(),
                    i.client_msg_id.clone(),
                    id_to_cql(i.message_id),
                    i.conversation_id.clone(),
                    int(i.conv_seq)?,
                    Millis(i.created_at_ms),
                    self.idempotency_ttl_secs,
                )),
            ));
        }
        // The message, its outbox entry and its idempotency record: all or nothing.
        self.batch(BatchType::Logged, parts).await
    }

    async fn read_messages(
        &self,
        conversation_id: &str,
        bucket: u64,
        range: SeqRange,
        order: ReadOrder,
        limit: usize,
    ) -> StoreResult<Vec<MessageRow>> {
        if range.from > range.to {
            return Ok(Vec::new());
        }
        let st = match order {
            ReadOrder::Ascending => &self.st.read_messages_ascending,
            ReadOrder::Descending => &self.st.read_messages_descending,
        };
        let rows: Vec<MessageCql> = self
            .rows(
                st,
                (
                    conversation_id,
                    int(bucket)?,
                    int(range.from)?,
                    int(range.to.min(i64::MAX as u64))?,
                    int32(limit),
                ),
                limit,
            )
            .await?;
        rows.into_iter().map(message_from).collect()
    }

    async fn insert_hole_if_slot_empty(&self, hole: &MessageRow) -> StoreResult<Vec<MessageRow>> {
        let bucket_size = self.bucket_size;
        let found: Vec<MessageCql> = self
            .rows(
                &self.st.read_messages_at,
                (
                    hole.conversation_id.as_str(),
                    int(hole.conv_seq / bucket_size)?,
                    int(hole.conv_seq)?,
                ),
                64,
            )
            .await?;
        if !found.is_empty() {
            return found.into_iter().map(message_from).collect();
        }
        self.batch(
            BatchType::Logged,
            vec![
                (
                    self.st.insert_message.clone(),
                    Box::new(message_binds(hole, bucket_size)?),
                ),
                self.raise_conv_seq_part(&hole.conversation_id, hole.conv_seq)?,
            ],
        )
        .await?;
        Ok(Vec::new())
    }

    async fn last_conv_seq(&self, conversation_id: &str) -> StoreResult<u64> {
        let row: Option<(Option<i64>,)> = self
            .first(&self.st.get_last_conv_seq, (conversation_id,))
            .await?;
        uint(row.and_then(|r| r.0).unwrap_or(0))
    }

    async fn write_fanout(&self, write: &FanoutWrite) -> StoreResult<()> {
        let bucket_size = self.bucket_size;
        let mut inbox_rows = Vec::with_capacity(write.inbox.len());
        for r in &write.inbox {
            let m = &r.message;
            inbox_rows.push(InboxBinds {
                user_id: r.user_id.clone(),
                bucket: int(r.inbox_seq / bucket_size)?,
                inbox_seq: int(r.inbox_seq)?,
                message_id: id_to_cql(m.message_id),
                allocated_at: Millis(r.allocated_at_ms),
                conversation_id: m.conversation_id.clone(),
                conv_seq: int(m.conv_seq)?,
                sender_id: m.sender_id.clone(),
                sender_device_id: m.sender_device_id.clone(),
                client_msg_id: m.client_msg_id.clone(),
                content_type: m.content_type.clone(),
                body: m.body.to_vec(),
                created_at: Millis(m.created_at_ms),
                kind: message_kind_text(m.kind).to_owned(),
                ttl: self.inbox_ttl_secs,
            });
        }
        // Per user, one partition of user_conversations: the inbox head (the highest
        // inbox_seq written here), and for members their activity and (the sender's) read
        // position, each kept at its highest by its write timestamp.
        let mut heads: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &write.inbox {
            let head = heads.entry(r.user_id.as_str()).or_default();
            *head = (*head).max(r.inbox_seq);
        }
        let mut per_user: BTreeMap<&str, Vec<BatchPart>> = BTreeMap::new();
        for (user, head) in heads {
            let head = int(head)?;
            per_user.entry(user).or_default().push((
                self.st.raise_inbox_head.clone(),
                Box::new((head, head, user.to_owned())),
            ));
        }
        for a in &write.activity {
            let (u, c) = (a.user_id.clone(), a.conversation_id.clone());
            let last = int(a.last_seq)?;
            let parts = per_user.entry(a.user_id.as_str()).or_default();
            parts.push((
                self.st.raise_activity.clone(),
                Box::new((
                    last,
                    last,
                    id_to_cql(a.last_message_id),
                    u.clone(),
                    c.clone(),
                )),
            ));
            if let Some(read) = a.read_seq {
                let read = int(read)?;
                parts.push((self.st.raise_read_seq.clone(), Box::new((read, read, u, c))));
            }
        }
        // Every row first (concurrently, each routed to its replicas); the outbox entry is
        // cleared only after all of them succeeded, so a failure leaves it for a re-drive.
        let inbox = stream::iter(inbox_rows)
            .map(|values| async move {
                self.session
                    .execute_unpaged(&self.st.insert_inbox, values)
                    .await
                    .map(drop)
                    .map_err(execution)
            })
            .buffer_unordered(FANOUT_CONCURRENCY)
            .try_collect::<Vec<()>>();
        // Futures made up front: a closure over boxed trait objects kept in this async state
        // trips rustc's higher-ranked lifetime inference.
        let user_writes: Vec<_> = per_user
            .into_values()
            .map(|parts| self.batch(BatchType::Unlogged, parts))
            .collect();
        let users = stream::iter(user_writes)
            .buffer_unordered(FANOUT_CONCURRENCY)
            .try_collect::<Vec<()>>();
        futures::try_join!(inbox, users)?;
        if let Some((shard, message_id)) = write.clear_pending {
            self.delete_pending(shard, message_id).await?;
        }
        Ok(())
    }

    async fn read_inbox(
        &self,
        user_id: &str,
        bucket: u64,
        after: InboxPosition,
        limit: usize,
    ) -> StoreResult<Vec<InboxRow>> {
        let rows: Vec<InboxCql> = self
            .rows(
                &self.st.read_inbox_after,
                (
                    user_id,
                    int(bucket)?,
                    int(after.inbox_seq)?,
                    id_to_cql(after.message_id),
                    int32(limit),
                ),
                limit,
            )
            .await?;
        rows.into_iter().map(inbox_from).collect()
    }

    async fn last_inbox_seq(&self, user_id: &str) -> StoreResult<u64> {
        Ok(self.inbox_marks(user_id).await?.0)
    }

    async fn inbox_floor(&self, user_id: &str) -> StoreResult<u64> {
        Ok(self.inbox_marks(user_id).await?.1)
    }

    async fn drop_inbox_bucket(
        &self,
        user_id: &str,
        bucket: u64,
        bucket_size: u64,
    ) -> StoreResult<()> {
        let floor = int(bucket.saturating_add(1).saturating_mul(bucket_size))?;
        // The floor first: a crash in between leaves rows below the floor (invisible, and
        // expiring by TTL), never a dropped bucket readers would wait at as a gap.
        self.exec(&self.st.raise_inbox_floor, (floor, floor, user_id))
            .await?;
        self.exec(&self.st.drop_inbox_bucket, (user_id, int(bucket)?))
            .await
    }

    async fn get_idempotency(
        &self,
        sender_id: &str,
        client_msg_id: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> StoreResult<Option<IdempotencyRow>> {
        let row: Option<IdempotencyCql> = self
            .first(&self.st.get_idempotency, (sender_id, client_msg_id))
            .await?;
        let Some(r) = row else { return Ok(None) };
        let created_at_ms = r.created_at.map_or(0, |t| t.0);
        // The row's TTL is the configured one; a caller asking for a shorter one is obeyed.
        if now_ms.saturating_sub(created_at_ms) > ttl_ms {
            return Ok(None);
        }
        Ok(Some(IdempotencyRow {
            message_id: r.message_id.map_or(0, id_from_cql),
            conversation_id: r.conversation_id.unwrap_or_default(),
            conv_seq: uint(r.conv_seq.unwrap_or(0))?,
            created_at_ms,
            sender_id: r.sender_id,
            client_msg_id: r.client_msg_id,
        }))
    }

    async fn list_pending(&self, shard: u32, limit: usize) -> StoreResult<Vec<PendingFanoutRow>> {
        let shard = i32::try_from(shard).map_err(corrupt)?;
        let rows: Vec<PendingCql> = self
            .rows(&self.st.list_pending, (shard, int32(limit)), limit)
            .await?;
        rows.into_iter().map(pending_from).collect()
    }

    async fn get_pending(
        &self,
        shard: u32,
        message_id: u64,
    ) -> StoreResult<Option<PendingFanoutRow>> {
        let shard = i32::try_from(shard).map_err(corrupt)?;
        let row: Option<PendingCql> = self
            .first(&self.st.get_pending, (shard, id_to_cql(message_id)))
            .await?;
        row.map(pending_from).transpose()
    }

    async fn delete_pending(&self, shard: u32, message_id: u64) -> StoreResult<()> {
        let shard = i32::try_from(shard).map_err(corrupt)?;
        self.exec(&self.st.delete_pending, (shard, id_to_cql(message_id)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipped_ids_keep_unsigned_order_in_signed_columns() {
        let ids = [0u64, 1, 1 << 40, (1 << 63) - 1, 1 << 63, u64::MAX];
        for pair in ids.windows(2) {
            assert!(id_to_cql(pair[0]) < id_to_cql(pair[1]), "{pair:?}");
        }
        for id in ids {
            assert_eq!(id_from_cql(id_to_cql(id)), id);
        }
        let hole = hole_message_id("g:a", 3);
        assert!(
            id_to_cql(hole) > id_to_cql(1 << 62),
            "holes sort after snowflakes"
        );
    }

    #[test]
    fn consistency_and_keyspace_names_are_validated() {
        assert_eq!(
            parse_consistency("LOCAL_QUORUM"),
            Ok(Consistency::LocalQuorum)
        );
        assert!(parse_consistency("most").is_err());
        assert!(valid_keyspace("timeline_test_1"));
        for bad in ["", "1abc", "Timeline", "a-b", "a;drop", &"x".repeat(49)] {
            assert!(!valid_keyspace(bad), "{bad}");
        }
    }

    fn options() -> ScyllaOptions {
        ScyllaOptions {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "chat_prod".parse().expect("a valid name"),
            local_dc: String::new(),
            consistency: Consistency::LocalQuorum,
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            username: None,
            password: None,
            replication_factor: 3,
            bucket_size: 4096,
            inbox_ttl: Duration::from_secs(14 * 86400),
            idempotency_ttl: Duration::from_secs(86400),
        }
    }

    #[test]
    fn migration_targets_the_configured_keyspace_and_replication() {
        let statements = migration_statements(&options()).unwrap();
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS chat_prod"));
        assert!(statements[0].contains("'replication_factor': 3"));
        assert!(statements.iter().skip(1).all(|s| s.contains("chat_prod.")
            && !s.contains("timeline.")
            && s.contains("IF NOT EXISTS")));
        let dc = ScyllaOptions {
            local_dc: "eu-west".into(),
            replication_factor: 5,
            ..options()
        };
        assert!(migration_statements(&dc).unwrap()[0].contains("'eu-west': 5"));
        let zero = ScyllaOptions {
            replication_factor: 0,
            ..options()
        };
        assert!(migration_statements(&zero).is_err());
    }
}
