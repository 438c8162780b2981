use crate::cache::CacheError;
use crate::store::StoreError;

/// Errors of the domain pipeline; the API edge maps each to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// Over a rate limit: the client may try again after `retry_after`.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after: std::time::Duration,
    },
    /// A concurrent request holds what this one needs (e.g. the same client_msg_id): retry.
    #[error("{0}")]
    Aborted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

pub type TimelineResult<T> = Result<T, TimelineError>;

pub(crate) fn invalid(msg: impl Into<String>) -> TimelineError {
    TimelineError::InvalidArgument(msg.into())
}

/// What a caller who is not a member learns of a conversation: exactly what they learn of one
/// that does not exist (same code, same message), so ids cannot be probed for existence.
pub(crate) fn not_a_member(conversation_id: &str) -> TimelineError {
    TimelineError::NotFound(format!(
        "conversation {conversation_id} does not exist or you are not a member"
    ))
}
