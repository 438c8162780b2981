//! The plain-HTTP surface: each unary RPC as `POST /v1/<Method>` with an
//! `application/x-protobuf` or `application/json` body (canonical protobuf JSON), answered in
//! the request's format; plus `/healthz`, `/readyz` and `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;

use super::grpc::{Authenticated, TimelineApi};
use super::status::{RETRY_AFTER, code_name, http_status};
use crate::metrics::record_request;
use crate::protect::RequestClass;
use crate::proto::timeline_service_server::TimelineService;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

fn request_format(headers: &HeaderMap) -> Result<Format, Box<Response>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(JSON);
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        PROTOBUF | "application/protobuf" | "application/vnd.google.protobuf" => {
            Ok(Format::Protobuf)
        }
        JSON | "" => Ok(Format::Json),
        other => Err(Box::new(
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-type {other:?} is not supported: use {JSON} or {PROTOBUF}\n"),
            )
                .into_response(),
        )),
    }
}

#[derive(Serialize)]
struct ErrorBody {
    code: &'static str,
    message: String,
}

fn error_response(status: &Status) -> Response {
    let body = ErrorBody {
        code: code_name(status.code()),
        message: status.message().to_owned(),
    };
    let mut response = (
        http_status(status.code()),
        [(header::CONTENT_TYPE, JSON)],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response();
    response
        .headers_mut()
        .insert("grpc-status", HeaderValue::from(status.code() as i32));
    if let Some(retry_after) = status.metadata().get(RETRY_AFTER)
        && let Ok(value) = HeaderValue::from_bytes(retry_after.as_bytes())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Authenticates (before anything is decoded), decodes the body, runs the RPC through the
/// gRPC implementation, encodes the answer.
async fn unary<Req, Resp, F, Fut>(
    api: TimelineApi,
    rpc: &'static str,
    source: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
    call: F,
) -> Response
where
    Req: prost::Message + Default + DeserializeOwned,
    Resp: prost::Message + Serialize,
    F: FnOnce(TimelineApi, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let started = Instant::now();
    let header = match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
        Some(Ok(value)) => Some(value),
        // Not ASCII: no token at all, as far as authentication goes.
        Some(Err(_)) | None => None,
    };
    let authenticated = match api.authenticate(header, Some(source.ip()), RequestClass::of_rpc(rpc))
    {
        Ok((caller, expires_at_s)) => Authenticated {
            caller,
            expires_at_s,
        },
        Err(status) => {
            record_request(rpc, code_name(status.code()), started.elapsed());
            return error_response(&status);
        }
    };
    let format = match request_format(&headers) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let decoded = match format {
        Format::Protobuf => Req::decode(body).map_err(|e| e.to_string()),
        Format::Json if body.is_empty() => Ok(Req::default()),
        Format::Json => serde_json::from_slice(&body).map_err(|e| e.to_string()),
    };
    let message = match decoded {
        Ok(m) => m,
        Err(e) => return error_response(&Status::invalid_argument(format!("request body: {e}"))),
    };
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(authenticated);
    match call(api, request).await {
        Ok(response) => {
            let response = response.into_inner();
            match format {
                Format::Protobuf => {
                    ([(header::CONTENT_TYPE, PROTOBUF)], response.encode_to_vec()).into_response()
                }
                Format::Json => match serde_json::to_vec(&response) {
                    Ok(json) => ([(header::CONTENT_TYPE, JSON)], json).into_response(),
                    Err(e) => error_response(&Status::internal(format!("encoding response: {e}"))),
                },
            }
        }
        Err(status) => error_response(&status),
    }
}

/// Routes `POST /v1/<Method>` to `TimelineService::<method>`.
macro_rules! rpc_routes {
    ($router:expr, $( $path:literal => $method:ident ),* $(,)?) => {
        $router
        $(
            .route($path, post(|State(api): State<TimelineApi>, ConnectInfo(source): ConnectInfo<SocketAddr>, headers: HeaderMap, body: Bytes| async move {
                let rpc = $path.strip_prefix("/v1/").unwrap_or($path);
                unary(api, rpc, source, headers, body, |api, request| async move {
                    TimelineService::$method(&api, request).await
                })
                .await
            }))
        )*
    };
}

pub fn router(api: TimelineApi, metrics: PrometheusHandle, max_body_bytes: usize) -> Router {
    let routes = rpc_routes!(Router::new(),
        "/v1/CreateConversation" => create_conversation,
        "/v1/GetConversation" => get_conversation,
        "/v1/AddMembers" => add_members,
        "/v1/RemoveMembers" => remove_members,
        "/v1/SendMessage" => send_message,
        "/v1/Sync" => sync,
        "/v1/GetHistory" => get_history,
        "/v1/ListConversations" => list_conversations,
        "/v1/MarkRead" => mark_read,
        "/v1/SetConversationMode" => set_conversation_mode,
        "/v1/Ping" => ping,
        "/v1/SendTyping" => send_typing,
        "/v1/GetPresence" => get_presence,
        "/v1/RegisterPushTarget" => register_push_target,
        "/v1/UnregisterPushTarget" => unregister_push_target,
        "/v1/SetSlowmode" => set_slowmode,
        "/v1/RecallMessage" => recall_message,
        "/v1/EditMessage" => edit_message,
        "/v1/DeleteMessagesForMe" => delete_messages_for_me,
    );
    routes
        .route("/v1/stream", get(super::websocket::upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        // JSON carries the body base64-encoded: a third more, plus the envelope.
        .layer(DefaultBodyLimit::max(max_body_bytes * 2 + 64 * 1024))
        .with_state(api)
}

/// Ready when the store answers a read. The Cache's state is reported, not required: without
/// it reads are still served, and all nodes share it, so failing every node would only take
/// the reads down too.
async fn readyz(State(api): State<TimelineApi>) -> Response {
    let cache = match api.timeline.cache_ready().await {
        Ok(()) => "cache: ok".to_owned(),
        Err(e) => format!("cache: degraded, sends fail until it returns ({e})"),
    };
    match api.timeline.store_ready().await {
        Ok(()) => (StatusCode::OK, format!("ready\n{cache}\n")).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {e}\n{cache}\n"),
        )
            .into_response(),
    }
}
