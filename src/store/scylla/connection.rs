//! The session (routing, timeouts, retries, speculative execution), the statement helpers the
//! `Store` methods share (paging, batches), and the schema `timeline migrate` applies.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ::scylla::client::execution_profile::ExecutionProfile;
use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::deserialize::row::DeserializeRow;
use ::scylla::policies::load_balancing::DefaultPolicy;
use ::scylla::policies::retry::DefaultRetryPolicy;
use ::scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use ::scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use ::scylla::response::{PagingState, PagingStateResponse};
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::SerialConsistency;
use ::scylla::statement::batch::{Batch, BatchType};
use ::scylla::statement::prepared::PreparedStatement;

use super::codec::*;
use super::*;

/// Least timeout of the member count.
const COUNT_TIMEOUT: Duration = Duration::from_secs(30);

impl ScyllaStore {
    pub(super) fn profile(options: &ScyllaOptions) -> ExecutionProfile {
        let mut balancing = DefaultPolicy::builder()
            .token_aware(true)
            .permit_dc_failover(false);
        if !options.local_dc.is_empty() {
            balancing = balancing.prefer_datacenter(options.local_dc.clone());
        }
        ExecutionProfile::builder()
            .consistency(options.write_consistency)
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

    /// The profile of the member count: it reads a whole `members` partition (100,000 rows at
    /// `max_group_members`), which takes longer than a point request and must not run twice.
    fn count_profile(options: &ScyllaOptions) -> ExecutionProfile {
        Self::profile(options)
            .to_builder()
            .request_timeout(Some(options.request_timeout.max(COUNT_TIMEOUT)))
            .speculative_execution_policy(None)
            .build()
    }

    pub(super) async fn session(
        options: &ScyllaOptions,
        keyspace: Option<&str>,
        timestamps: Arc<MonotonicTimestampGenerator>,
    ) -> StoreResult<Session> {
        if options.nodes.is_empty() {
            return Err(StoreError::Config("scylla_nodes is empty".into()));
        }
        // Write timestamps from this node's clock, monotonic across its writes, rather than from
        // whichever coordinator takes each write: a node's own writes (an insert and the delete
        // that follows it, a leave and a re-join) are then ordered as issued, whatever the
        // coordinators' clocks say. Explicit `USING TIMESTAMP` writes keep their own.
        let mut builder = SessionBuilder::new()
            .known_nodes(&options.nodes)
            .timestamp_generator(timestamps)
            .connection_timeout(options.connect_timeout)
            .default_execution_profile_handle(Self::profile(options).into_handle());
        if let (Some(user), Some(password)) = (&options.username, &options.password) {
            builder = builder.user(user, password);
        }
        if let Some(ks) = keyspace {
            builder = builder.use_keyspace(ks, false);
        }
        let session = builder.build().await.map_err(unavailable)?;
        let datacenters: BTreeSet<String> = session
            .get_cluster_state()
            .get_nodes_info()
            .iter()
            .filter_map(|node| node.datacenter.clone())
            .collect();
        if let Some(problem) = datacenter_problem(&datacenters, &options.local_dc) {
            return Err(StoreError::Config(problem));
        }
        Ok(session)
    }

    /// Connects and prepares every statement (fails when the schema is not there: run
    /// `timeline migrate` first).
    pub async fn connect(options: &ScyllaOptions) -> StoreResult<Arc<Self>> {
        let timestamps = Arc::new(MonotonicTimestampGenerator::new());
        let session =
            Self::session(options, Some(options.keyspace.as_str()), timestamps.clone()).await?;
        let mut st = Prepared::prepare(&session, levels(options))
            .await
            .map_err(|e| {
                StoreError::Config(format!(
                    "scylla: preparing statements: {e} (run `timeline migrate`?)"
                ))
            })?;
        st.count_members
            .set_execution_profile_handle(Some(Self::count_profile(options).into_handle()));
        let secs = |d: Duration| i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX);
        Ok(Arc::new(Self {
            session,
            st,
            write_consistency: options.write_consistency,
            timestamps,
            bucket_size: options.bucket_size,
            inbox_ttl_secs: secs(options.inbox_ttl),
            idempotency_ttl_secs: secs(options.idempotency_ttl),
        }))
    }

    /// Applies `schema.cql` to `options.keyspace` (every statement is `IF NOT EXISTS`, so
    /// running it again changes nothing) and waits for schema agreement.
    pub async fn migrate(options: &ScyllaOptions) -> StoreResult<Vec<String>> {
        let statements = migration_statements(options)?;
        let session =
            Self::session(options, None, Arc::new(MonotonicTimestampGenerator::new())).await?;
        let mut applied = Vec::with_capacity(statements.len());
        for cql in statements {
            match session.query_unpaged(cql.as_str(), ()).await {
                Ok(_) => applied.push(cql),
                // Before ScyllaDB 6.0 there are no tablets and no such option: vnodes anyway.
                Err(e) if cql.contains(TABLETS_OFF) && e.to_string().contains("tablets") => {
                    let without = cql.replace(TABLETS_OFF, "");
                    session
                        .query_unpaged(without.as_str(), ())
                        .await
                        .map_err(execution)?;
                    applied.push(without);
                }
                Err(e) => return Err(execution(e)),
            }
        }
        session
            .await_schema_agreement()
            .await
            .map_err(unavailable)?;
        Ok(applied)
    }

    /// Drops a keyspace (the conformance tests' cleanup).
    #[cfg(feature = "testkit")]
    pub async fn drop_keyspace(options: &ScyllaOptions) -> StoreResult<()> {
        let session =
            Self::session(options, None, Arc::new(MonotonicTimestampGenerator::new())).await?;
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", options.keyspace), ())
            .await
            .map_err(execution)?;
        Ok(())
    }

    /// Empties every table of the schema (tests reuse one keyspace across cases).
    #[cfg(feature = "testkit")]
    pub async fn truncate_tables(&self) -> StoreResult<()> {
        for table in super::script::table_names(SCHEMA_CQL) {
            self.session
                .query_unpaged(format!("TRUNCATE {table}"), ())
                .await
                .map_err(execution)?;
        }
        Ok(())
    }

    pub(super) async fn exec(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<()> {
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(execution)?;
        Ok(())
    }

    /// Up to `limit` rows, page by page (a page may come back short while more rows exist).
    pub(super) async fn rows<R>(
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
    pub(super) async fn rows_filtered<R, T>(
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

    pub(super) async fn first<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<Option<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        Ok(self.rows(st, values, 1).await?.into_iter().next())
    }

    pub(super) async fn batch(&self, kind: BatchType, parts: Vec<BatchPart>) -> StoreResult<()> {
        let mut batch = Batch::new(kind);
        batch.set_consistency(self.write_consistency);
        batch.set_is_idempotent(true);
        // One timestamp for every attempt: a retry is then the very batch the batchlog may
        // replay, and whichever lands (or both) leaves the same cells.
        batch.set_timestamp(Some(self.timestamps.next_timestamp()));
        let mut values = Vec::with_capacity(parts.len());
        for (st, v) in parts {
            batch.append_statement(st);
            values.push(v);
        }
        let mut attempt = 0;
        loop {
            match self.session.batch(&batch, &values).await {
                Ok(_) => return Ok(()),
                // A logged batch that timed out may be applied later by the batchlog (up to
                // about a minute): retrying it now settles the outcome for the caller.
                Err(e)
                    if kind == BatchType::Logged
                        && attempt < LOGGED_BATCH_RETRIES
                        && outcome_unknown(&e) =>
                {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "retrying a timed-out logged batch");
                }
                Err(e) => return Err(execution(e)),
            }
        }
    }

    /// The statements writing one `user_conversations` row (one partition): membership
    /// columns, `mode` only when hot, activity and read position by their timestamps.
    pub(super) fn user_row_parts(&self, row: &UserConversationRow) -> StoreResult<Vec<BatchPart>> {
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
            parts.push((
                self.st.insert_user_hot.clone(),
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
                int(row.last_count)?,
                u.clone(),
                c.clone(),
            )),
        ));
        let read = int(row.read_seq)?;
        parts.push((
            self.st.raise_read_seq.clone(),
            Box::new((read, read, int(row.read_count)?, u, c)),
        ));
        Ok(parts)
    }

    pub(super) fn raise_conv_seq_part(
        &self,
        conversation_id: &str,
        seq: u64,
    ) -> StoreResult<BatchPart> {
        let seq = int(seq)?;
        Ok((
            self.st.raise_last_conv_seq.clone(),
            Box::new((seq, seq, conversation_id.to_owned())),
        ))
    }

    /// With a message's write: its seq and count (counts rise with seqs, so the seq's write
    /// timestamp keeps both at their highest).
    pub(super) fn raise_conv_seq_and_count_part(&self, m: &MessageRow) -> StoreResult<BatchPart> {
        let seq = int(m.conv_seq)?;
        Ok((
            self.st.raise_last_conv_seq_and_count.clone(),
            Box::new((seq, seq, int(m.count_seq)?, m.conversation_id.clone())),
        ))
    }

    pub(super) async fn inbox_marks(&self, user_id: &str) -> StoreResult<(u64, u64)> {
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

/// Retries of a logged batch whose outcome is unknown (after the first attempt).
const LOGGED_BATCH_RETRIES: u32 = 2;

/// A write that timed out: it may or may not have been applied.
fn outcome_unknown(e: &::scylla::errors::ExecutionError) -> bool {
    use ::scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    matches!(
        e,
        ExecutionError::RequestTimeout(_)
            | ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::WriteTimeout { .. },
                _
            ))
    )
}

/// The keyspace option that keeps a keyspace on vnodes.
pub const TABLETS_OFF: &str = " AND tablets = {'enabled': false}";

/// The read and write levels of `options`.
fn levels(options: &ScyllaOptions) -> Levels {
    Levels {
        read: options.read_consistency,
        write: options.write_consistency,
    }
}

/// What is wrong with `local_dc` for a cluster of these datacenters, if anything: with several,
/// `LOCAL_*` levels and the replication of `migrate` are relative to whichever datacenter a
/// coordinator is in unless one is named; a name the cluster lacks routes nothing.
pub fn datacenter_problem(datacenters: &BTreeSet<String>, local_dc: &str) -> Option<String> {
    if local_dc.is_empty() {
        (datacenters.len() > 1).then(|| {
            format!(
                "the cluster has several datacenters ({}): set scylla.local_dc to this node's",
                datacenters.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    } else {
        (!datacenters.is_empty() && !datacenters.contains(local_dc)).then(|| {
            format!(
                "scylla.local_dc {local_dc:?} is not a datacenter of the cluster ({})",
                datacenters.iter().cloned().collect::<Vec<_>>().join(", ")
            )
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
    // Tablets (on by default for new keyspaces since ScyllaDB 6.0 / 2025.1) do not support
    // the lightweight transaction of conversation creation up to 2025.3: vnodes it is. A
    // cluster that does not know the option gets the statement without it (see `migrate`).
    let mut out = vec![format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication} AND durable_writes = true{TABLETS_OFF}"
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
