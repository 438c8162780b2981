//! Shared test support: an in-process server on an ephemeral port with a private data dir,
//! authenticated gRPC clients, and the Store conformance suite.
#![allow(dead_code)]

pub mod cache_suite;
pub mod child;
pub mod prometheus;
pub mod store_suite;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::timeline::api::Authenticator;
use ::timeline::config::{CacheKind, Config};
use ::timeline::protect::{ProtectOptions, Protection};
use ::timeline::proto::timeline_service_client::TimelineServiceClient;
use ::timeline::proto::*;
use ::timeline::server::Node;
use ::timeline::testkit::redis_server::RedisProcess;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const SECRET: &str = "test-secret-test-secret-test-secret!";

/// Sends `authorization` (when set) with every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = TimelineServiceClient<InterceptedService<Channel, Bearer>>;

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub auth: Arc<Authenticator>,
    pub protect: Arc<Protection>,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The private Redis when the Cache is Redis; dropped (killed) with the server.
    pub redis: Option<RedisProcess>,
    _dir: TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server whose configuration `adjust` may change first.
    ///
    /// The Cache is the local one, or a private Redis when `TIMELINE_TEST_CACHE=redis` (the
    /// test command runs the API suites both ways).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let redis = std::env::var("TIMELINE_TEST_CACHE").is_ok_and(|c| c == "redis");
        Self::start_on(redis, adjust).await
    }

    /// Starts a server on a private `redis-server`, reachable as `self.redis`.
    pub async fn start_with_redis(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(true, adjust).await
    }

    /// Starts a node over `store` (shared with other nodes of the test) and the Redis at
    /// `redis_url`, with its own Cache connection and push hub.
    pub async fn start_on_store(
        store: Arc<dyn ::timeline::store::Store>,
        redis_url: &str,
        node_id: u16,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            jwt_secret: Some(SECRET.into()),
            node_id,
            cache: CacheKind::Redis,
            ..Config::default()
        };
        config.redis.url = redis_url.to_owned();
        config.limits.recovery_interval = Duration::from_millis(200);
        config.protect = ProtectOptions::unlimited();
        config.limits.hot_conversation_sends_per_sec = 0;
        adjust(&mut config);
        let node = Node::build_on_store(&config, store).await.expect("node");
        Self::serve(node, config, None, dir).await
    }

    async fn start_on(redis: bool, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            jwt_secret: Some(SECRET.into()),
            ..Config::default()
        };
        config.limits.recovery_interval = Duration::from_millis(200);
        // The suites send and read as fast as they can as a few users: a script, which the
        // default rate limits would throttle. The protections' own tests set them.
        config.protect = ProtectOptions::unlimited();
        config.limits.hot_conversation_sends_per_sec = 0;
        let redis = redis.then(|| RedisProcess::start().unwrap_or_else(|e| panic!("{e}")));
        if let Some(r) = &redis {
            config.cache = CacheKind::Redis;
            config.redis.url = r.url();
        }
        adjust(&mut config);
        let node = Node::build(&config).await.expect("node");
        Self::serve(node, config, redis, dir).await
    }

    async fn serve(node: Node, config: Config, redis: Option<RedisProcess>, dir: TempDir) -> Self {
        let auth = node.auth.clone();
        let protect = node.protect.clone();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let served_config = config.clone();
        let task = tokio::spawn(async move {
            node.serve(&served_config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        Self {
            addr,
            auth,
            protect,
            config,
            shutdown: Some(tx),
            task: Some(task),
            redis,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token(&self, user: &str, device: &str) -> String {
        self.auth
            .mint(user, device, Duration::from_secs(3600), now_s())
            .expect("token")
    }

    /// A gRPC client that sends `authorization` with a token for `user` on `device`.
    pub async fn client(&self, user: &str, device: &str) -> Client {
        let header = format!("Bearer {}", self.token(user, device));
        client_with_header(&self.url(), Some(header)).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client sending `header` as `authorization` (or nothing).
pub async fn client_with_header(url: &str, header: Option<String>) -> Client {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let value = header.map(|h| h.parse().expect("ascii header"));
    TimelineServiceClient::with_interceptor(channel, Bearer(value))
}

/// Sends a text message whose body is its client_msg_id.
/// A group `id` created by `client`'s user with `members`.
pub async fn create_group(client: &mut Client, id: &str, members: &[&str]) -> Conversation {
    client
        .create_conversation(CreateConversationRequest {
            kind: ConversationKind::Group as i32,
            conversation_id: id.into(),
            title: id.into(),
            member_ids: members.iter().map(|m| m.to_string()).collect(),
        })
        .await
        .expect("create group")
        .into_inner()
        .conversation
        .expect("conversation")
}

pub async fn send(client: &mut Client, conversation_id: &str, client_msg_id: &str) -> Message {
    send_text(client, conversation_id, client_msg_id, client_msg_id).await
}

pub async fn send_text(
    client: &mut Client,
    conversation_id: &str,
    client_msg_id: &str,
    body: &str,
) -> Message {
    client
        .send_message(SendMessageRequest {
            conversation_id: conversation_id.into(),
            client_msg_id: client_msg_id.into(),
            content_type: "text/plain".into(),
            body: body.as_bytes().to_vec(),
        })
        .await
        .unwrap_or_else(|s| panic!("send {client_msg_id} to {conversation_id}: {s:?}"))
        .into_inner()
        .message
        .expect("message")
}

pub async fn operator(server: &TestServer) -> Client {
    let token = server
        .auth
        .mint_with("ops", "cli", Duration::from_secs(600), now_s(), true)
        .unwrap();
    client_with_header(&server.url(), Some(format!("Bearer {token}"))).await
}

pub async fn set_mode(ops: &mut Client, conversation_id: &str, mode: DeliveryMode) -> Conversation {
    ops.set_conversation_mode(SetConversationModeRequest {
        conversation_id: conversation_id.into(),
        mode: mode as i32,
    })
    .await
    .expect("set mode")
    .into_inner()
    .conversation
    .unwrap()
}

/// How long `sync_all` waits for a cursor to catch up.
pub const CATCH_UP: Duration = Duration::from_secs(120);

/// Follows the cursor until caught up, using the page sizes in turn, waiting out `pending`
/// pages; returns everything delivered. Every page is checked: never expired, at most `limit`
/// messages, exactly `limit` while more exist.
pub async fn sync_all(client: &mut Client, cursor: &mut String, sizes: &[u32]) -> Vec<Message> {
    sync_all_within(client, cursor, sizes, CATCH_UP).await
}

/// [`sync_all`], failing when the cursor has not caught up within `deadline`.
pub async fn sync_all_within(
    client: &mut Client,
    cursor: &mut String,
    sizes: &[u32],
    deadline: Duration,
) -> Vec<Message> {
    let give_up = std::time::Instant::now() + deadline;
    let mut out = Vec::new();
    for round in 0.. {
        assert!(round < 10_000, "sync did not converge");
        let limit = sizes[round % sizes.len()];
        let page = client
            .sync(SyncRequest {
                cursor: cursor.clone(),
                limit,
            })
            .await
            .expect("sync")
            .into_inner();
        assert!(
            !page.cursor_expired,
            "expired at round {round} from cursor {cursor:?}"
        );
        assert!(page.messages.len() <= limit as usize);
        if page.has_more {
            assert_eq!(
                page.messages.len(),
                limit as usize,
                "exact-count pages while more exist"
            );
        }
        out.extend(page.messages);
        *cursor = page.next_cursor;
        if !page.has_more && !page.pending {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "sync stayed pending past {deadline:?}"
        );
        if page.pending {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    out
}

/// The whole history of a conversation, newest first, in pages of `page`.
pub async fn history_all(client: &mut Client, conversation_id: &str, page: u32) -> Vec<Message> {
    let mut out = Vec::new();
    let mut before = 0;
    loop {
        let reply = client
            .get_history(GetHistoryRequest {
                conversation_id: conversation_id.into(),
                before_seq: before,
                limit: page,
            })
            .await
            .expect("history")
            .into_inner();
        out.extend(reply.messages);
        if !reply.has_more {
            return out;
        }
        before = reply.next_before_seq;
    }
}

pub type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// An HTTP/1.1 client for the plain-HTTP surface.
pub fn http_client() -> Http {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One request; the status, the content type and the body.
pub async fn http_call(
    http: &Http,
    method: &str,
    url: String,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    try_http_call(http, method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`http_call`], with a failure to connect or to read as an error.
pub async fn try_http_call(
    http: &Http,
    method: &str,
    url: String,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, String, Vec<u8>), String> {
    use http_body_util::BodyExt;
    let mut req = ::http::Request::builder().method(method).uri(&url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let response = http
        .request(req)
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{method} {url}: reading the body: {e}"))?
        .to_bytes()
        .to_vec();
    Ok((status, content_type, body))
}

/// A GET of `path`: the status and the body as text, or why there was no answer.
pub async fn try_http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    let url = format!("http://{addr}{path}");
    let (status, _, body) = try_http_call(&http_client(), "GET", url, &[], Vec::new()).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A GET of `path`: the status and the body as text.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
