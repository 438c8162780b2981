//! `GET /v1/stream`: the push stream over WebSocket, for browsers.
//!
//! - Format: JSON text frames (canonical protobuf JSON, as the POST surface) or binary protobuf
//!   frames, chosen by the subprotocol `timeline.v1.json` / `timeline.v1.proto`, or by
//!   `?format=json|proto` (default JSON). Client frames are read by their frame type: text is
//!   JSON, binary is protobuf.
//! - Token: the `authorization` header (non-browser clients), the subprotocol
//!   `bearer.<token>` offered next to the format, or `?access_token=<token>`. It is never
//!   logged.
//! - The client's first frame is a `ClientFrame` with `subscribe`; later ones may `refresh`.
//! - A stream ends with a Close frame whose code is 4000 + the gRPC status code (4016
//!   UNAUTHENTICATED, 4003 INVALID_ARGUMENT, 4008 RESOURCE_EXHAUSTED, 4014 UNAVAILABLE: reconnect
//!   with the last cursor) and the status message as its reason.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, header};
use prost::Message as _;
use serde::Deserialize;
use tonic::Status;

use super::grpc::TimelineApi;
use super::stream;
use crate::proto;
use crate::push::Transport;

const JSON_PROTOCOL: &str = "timeline.v1.json";
const PROTO_PROTOCOL: &str = "timeline.v1.proto";
const BEARER_PROTOCOL: &str = "bearer.";
/// How long a client may take to send its opening frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Client frames are small: a cursor or a token.
const MAX_CLIENT_FRAME: usize = 64 * 1024;
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 8 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Protobuf,
}

#[derive(Deserialize)]
pub struct StreamParams {
    format: Option<String>,
    access_token: Option<String>,
}

pub async fn upgrade(
    State(api): State<TimelineApi>,
    ConnectInfo(source): ConnectInfo<std::net::SocketAddr>,
    Query(params): Query<StreamParams>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let offered: Vec<String> = ws
        .requested_protocols()
        .filter_map(|p| p.to_str().ok().map(str::to_owned))
        .collect();
    let format = if offered.iter().any(|p| p == PROTO_PROTOCOL)
        || params.format.as_deref() == Some("proto")
    {
        Format::Protobuf
    } else {
        Format::Json
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            offered
                .iter()
                .find_map(|p| p.strip_prefix(BEARER_PROTOCOL))
                .map(|t| format!("Bearer {t}"))
        })
        .or_else(|| params.access_token.map(|t| format!("Bearer {t}")));
    let authenticated = api.authenticate(
        token.as_deref(),
        Some(source.ip()),
        crate::protect::RequestClass::Read,
    );
    let bad_format = match params.format.as_deref() {
        None | Some("json" | "proto") => None,
        Some(other) => Some(Status::invalid_argument(format!(
            "format must be json or proto, not {other:?}"
        ))),
    };
    // Browsers reject an upgrade that echoes none of their subprotocols: echo the format's.
    ws.protocols([JSON_PROTOCOL, PROTO_PROTOCOL])
        .max_message_size(MAX_CLIENT_FRAME)
        // Client frames are small, and events are flushed as they go: 128 KiB buffers each
        // (the defaults) would be most of what an open stream costs.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let refused = bad_format.or_else(|| authenticated.as_ref().err().cloned());
            match (refused, authenticated) {
                (None, Ok((caller, expires_at_s))) => {
                    serve(api, socket, format, caller, expires_at_s).await;
                }
                (Some(status), _) | (None, Err(status)) => close(socket, &status).await,
            }
        })
}

async fn close(mut socket: WebSocket, status: &Status) {
    let _ = socket.send(close_frame(status)).await;
}

fn close_frame(status: &Status) -> Message {
    // A close reason holds at most 123 bytes.
    let mut reason = status.message().to_owned();
    while reason.len() > 123 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code: stream::close_code(status.code()),
        reason: Utf8Bytes::from(reason),
    }))
}

/// A client frame: JSON in text frames, protobuf in binary ones. `Ok(None)`: not a data frame.
fn decode(message: Message) -> Result<Option<proto::ClientFrame>, String> {
    match message {
        Message::Text(text) => serde_json::from_str(text.as_str())
            .map(Some)
            .map_err(|e| e.to_string()),
        Message::Binary(bytes) => proto::ClientFrame::decode(bytes)
            .map(Some)
            .map_err(|e| e.to_string()),
        _ => Ok(None),
    }
}

fn encode(event: &proto::Event, format: Format) -> Message {
    match format {
        Format::Protobuf => Message::Binary(event.encode_to_vec().into()),
        // Serializing generated protobuf types to JSON cannot fail.
        Format::Json => Message::Text(serde_json::to_string(event).unwrap_or_default().into()),
    }
}

async fn serve(
    api: TimelineApi,
    socket: WebSocket,
    format: Format,
    caller: crate::timeline::Caller,
    expires_at_s: u64,
) {
    let (mut sink, mut source) = socket.split();
    // The opening frame: skip pings, refuse anything else.
    let first = tokio::time::timeout(OPEN_TIMEOUT, async {
        while let Some(message) = source.next().await {
            match message.map_err(|e| e.to_string()).and_then(decode) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    })
    .await;
    let first = match first {
        Ok(Ok(Some(frame))) => Some(frame),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let status = Status::invalid_argument(format!("malformed client frame: {e}"));
            let _ = sink.send(close_frame(&status)).await;
            return;
        }
        Err(_) => {
            let status = Status::invalid_argument("no subscribe frame within 10 s");
            let _ = sink.send(close_frame(&status)).await;
            return;
        }
    };
    let opened = stream::open_request(caller.clone(), expires_at_s, first, Transport::WebSocket)
        .map(|open| (open, api.push.clone()));
    let (open, hub) = match opened {
        Ok(opened) => opened,
        Err(status) => {
            let _ = sink.send(close_frame(&status)).await;
            return;
        }
    };
    let (mut events, control) = match hub.open(open).await {
        Ok(opened) => opened,
        Err(e) => {
            let _ = sink.send(close_frame(&stream::limit_status(e))).await;
            return;
        }
    };
    let auth = api.auth.clone();
    // Reads client frames until the client closes; then the writer below stops too.
    let mut reader = tokio::spawn(async move {
        while let Some(message) = source.next().await {
            let next = match message {
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(message) => match decode(message) {
                    Ok(Some(frame)) => stream::control(&auth, &caller, frame),
                    Ok(None) => continue,
                    Err(e) => stream::malformed(e),
                },
            };
            if control.send(next).await.is_err() {
                return;
            }
        }
    });
    loop {
        tokio::select! {
            item = events.recv() => match item {
                Some(Ok(event)) => {
                    if sink.send(encode(&stream::event(event), format)).await.is_err() {
                        break;
                    }
                }
                Some(Err(end)) => {
                    let _ = sink.send(close_frame(&stream::end_status(end))).await;
                    break;
                }
                None => break,
            },
            _ = &mut reader => {
                // The client closed: complete the closing handshake (a browser otherwise
                // reports 1006, an abnormal closure).
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                break;
            }
        }
    }
    reader.abort();
}
