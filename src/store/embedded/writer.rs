//! The writer thread (group commit: one journal sync for whatever is queued) and the
//! compaction filters that apply the tables' TTLs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict,
};
use fjall::{Database, PersistMode};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::encoding::*;
use super::*;

/// Drops rows older than a TTL while compacting, as ScyllaDB's TTL does: retention needs no
/// sweep over the data. Reads filter by the same age, so what compaction has not reached yet
/// is invisible already.
pub(super) struct ExpiryFactory<T> {
    ttl_ms: i64,
    written_at: fn(&T) -> i64,
}

impl<T> ExpiryFactory<T> {
    pub(super) fn new(ttl: Duration, written_at: fn(&T) -> i64) -> Self {
        Self {
            ttl_ms: ttl.as_millis() as i64,
            written_at,
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> Factory for ExpiryFactory<T> {
    fn name(&self) -> &str {
        "timeline-ttl"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Box::new(ExpiryFilter::<T> {
            cutoff_ms: now_ms - self.ttl_ms,
            written_at: self.written_at,
        })
    }
}

pub(super) struct ExpiryFilter<T> {
    cutoff_ms: i64,
    written_at: fn(&T) -> i64,
}

impl<T: DeserializeOwned + Send> CompactionFilter for ExpiryFilter<T> {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        let value = item.value()?;
        // An undecodable row is kept: compaction is no place to lose data over a bug.
        Ok(match decode::<T>(&value) {
            Ok(row) if (self.written_at)(&row) < self.cutoff_ms => Verdict::Remove,
            _ => Verdict::Keep,
        })
    }
}

pub(super) fn run_writer(
    db: Database,
    tables: Tables,
    mut rx: mpsc::Receiver<WriteJob>,
    durability: Durability,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // Each job commits its own batch so that later jobs of the group read its effects;
        // one fsync then covers the whole group before anyone is acknowledged.
        let mut results = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for job in group.drain(..) {
            let mut batch = db.batch();
            let result = (job.apply)(&tables, &mut batch)
                .and_then(|outcome| batch.commit().map_err(fj).map(|()| outcome));
            results.push(result);
            replies.push(job.reply);
        }
        let synced = match durability {
            Durability::Fsync => db.persist(PersistMode::SyncData).map_err(fj),
            Durability::Buffered => db.persist(PersistMode::Buffer).map_err(fj),
        };
        for (reply, result) in replies.into_iter().zip(results) {
            let result = match &synced {
                Ok(()) => result,
                Err(e) => Err(StoreError::Io(format!("journal sync failed: {e}"))),
            };
            let _ = reply.send(result);
        }
    }
}
