//! Sync (README "Sync" and "Merged Sync"): everything new for the caller since the device's cursor, merged from
//! the inbox (fan-out deliveries) and one source per hot conversation of the user.
//!
//! - The inbox is read in clustering order (inbox_seq, message_id). inbox_seq is dense per
//!   user, so a missing value is visible: when the row after it was allocated less than
//!   `gap_grace` ago the inbox stops there (`pending`); an older gap is skipped (its writer
//!   died or rewrote it under a fresh seq). Inbox rows whose conv_seq falls in a hot span of
//!   their conversation are left to that conversation's hot source.
//! - A hot source reads its conversation by conv_seq from the Cache window, or from `messages`
//!   when the window does not cover the position or misses a seq. It delivers each
//!   conversation contiguously: a missing conv_seq whose successor is younger than gap_grace
//!   stops it (`pending`); an older one is filled with a hole marker and delivered as one.
//! - One Cache round trip (the heads of every hot conversation) decides which hot sources moved
//!   since the cursor; only those are read, lazily, as the merge needs them.
//! - The merge takes the smallest message_id among the sources' heads, deduplicates by
//!   message_id (this page and the cursor's recent ids), and stops at exactly `limit`.

use std::collections::{HashMap, HashSet, VecDeque};

use super::cursor::Cursor;
use super::delivery::decode_message;
use super::error::TimelineResult;
use super::reads::page_size;
use super::repair::Filled;
use super::{Broken, Caller, Timeline};
use crate::cache::{HotEntry, HotHead, SeqKey};
use crate::metrics;
use crate::store::*;

#[derive(Debug, Clone, PartialEq)]
pub struct SyncPage {
    pub messages: Vec<MessageRow>,
    pub next_cursor: String,
    pub has_more: bool,
    pub pending: bool,
    pub cursor_expired: bool,
    /// The caller's conversations read as hot sources (live streams listen to them).
    pub hot_conversations: Vec<String>,
}

struct InboxSource {
    position: InboxPosition,
    position_time_ms: i64,
    /// The next inbox_seq owed.
    expected: u64,
    bucket: u64,
    last_bucket: u64,
    buffer: VecDeque<InboxRow>,
    blocked: bool,
    exhausted: bool,
}

struct HotSource {
    conversation: ConversationRow,
    /// The last conv_seq delivered.
    position: u64,
    /// The highest conv_seq that may exist (the sequencer's current value).
    upper: u64,
    buffer: VecDeque<MessageRow>,
    blocked: bool,
    exhausted: bool,
}

/// Per-call context shared by the sources.
struct Reader<'a> {
    timeline: &'a Timeline,
    user: &'a str,
    now: i64,
    grace_ms: i64,
    retention_ms: i64,
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
        let reader = Reader {
            timeline: self,
            user,
            now: self.clock.now_ms(),
            grace_ms: self.limits.gap_grace.as_millis() as i64,
            retention_ms: self.limits.inbox_retention.as_millis() as i64,
        };
        // Small-chat sync needs only the Store: without the Cache, the epoch carries over and
        // the inbox head is the last persisted row.
        let epoch = match self.cache.epoch().await {
            Ok(epoch) => epoch,
            Err(e) => {
                self.cache_fallback("epoch", &e);
                cursor.epoch
            }
        };
        let inbox_head = self.read_bound(&SeqKey::Inbox(user.to_owned())).await?;

        // A cursor older than retention may point at rows that are gone: say so instead of
        // skipping them silently, and restart at the oldest retained row.
        let expired = !cursor.fresh
            && (reader.now - cursor.position_time_ms > reader.retention_ms
                || cursor.inbox.inbox_seq + 1 < self.store.inbox_floor(user).await?);
        if expired {
            ::metrics::counter!(metrics::SYNC_CURSOR_EXPIRED).increment(1);
            return Ok(SyncPage {
                messages: Vec::new(),
                // The empty cursor: start again at the oldest retained row.
                next_cursor: String::new(),
                has_more: inbox_head > 0,
                pending: false,
                cursor_expired: true,
                hot_conversations: Vec::new(),
            });
        }

        let mut inbox = InboxSource::new(self, user, &cursor, inbox_head).await?;
        let hot_rows = self.hot_conversations_of(user).await?;
        let hot_ids: Vec<String> = hot_rows.iter().map(|r| r.conversation_id.clone()).collect();
        let mut positions = cursor.hot(&hot_ids);
        let heads = if hot_ids.is_empty() {
            Vec::new()
        } else {
            // Unknown heads: every hot source is opened and read from the Store.
            self.cache.hot_heads(&hot_ids).await.unwrap_or_else(|e| {
                self.cache_fallback("hot_heads", &e);
                vec![None; hot_ids.len()]
            })
        };
        // Sources of hot conversations that moved past the cursor, by conversation id.
        let mut hot: HashMap<String, HotSource> = HashMap::new();
        // Conversations read while merging, with the seq bound read just before each: their
        // spans are final for every seq up to it.
        let mut conversations: HashMap<String, (u64, Option<ConversationRow>)> = HashMap::new();
        for (row, head) in hot_rows.iter().zip(&heads) {
            let known = positions.get(&row.conversation_id).copied();
            if moved(known, head) {
                let source = HotSource::open(&reader, row, known, cursor.fresh).await?;
                if let Some(source) = source {
                    conversations.insert(
                        row.conversation_id.clone(),
                        (source.upper, Some(source.conversation.clone())),
                    );
                    hot.insert(row.conversation_id.clone(), source);
                }
            }
        }
        let hot_members: HashSet<&str> = hot_rows
            .iter()
            .map(|r| r.conversation_id.as_str())
            .collect();

        let mut seen: HashSet<u64> = cursor.recent.iter().copied().collect();
        let mut messages: Vec<MessageRow> = Vec::with_capacity(limit);
        while messages.len() < limit {
            let want = limit - messages.len() + 1;
            inbox.fill(&reader, want).await?;
            // Inbox rows in a hot span belong to their hot source; a row for a hot source not
            // opened yet (its Cache head lagged) opens it.
            while let Some(row) = inbox.buffer.front() {
                let id = &row.message.conversation_id;
                if !hot_members.contains(id.as_str()) {
                    break;
                }
                let stale = conversations
                    .get(id)
                    .is_none_or(|(bound, _)| row.message.conv_seq > *bound);
                if stale {
                    let bound = self.read_bound(&SeqKey::Conversation(id.clone())).await?;
                    let loaded = self.store.get_conversation(id).await?;
                    conversations.insert(id.clone(), (bound, loaded));
                }
                let in_hot_span = conversations[id]
                    .1
                    .as_ref()
                    .is_some_and(|c| c.mode_at(row.message.conv_seq) == DeliveryMode::Hot);
                if !in_hot_span {
                    break;
                }
                if !hot.contains_key(id)
                    && let Some(user_row) = hot_rows.iter().find(|r| &r.conversation_id == id)
                    && let Some(source) =
                        HotSource::open(&reader, user_row, positions.get(id).copied(), cursor.fresh)
                            .await?
                {
                    hot.insert(id.clone(), source);
                }
                inbox.consume_front();
                if inbox.buffer.is_empty() {
                    inbox.fill(&reader, want).await?;
                }
            }
            for source in hot.values_mut() {
                source.fill(&reader, want).await?;
            }
            // The smallest head by message_id.
            let inbox_head_id = inbox.buffer.front().map(|r| r.message.message_id);
            let hot_head = hot
                .iter()
                .filter_map(|(id, s)| s.buffer.front().map(|m| (m.message_id, id.clone())))
                .min();
            let (message, from_hot) = match (inbox_head_id, hot_head) {
                (None, None) => break,
                (Some(i), Some((h, _))) if i <= h => (inbox.take_front(), false),
                (Some(_), None) => (inbox.take_front(), false),
                (_, Some((_, id))) => (hot.get_mut(&id).and_then(HotSource::take_front), true),
            };
            let Some(message) = message else { break };
            if seen.insert(message.message_id) || self.broken(Broken::MergeWithoutDedupe) {
                messages.push(message);
            } else if from_hot && message.kind != MessageKind::Hole {
                // A hot source delivers each conv_seq once, so a second copy sits under
                // another conv_seq (a late write rewritten): that seq is reported as a hole,
                // keeping the sequence contiguous.
                let hole = hole_message(
                    &message.conversation_id,
                    message.conv_seq,
                    message.created_at_ms,
                );
                if seen.insert(hole.message_id) {
                    messages.push(hole);
                }
            }
        }

        let pending = inbox.blocked || hot.values().any(|s| s.blocked);
        let has_more = messages.len() == limit
            && (!inbox.buffer.is_empty()
                || (!inbox.blocked && inbox.position.inbox_seq < inbox_head)
                || hot
                    .values()
                    .any(|s| !s.buffer.is_empty() || (!s.blocked && !s.exhausted)));
        if pending {
            ::metrics::counter!(metrics::SYNC_PENDING).increment(1);
        }
        ::metrics::histogram!(metrics::SYNC_ITEMS).record(messages.len() as f64);
        ::metrics::histogram!(metrics::SYNC_SOURCES).record((1 + hot.len()) as f64);

        // Positions: those read now, the rest carried over; conversations left are dropped.
        for (id, source) in &hot {
            positions.insert(id.clone(), source.position);
        }
        positions.retain(|id, _| hot_members.contains(id.as_str()));
        let mut next = Cursor::default();
        next.inbox = inbox.position;
        next.epoch = epoch;
        next.recent = cursor.recent.clone();
        let inbox_caught_up = !inbox.blocked
            && inbox.buffer.is_empty()
            && (inbox.exhausted || inbox.position.inbox_seq >= inbox_head);
        next.position_time_ms = if inbox_caught_up {
            // Caught up: rows after the position are allocated from about now on (writes
            // in flight at most a grace period earlier). Whether hot sources have more
            // does not matter: this dates the inbox position only.
            inbox.position_time_ms.max(reader.now - reader.grace_ms)
        } else if inbox.position_time_ms == 0 {
            // Nothing consumed yet (a fresh cursor): date the position by the oldest row still
            // owed — the first buffered one, or, blocked at a young gap, one younger than the
            // grace — never by 0, which the next call would take for a position older than the
            // retention and answer with cursor_expired.
            inbox
                .buffer
                .front()
                .map_or(reader.now, |row| row.allocated_at_ms.min(reader.now))
                - reader.grace_ms
        } else {
            inbox.position_time_ms
        };
        next.set_hot(&positions, &hot_ids);
        next.remember(messages.iter().map(|m| m.message_id));
        let mut messages = with_changes_applied(messages);
        self.mask_hidden(user, &mut messages).await?;
        Ok(SyncPage {
            messages,
            next_cursor: next.encode(user),
            has_more,
            pending,
            cursor_expired: false,
            hot_conversations: hot_ids,
        })
    }

    /// The user's rows of conversations that are, or were, hot: Sync reads them as sources.
    async fn hot_conversations_of(&self, user: &str) -> TimelineResult<Vec<UserConversationRow>> {
        let rows = self
            .store
            .list_hot_conversations(user, self.limits.max_conversations_per_user)
            .await?;
        // Partial rows (an activity raise racing a leave) are not memberships.
        Ok(rows.into_iter().filter(|r| r.joined_seq > 0).collect())
    }
}

/// Copies (inbox rows, hot window entries) hold a message as it was delivered. Within one
/// page, a recall or edit is applied to its target as well, so a device reading afresh does
/// not show what was recalled in the same page; the entries themselves stay (a device that
/// already holds the target applies them), and a change in a later page reaches the device
/// as that page's entry. A copy of a recalled message never shows its body.
fn with_changes_applied(mut messages: Vec<MessageRow>) -> Vec<MessageRow> {
    let changes: Vec<(String, u64, MessageChange)> = messages
        .iter()
        .filter(|m| matches!(m.kind, MessageKind::Recall | MessageKind::Edit))
        .map(|m| {
            (
                m.conversation_id.clone(),
                m.target_message_id,
                super::lifecycle::change_of(m),
            )
        })
        .collect();
    for m in &mut messages {
        for (conversation_id, target, change) in &changes {
            if m.message_id == *target && m.conversation_id == *conversation_id {
                change.apply(m);
            }
        }
        if m.recalled() {
            m.body = bytes::Bytes::new();
        }
    }
    messages
}

/// Whether a hot conversation may have something after `position` (unknown: yes).
fn moved(position: Option<u64>, head: &Option<HotHead>) -> bool {
    match (position, head) {
        (Some(p), Some(h)) => h.last_seq > p,
        _ => true,
    }
}

impl InboxSource {
    async fn new(t: &Timeline, user: &str, cursor: &Cursor, head: u64) -> TimelineResult<Self> {
        let mut position = cursor.inbox;
        if cursor.fresh {
            // Begin at the oldest retained row: everything below the floor was dropped.
            let floor = t.store.inbox_floor(user).await?;
            if floor > 0 {
                position = InboxPosition {
                    inbox_seq: floor - 1,
                    message_id: u64::MAX,
                };
            }
        }
        Ok(Self {
            position,
            position_time_ms: cursor.position_time_ms,
            // Sequences start at 1.
            expected: position.inbox_seq + 1,
            bucket: t.bucket(position.inbox_seq),
            last_bucket: t.bucket(head),
            buffer: VecDeque::new(),
            blocked: false,
            exhausted: false,
        })
    }

    /// Reads until `want` rows are buffered, the inbox ends, or a young gap blocks it.
    async fn fill(&mut self, r: &Reader<'_>, want: usize) -> TimelineResult<()> {
        let mut skipped = 0u64;
        let mut after = self
            .buffer
            .back()
            .map_or(self.position, |row| InboxPosition {
                inbox_seq: row.inbox_seq,
                message_id: row.message.message_id,
            });
        while self.buffer.len() < want && !self.blocked && !self.exhausted {
            if self.bucket > self.last_bucket {
                self.exhausted = true;
                break;
            }
            let batch = want - self.buffer.len();
            let rows = r
                .timeline
                .store
                .read_inbox(r.user, self.bucket, after, batch)
                .await?;
            let bucket_done = rows.len() < batch;
            for row in rows {
                if row.inbox_seq > self.expected {
                    if r.now - row.allocated_at_ms < r.grace_ms {
                        self.blocked = true;
                        break;
                    }
                    skipped += row.inbox_seq - self.expected;
                }
                self.expected = self.expected.max(row.inbox_seq + 1);
                after = InboxPosition {
                    inbox_seq: row.inbox_seq,
                    message_id: row.message.message_id,
                };
                self.buffer.push_back(row);
            }
            if bucket_done && !self.blocked {
                // Rows of the next bucket all lie after `after`.
                self.bucket += 1;
            }
            // Rows past retention are invisible even before compaction drops them.
            while self
                .buffer
                .front()
                .is_some_and(|row| r.now - row.allocated_at_ms > r.retention_ms)
            {
                self.consume_front();
            }
        }
        if skipped > 0 {
            ::metrics::counter!(metrics::SYNC_GAPS_SKIPPED).increment(skipped);
        }
        Ok(())
    }

    fn consume_front(&mut self) -> Option<InboxRow> {
        let row = self.buffer.pop_front()?;
        self.position = InboxPosition {
            inbox_seq: row.inbox_seq,
            message_id: row.message.message_id,
        };
        self.position_time_ms = row.allocated_at_ms;
        Some(row)
    }

    fn take_front(&mut self) -> Option<MessageRow> {
        self.consume_front().map(|row| row.message)
    }
}

impl HotSource {
    /// A source for the user's hot conversation `row`, starting after `known` (the cursor's
    /// position) or, for a conversation new to this cursor, at the first hot seq the user may
    /// read (a fresh cursor: at most one window back). `None` when nothing is hot for the user.
    async fn open(
        r: &Reader<'_>,
        row: &UserConversationRow,
        known: Option<u64>,
        fresh: bool,
    ) -> TimelineResult<Option<Self>> {
        let t = r.timeline;
        // The bound first: every seq up to it was handed out before the conversation is read,
        // so the spans read are final for all of them (a span is durable before its seqs).
        let upper = t
            .read_bound(&SeqKey::Conversation(row.conversation_id.clone()))
            .await?;
        let Some(conversation) = t.store.get_conversation(&row.conversation_id).await? else {
            return Ok(None);
        };
        let position = match known {
            Some(p) => p.max(row.joined_seq.saturating_sub(1)),
            None => {
                let Some(first) = conversation.next_hot_seq(row.joined_seq.max(1)) else {
                    return Ok(None);
                };
                let start = first - 1;
                if fresh {
                    start.max(upper.saturating_sub(t.limits.hot_window as u64))
                } else {
                    start
                }
            }
        };
        Ok(Some(Self {
            conversation,
            position,
            upper,
            buffer: VecDeque::new(),
            blocked: false,
            exhausted: false,
        }))
    }

    fn take_front(&mut self) -> Option<MessageRow> {
        let message = self.buffer.pop_front()?;
        self.position = self.position.max(message.conv_seq);
        Some(message)
    }

    /// The last conv_seq buffered or delivered.
    fn reached(&self) -> u64 {
        self.buffer.back().map_or(self.position, |m| m.conv_seq)
    }

    /// Buffers contiguous messages after the position, up to `want`.
    async fn fill(&mut self, r: &Reader<'_>, want: usize) -> TimelineResult<()> {
        let t = r.timeline;
        let id = self.conversation.conversation_id.clone();
        while self.buffer.len() < want && !self.blocked && !self.exhausted {
            // Fan-out spans are delivered through the inbox: skip them.
            let Some(next) = self.conversation.next_hot_seq(self.reached() + 1) else {
                self.exhausted = true;
                break;
            };
            if next > self.upper {
                self.exhausted = true;
                break;
            }
            if self.buffer.is_empty() && next > self.position + 1 {
                self.position = next - 1;
            }
            let batch = (want - self.buffer.len()).max(16);
            let found = self.read_from(r, next, batch).await?;
            // Contiguous from `next`; a missing seq is checked in the Store, then judged.
            let mut expected = next;
            let mut by_seq: std::collections::BTreeMap<u64, Vec<MessageRow>> =
                std::collections::BTreeMap::new();
            for m in found {
                by_seq.entry(m.conv_seq).or_default().push(m);
            }
            let last_found = by_seq.keys().next_back().copied();
            let Some(last_found) = last_found else {
                // Nothing after `next` yet (in flight, or abandoned at the tail: the sweeper
                // fills those).
                self.exhausted = true;
                break;
            };
            while expected <= last_found && self.buffer.len() < want {
                if self.conversation.mode_at(expected) != DeliveryMode::Hot {
                    break;
                }
                let rows = match by_seq.remove(&expected) {
                    Some(rows) => rows,
                    None => {
                        let stored = t.read_seq(&id, expected).await?;
                        if !stored.is_empty() {
                            stored
                        } else {
                            let successor = by_seq.range(expected..).next().map(|(_, v)| &v[0]);
                            match successor {
                                Some(_) if t.broken(Broken::GapsSkippedNotFilled) => Vec::new(),
                                Some(s) if r.now - s.created_at_ms >= r.grace_ms => {
                                    match t.fill_hole(&id, expected, "sync").await? {
                                        Filled::Hole(hole) => {
                                            t.append_hot_repair(&hole).await?;
                                            vec![hole]
                                        }
                                        Filled::Present(rows) => rows,
                                    }
                                }
                                _ => {
                                    self.blocked = true;
                                    break;
                                }
                            }
                        }
                    }
                };
                let mut ids = HashSet::new();
                for m in rows {
                    if ids.insert(m.message_id) {
                        self.buffer.push_back(m);
                    }
                }
                expected += 1;
            }
            if self.blocked || expected <= last_found {
                // Stopped early (want reached, a span boundary, or a young gap).
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` messages with conv_seq ≥ `from`: from the Cache window when it covers
    /// `from`, and from `messages` for what the window lacks (not covered, or running out
    /// below the sequencer's value: a window rebuilt after a Cache loss holds only what was
    /// appended since).
    async fn read_from(
        &self,
        r: &Reader<'_>,
        from: u64,
        limit: usize,
    ) -> TimelineResult<Vec<MessageRow>> {
        let t = r.timeline;
        let id = &self.conversation.conversation_id;
        let mut out = Vec::new();
        let window = t
            .cache
            .hot_read(id, from - 1, limit)
            .await
            .unwrap_or_else(|e| {
                t.cache_fallback("hot_window", &e);
                None
            });
        if let Some(window) = window
            && window.low_seq <= from
        {
            for HotEntry { payload, .. } in &window.entries {
                out.push(decode_message(payload)?);
            }
        }
        let tail_from = out.last().map_or(from, |m| m.conv_seq + 1);
        if out.len() >= limit || tail_from > self.upper {
            ::metrics::counter!(metrics::HOT_WINDOW_READS, "result" => "hit").increment(1);
            return Ok(out);
        }
        ::metrics::counter!(metrics::HOT_WINDOW_READS, "result" => "miss").increment(1);
        let rest = t
            .read_messages_ascending(id, tail_from, self.upper, limit - out.len())
            .await?;
        out.extend(rest);
        Ok(out)
    }
}
