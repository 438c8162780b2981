//! What both stream transports (gRPC `Subscribe`, WebSocket `/v1/stream`) share: the opening
//! frame, token refreshes, events to protobuf, and how a stream's end is told to the client.

use tonic::{Code, Status};

use super::auth::Authenticator;
use super::convert;
use crate::proto::{self, client_frame::Frame, event::Event as Kind};
use crate::push::{Control, OpenStream, PushEvent, StreamEnd, StreamLimitError, Transport};
use crate::timeline::Caller;

/// The stream a client's first frame opens: it must be `subscribe`.
pub fn open_request(
    caller: Caller,
    expires_at_s: u64,
    first: Option<proto::ClientFrame>,
    transport: Transport,
) -> Result<OpenStream, Status> {
    match first.and_then(|f| f.frame) {
        Some(Frame::Subscribe(subscribe)) => Ok(OpenStream {
            caller,
            expires_at_ms: ms(expires_at_s),
            cursor: subscribe.cursor,
            limit: subscribe.limit,
            transport,
        }),
        Some(Frame::Refresh(_)) => Err(Status::invalid_argument(
            "the first frame of a stream must be subscribe, not refresh",
        )),
        None => Err(Status::invalid_argument(
            "the first frame of a stream must be subscribe (with the sync cursor)",
        )),
    }
}

fn ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// What a later client frame asks of the session.
pub fn control(auth: &Authenticator, caller: &Caller, frame: proto::ClientFrame) -> Control {
    match frame.frame {
        Some(Frame::Refresh(refresh)) => match auth.verify_token(&refresh.token) {
            Ok((fresh, exp))
                if fresh.user_id == caller.user_id && fresh.device_id == caller.device_id =>
            {
                Control::Refresh {
                    expires_at_ms: ms(exp),
                }
            }
            Ok(_) => Control::Reject(StreamEnd::Unauthenticated(
                "a refreshed token must name the stream's user and device".into(),
            )),
            Err(status) => Control::Reject(StreamEnd::Unauthenticated(format!(
                "refresh: {}",
                status.message()
            ))),
        },
        Some(Frame::Subscribe(_)) => Control::Reject(StreamEnd::InvalidFrame(
            "subscribe may only be the first frame".into(),
        )),
        None => Control::Reject(StreamEnd::InvalidFrame("an empty client frame".into())),
    }
}

/// A malformed client frame ends the stream.
pub fn malformed(detail: impl std::fmt::Display) -> Control {
    Control::Reject(StreamEnd::InvalidFrame(format!(
        "malformed client frame: {detail}"
    )))
}

pub fn event(event: PushEvent) -> proto::Event {
    let kind = match event {
        PushEvent::Batch { page, live } => Kind::Batch(proto::SyncBatch {
            messages: page.messages.into_iter().map(convert::message).collect(),
            next_cursor: page.next_cursor,
            has_more: page.has_more,
            pending: page.pending,
            cursor_expired: page.cursor_expired,
            live,
        }),
        PushEvent::Heartbeat { server_time_ms } => {
            Kind::Heartbeat(proto::Heartbeat { server_time_ms })
        }
        PushEvent::Typing {
            conversation_id,
            user_id,
            device_id,
        } => Kind::Typing(proto::Typing {
            conversation_id,
            user_id,
            device_id,
        }),
    };
    proto::Event { event: Some(kind) }
}

/// The status a stream ends with. `UNAVAILABLE` (shutdown, a slow client, a failing backend)
/// means: reconnect, elsewhere if need be, with the last cursor received.
pub fn end_status(end: StreamEnd) -> Status {
    match end {
        StreamEnd::Client => Status::cancelled("the client went away"),
        StreamEnd::Expired => Status::unauthenticated("token has expired"),
        StreamEnd::Unauthenticated(m) => Status::unauthenticated(m),
        StreamEnd::InvalidFrame(m) => Status::invalid_argument(m),
        e @ (StreamEnd::Slow | StreamEnd::Shutdown) => Status::unavailable(e.to_string()),
        StreamEnd::Failed(e) => match std::sync::Arc::try_unwrap(e) {
            Ok(e) => Status::from(e),
            Err(shared) => Status::internal(shared.to_string()),
        },
    }
}

pub fn limit_status(e: StreamLimitError) -> Status {
    match e {
        StreamLimitError::ShuttingDown => Status::unavailable(e.to_string()),
        _ => Status::resource_exhausted(e.to_string()),
    }
}

/// A WebSocket close code for a status: 4000 + the gRPC code (4016 UNAUTHENTICATED, 4003
/// INVALID_ARGUMENT, 4008 RESOURCE_EXHAUSTED, 4014 UNAVAILABLE: reconnect).
pub fn close_code(code: Code) -> u16 {
    4000 + code as u16
}
