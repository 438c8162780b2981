//! Push streams against the real binary: the release `timeline` (spawned with a private data
//! dir, on a private `redis-server`), driven over gRPC on loopback from this process, one HTTP/2
//! connection per stream as devices have.
//!
//! 1. Density: N idle streams — the server's RSS per open stream, and its CPU while idle over
//!    one heartbeat interval (25 s; each heartbeat refreshes presence and re-syncs).
//! 2. Fan-out: a hot group of N members, all online on the node: from each send's ack until
//!    every stream has the message (p50/p99/max over all deliveries), the server's CPU per
//!    delivery, and the Cache calls per hot send by operation (counted by the node, less the
//!    idle rate measured just before).
//! 3. Small chats: 1,000 users online, direct messages at 1,000/s: from issuing the send to the
//!    recipient's stream receiving it (p50/p99/max).
//!
//! `scripts/bench-push.sh` (raises `ulimit -n`, then `cargo bench --bench push`); under
//! `cargo test` it runs a short smoke pass (200 streams).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ::timeline::api::Authenticator;
use ::timeline::proto::event::Event as Kind;
use ::timeline::proto::timeline_service_client::TimelineServiceClient;
use ::timeline::proto::*;
use ::timeline::testkit::redis_server::RedisProcess;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

const SECRET: &str = "bench-secret-bench-secret-bench-secret!";
const FAN: &str = "g:fan";

struct Sizes {
    streams: usize,
    settle: Duration,
    idle: Duration,
    fan_sends: usize,
    chat_users: usize,
    chat_rate: u64,
    chat_for: Duration,
}

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(dir: &std::path::Path, redis_url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_timeline"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .current_dir(dir)
            .env("TIMELINE_JWT_SECRET", SECRET)
            .env("TIMELINE_CACHE", "redis")
            .env("TIMELINE_REDIS_URL", redis_url)
            .env("TIMELINE_PUSH_MAX_STREAMS", "200000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn timeline");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("address line");
        let addr = line
            .trim()
            .strip_prefix("timeline listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, addr }
    }

    fn proc(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default()
    }

    /// Resident set size, bytes.
    fn rss(&self) -> u64 {
        self.proc("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// User + system CPU time so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = self.proc("stat");
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime: fields 14 and 15 of stat, 12th and 13th after the name.
        field(11) + field(12)
    }

    /// The node's Cache calls so far by operation (what reached Redis: the shared reads of
    /// push streams sit in front of the counting layer).
    async fn cache_calls(&self) -> HashMap<String, f64> {
        let mut tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .expect("metrics");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut body = String::new();
        tcp.read_to_string(&mut body).await.expect("metrics body");
        let mut calls = HashMap::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("timeline_cache_operation_duration_seconds_count{")
            else {
                continue;
            };
            let operation = rest
                .split("operation=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            *calls.entry(operation.to_owned()).or_default() += value.unwrap_or(0.0);
        }
        calls
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bearer(user: &str, admin: bool) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = Authenticator::new(SECRET)
        .mint_with(user, "bench", Duration::from_secs(3600), now, admin)
        .expect("token");
    format!("Bearer {token}").parse().expect("header value")
}

fn request<T>(message: T, user: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(user, user == "operator"));
    request
}

async fn connect(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

fn user(i: usize) -> String {
    format!("u{i}")
}

/// One message received by stream `stream`: (stream, client_msg_id, when).
type Arrival = (usize, String, Instant);

/// Opens stream `index` of `user(index)` on `channel`; its messages go to `arrivals`.
async fn open_stream(
    channel: Channel,
    index: usize,
    caught_up: Arc<AtomicUsize>,
    arrivals: mpsc::UnboundedSender<Arrival>,
) {
    let mut client = TimelineServiceClient::new(channel);
    let frame = ClientFrame {
        frame: Some(client_frame::Frame::Subscribe(SubscribeRequest {
            cursor: String::new(),
            limit: 0,
        })),
    };
    // A half-closed request stream: the server keeps the stream open.
    let opened = client
        .subscribe(request(futures::stream::iter([frame]), &user(index)))
        .await
        .expect("subscribe");
    let mut events = opened.into_inner();
    tokio::spawn(async move {
        let _client = client;
        let mut first = true;
        while let Ok(Some(event)) = events.message().await {
            if let Some(Kind::Batch(batch)) = event.event {
                let now = Instant::now();
                for m in batch.messages {
                    let _ = arrivals.send((index, m.client_msg_id, now));
                }
                if first && !batch.has_more {
                    first = false;
                    caught_up.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
}

fn quantiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples
            .get(i)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    (at(0.5), at(0.99), at(1.0))
}

async fn send(client: &mut TimelineServiceClient<Channel>, sender: &str, to: &str, id: &str) {
    client
        .send_message(request(
            SendMessageRequest {
                conversation_id: to.into(),
                client_msg_id: id.into(),
                content_type: "text/plain".into(),
                body: vec![b'x'; 100],
            },
            sender,
        ))
        .await
        .expect("send");
}

async fn run(sizes: Sizes) {
    let redis = RedisProcess::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &redis.url());
    let addr = server.addr.clone();
    let mut client = TimelineServiceClient::new(connect(&addr).await);
    let n = sizes.streams;

    // The hot group of every streaming user, forced hot, before anyone listens.
    let members: Vec<String> = (1..n).map(user).collect();
    let mut chunks = members.chunks(999);
    client
        .create_conversation(request(
            CreateConversationRequest {
                kind: ConversationKind::Group as i32,
                conversation_id: FAN.into(),
                title: "fan-out".into(),
                member_ids: chunks.next().unwrap_or_default().to_vec(),
            },
            &user(0),
        ))
        .await
        .expect("create");
    for chunk in chunks {
        client
            .add_members(request(
                AddMembersRequest {
                    conversation_id: FAN.into(),
                    user_ids: chunk.to_vec(),
                },
                &user(0),
            ))
            .await
            .expect("add members");
    }
    client
        .set_conversation_mode(request(
            SetConversationModeRequest {
                conversation_id: FAN.into(),
                mode: DeliveryMode::Hot as i32,
            },
            "operator",
        ))
        .await
        .expect("force hot");

    // 1. Density.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss();
    let caught_up = Arc::new(AtomicUsize::new(0));
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
    let opening = Instant::now();
    // One connection per stream, as devices have; `PUSH_BENCH_STREAMS_PER_CONNECTION` shares
    // connections instead (what a stream costs without its connection).
    let per_connection: usize = std::env::var("PUSH_BENCH_STREAMS_PER_CONNECTION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let channels: Vec<Channel> = futures::stream::iter(0..n.div_ceil(per_connection))
        .map(|_| connect(&addr))
        .buffered(64)
        .collect()
        .await;
    futures::stream::iter(0..n)
        .map(|i| {
            let channel = channels[i / per_connection].clone();
            open_stream(channel, i, caught_up.clone(), arrivals_tx.clone())
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    while caught_up.load(Ordering::Relaxed) < n {
        assert!(
            opening.elapsed() < Duration::from_secs(300),
            "streams did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened_in = opening.elapsed();
    // Past every stream's first heartbeat (at a random point of its first interval): the idle
    // window below sees the steady heartbeat rate.
    tokio::time::sleep(sizes.settle).await;
    let rss_after = server.rss();
    let ticks = clock_ticks();
    let (cpu_before, calls_before, idle_started) = (
        server.cpu_ticks(),
        server.cache_calls().await,
        Instant::now(),
    );
    tokio::time::sleep(sizes.idle).await;
    let idle_for = idle_started.elapsed();
    let (cpu_after, calls_idle) = (server.cpu_ticks(), server.cache_calls().await);
    let idle_cpu = (cpu_after - cpu_before) as f64 / ticks / idle_for.as_secs_f64() * 100.0;
    println!(
        "\nDensity: {n} idle gRPC streams, {per_connection} per connection (opened and caught up in {:.1} s)",
        opened_in.as_secs_f64()
    );
    println!(
        "  server RSS before       {:>10.1} MiB",
        rss_before as f64 / 1048576.0
    );
    println!(
        "  server RSS with streams {:>10.1} MiB",
        rss_after as f64 / 1048576.0
    );
    println!(
        "  RSS per open stream     {:>10.1} KiB",
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64 / 1024.0
    );
    println!(
        "  server CPU while idle   {:>10.2} % of one core (over {:.0} s, heartbeat 25 s)",
        idle_cpu,
        idle_for.as_secs_f64()
    );

    // 2. Fan-out to every stream.
    while arrivals.try_recv().is_ok() {}
    let mut delays = Vec::with_capacity(n * sizes.fan_sends);
    let mut missing = 0usize;
    let (fan_started, fan_cpu_before) = (Instant::now(), server.cpu_ticks());
    for k in 0..sizes.fan_sends {
        // Past the hot interval (1 s): each send wakes every stream at once.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let id = format!("fan-{k}");
        send(&mut client, &user(0), FAN, &id).await;
        let acked = Instant::now();
        let mut got = vec![false; n];
        let mut count = 0;
        let deadline = acked + Duration::from_secs(10);
        while count < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, arrivals.recv()).await {
                Ok(Some((stream, msg, at))) if msg == id && !got[stream] => {
                    got[stream] = true;
                    count += 1;
                    delays.push(at.saturating_duration_since(acked));
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        missing += n - count;
    }
    let fan_for = fan_started.elapsed();
    let fan_cpu = (server.cpu_ticks() - fan_cpu_before) as f64 / ticks
        - (cpu_after - cpu_before) as f64 / ticks / idle_for.as_secs_f64() * fan_for.as_secs_f64();
    let calls_fan = server.cache_calls().await;
    let (p50, p99, max) = quantiles(&mut delays);
    println!(
        "\nFan-out: hot group of {n}, every member online on one node, {} sends 1.1 s apart",
        sizes.fan_sends
    );
    println!(
        "  ack -> every stream has it: p50 {p50:.1} ms  p99 {p99:.1} ms  max {max:.1} ms  ({} deliveries, {missing} missing)",
        delays.len()
    );
    println!(
        "  server CPU per delivery (less the idle rate): {:.1} µs",
        fan_cpu.max(0.0) * 1e6 / delays.len().max(1) as f64
    );
    println!("  Cache calls (Redis round trips) per hot send, less the idle rate:");
    let idle_secs = idle_for.as_secs_f64();
    let mut operations: Vec<_> = calls_fan.keys().cloned().collect();
    operations.sort();
    for operation in operations {
        let during = calls_fan[&operation] - calls_idle.get(&operation).copied().unwrap_or(0.0);
        let idle = calls_idle.get(&operation).copied().unwrap_or(0.0)
            - calls_before.get(&operation).copied().unwrap_or(0.0);
        let per_send =
            (during - idle / idle_secs * fan_for.as_secs_f64()).max(0.0) / sizes.fan_sends as f64;
        if per_send >= 0.05 {
            println!("    {operation:<22} {per_send:>8.2}");
        }
    }

    // 3. Small chats: pairs of online users in direct chats.
    let users = sizes.chat_users.min(n) / 2 * 2;
    let pool: Vec<TimelineServiceClient<Channel>> = {
        let mut pool = Vec::new();
        for _ in 0..32 {
            pool.push(TimelineServiceClient::new(connect(&addr).await));
        }
        pool
    };
    let pair = |i: usize| {
        let (a, b) = (user(i), user(i ^ 1));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        format!("d:{lo}:{hi}")
    };
    // Warm-up: each chat exists before the measured sends.
    for i in (0..users).step_by(2) {
        send(
            &mut pool[i % 32].clone(),
            &user(i),
            &pair(i),
            &format!("warm-{i}"),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while arrivals.try_recv().is_ok() {}
    let total = (sizes.chat_rate as f64 * sizes.chat_for.as_secs_f64()) as usize;
    let issued: Arc<std::sync::Mutex<HashMap<String, (Instant, usize)>>> = Arc::default();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / sizes.chat_rate));
    let mut sends = Vec::with_capacity(total);
    for k in 0..total {
        tick.tick().await;
        let sender = (k * 7) % users;
        let recipient = sender ^ 1;
        let id = format!("dm-{k}");
        issued
            .lock()
            .unwrap()
            .insert(id.clone(), (Instant::now(), recipient));
        let mut c = pool[k % 32].clone();
        let to = pair(sender);
        sends.push(tokio::spawn(async move {
            send(&mut c, &user(sender), &to, &id).await;
        }));
    }
    for s in sends {
        s.await.expect("send task");
    }
    let sent_for = started.elapsed();
    let mut latencies = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(10);
    while latencies.len() < total {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, arrivals.recv()).await {
            Ok(Some((stream, msg, at))) => {
                if let Some((t0, recipient)) = issued.lock().unwrap().get(&msg)
                    && *recipient == stream
                {
                    latencies.push(at.saturating_duration_since(*t0));
                }
            }
            _ => break,
        }
    }
    let received = latencies.len();
    let (p50, p99, max) = quantiles(&mut latencies);
    println!(
        "\nSmall chats: {users} users online in {} direct chats, {total} messages at {:.0}/s",
        users / 2,
        total as f64 / sent_for.as_secs_f64()
    );
    println!(
        "  send issued -> recipient's stream has it: p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.1} ms  ({received} of {total} received)"
    );
    assert_eq!(missing, 0, "fan-out deliveries missing");
    assert_eq!(received, total, "direct messages not pushed");
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            streams: 10_000,
            settle: Duration::from_secs(26),
            // One whole heartbeat interval: every stream beats once in it.
            idle: Duration::from_secs(25),
            fan_sends: 20,
            chat_users: 1000,
            chat_rate: 1000,
            chat_for: Duration::from_secs(10),
        }
    } else {
        Sizes {
            streams: 200,
            settle: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            fan_sends: 2,
            chat_users: 100,
            chat_rate: 200,
            chat_for: Duration::from_secs(1),
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(sizes));
    if !full {
        println!("(smoke pass; run `scripts/bench-push.sh` to measure)");
    }
}
