//! Sync (DESIGN §6): everything new for the caller since the device's cursor.
//!
//! The inbox is read in clustering order (inbox_seq, message_id), bucket by bucket. inbox_seq is
//! dense per user, so a missing value is visible: a write still in flight, or one abandoned by
//! a writer that died. At a missing seq whose successor was allocated less than `gap_grace` ago
//! the page stops there and says `pending` (the client syncs again shortly); an older gap is
//! skipped and counted. Pages hold exactly `limit` messages while more exist.

use std::collections::HashSet;

use super::cursor::Cursor;
use super::error::TimelineResult;
use super::{Caller, Timeline, page_size};
use crate::cache::SeqKey;
use crate::metrics;
use crate::store::{InboxPosition, MessageRow};

#[derive(Debug, Clone, PartialEq)]
pub struct SyncPage {
    pub messages: Vec<MessageRow>,
    pub next_cursor: String,
    pub has_more: bool,
    pub pending: bool,
    pub cursor_expired: bool,
}

impl Timeline {
    pub async fn sync(
        &self,
        caller: &Caller,
        cursor: &str,
        limit: u32,
    ) -> TimelineResult<SyncPage> {
        let user = caller.user_id.as_str();
        let cursor = Cursor::decode(cursor, user)?;
        let limit = page_size(
            limit,
            self.limits.sync_default_limit,
            self.limits.sync_max_limit,
        );
        let now = self.clock.now_ms();
        let retention_ms = self.limits.inbox_retention.as_millis() as i64;
        let grace_ms = self.limits.gap_grace.as_millis() as i64;
        let epoch = self.cache.epoch().await?;
        let head = self.current_seq(&SeqKey::Inbox(user.to_owned())).await?;

        // A cursor older than retention may point at rows that are gone: say so instead of
        // skipping them silently, and restart at the oldest retained row.
        let expired = !cursor.fresh
            && (now - cursor.position_time_ms > retention_ms
                || cursor.inbox.inbox_seq + 1 < self.store.inbox_floor(user).await?);
        if expired {
            ::metrics::counter!(metrics::SYNC_CURSOR_EXPIRED).increment(1);
            return Ok(SyncPage {
                messages: Vec::new(),
                // The empty cursor: start again at the oldest retained row.
                next_cursor: String::new(),
                has_more: head > 0,
                pending: false,
                cursor_expired: true,
            });
        }

        let mut position = cursor.inbox;
        let mut position_time_ms = cursor.position_time_ms;
        if cursor.fresh {
            // Begin at the oldest retained row: everything below the floor was dropped.
            let floor = self.store.inbox_floor(user).await?;
            if floor > 0 {
                position = InboxPosition {
                    inbox_seq: floor - 1,
                    message_id: u64::MAX,
                };
            }
        }
        // The next inbox_seq owed to the client (sequences start at 1).
        let mut expected = position.inbox_seq + 1;
        let mut messages = Vec::with_capacity(limit);
        let mut seen = HashSet::with_capacity(limit);
        let mut pending = false;
        let mut has_more = false;
        let mut skipped = 0u64;
        let mut bucket = self.bucket(position.inbox_seq);

        'buckets: while bucket <= self.bucket(head) {
            // One row beyond the page tells whether more exist.
            let want = limit - messages.len() + 1;
            let rows = self.store.read_inbox(user, bucket, position, want).await?;
            let exhausted = rows.len() < want;
            for row in rows {
                if messages.len() == limit {
                    has_more = true;
                    break 'buckets;
                }
                let expired_row = now - row.allocated_at_ms > retention_ms;
                if row.inbox_seq > expected {
                    if now - row.allocated_at_ms < grace_ms {
                        pending = true;
                        break 'buckets;
                    }
                    skipped += row.inbox_seq - expected;
                }
                position = InboxPosition {
                    inbox_seq: row.inbox_seq,
                    message_id: row.message.message_id,
                };
                position_time_ms = row.allocated_at_ms;
                expected = expected.max(row.inbox_seq + 1);
                // Rows past retention are invisible even before they are physically dropped;
                // re-driven copies of a message share its message_id.
                if !expired_row && seen.insert(row.message.message_id) {
                    messages.push(row.message);
                }
            }
            if exhausted {
                // Rows of the next bucket all lie after `position`: it stays as it is.
                bucket += 1;
            }
        }
        if messages.len() == limit && !pending && position.inbox_seq < head {
            has_more = true;
        }

        if !has_more && !pending {
            // Caught up: rows after `position` are allocated from about now on (writes in
            // flight at most a grace period earlier).
            position_time_ms = position_time_ms.max(now - grace_ms);
        }
        if pending {
            ::metrics::counter!(metrics::SYNC_PENDING).increment(1);
        }
        if skipped > 0 {
            ::metrics::counter!(metrics::SYNC_GAPS_SKIPPED).increment(skipped);
        }
        ::metrics::histogram!(metrics::SYNC_ITEMS).record(messages.len() as f64);
        let next = Cursor {
            fresh: false,
            inbox: position,
            position_time_ms,
            epoch,
        };
        Ok(SyncPage {
            messages,
            next_cursor: next.encode(user),
            has_more,
            pending,
            cursor_expired: false,
        })
    }
}
