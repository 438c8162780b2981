//! The `[protect]` section: rate limits per user and per source address, and the node's bound
//! on requests in flight. A rate of 0 turns that limit off.

use serde::{Deserialize, Serialize};

/// Defaults a person using an app never reaches and a script does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtectOptions {
    /// `SendMessage` per second per user, sustained (0: unlimited).
    pub user_sends_per_sec: u32,
    /// Sends a user may make at once above the sustained rate.
    pub user_send_burst: u32,
    /// Other writes (create, members, mark read, typing, push targets) per second per user.
    pub user_writes_per_sec: u32,
    pub user_write_burst: u32,
    /// Reads (Sync, GetHistory, ListConversations, GetConversation, GetPresence, Ping) per
    /// second per user.
    pub user_reads_per_sec: u32,
    pub user_read_burst: u32,
    /// Failed authentications (no, malformed, forged or expired token) per second per source
    /// address; beyond it they are answered RESOURCE_EXHAUSTED instead of UNAUTHENTICATED.
    pub source_auth_failures_per_sec: u32,
    pub source_auth_failure_burst: u32,
    /// Requests a node serves at once (0: unbounded); beyond it requests fail fast with
    /// RESOURCE_EXHAUSTED instead of queueing.
    pub max_in_flight: u32,
    /// The percentage of `max_in_flight` that requests other than sends may take: the rest is
    /// kept for sends, so an overloaded node sheds reads first.
    pub non_send_share_percent: u8,
}

impl Default for ProtectOptions {
    fn default() -> Self {
        Self {
            user_sends_per_sec: 10,
            user_send_burst: 50,
            user_writes_per_sec: 10,
            user_write_burst: 50,
            user_reads_per_sec: 50,
            user_read_burst: 200,
            source_auth_failures_per_sec: 10,
            source_auth_failure_burst: 100,
            max_in_flight: 2048,
            non_send_share_percent: 75,
        }
    }
}

impl ProtectOptions {
    /// Every limit off: for load runs that measure capacity rather than quotas.
    pub fn unlimited() -> Self {
        Self {
            user_sends_per_sec: 0,
            user_writes_per_sec: 0,
            user_reads_per_sec: 0,
            source_auth_failures_per_sec: 0,
            max_in_flight: 0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, rate, burst) in [
            ("user_sends", self.user_sends_per_sec, self.user_send_burst),
            (
                "user_writes",
                self.user_writes_per_sec,
                self.user_write_burst,
            ),
            ("user_reads", self.user_reads_per_sec, self.user_read_burst),
            (
                "source_auth_failures",
                self.source_auth_failures_per_sec,
                self.source_auth_failure_burst,
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(format!(
                    "protect: the burst of {name} must be at least 1 when its rate is set"
                ));
            }
        }
        if !(1..=100).contains(&self.non_send_share_percent) {
            return Err("protect.non_send_share_percent must be 1..=100".into());
        }
        Ok(())
    }
}
