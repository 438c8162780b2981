//! Live push (README "Push"): streams to online devices, resumed by the sync cursor.
//!
//! Push-pull: a push only says "something is new"; the stream then pulls through the same
//! merged, exact-count [`Timeline::sync`](crate::timeline::Timeline::sync) a polling client
//! calls, from the stream's cursor. A lost push loses nothing (the next wake-up, heartbeat or
//! reconnect re-syncs from the cursor), and a device resumes after any absence by opening a
//! stream with its last cursor.
//!
//! - `channels.rs`: the pub/sub channels (one per user, one per hot conversation) and the hint
//!   payloads on them.
//! - `publisher.rs`: the pipeline's [`DeliveryListener`](crate::timeline::DeliveryListener):
//!   queues hints and publishes them in batches, one Cache round trip per batch.
//! - `hub.rs`: one per node: the open streams by user and by hot conversation, the node's one
//!   subscriber connection, routing of hints to streams, limits and shutdown.
//! - `session.rs`: opening a stream, and its loop: catch up, then wait for wake-ups,
//!   heartbeats, token refreshes and shutdown.
//! - `events.rs`: what hub and sessions share of a stream: how it opens, control frames,
//!   events, how it ends.
//! - `coalesce.rs`: the streams' shared reads of the Cache.
//! - `presence.rs`: presence queries and typing indicators.
//!
//! Transports (gRPC, WebSocket) live at the edge (`crate::api`) and only carry [`PushEvent`]s.

mod channels;
mod coalesce;
mod events;
mod hub;
mod presence;
mod publisher;
mod session;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use events::{Control, OpenStream, PushEvent, StreamEnd, Transport};
pub use hub::{Hub, StreamLimitError};
pub use presence::{PresenceView, TypingOutcome};

/// The `[push]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushOptions {
    /// A heartbeat event this often; it refreshes presence and re-syncs (catching a lost hint).
    /// A stream that cannot be written for two intervals is closed.
    #[serde(with = "crate::units::human")]
    pub heartbeat: Duration,
    /// Wake-ups by hot conversations are coalesced to at most one per stream per interval.
    #[serde(with = "crate::units::human")]
    pub hot_interval: Duration,
    /// Streams one user may hold open on a node (devices × tabs).
    pub max_streams_per_user: usize,
    /// Streams a node holds at most.
    pub max_streams: usize,
    /// Events a stream may have queued for its client before the stream stops reading ahead
    /// (it catches up from its cursor once the client drains them).
    pub stream_queue: usize,
    /// How long one sender's typing events in a conversation are spaced at least.
    #[serde(with = "crate::units::human")]
    pub typing_interval: Duration,
    /// How long a stream ending at shutdown may take to say goodbye.
    #[serde(with = "crate::units::human")]
    pub shutdown_grace: Duration,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(25),
            hot_interval: Duration::from_secs(1),
            max_streams_per_user: 10,
            max_streams: 100_000,
            stream_queue: 16,
            typing_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl PushOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat < Duration::from_millis(100) {
            return Err("push.heartbeat must be at least 100ms".into());
        }
        if self.max_streams_per_user == 0 || self.max_streams == 0 || self.stream_queue < 2 {
            return Err(
                "push.max_streams_per_user and push.max_streams must be positive, push.stream_queue at least 2"
                    .into(),
            );
        }
        Ok(())
    }

    /// How long a device stays online without a refresh: two and a half heartbeats, so one
    /// late heartbeat does not flap it, while a crashed node's devices lapse soon.
    pub fn presence_ttl(&self) -> Duration {
        self.heartbeat * 5 / 2
    }

    /// How long the streams' shared reads of a conversation are reused without a hint saying
    /// it changed: a herd of streams woken together shares one read.
    pub fn shared_read_age(&self) -> Duration {
        self.hot_interval.max(Duration::from_millis(100))
    }
}
