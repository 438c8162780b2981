//! What a stream is made of, shared by the hub (which routes to streams) and the sessions
//! (which run them): how it is opened, the client's control frames, the events it carries and
//! how it ends.

use std::sync::Arc;

use crate::timeline::{Caller, SyncPage, TimelineError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    WebSocket,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::WebSocket => "websocket",
        }
    }
}

/// What a client opens a stream with.
#[derive(Debug, Clone)]
pub struct OpenStream {
    pub caller: Caller,
    /// When the token expires (Unix ms): the stream ends then unless refreshed.
    pub expires_at_ms: i64,
    /// The sync cursor to resume from (empty: a fresh device).
    pub cursor: String,
    /// Messages per batch (0: Sync's default).
    pub limit: u32,
    pub transport: Transport,
}

/// Frames from the client, as the transport decoded and checked them.
#[derive(Debug, Clone)]
pub enum Control {
    /// A fresh token for the same user and device: the stream lives until its expiry.
    Refresh { expires_at_ms: i64 },
    /// A frame that could not be accepted: the stream ends with this.
    Reject(StreamEnd),
}

#[derive(Debug, Clone)]
pub enum PushEvent {
    /// Messages in Sync's order and the cursor after them. `live` is false while catching up.
    Batch {
        page: SyncPage,
        live: bool,
    },
    Heartbeat {
        server_time_ms: i64,
    },
    Typing {
        conversation_id: String,
        user_id: String,
        device_id: String,
    },
}

/// Why a stream ended (the transport maps it to a status or close code).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamEnd {
    #[error("the client went away")]
    Client,
    #[error("token has expired")]
    Expired,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    InvalidFrame(String),
    #[error("the stream could not be written for two heartbeat intervals")]
    Slow,
    #[error("the node is shutting down; reconnect with your last cursor")]
    Shutdown,
    /// The pipeline failed (a bad cursor, the Store down, ...).
    #[error(transparent)]
    Failed(Arc<TimelineError>),
}

impl StreamEnd {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            StreamEnd::Client => "client",
            StreamEnd::Expired | StreamEnd::Unauthenticated(_) => "expired",
            StreamEnd::Slow => "slow",
            StreamEnd::Shutdown => "shutdown",
            StreamEnd::InvalidFrame(_) | StreamEnd::Failed(..) => "error",
        }
    }

    pub(super) fn failed(e: TimelineError) -> Self {
        StreamEnd::Failed(Arc::new(e))
    }
}

pub type StreamItem = Result<PushEvent, StreamEnd>;
