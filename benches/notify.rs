//! Offline notifications: one node on the embedded default (fsync on), in-process, notifying a
//! receiver in this process over loopback.
//!
//! 1. Throughput: `groups` groups of the same `members` users, every member offline with a
//!    push target; one send per group opens a window for each member: notifications per
//!    second from the first send until the receiver has them all.
//! 2. Send latency, sequential sends into direct chats whose other user is offline with a
//!    target, on three nodes one after another: the webhook off, on (the receiver answers at
//!    once), and on with a slow receiver (each request held 200 ms): medians, and each as a
//!    ratio to "off" from the same run.
//!
//! `cargo bench --bench notify`; under `cargo test` a short smoke pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ::timeline::api::Authenticator;
use ::timeline::config::Config;
use ::timeline::notify::Batch;
use ::timeline::proto::timeline_service_client::TimelineServiceClient;
use ::timeline::proto::*;
use ::timeline::server::Node;
use axum::extract::State;
use bytes::Bytes;
use tonic::transport::Channel;

const SECRET: &str = "bench-secret-bench-secret-bench-secret";
const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// Requests carry their own token (one connection, many users).
type Client = TimelineServiceClient<Channel>;

fn as_user<T>(auth: &Authenticator, user: &str, message: T) -> tonic::Request<T> {
    let token = auth
        .mint(user, "phone", Duration::from_secs(3600), now_s())
        .unwrap();
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

struct Sizes {
    groups: usize,
    members: usize,
    latency_sends: usize,
    slow: Duration,
}

struct Running {
    url: String,
    auth: Arc<Authenticator>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn client(&self) -> Client {
        let channel = Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        TimelineServiceClient::new(channel)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn start_node(webhook: Option<&str>) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        jwt_secret: Some(SECRET.into()),
        log: "warn".into(),
        protect: ::timeline::protect::ProtectOptions::unlimited(),
        ..Config::default()
    };
    if let Some(url) = webhook {
        config.notify.webhook_url = Some(url.to_owned());
        config.notify.webhook_secret = Some(WEBHOOK_SECRET.into());
        config.notify.preview_chars = 40;
        config.notify.queue = 100_000;
    }
    let node = Node::build(&config).await.expect("node");
    let auth = node.auth.clone();
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        node.serve(&config, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    Running {
        url,
        auth,
        stop,
        task,
        _dir: dir,
    }
}

struct Receiver {
    notifications: AtomicUsize,
    delay: Duration,
}

async fn receive(State(r): State<Arc<Receiver>>, body: Bytes) -> &'static str {
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    let batch: Batch = serde_json::from_slice(&body).expect("a batch");
    r.notifications
        .fetch_add(batch.notifications.len(), Ordering::SeqCst);
    "{}"
}

async fn start_receiver(delay: Duration) -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver {
        notifications: AtomicUsize::new(0),
        delay,
    });
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, url)
}

async fn register(node: &Running, users: &[String]) {
    let mut tasks = Vec::new();
    for chunk in users.chunks(users.len().div_ceil(16).max(1)) {
        let mut client = node.client().await;
        let auth = node.auth.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for user in chunk {
                let target = RegisterPushTargetRequest {
                    device_id: String::new(),
                    platform: PushPlatform::Fcm as i32,
                    token: format!("fcm-{user}"),
                    app_id: "bench".into(),
                    locale: String::new(),
                };
                client
                    .register_push_target(as_user(&auth, &user, target))
                    .await
                    .expect("register");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn text(conversation_id: String, id: String) -> SendMessageRequest {
    SendMessageRequest {
        conversation_id,
        client_msg_id: id,
        content_type: "text/plain".into(),
        body: b"a short text message for the preview".to_vec(),
    }
}

/// Notifications per second for `groups` sends that each notify `members` users.
async fn throughput(sizes: &Sizes) -> (usize, Duration) {
    let (receiver, url) = start_receiver(Duration::ZERO).await;
    let node = start_node(Some(&url)).await;
    let members: Vec<String> = (0..sizes.members).map(|u| format!("member{u}")).collect();
    register(&node, &members).await;
    let mut owner = node.client().await;
    for g in 0..sizes.groups {
        let create = CreateConversationRequest {
            kind: ConversationKind::Group as i32,
            conversation_id: format!("g:n{g}"),
            title: String::new(),
            member_ids: members.clone(),
        };
        owner
            .create_conversation(as_user(&node.auth, "owner", create))
            .await
            .expect("create");
    }
    let want = sizes.groups * sizes.members;
    let started = Instant::now();
    for g in 0..sizes.groups {
        owner
            .send_message(as_user(
                &node.auth,
                "owner",
                text(format!("g:n{g}"), format!("t{g}")),
            ))
            .await
            .expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while receiver.notifications.load(Ordering::SeqCst) < want {
        assert!(
            Instant::now() < deadline,
            "notifications did not all arrive"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    node.stop().await;
    (want, elapsed)
}

/// Median send latency into direct chats whose other user is offline with a target.
async fn send_latency(webhook: Option<Duration>, sends: usize) -> Duration {
    let receiver = match webhook {
        Some(delay) => Some(start_receiver(delay).await),
        None => None,
    };
    let node = start_node(receiver.as_ref().map(|(_, url)| url.as_str())).await;
    let peers: Vec<String> = (0..sends).map(|u| format!("peer{u}")).collect();
    register(&node, &peers).await;
    let mut sender = node.client().await;
    // Warm up: the first direct chat, connections, pools.
    for i in 0..10 {
        sender
            .send_message(as_user(
                &node.auth,
                "sender",
                text("d:peer0:sender".into(), format!("warm{i}")),
            ))
            .await
            .expect("send");
    }
    let mut latencies = Vec::with_capacity(sends);
    for (i, peer) in peers.iter().enumerate() {
        let conversation = if peer.as_str() < "sender" {
            format!("d:{peer}:sender")
        } else {
            format!("d:sender:{peer}")
        };
        let request = as_user(&node.auth, "sender", text(conversation, format!("s{i}")));
        let started = Instant::now();
        sender.send_message(request).await.expect("send");
        latencies.push(started.elapsed());
    }
    node.stop().await;
    latencies.sort();
    latencies[latencies.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            groups: 40,
            members: 250,
            latency_sends: 400,
            slow: Duration::from_millis(200),
        }
    } else {
        Sizes {
            groups: 2,
            members: 10,
            latency_sends: 10,
            slow: Duration::from_millis(50),
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (n, elapsed) = throughput(&sizes).await;
        println!(
            "\nnotifications: {n} in {:.2} s = {:.0}/s ({} sends to groups of {} offline members)",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            sizes.groups,
            sizes.members
        );
        let off = send_latency(None, sizes.latency_sends).await;
        let on = send_latency(Some(Duration::ZERO), sizes.latency_sends).await;
        let slow = send_latency(Some(sizes.slow), sizes.latency_sends).await;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "send p50 ({} sequential sends each): webhook off {:.2} ms, on {:.2} ms ({:.2}x), on with a receiver taking {} ms {:.2} ms ({:.2}x)",
            sizes.latency_sends,
            ms(off),
            ms(on),
            ms(on) / ms(off),
            sizes.slow.as_millis(),
            ms(slow),
            ms(slow) / ms(off),
        );
    });
    if !full {
        println!("(smoke pass; run `cargo bench --bench notify` to measure)");
    }
}
