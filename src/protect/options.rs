//! The `[protect]` section: rate limits per user and per source address, and the node's bound
//! on requests in flight. A rate of 0 turns that limit off.

use std::time::Duration;

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
    /// Connections a node keeps open (0: unbounded); one over it is closed as accepted.
    pub max_connections: u32,
    /// Connections one source address keeps open (0: unbounded).
    pub max_connections_per_source: u32,
    /// A connection must complete its first request (and, with TLS, its handshake) within
    /// this; an HTTP/1.1 request's headers must arrive within it too.
    #[serde(with = "crate::units::human")]
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed (a push stream is a
    /// request in flight: it keeps its connection).
    #[serde(with = "crate::units::human")]
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval; a peer that does not answer within `keepalive_timeout` is gone.
    #[serde(with = "crate::units::human")]
    pub keepalive_interval: Duration,
    #[serde(with = "crate::units::human")]
    pub keepalive_timeout: Duration,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// The largest request header block accepted (HTTP/2 header list, HTTP/1.1 headers).
    pub max_header_bytes: u32,
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
            max_connections: 20_000,
            max_connections_per_source: 1_000,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 256,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl ProtectOptions {
    /// Every rate limit and the in-flight bound off: for load runs that measure capacity
    /// rather than quotas, and suites that call as a few users flat out. (The connection
    /// bounds and timeouts stay.)
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
        for (name, value) in [
            ("first_request_timeout", self.first_request_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("protect.{name} must be positive"));
            }
        }
        if self.max_concurrent_streams == 0 || self.max_header_bytes < 1024 {
            return Err(
                "protect.max_concurrent_streams must be positive and max_header_bytes at least 1024"
                    .into(),
            );
        }
        Ok(())
    }
}
