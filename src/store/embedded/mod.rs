//! The embedded `Store`: the tables of `schema.cql` in fjall, a pure-Rust LSM engine, inside the
//! data directory.
//!
//! Keys are encoded so that every CQL read is a prefix or range scan in clustering order
//! (`partition \0 clustering`, integers big-endian). All writes go through one writer thread that
//! groups whatever is queued into one journal fsync (group commit): concurrent sends share the
//! fsync instead of paying one each, and the read-modify-write updates (`max` semantics of
//! activity, `IF NOT EXISTS`) are serialised for free. Reads run on tokio's blocking pool.

mod encoding;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use async_trait::async_trait;
use fjall::compaction::filter::Factory;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use tokio::sync::{mpsc, oneshot};

use self::encoding::*;
use self::writer::*;
use super::*;

/// How acked writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync the journal before acknowledging (group commit).
    Fsync,
    /// Acknowledge once written to the OS; a machine crash may lose the last writes.
    Buffered,
}

/// How the embedded store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    pub durability: Durability,
    /// Sequence values per bucket; checked against the data already written.
    pub bucket_size: u64,
    /// Inbox rows older than this are removed by compaction (the CQL table's TTL).
    pub inbox_ttl: Option<Duration>,
    /// Idempotency records older than this are removed by compaction.
    pub idempotency_ttl: Option<Duration>,
}

impl EmbeddedOptions {
    pub fn new(durability: Durability, bucket_size: u64) -> Self {
        Self {
            durability,
            bucket_size,
            inbox_ttl: None,
            idempotency_ttl: None,
        }
    }
}

/// Bounded: a full queue is surfaced as `StoreError::Overloaded` rather than unbounded memory.
const WRITE_QUEUE_CAPACITY: usize = 8192;
/// Most jobs committed under one fsync.
const MAX_GROUP: usize = 512;
/// Values are postcard behind this byte. 2: messages and user_conversations rows gained
/// fields at their end (format 1 values decode with them zero).
const VALUE_FORMAT: u8 = 2;
const FIRST_VALUE_FORMAT: u8 = 1;

#[derive(Clone)]
struct Tables {
    meta: Keyspace,
    conversations: Keyspace,
    members: Keyspace,
    user_conversations: Keyspace,
    messages: Keyspace,
    inbox: Keyspace,
    idempotency: Keyspace,
    outbox: Keyspace,
    /// (user, conversation) of rows whose mode is Hot. Every fan-out adds a version of the
    /// members' user_conversations rows to the memtable, which a range scan walks through;
    /// this index changes only with the mode, so Sync's scan stays short.
    user_hot: Keyspace,
    push_targets: Keyspace,
    hidden_messages: Keyspace,
}

enum Outcome {
    Done,
    Conversation(Option<ConversationRow>),
    UserConversation(Option<UserConversationRow>),
    Messages(Vec<MessageRow>),
}

type WriteFn = Box<dyn FnOnce(&Tables, &mut OwnedWriteBatch) -> StoreResult<Outcome> + Send>;

struct WriteJob {
    apply: WriteFn,
    reply: oneshot::Sender<StoreResult<Outcome>>,
}

pub struct EmbeddedStore {
    db: Database,
    tables: Tables,
    writes: mpsc::Sender<WriteJob>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. `bucket_size` is checked against the one the data
    /// was written with: changing it would make every bucketed key unreadable.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> StoreResult<Arc<Self>> {
        let EmbeddedOptions {
            durability,
            bucket_size,
            inbox_ttl,
            idempotency_ttl,
        } = options;
        std::fs::create_dir_all(dir).map_err(io)?;
        let db = Database::builder(dir.join("tables"))
            .with_compaction_filter_factories(Arc::new(move |keyspace: &str| {
                let factory: Arc<dyn Factory> = match keyspace {
                    "inbox" => Arc::new(ExpiryFactory::<InboxRow>::new(inbox_ttl?, |r| {
                        r.allocated_at_ms
                    })),
                    "idempotency" => Arc::new(ExpiryFactory::<IdempotencyRow>::new(
                        idempotency_ttl?,
                        |r| r.created_at_ms,
                    )),
                    _ => return None,
                };
                Some(factory)
            }))
            .open()
            .map_err(fj)?;
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(fj)
        };
        let tables = Tables {
            meta: open("meta")?,
            conversations: open("conversations")?,
            members: open("members")?,
            user_conversations: open("user_conversations")?,
            messages: open("messages")?,
            inbox: open("inbox")?,
            idempotency: open("idempotency")?,
            outbox: open("outbox")?,
            user_hot: open("user_hot")?,
            push_targets: open("push_targets")?,
            hidden_messages: open("hidden_messages")?,
        };
        migrate_legacy_outbox(&db, &tables)?;
        match tables.meta.get(b"bucket_size").map_err(fj)? {
            Some(v) => {
                let stored: u64 = decode(&v)?;
                if stored != bucket_size {
                    return Err(StoreError::Config(format!(
                        "data in {} was written with bucket_size {stored}, configured {bucket_size}",
                        dir.display()
                    )));
                }
            }
            None => {
                tables
                    .meta
                    .insert(b"bucket_size", encode(&bucket_size)?)
                    .map_err(fj)?;
                db.persist(PersistMode::SyncAll).map_err(fj)?;
            }
        }

        let (tx, rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let writer_db = db.clone();
        let writer_tables = tables.clone();
        thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || run_writer(writer_db, writer_tables, rx, durability))
            .map_err(io)?;
        Ok(Arc::new(Self {
            db,
            tables,
            writes: tx,
        }))
    }

    async fn write(&self, apply: WriteFn) -> StoreResult<Outcome> {
        let (reply, done) = oneshot::channel();
        self.writes
            .try_send(WriteJob { apply, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Overloaded("embedded write queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("embedded writer has stopped".into())
                }
            })?;
        done.await
            .map_err(|_| StoreError::Unavailable("embedded writer has stopped".into()))?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tables) -> StoreResult<T> + Send + 'static,
    {
        let tables = self.tables.clone();
        tokio::task::spawn_blocking(move || f(&tables))
            .await
            .map_err(|e| StoreError::Io(format!("blocking read task failed: {e}")))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        if self.writes.is_closed() {
            return Err(StoreError::Unavailable(
                "embedded writer has stopped".into(),
            ));
        }
        self.read(|t| t.meta.get(b"bucket_size").map(drop).map_err(fj))
            .await
    }

    async fn flush(&self) -> StoreResult<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.persist(PersistMode::SyncAll).map_err(fj))
            .await
            .map_err(|e| StoreError::Io(format!("blocking flush task failed: {e}")))?
    }

    async fn insert_conversation_if_absent(
        &self,
        row: &ConversationRow,
    ) -> StoreResult<Option<ConversationRow>> {
        let row = row.clone();
        let outcome = self
            .write(Box::new(move |t, batch| {
                let k = row.conversation_id.as_bytes().to_vec();
                if let Some(existing) = get::<ConversationRow>(&t.conversations, &k)? {
                    return Ok(Outcome::Conversation(Some(existing)));
                }
                batch.insert(&t.conversations, k, encode(&row)?);
                batch.insert(
                    &t.meta,
                    key_with_suffix("member_count_at", &row.conversation_id),
                    encode(&row.created_at_ms)?,
                );
                Ok(Outcome::Conversation(None))
            }))
            .await?;
        match outcome {
            Outcome::Conversation(existing) => Ok(existing),
            _ => Err(StoreError::Corrupt("unexpected writer outcome".into())),
        }
    }

    async fn get_conversation(&self, id: &str) -> StoreResult<Option<ConversationRow>> {
        let id = id.to_owned();
        self.read(move |t| {
            let Some(mut row) = get::<ConversationRow>(&t.conversations, id.as_bytes())? else {
                return Ok(None);
            };
            // Beside the row, as `member_count_at`: the row's encoding stays as it was.
            row.slowmode_seconds = get(&t.meta, &key_with_suffix("slowmode", &id))?.unwrap_or(0);
            Ok(Some(row))
        })
        .await
    }

    async fn set_slowmode(&self, id: &str, seconds: u32) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(Box::new(move |t, batch| {
            batch.insert(&t.meta, key_with_suffix("slowmode", &id), encode(&seconds)?);
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn set_member_count(
        &self,
        id: &str,
        member_count: u32,
        counted_at_ms: i64,
    ) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(Box::new(move |t, batch| {
            // The count that started last wins, as the write timestamp decides on ScyllaDB.
            let at_key = key_with_suffix("member_count_at", &id);
            let newest: Option<i64> = get(&t.meta, &at_key)?;
            if newest.is_some_and(|at| at > counted_at_ms) {
                return Ok(Outcome::Done);
            }
            if let Some(mut row) = get::<ConversationRow>(&t.conversations, id.as_bytes())? {
                row.member_count = member_count;
                batch.insert(&t.conversations, id.as_bytes(), encode(&row)?);
                batch.insert(&t.meta, at_key, encode(&counted_at_ms)?);
            }
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn update_conversation_mode(
        &self,
        id: &str,
        spans: &[ModeSpan],
        forced: bool,
        changed_at_ms: i64,
    ) -> StoreResult<()> {
        let id = id.to_owned();
        let spans = spans.to_vec();
        self.write(Box::new(move |t, batch| {
            if let Some(mut row) = get::<ConversationRow>(&t.conversations, id.as_bytes())? {
                row.mode_spans = spans;
                row.mode_forced = forced;
                row.mode_changed_at_ms = changed_at_ms;
                batch.insert(&t.conversations, id.as_bytes(), encode(&row)?);
            }
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn raise_user_conversation_mode(
        &self,
        user_id: &str,
        conversation_id: &str,
        mode: DeliveryMode,
    ) -> StoreResult<()> {
        let k = user_conversation_key(user_id, conversation_id);
        self.write(Box::new(move |t, batch| {
            if let Some(mut row) = get::<UserConversationRow>(&t.user_conversations, &k)?
                && mode > row.mode
            {
                row.mode = mode;
                batch.insert(&t.user_hot, k.clone(), []);
                batch.insert(&t.user_conversations, k, encode(&row)?);
            }
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn add_member(
        &self,
        member: &MemberRow,
        user_row: &UserConversationRow,
    ) -> StoreResult<()> {
        let member_key = key_with_suffix(&member.conversation_id, &member.user_id);
        let member_value = encode(member)?;
        let user_key = user_conversation_key(&user_row.user_id, &user_row.conversation_id);
        let mut user_row = user_row.clone();
        self.write(Box::new(move |t, batch| {
            if let Some(existing) = get::<UserConversationRow>(&t.user_conversations, &user_key)? {
                user_row.mode = user_row.mode.max(existing.mode);
            }
            if user_row.mode == DeliveryMode::Hot {
                batch.insert(&t.user_hot, user_key.clone(), []);
            }
            batch.insert(&t.members, member_key, member_value);
            batch.insert(&t.user_conversations, user_key, encode(&user_row)?);
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn remove_member(&self, conversation_id: &str, user_id: &str) -> StoreResult<()> {
        let member = key_with_suffix(conversation_id, user_id);
        let membership = user_conversation_key(user_id, conversation_id);
        self.write(Box::new(move |t, batch| {
            batch.remove(&t.members, member);
            batch.remove(&t.user_hot, membership.clone());
            batch.remove(&t.user_conversations, membership);
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn get_member(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> StoreResult<Option<MemberRow>> {
        let k = key_with_suffix(conversation_id, user_id);
        self.read(move |t| get(&t.members, &k)).await
    }

    async fn list_members(
        &self,
        conversation_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<MemberRow>> {
        let prefix = key(&[conversation_id], &[]);
        let after = after.map(|a| key_with_suffix(conversation_id, a));
        self.read(move |t| {
            let (start, end) = after_bounds(&prefix, after);
            scan_values(
                t.members.range((start, std::ops::Bound::Excluded(end))),
                limit,
            )
        })
        .await
    }

    async fn count_members(&self, conversation_id: &str) -> StoreResult<u64> {
        let prefix = key(&[conversation_id], &[]);
        self.read(move |t| Ok(t.members.prefix(prefix).count() as u64))
            .await
    }

    async fn upsert_user_conversation(&self, row: &UserConversationRow) -> StoreResult<()> {
        let k = user_conversation_key(&row.user_id, &row.conversation_id);
        let mut row = row.clone();
        self.write(Box::new(move |t, batch| {
            if let Some(existing) = get::<UserConversationRow>(&t.user_conversations, &k)? {
                row.mode = row.mode.max(existing.mode);
            }
            if row.mode == DeliveryMode::Hot {
                batch.insert(&t.user_hot, k.clone(), []);
            }
            batch.insert(&t.user_conversations, k, encode(&row)?);
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn get_user_conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<UserConversationRow>> {
        let k = user_conversation_key(user_id, conversation_id);
        self.read(move |t| get(&t.user_conversations, &k)).await
    }

    async fn list_user_conversations(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<UserConversationRow>> {
        let prefix = key(&[user_id], &[]);
        let after = after.map(|a| user_conversation_key(user_id, a));
        self.read(move |t| {
            let (start, end) = after_bounds(&prefix, after);
            scan_values(
                t.user_conversations
                    .range((start, std::ops::Bound::Excluded(end))),
                limit,
            )
        })
        .await
    }

    async fn list_hot_conversations(
        &self,
        user_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<UserConversationRow>> {
        let prefix = key(&[user_id], &[]);
        self.read(move |t| {
            let mut rows = Vec::new();
            for guard in t.user_hot.prefix(prefix).take(limit) {
                let k = guard.key().map_err(fj)?;
                if let Some(row) = get::<UserConversationRow>(&t.user_conversations, &k)? {
                    rows.push(row);
                }
            }
            Ok(rows)
        })
        .await
    }

    async fn advance_read_seq(
        &self,
        user_id: &str,
        conversation_id: &str,
        seq: u64,
        count: u64,
    ) -> StoreResult<Option<UserConversationRow>> {
        let k = user_conversation_key(user_id, conversation_id);
        let outcome = self
            .write(Box::new(move |t, batch| {
                let Some(mut row) = get::<UserConversationRow>(&t.user_conversations, &k)? else {
                    return Ok(Outcome::UserConversation(None));
                };
                if seq > row.read_seq || count > row.read_count {
                    row.read_seq = row.read_seq.max(seq);
                    row.read_count = row.read_count.max(count);
                    batch.insert(&t.user_conversations, k, encode(&row)?);
                }
                Ok(Outcome::UserConversation(Some(row)))
            }))
            .await?;
        match outcome {
            Outcome::UserConversation(row) => Ok(row),
            _ => Err(StoreError::Corrupt("unexpected writer outcome".into())),
        }
    }

    async fn write_message(&self, write: &MessageWrite) -> StoreResult<()> {
        let write = write.clone();
        self.write(Box::new(move |t, batch| {
            let bucket_size = bucket_size_of(t)?;
            batch.insert(
                &t.messages,
                message_key(&write.message, bucket_size),
                encode(&write.message)?,
            );
            if let Some(p) = &write.pending {
                batch.insert(&t.outbox, outbox_key(p.key()), encode(p)?);
            }
            if let Some(i) = &write.idempotency {
                batch.insert(
                    &t.idempotency,
                    key_with_suffix(&i.sender_id, &i.client_msg_id),
                    encode(i)?,
                );
            }
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn update_message(
        &self,
        conversation_id: &str,
        conv_seq: u64,
        message_id: u64,
        change: &MessageChange,
    ) -> StoreResult<()> {
        let (id, change) = (conversation_id.to_owned(), change.clone());
        self.write(Box::new(move |t, batch| {
            let bucket_size = bucket_size_of(t)?;
            let k = key(&[&id], &[conv_seq / bucket_size, conv_seq, message_id]);
            let Some(mut m) = get::<MessageRow>(&t.messages, &k)? else {
                return Ok(Outcome::Done);
            };
            change.apply(&mut m);
            batch.insert(&t.messages, k, encode(&m)?);
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
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
        let start = key(&[conversation_id], &[bucket, range.from, 0]);
        let end = key(&[conversation_id], &[bucket, range.to, u64::MAX]);
        self.read(move |t| {
            let iter = t.messages.range(start..=end);
            match order {
                ReadOrder::Ascending => scan_values(iter, limit),
                ReadOrder::Descending => scan_values(iter.rev(), limit),
            }
        })
        .await
    }

    async fn insert_hole_if_slot_empty(&self, hole: &MessageRow) -> StoreResult<Vec<MessageRow>> {
        let hole = hole.clone();
        let outcome = self
            .write(Box::new(move |t, batch| {
                let bucket_size = bucket_size_of(t)?;
                let slot = key(
                    &[&hole.conversation_id],
                    &[hole.conv_seq / bucket_size, hole.conv_seq],
                );
                let present: Vec<MessageRow> = scan_values(t.messages.prefix(slot), 16)?;
                if present.is_empty() {
                    batch.insert(&t.messages, message_key(&hole, bucket_size), encode(&hole)?);
                }
                Ok(Outcome::Messages(present))
            }))
            .await?;
        match outcome {
            Outcome::Messages(rows) => Ok(rows),
            _ => Err(StoreError::Corrupt("unexpected writer outcome".into())),
        }
    }

    async fn last_conv_seq(&self, conversation_id: &str) -> StoreResult<u64> {
        let prefix = key(&[conversation_id], &[]);
        self.read(move |t| match t.messages.prefix(prefix).next_back() {
            Some(guard) => Ok(tail_u64(&guard.key().map_err(fj)?, 2)),
            None => Ok(0),
        })
        .await
    }

    async fn last_count(&self, conversation_id: &str) -> StoreResult<u64> {
        let prefix = key(&[conversation_id], &[]);
        self.read(move |t| {
            // Every row but a hole of unknown count carries the count through it; holes are
            // rare and never many in a row (each is a send that stopped between allocation and
            // write).
            for guard in t.messages.prefix(prefix).rev() {
                let (_, v) = guard.into_inner().map_err(fj)?;
                let m: MessageRow = decode(&v)?;
                if m.kind != MessageKind::Hole || m.count_seq > 0 {
                    return Ok(m.count_seq);
                }
            }
            Ok(0)
        })
        .await
    }

    async fn write_fanout(&self, write: &FanoutWrite) -> StoreResult<()> {
        let write = write.clone();
        self.write(Box::new(move |t, batch| {
            let bucket_size = bucket_size_of(t)?;
            for row in &write.inbox {
                let k = inbox_key(
                    &row.user_id,
                    row.inbox_seq / bucket_size,
                    row.inbox_seq,
                    row.message.message_id,
                );
                batch.insert(&t.inbox, k, encode(row)?);
            }
            for a in &write.activity {
                let k = user_conversation_key(&a.user_id, &a.conversation_id);
                // A member who left meanwhile has no row: nothing to raise.
                let Some(mut row) = get::<UserConversationRow>(&t.user_conversations, &k)? else {
                    continue;
                };
                if a.last_seq > row.last_seq {
                    row.last_seq = a.last_seq;
                    row.last_message_id = a.last_message_id;
                }
                row.last_count = row.last_count.max(a.count_seq);
                if let Some(read) = a.read_seq {
                    row.read_seq = row.read_seq.max(read);
                    row.read_count = row.read_count.max(a.count_seq);
                }
                batch.insert(&t.user_conversations, k, encode(&row)?);
            }
            if let Some(key) = write.clear_pending {
                batch.remove(&t.outbox, outbox_key(key));
            }
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn read_inbox(
        &self,
        user_id: &str,
        bucket: u64,
        after: InboxPosition,
        limit: usize,
    ) -> StoreResult<Vec<InboxRow>> {
        let prefix = key(&[user_id], &[bucket]);
        let after = inbox_key(user_id, bucket, after.inbox_seq, after.message_id);
        self.read(move |t| {
            let end = prefix_end(&prefix);
            let start = if after.as_slice() < prefix.as_slice() {
                std::ops::Bound::Included(prefix)
            } else {
                std::ops::Bound::Excluded(after)
            };
            scan_values(
                t.inbox.range((start, std::ops::Bound::Excluded(end))),
                limit,
            )
        })
        .await
    }

    async fn last_inbox_seq(&self, user_id: &str) -> StoreResult<u64> {
        let prefix = key(&[user_id], &[]);
        self.read(move |t| match t.inbox.prefix(prefix).next_back() {
            Some(guard) => Ok(tail_u64(&guard.key().map_err(fj)?, 2)),
            None => Ok(0),
        })
        .await
    }

    async fn inbox_floor(&self, user_id: &str) -> StoreResult<u64> {
        let k = floor_key(user_id);
        self.read(move |t| Ok(get::<u64>(&t.meta, &k)?.unwrap_or(0)))
            .await
    }

    async fn drop_inbox_bucket(
        &self,
        user_id: &str,
        bucket: u64,
        bucket_size: u64,
    ) -> StoreResult<()> {
        let user_id = user_id.to_owned();
        self.write(Box::new(move |t, batch| {
            for guard in t.inbox.prefix(key(&[&user_id], &[bucket])) {
                batch.remove(&t.inbox, guard.key().map_err(fj)?);
            }
            let fk = floor_key(&user_id);
            let floor = get::<u64>(&t.meta, &fk)?.unwrap_or(0);
            let new_floor = (bucket + 1) * bucket_size;
            if new_floor > floor {
                batch.insert(&t.meta, fk, encode(&new_floor)?);
            }
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn get_idempotency(
        &self,
        sender_id: &str,
        client_msg_id: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> StoreResult<Option<IdempotencyRow>> {
        let k = key_with_suffix(sender_id, client_msg_id);
        let row: Option<IdempotencyRow> = self.read(move |t| get(&t.idempotency, &k)).await?;
        Ok(row.filter(|r| now_ms - r.created_at_ms < ttl_ms))
    }

    async fn list_pending(
        &self,
        bucket: u64,
        shard: u32,
        limit: usize,
    ) -> StoreResult<Vec<PendingFanoutRow>> {
        self.read(move |t| scan_values(t.outbox.prefix(outbox_partition(bucket, shard)), limit))
            .await
    }

    async fn get_pending(&self, key: OutboxKey) -> StoreResult<Option<PendingFanoutRow>> {
        self.read(move |t| get(&t.outbox, &outbox_key(key))).await
    }

    async fn hide_messages(
        &self,
        user_id: &str,
        conversation_id: &str,
        messages: &[(u64, u64)],
    ) -> StoreResult<()> {
        let keys: Vec<Vec<u8>> = messages
            .iter()
            .map(|&(seq, id)| key(&[user_id, conversation_id], &[seq, id]))
            .collect();
        self.write(Box::new(move |t, batch| {
            for k in keys {
                batch.insert(&t.hidden_messages, k, Vec::<u8>::new());
            }
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn list_hidden(
        &self,
        user_id: &str,
        conversation_id: &str,
        range: SeqRange,
        limit: usize,
    ) -> StoreResult<Vec<(u64, u64)>> {
        let from = key(&[user_id, conversation_id], &[range.from]);
        let to = key(&[user_id, conversation_id], &[range.to, u64::MAX]);
        self.read(move |t| {
            let mut out = Vec::new();
            for guard in t.hidden_messages.range(from..=to).take(limit) {
                let k = guard.key().map_err(fj)?;
                out.push((tail_u64(&k, 2), tail_u64(&k, 1)));
            }
            Ok(out)
        })
        .await
    }

    async fn put_push_target(&self, row: &PushTargetRow) -> StoreResult<()> {
        let row = row.clone();
        self.write(Box::new(move |t, batch| {
            let k = key_with_suffix(&row.user_id, &row.device_id);
            // The later registration wins, as the write timestamp decides on ScyllaDB.
            let newer = get::<PushTargetRow>(&t.push_targets, &k)?
                .is_some_and(|old| old.registered_at_ms > row.registered_at_ms);
            if !newer {
                batch.insert(&t.push_targets, k, encode(&row)?);
            }
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn delete_push_target(
        &self,
        user_id: &str,
        device_id: &str,
        registered_at_ms: i64,
    ) -> StoreResult<()> {
        let k = key_with_suffix(user_id, device_id);
        self.write(Box::new(move |t, batch| {
            if get::<PushTargetRow>(&t.push_targets, &k)?
                .is_some_and(|row| row.registered_at_ms <= registered_at_ms)
            {
                batch.remove(&t.push_targets, k);
            }
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }

    async fn list_push_targets(&self, user_id: &str) -> StoreResult<Vec<PushTargetRow>> {
        let prefix = key(&[user_id], &[]);
        self.read(move |t| scan_values(t.push_targets.prefix(prefix), usize::MAX))
            .await
    }

    async fn delete_pending(&self, key: OutboxKey) -> StoreResult<()> {
        self.write(Box::new(move |t, batch| {
            batch.remove(&t.outbox, outbox_key(key));
            Ok(Outcome::Done)
        }))
        .await
        .map(drop)
    }
}

/// Moves the entries of the outbox's first layout (`pending_fanout`, one partition per shard)
/// into the time-bucketed `outbox`, then drops the old keyspace: an acknowledged send whose
/// fan-out was pending when the node was upgraded is still re-driven.
fn migrate_legacy_outbox(db: &Database, tables: &Tables) -> StoreResult<()> {
    #[derive(serde::Deserialize)]
    struct LegacyPending {
        message_id: u64,
        conversation_id: String,
        conv_seq: u64,
        created_at_ms: i64,
        inbox_allocation: Vec<(String, u64)>,
    }
    const LEGACY: &str = "pending_fanout";
    if !db.keyspace_exists(LEGACY) {
        return Ok(());
    }
    let legacy = db
        .keyspace(LEGACY, KeyspaceCreateOptions::default)
        .map_err(fj)?;
    for item in legacy.iter() {
        let (_, value) = item.into_inner().map_err(fj)?;
        // The old rows began with their shard, which the new key derives again.
        let (_shard, old): (u32, LegacyPending) = decode(&value)?;
        let key = OutboxKey::of(old.message_id, old.created_at_ms);
        let row = PendingFanoutRow {
            bucket: key.bucket,
            shard: key.shard,
            message_id: old.message_id,
            conversation_id: old.conversation_id,
            conv_seq: old.conv_seq,
            created_at_ms: old.created_at_ms,
            inbox_allocation: old.inbox_allocation,
        };
        tables
            .outbox
            .insert(outbox_key(key), encode(&row)?)
            .map_err(fj)?;
    }
    db.persist(PersistMode::SyncAll).map_err(fj)?;
    db.delete_keyspace(legacy).map_err(fj)
}

#[cfg(test)]
mod tests;
