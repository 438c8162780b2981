//! Send and sync throughput of one node on the embedded default (fsync on), over gRPC on
//! loopback, against two baselines measured in the same run: a no-op RPC (`Ping`) of the same
//! binary, and the store alone (the two writes of a send, no network, no pipeline).
//!
//! `cargo bench --bench throughput` runs the full measurement (about a minute); under
//! `cargo test` it runs a short smoke pass so that it stays compiled and working.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::timeline::config::Config;
use ::timeline::proto::timeline_service_client::TimelineServiceClient;
use ::timeline::proto::*;
use ::timeline::server::Node;
use ::timeline::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
use ::timeline::store::{FanoutWrite, InboxRow, MessageRow, MessageWrite, Store};
use bytes::Bytes;
use tonic::transport::Channel;

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

struct Settings {
    duration: Duration,
    concurrency: usize,
    users: usize,
    group_size: usize,
}

struct Outcome {
    name: String,
    calls: usize,
    items: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Outcome {
    fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// Sends `authorization: Bearer <token>` with every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Client =
    TimelineServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

fn client(channel: &Channel, token: String) -> Client {
    let value = format!("Bearer {token}").parse().expect("ascii token");
    TimelineServiceClient::with_interceptor(channel.clone(), Bearer(value))
        .max_decoding_message_size(64 * 1024 * 1024)
}

/// Runs `call` from `concurrency` tasks for `duration`; `call` returns items handled.
async fn measure<F, Fut>(name: &str, settings: &Settings, call: F) -> Outcome
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + settings.duration;
    let mut tasks = Vec::new();
    for worker in 0..settings.concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut items = 0;
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                items += call(worker, i).await;
                latencies.push(t.elapsed());
                i += 1;
            }
            (latencies, items)
        }));
    }
    let mut latencies = Vec::new();
    let mut items = 0;
    for task in tasks {
        let (l, n) = task.await.expect("worker");
        latencies.extend(l);
        items += n;
    }
    Outcome {
        name: name.to_owned(),
        calls: latencies.len(),
        items,
        elapsed: started.elapsed(),
        latencies,
    }
}

async fn run(settings: Settings) -> Vec<Outcome> {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        jwt_secret: Some(SECRET.into()),
        log: "warn".into(),
        // Capacity, not quotas: a few users calling as fast as they can.
        protect: ::timeline::protect::ProtectOptions::unlimited(),
        ..Config::default()
    };
    let node = Node::build(&config).await.expect("node");
    let auth = node.auth.clone();
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = config.clone();
    let server = tokio::spawn(async move {
        node.serve(&served, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });

    // A few HTTP/2 connections shared by all workers, as a client fleet behind a proxy would.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            Channel::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let user = |u: usize| format!("user{u}");
    let clients: Arc<Vec<Client>> = Arc::new(
        (0..settings.users)
            .map(|u| {
                let token = auth
                    .mint(&user(u), "bench", Duration::from_secs(3600), now)
                    .unwrap();
                client(&channels[u % channels.len()], token)
            })
            .collect(),
    );
    // Groups of `group_size` consecutive users; user u sends to group u / group_size.
    for g in 0..settings.users / settings.group_size {
        let members = (g * settings.group_size + 1..(g + 1) * settings.group_size)
            .map(user)
            .collect();
        clients[g * settings.group_size]
            .clone()
            .create_conversation(CreateConversationRequest {
                kind: ConversationKind::Group as i32,
                conversation_id: format!("bench{g}"),
                title: String::new(),
                member_ids: members,
            })
            .await
            .expect("create group");
    }

    let mut outcomes = Vec::new();
    let c = clients.clone();
    outcomes.push(
        measure("Ping (no-op RPC baseline)", &settings, move |w, _| {
            let mut client = c[w % c.len()].clone();
            async move {
                client.ping(PingRequest {}).await.expect("ping");
                1
            }
        })
        .await,
    );
    let c = clients.clone();
    let group_size = settings.group_size;
    outcomes.push(
        measure(
            &format!("SendMessage, group of {group_size}"),
            &settings,
            move |w, i| {
                let mut client = c[w % c.len()].clone();
                let conversation_id = format!("g:bench{}", (w % c.len()) / group_size);
                async move {
                    client
                        .send_message(SendMessageRequest {
                            conversation_id,
                            client_msg_id: format!("g{w}-{i}"),
                            content_type: "text/plain".into(),
                            body: vec![b'x'; 100],
                        })
                        .await
                        .expect("send");
                    1
                }
            },
        )
        .await,
    );
    let c = clients.clone();
    let users = settings.users;
    outcomes.push(
        measure("SendMessage, direct (2 members)", &settings, move |w, i| {
            let mut client = c[w % c.len()].clone();
            let (a, b) = (w % users, (w + 1) % users);
            let conversation_id = if user(a) < user(b) {
                format!("d:{}:{}", user(a), user(b))
            } else {
                format!("d:{}:{}", user(b), user(a))
            };
            async move {
                client
                    .send_message(SendMessageRequest {
                        conversation_id,
                        client_msg_id: format!("d{w}-{i}"),
                        content_type: "text/plain".into(),
                        body: vec![b'x'; 100],
                    })
                    .await
                    .expect("send");
                1
            }
        })
        .await,
    );
    let c = clients.clone();
    outcomes.push(
        measure(
            "Sync, pages of 100 from the start",
            &settings,
            move |w, i| {
                let mut client = c[(w + i) % c.len()].clone();
                async move {
                    let page = client
                        .sync(SyncRequest {
                            cursor: String::new(),
                            limit: 100,
                        })
                        .await
                        .expect("sync")
                        .into_inner();
                    page.messages.len()
                }
            },
        )
        .await,
    );

    // The store alone: the durable write and a group fan-out write, as one send does them.
    let store_dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(
        store_dir.path(),
        EmbeddedOptions::new(Durability::Fsync, 4096),
    )
    .unwrap();
    let members: Arc<Vec<String>> = Arc::new((0..settings.group_size).map(user).collect());
    outcomes.push(
        measure(
            &format!("store only: message + fan-out of {group_size} (no RPC)"),
            &settings,
            move |w, i| {
                let store = store.clone();
                let members = members.clone();
                async move {
                    let id = ((w as u64) << 32) | i as u64;
                    let message = MessageRow {
                        conversation_id: format!("g:raw{w}"),
                        conv_seq: i as u64 + 1,
                        message_id: id,
                        sender_id: "user0".into(),
                        sender_device_id: "bench".into(),
                        client_msg_id: format!("{id}"),
                        content_type: "text/plain".into(),
                        body: Bytes::from(vec![b'x'; 100]),
                        created_at_ms: 0,
                        kind: ::timeline::store::MessageKind::User,
                        count_seq: i as u64 + 1,
                        target_message_id: 0,
                        edited_at_ms: 0,
                        recalled_at_ms: 0,
                    };
                    store
                        .write_message(&MessageWrite {
                            message: message.clone(),
                            pending: None,
                            idempotency: None,
                        })
                        .await
                        .unwrap();
                    let inbox = members
                        .iter()
                        .map(|m| InboxRow {
                            user_id: m.clone(),
                            inbox_seq: id,
                            allocated_at_ms: 0,
                            message: message.clone(),
                        })
                        .collect();
                    store
                        .write_fanout(&FanoutWrite {
                            inbox,
                            activity: Vec::new(),
                            clear_pending: None,
                        })
                        .await
                        .unwrap();
                    1
                }
            },
        )
        .await,
    );
    let _ = stop.send(());
    let _ = server.await;
    outcomes
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let settings = if full {
        Settings {
            duration: Duration::from_secs(10),
            concurrency: 32,
            users: 200,
            group_size: 5,
        }
    } else {
        Settings {
            duration: Duration::from_millis(300),
            concurrency: 4,
            users: 20,
            group_size: 5,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcomes = runtime.block_on(run(settings));
    let ping = outcomes[0].per_second();
    println!(
        "\n{:<52} {:>10} {:>12} {:>9} {:>9} {:>8}",
        "scenario", "calls/s", "items/s", "p50 ms", "p99 ms", "vs Ping"
    );
    for o in &outcomes {
        println!(
            "{:<52} {:>10.0} {:>12.0} {:>9.2} {:>9.2} {:>8.2}",
            o.name,
            o.per_second(),
            o.items as f64 / o.elapsed.as_secs_f64(),
            o.percentile(0.5).as_secs_f64() * 1000.0,
            o.percentile(0.99).as_secs_f64() * 1000.0,
            o.per_second() / ping,
        );
    }
    if !full {
        println!("(smoke pass; run `cargo bench --bench throughput` to measure)");
    }
}
