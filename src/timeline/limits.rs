//! The limits and timings of the pipeline, named once: the struct is the `[limits]` section of
//! the configuration, and its defaults are the configuration's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The limits and timings of the pipeline: the `[limits]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The node's id (a top-level key): part of every message_id.
    #[serde(skip)]
    pub node_id: u16,
    pub bucket_size: u64,
    pub max_body_bytes: usize,
    pub sync_default_limit: u32,
    pub sync_max_limit: u32,
    pub history_default_limit: u32,
    pub history_max_limit: u32,
    pub list_default_limit: u32,
    pub list_max_limit: u32,
    pub max_group_members: u32,
    pub max_members_per_call: usize,
    pub max_conversations_per_user: usize,
    #[serde(with = "crate::units::human")]
    pub inbox_retention: Duration,
    pub inbox_max_rows: u64,
    #[serde(with = "crate::units::human")]
    pub gap_grace: Duration,
    #[serde(with = "crate::units::human")]
    pub idempotency_ttl: Duration,
    /// How long a send holds its client_msg_id claim before a retry may take over.
    #[serde(skip)]
    pub send_claim_lease: Duration,
    /// How long a send whose durable write failed keeps its client_msg_id claimed: longer
    /// than ScyllaDB may take to replay a timed-out logged batch (~64 s).
    #[serde(skip)]
    pub uncertain_write_hold: Duration,
    /// Outbox entries older than this are re-driven by the recovery loop.
    #[serde(with = "crate::units::human")]
    pub recovery_age: Duration,
    /// How far back a starting node's recovery reads the outbox; a running node then reads each
    /// bucket until it has drained it. Entries older than this at start are left (they still
    /// expire by the table's TTL): raise it for one start after the whole cluster was down
    /// longer.
    #[serde(with = "crate::units::human")]
    pub recovery_lookback: Duration,
    /// A conversation with this many members is hot.
    pub hot_threshold: u32,
    /// A conversation fanning out more inbox rows per second than this is hot.
    pub hot_fanout_rows_per_sec: u64,
    /// Least time between two automatic mode switches of a conversation.
    #[serde(with = "crate::units::human")]
    pub mode_min_dwell: Duration,
    /// Messages kept in a hot conversation's Cache window.
    pub hot_window: usize,
    /// Sends per second into one hot conversation, all senders and nodes together (0: no
    /// limit), and the burst above it: a 50,000-member group cannot be flooded faster than
    /// its members could read.
    pub hot_conversation_sends_per_sec: u32,
    pub hot_conversation_send_burst: u32,
    /// How long a send whose client_msg_id another request holds waits for that one's result.
    #[serde(skip)]
    pub send_claim_wait: Duration,
    /// How long a send waits for a mode switch's fence on its conversation to lift.
    #[serde(skip)]
    pub send_fence_wait: Duration,
    /// How often the recovery loop re-drives the outbox and sweeps abandoned seqs.
    #[serde(with = "crate::units::human")]
    pub recovery_interval: Duration,
    /// How long after sending its sender may recall a message (owners and admins of a group
    /// may recall any message at any time).
    #[serde(with = "crate::units::human")]
    pub recall_window: Duration,
    /// How long after sending its sender may edit a message.
    #[serde(with = "crate::units::human")]
    pub edit_window: Duration,
    /// A deliberately broken pipeline, to prove the property test catches it.
    #[cfg(test)]
    #[serde(skip)]
    pub(crate) broken: Option<Broken>,
}

/// Deliberately broken variants of the pipeline: only tests construct them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Broken {
    /// The Sync merge does not deduplicate by message_id.
    MergeWithoutDedupe,
    /// Abandoned conv_seqs are skipped instead of filled with holes.
    GapsSkippedNotFilled,
    /// Sends write no outbox entry, so an interrupted fan-out is never re-driven.
    SendWithoutOutbox,
    /// Mode switches publish their span without fencing allocation (and back-fill the fan-out
    /// instead), so a sender can deliver a seq of the new span the old way.
    SwitchWithoutFence,
    /// A leave deletes the member row but its `user_conversations` membership survives (a
    /// leave in two writes, the second lost), so Sync may go on reading the group for the
    /// user who left.
    LeaveKeepsMembership,
    /// Re-drives take no claim, so two nodes' recovery passes (or recovery and a client's
    /// retry) both re-drive one outbox entry, each under fresh inbox seqs.
    RedriveWithoutClaim,
    /// A send whose durable write failed lets its claim lapse after the usual lease, so a
    /// retry may write a second message while the first write can still land.
    ClaimLapsesAfterFailedWrite,
    /// A re-drive whose claim call failed leaves the claim to its lease, though the call may
    /// have taken effect (a lost reply): recovery and retries then skip the entry for the
    /// whole lease, and a retry is acked before its message is delivered.
    FailedClaimKept,
    /// Slowmode is checked after the durable write, so a refused send leaves its message (and
    /// its outbox entry, which recovery delivers).
    SlowmodeAfterWrite,
    /// A recall or edit changes the stored message only: no entry tells the devices that
    /// already hold it.
    ChangeWithoutEntry,
    /// Recall and edit entries take a count, as if they were messages to read.
    ChangesCountAsUnread,
    /// Delete-for-me is answered but not stored: the user still sees the messages.
    HiddenStillShown,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            node_id: 0,
            bucket_size: 4096,
            max_body_bytes: 64 * 1024,
            sync_default_limit: 100,
            sync_max_limit: 500,
            history_default_limit: 50,
            history_max_limit: 200,
            list_default_limit: 50,
            list_max_limit: 200,
            max_group_members: 100_000,
            max_members_per_call: 1000,
            max_conversations_per_user: 10_000,
            inbox_retention: Duration::from_secs(14 * 24 * 3600),
            inbox_max_rows: 10_000,
            gap_grace: Duration::from_secs(3),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            send_claim_lease: Duration::from_secs(30),
            uncertain_write_hold: Duration::from_secs(120),
            recovery_age: Duration::from_secs(5),
            recovery_lookback: Duration::from_secs(3600),
            hot_threshold: 500,
            hot_fanout_rows_per_sec: 20_000,
            mode_min_dwell: Duration::from_secs(60),
            hot_window: 1000,
            hot_conversation_sends_per_sec: 100,
            hot_conversation_send_burst: 500,
            send_claim_wait: Duration::from_secs(2),
            recovery_interval: Duration::from_secs(1),
            recall_window: Duration::from_secs(120),
            edit_window: Duration::from_secs(24 * 3600),
            send_fence_wait: Duration::from_secs(2),
            #[cfg(test)]
            broken: None,
        }
    }
}

impl Limits {
    /// The keys of the `[limits]` section.
    pub fn keys() -> Vec<String> {
        match toml::Value::try_from(Limits::default()) {
            Ok(toml::Value::Table(table)) => table.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// What the types cannot say about the limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket_size == 0 {
            return Err("bucket_size must be positive".into());
        }
        if self.sync_max_limit == 0 || self.history_max_limit == 0 || self.list_max_limit == 0 {
            return Err("page size limits must be positive".into());
        }
        if self.sync_default_limit > self.sync_max_limit
            || self.history_default_limit > self.history_max_limit
            || self.list_default_limit > self.list_max_limit
        {
            return Err("a default page size exceeds its maximum".into());
        }
        if self.gap_grace.is_zero() {
            return Err("gap_grace must be positive".into());
        }
        if self.inbox_retention <= self.gap_grace {
            return Err("inbox_retention must be longer than gap_grace".into());
        }
        if self.hot_window == 0 || self.hot_threshold < 2 {
            return Err("hot_window must be positive and hot_threshold at least 2".into());
        }
        if self.recovery_lookback <= self.recovery_age {
            return Err("recovery_lookback must be longer than recovery_age".into());
        }
        if self.recovery_interval.is_zero() {
            return Err("recovery_interval must be positive".into());
        }
        Ok(())
    }
}
