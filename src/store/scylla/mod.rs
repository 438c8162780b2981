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

mod codec;
mod connection;
mod options;
pub mod script;
pub mod statements;
pub use self::options::{Keyspace, ScyllaOptions, parse_consistency, valid_keyspace};

use std::collections::BTreeMap;
use std::sync::Arc;

use ::scylla::client::session::Session;
use ::scylla::policies::timestamp_generator::{MonotonicTimestampGenerator, TimestampGenerator};
use ::scylla::statement::Consistency;
use ::scylla::statement::batch::BatchType;
use async_trait::async_trait;
use futures::stream::{self, StreamExt, TryStreamExt};

use self::codec::*;
pub use self::connection::{datacenter_problem, migration_statements};
use self::statements::*;
use super::*;

/// The schema this backend's statements are checked against; `timeline migrate` applies it.
pub const SCHEMA_CQL: &str = include_str!("../../../schema.cql");

/// The outbox's `default_time_to_live` (schema.cql), for the rows `record_inbox_allocation`
/// may recreate.
const OUTBOX_SAFETY_TTL_SECS: i32 = 604_800;

/// Reads in flight at once while listing a user's hot conversations.
const HOT_READ_CONCURRENCY: usize = 16;

/// Fan-out writes in flight at once per send (each is one single-partition statement).
const FANOUT_CONCURRENCY: usize = 64;

pub struct ScyllaStore {
    session: Session,
    st: Prepared,
    write_consistency: Consistency,
    /// The session's write timestamps, also read for a batch's one timestamp.
    timestamps: Arc<MonotonicTimestampGenerator>,
    bucket_size: u64,
    inbox_ttl_secs: i32,
    idempotency_ttl_secs: i32,
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
            // The mutable cells by plain writes: the count as of the creation (any later
            // count wins over it), the mode only when it is not the default (unset).
            self.set_member_count(&row.conversation_id, row.member_count, row.created_at_ms)
                .await?;
            if row.mode_spans != ConversationRow::initial_spans()
                || row.mode_forced
                || row.mode_changed_at_ms != 0
            {
                self.update_conversation_mode(
                    &row.conversation_id,
                    &row.mode_spans,
                    row.mode_forced,
                    row.mode_changed_at_ms,
                )
                .await?;
            }
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

    async fn set_member_count(
        &self,
        conversation_id: &str,
        member_count: u32,
        counted_at_ms: i64,
    ) -> StoreResult<()> {
        let count = i32::try_from(member_count).map_err(corrupt)?;
        let at_micros = write_micros(counted_at_ms);
        self.exec(
            &self.st.set_member_count,
            (at_micros, count, conversation_id),
        )
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

    async fn set_slowmode(&self, conversation_id: &str, seconds: u32) -> StoreResult<()> {
        let seconds = i32::try_from(seconds)
            .map_err(|_| StoreError::Corrupt(format!("slowmode of {seconds} s")))?;
        self.exec(&self.st.set_slowmode, (seconds, conversation_id))
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

    async fn remove_member(&self, conversation_id: &str, user_id: &str) -> StoreResult<()> {
        let (c, u) = (conversation_id.to_owned(), user_id.to_owned());
        let parts: Vec<BatchPart> = vec![
            (
                self.st.delete_member.clone(),
                Box::new((c.clone(), u.clone())),
            ),
            (
                self.st.delete_user_membership.clone(),
                Box::new((u.clone(), c.clone())),
            ),
            (self.st.delete_user_hot.clone(), Box::new((u, c))),
        ];
        // Three partitions as one unit: nothing of the membership outlives the member.
        self.batch(BatchType::Logged, parts).await
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
        // One unpaged request (a paged aggregate walks the partition at the page size, one
        // round trip per page), under the count's own profile: a long timeout, no
        // speculative second count (see `connect`).
        let result = self
            .session
            .execute_unpaged(&self.st.count_members, (conversation_id,))
            .await
            .map_err(execution)?;
        let (count,) = result
            .into_rows_result()
            .map_err(corrupt)?
            .first_row::<(i64,)>()
            .map_err(corrupt)?;
        uint(count)
    }

    async fn upsert_user_conversation(&self, row: &UserConversationRow) -> StoreResult<()> {
        // One partition: an unlogged batch is atomic and isolated there; a hot row also writes
        // user_hot_conversations, another table, so then the batch is logged.
        let kind = if row.mode == DeliveryMode::Hot {
            BatchType::Logged
        } else {
            BatchType::Unlogged
        };
        self.batch(kind, self.user_row_parts(row)?).await
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
        // Blind writes, no read first: a leave racing this leaves at most a hot row and a mode
        // cell beside no membership, which readers skip.
        futures::try_join!(
            self.exec(
                &self.st.set_user_conversation_hot,
                (user_id, conversation_id),
            ),
            self.exec(&self.st.insert_user_hot, (user_id, conversation_id)),
        )?;
        Ok(())
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
        let ids: Vec<(String,)> = self.rows(&self.st.list_user_hot, (user_id,), limit).await?;
        // Point reads in one partition, a few at a time (a user has few hot conversations).
        let rows: Vec<Option<UserConversationRow>> = stream::iter(ids)
            .map(|(conversation_id,)| async move {
                self.get_user_conversation(user_id, &conversation_id).await
            })
            .buffered(HOT_READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(rows
            .into_iter()
            .flatten()
            .map(|mut row| {
                row.mode = DeliveryMode::Hot;
                row
            })
            .collect())
    }

    async fn advance_read_seq(
        &self,
        user_id: &str,
        conversation_id: &str,
        seq: u64,
        count: u64,
    ) -> StoreResult<Option<UserConversationRow>> {
        let Some(mut row) = self.get_user_conversation(user_id, conversation_id).await? else {
            return Ok(None);
        };
        if seq > row.read_seq || count > row.read_count {
            // Timestamp = the seq: of two raises at one seq, the higher count wins the tie.
            let (s, n) = (int(seq.max(row.read_seq))?, int(count.max(row.read_count))?);
            self.exec(&self.st.raise_read_seq, (s, s, n, user_id, conversation_id))
                .await?;
            row.read_seq = row.read_seq.max(seq);
            row.read_count = row.read_count.max(count);
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
            self.raise_conv_seq_and_count_part(m)?,
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
                    int(p.bucket)?,
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
                // A hole that knows the count through it raises the count too (re-seeds read it).
                if hole.count_seq > 0 {
                    self.raise_conv_seq_and_count_part(hole)?
                } else {
                    self.raise_conv_seq_part(&hole.conversation_id, hole.conv_seq)?
                },
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

    async fn update_message(
        &self,
        conversation_id: &str,
        conv_seq: u64,
        message_id: u64,
        change: &MessageChange,
    ) -> StoreResult<()> {
        let (bucket, seq, id) = (
            int(conv_seq / self.bucket_size)?,
            int(conv_seq)?,
            id_to_cql(message_id),
        );
        // Microseconds, late in the change's millisecond: after the insert of a message sent
        // earlier in that same millisecond.
        let timestamp = |at_ms: i64| at_ms.saturating_mul(1000).saturating_add(999);
        match change {
            MessageChange::Recall { at_ms } => {
                let values = (
                    timestamp(*at_ms),
                    Vec::<u8>::new(),
                    Millis((*at_ms).max(1)),
                    conversation_id.to_owned(),
                    bucket,
                    seq,
                    id,
                );
                self.exec(&self.st.recall_message, values).await
            }
            MessageChange::Edit {
                content_type,
                body,
                at_ms,
            } => {
                let values = (
                    timestamp(*at_ms),
                    content_type.clone(),
                    body.to_vec(),
                    Millis(*at_ms),
                    conversation_id.to_owned(),
                    bucket,
                    seq,
                    id,
                );
                self.exec(&self.st.edit_message, values).await
            }
        }
    }

    async fn last_count(&self, conversation_id: &str) -> StoreResult<u64> {
        let row: Option<(Option<i64>,)> = self
            .first(&self.st.get_last_count, (conversation_id,))
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
                count_seq: int(m.count_seq)?,
                target_message_id: id_to_cql(m.target_message_id),
                edited_at: Millis(m.edited_at_ms),
                recalled_at: Millis(m.recalled_at_ms),
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
            let count = int(a.count_seq)?;
            parts.push(if a.count_seq == 0 {
                (
                    self.st.raise_activity_of_hole.clone(),
                    Box::new((
                        last,
                        last,
                        id_to_cql(a.last_message_id),
                        u.clone(),
                        c.clone(),
                    )),
                )
            } else {
                (
                    self.st.raise_activity.clone(),
                    Box::new((
                        last,
                        last,
                        id_to_cql(a.last_message_id),
                        count,
                        u.clone(),
                        c.clone(),
                    )),
                )
            });
            if let Some(read) = a.read_seq {
                let read = int(read)?;
                parts.push((
                    self.st.raise_read_seq.clone(),
                    Box::new((read, read, count, u, c)),
                ));
            }
        }
        // The rows below are many writes, not one unit: the entry first records which
        // inbox_seq each user gets, so a re-drive after a partial write rewrites those rows
        // rather than adding copies under new seqs.
        if let Some(key) = write.clear_pending {
            let allocation: Allocation = write
                .inbox
                .iter()
                .map(|r| Ok((r.user_id.clone(), int(r.inbox_seq)?)))
                .collect::<StoreResult<_>>()?;
            let (bucket, shard, message_id) = outbox_binds(key)?;
            self.exec(
                &self.st.record_inbox_allocation,
                (
                    OUTBOX_SAFETY_TTL_SECS,
                    allocation,
                    bucket,
                    shard,
                    message_id,
                ),
            )
            .await?;
        }
        // Every row (concurrently, each routed to its replicas); the outbox entry is cleared
        // only after all of them succeeded, so a failure leaves it for a re-drive.
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
        if let Some(key) = write.clear_pending {
            self.delete_pending(key).await?;
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

    async fn hide_messages(
        &self,
        user_id: &str,
        conversation_id: &str,
        messages: &[(u64, u64)],
    ) -> StoreResult<()> {
        // One partition: an unlogged batch is one mutation.
        let parts: Vec<BatchPart> = messages
            .iter()
            .map(|&(seq, id)| {
                Ok((
                    self.st.hide_message.clone(),
                    Box::new((
                        user_id.to_owned(),
                        conversation_id.to_owned(),
                        int(seq)?,
                        id_to_cql(id),
                    ))
                        as Box<dyn ::scylla::serialize::row::SerializeRow + Send + Sync>,
                ))
            })
            .collect::<StoreResult<_>>()?;
        self.batch(BatchType::Unlogged, parts).await
    }

    async fn list_hidden(
        &self,
        user_id: &str,
        conversation_id: &str,
        range: SeqRange,
        limit: usize,
    ) -> StoreResult<Vec<(u64, u64)>> {
        let rows: Vec<(i64, i64)> = self
            .rows(
                &self.st.list_hidden,
                (
                    user_id,
                    conversation_id,
                    int(range.from)?,
                    int(range.to)?,
                    i32::try_from(limit).unwrap_or(i32::MAX),
                ),
                limit,
            )
            .await?;
        rows.into_iter()
            .map(|(seq, id)| Ok((uint(seq)?, id_from_cql(id))))
            .collect()
    }

    async fn put_push_target(&self, row: &PushTargetRow) -> StoreResult<()> {
        self.exec(
            &self.st.insert_push_target,
            (
                &row.user_id,
                &row.device_id,
                &row.platform,
                &row.token,
                &row.app_id,
                &row.locale,
                Millis(row.registered_at_ms),
                write_micros(row.registered_at_ms),
            ),
        )
        .await
    }

    async fn delete_push_target(
        &self,
        user_id: &str,
        device_id: &str,
        registered_at_ms: i64,
    ) -> StoreResult<()> {
        self.exec(
            &self.st.delete_push_target,
            (write_micros(registered_at_ms), user_id, device_id),
        )
        .await
    }

    async fn list_push_targets(&self, user_id: &str) -> StoreResult<Vec<PushTargetRow>> {
        let rows: Vec<PushTargetCql> = self
            .rows(&self.st.list_push_targets, (user_id,), usize::MAX)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| PushTargetRow {
                user_id: r.user_id,
                device_id: r.device_id,
                platform: r.platform.unwrap_or_default(),
                token: r.token.unwrap_or_default(),
                app_id: r.app_id.unwrap_or_default(),
                locale: r.locale.unwrap_or_default(),
                registered_at_ms: r.registered_at.map_or(0, |t| t.0),
            })
            .collect())
    }

    async fn list_pending(
        &self,
        bucket: u64,
        shard: u32,
        limit: usize,
    ) -> StoreResult<Vec<PendingFanoutRow>> {
        let shard = i32::try_from(shard).map_err(corrupt)?;
        let rows: Vec<PendingCql> = self
            .rows(
                &self.st.list_pending,
                (int(bucket)?, shard, int32(limit)),
                limit,
            )
            .await?;
        rows.into_iter().map(pending_from).collect()
    }

    async fn get_pending(&self, key: OutboxKey) -> StoreResult<Option<PendingFanoutRow>> {
        let row: Option<PendingCql> = self.first(&self.st.get_pending, outbox_binds(key)?).await?;
        row.map(pending_from).transpose()
    }

    async fn delete_pending(&self, key: OutboxKey) -> StoreResult<()> {
        self.exec(&self.st.delete_pending, outbox_binds(key)?).await
    }
}

/// `(bucket, shard, message_id)` as bound.
/// A write timestamp (microseconds) for a time in milliseconds; at least 1, since a row
/// written at timestamp 0 could not be told from an unset cell.
fn write_micros(at_ms: i64) -> i64 {
    at_ms.max(1).saturating_mul(1000)
}

fn outbox_binds(key: OutboxKey) -> StoreResult<(i64, i32, i64)> {
    Ok((
        int(key.bucket)?,
        i32::try_from(key.shard).map_err(corrupt)?,
        id_to_cql(key.message_id),
    ))
}

#[cfg(test)]
mod tests;
