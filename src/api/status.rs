//! The one mapping from pipeline errors to gRPC status codes (and from codes to HTTP).

use tonic::{Code, Status};

use crate::cache::CacheError;
use crate::protect::Refusal;
use crate::store::StoreError;
use crate::timeline::TimelineError;

/// Metadata naming the delay after which a refused request may be retried, in whole seconds
/// rounded up (as HTTP's `Retry-After`); the exact delay is in the status details
/// (`google.rpc.RetryInfo`).
pub const RETRY_AFTER: &str = "retry-after";

/// A refusal: RESOURCE_EXHAUSTED with when to retry, as `google.rpc.RetryInfo` and as
/// `retry-after` metadata.
impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        throttled(refusal.to_string(), refusal.retry_after())
    }
}

fn throttled(message: String, retry_after: std::time::Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut status = Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    );
    status
        .metadata_mut()
        .insert(RETRY_AFTER, retry_after_seconds(retry_after).into());
    status
}

/// Whole seconds, rounded up, at least 1: what `Retry-After` can say.
pub fn retry_after_seconds(delay: std::time::Duration) -> u64 {
    delay.as_millis().div_ceil(1000).max(1) as u64
}

impl From<TimelineError> for Status {
    fn from(e: TimelineError) -> Self {
        match e {
            TimelineError::InvalidArgument(m) => Status::invalid_argument(m),
            TimelineError::NotFound(m) => Status::not_found(m),
            TimelineError::PermissionDenied(m) => Status::permission_denied(m),
            TimelineError::AlreadyExists(m) => Status::already_exists(m),
            TimelineError::FailedPrecondition(m) => Status::failed_precondition(m),
            TimelineError::ResourceExhausted(m) => Status::resource_exhausted(m),
            TimelineError::Throttled {
                message,
                retry_after,
            } => throttled(message, retry_after),
            TimelineError::Aborted(m) => Status::aborted(m),
            TimelineError::Store(StoreError::Overloaded(m)) => Status::resource_exhausted(m),
            TimelineError::Store(e @ (StoreError::Io(_) | StoreError::Unavailable(_))) => {
                tracing::warn!(error = %e, "store failure");
                Status::unavailable(e.to_string())
            }
            TimelineError::Store(e @ (StoreError::Corrupt(_) | StoreError::Config(_))) => {
                tracing::error!(error = %e, "store failure");
                Status::internal(e.to_string())
            }
            TimelineError::Cache(
                e @ (CacheError::Unavailable(_) | CacheError::Protocol(_) | CacheError::Fenced(_)),
            ) => {
                tracing::warn!(error = %e, "cache failure");
                Status::unavailable(e.to_string())
            }
        }
    }
}

/// The status code's canonical name, e.g. `INVALID_ARGUMENT` (a metric label and JSON field).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The HTTP status of the JSON/protobuf POST surface for a gRPC code (as grpc-gateway maps).
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as H;
    match code {
        Code::Ok => H::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => H::BAD_REQUEST,
        Code::Unauthenticated => H::UNAUTHORIZED,
        Code::PermissionDenied => H::FORBIDDEN,
        Code::NotFound => H::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => H::CONFLICT,
        Code::ResourceExhausted => H::TOO_MANY_REQUESTS,
        Code::Cancelled => H::from_u16(499).unwrap_or(H::BAD_REQUEST),
        Code::Unimplemented => H::NOT_IMPLEMENTED,
        Code::Unavailable => H::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}
