//! The protections under a flood, against the real binary with its default limits: one user
//! sending 1,000 messages in one second into a hot group, then 20 users doing so together
//! (the conversation's rate); and what a refusal costs the server against a Ping of the same
//! binary (server CPU from /proc, client in another process).
//!
//! `cargo bench --bench protect` measures; under `cargo test` a short smoke pass keeps it
//! compiled and working.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ::timeline::api::Authenticator;
use ::timeline::proto::timeline_service_client::TimelineServiceClient;
use ::timeline::proto::*;
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

type Client =
    TimelineServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `timeline serve` with the default protections.
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_timeline"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("TIMELINE_JWT_SECRET", SECRET)
            .env("TIMELINE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn timeline");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("address line");
        let url = line
            .trim()
            .strip_prefix("timeline listening on ")
            .expect("address")
            .to_owned();
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    /// The server's CPU time so far (user + system), from /proc.
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("/proc stat");
        // Fields after the command name (which ends with ')'): utime is the 12th, stime 13th.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    async fn client(&self, user: &str, admin: bool) -> Client {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = Authenticator::new(SECRET)
            .mint_with(user, "bench", Duration::from_secs(3600), now, admin)
            .unwrap();
        let channel = Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect");
        TimelineServiceClient::with_interceptor(
            channel,
            Bearer(format!("Bearer {token}").parse().unwrap()),
        )
    }

    /// `timeline_limited_requests_total` by scope, summed over classes.
    async fn limited(&self) -> Vec<(String, f64)> {
        let addr = self.url.trim_start_matches("http://");
        let body = http_get(addr, "/metrics").await;
        let mut by_scope: Vec<(String, f64)> = Vec::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("timeline_limited_requests_total{") else {
                continue;
            };
            let scope = rest
                .split("scope=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_default()
                .to_owned();
            let value: f64 = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            match by_scope.iter_mut().find(|(s, _)| *s == scope) {
                Some((_, total)) => *total += value,
                None => by_scope.push((scope, value)),
            }
        }
        by_scope
    }
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

fn send_request(client_msg_id: String) -> SendMessageRequest {
    SendMessageRequest {
        conversation_id: "g:stage".into(),
        client_msg_id,
        body: b"flood".to_vec(),
        ..Default::default()
    }
}

#[derive(Default, Debug)]
struct Tally {
    accepted: usize,
    refused: usize,
    other: usize,
}

/// `total` sends spread evenly over `over` (open loop: each fired on time, whatever the
/// answers), round-robin over `senders`.
async fn flood(senders: &[Client], total: usize, over: Duration, tag: &str) -> Tally {
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until(started + over * i as u32 / total as u32).await;
        let mut client = senders[i % senders.len()].clone();
        let id = format!("{tag}-{i}");
        tasks.push(tokio::spawn(async move {
            client.send_message(send_request(id)).await.map(drop)
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => tally.accepted += 1,
            Err(s) if s.code() == Code::ResourceExhausted => tally.refused += 1,
            Err(_) => tally.other += 1,
        }
    }
    tally
}

/// Server CPU per call of `calls` calls made by `work`, closed loop: each client makes its
/// share in turn, 16 at a time.
async fn cpu_per_call<F, Fut>(
    server: &Server,
    clients: &[Client],
    calls: usize,
    work: F,
) -> Duration
where
    F: Fn(Client, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let work = Arc::new(work);
    let before = server.cpu();
    let per_client = calls / clients.len();
    let lanes = clients.len().min(16);
    let tasks: Vec<_> = (0..lanes)
        .map(|lane| {
            let work = work.clone();
            let mine: Vec<Client> = clients.iter().skip(lane).step_by(lanes).cloned().collect();
            tokio::spawn(async move {
                for client in mine {
                    for i in 0..per_client {
                        work(client.clone(), i).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (server.cpu() - before) / (per_client * clients.len()) as u32
}

async fn run(full: bool) {
    let server = Server::start();
    let mut alice = server.client("alice", false).await;
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    alice
        .create_conversation(CreateConversationRequest {
            kind: ConversationKind::Group as i32,
            conversation_id: "g:stage".into(),
            member_ids: users.clone(),
            ..Default::default()
        })
        .await
        .expect("group");
    server
        .client("ops", true)
        .await
        .set_conversation_mode(SetConversationModeRequest {
            conversation_id: "g:stage".into(),
            mode: DeliveryMode::Hot as i32,
        })
        .await
        .expect("hot");

    let total = if full { 1_000 } else { 100 };
    let over = Duration::from_secs(1);
    let before = server.limited().await;
    let one = flood(std::slice::from_ref(&alice), total, over, "one").await;
    println!(
        "one user, {total} sends in {over:?} into a hot group: {} accepted, {} refused \
         (RESOURCE_EXHAUSTED), {} other",
        one.accepted, one.refused, one.other
    );
    let mut many = Vec::new();
    for user in &users {
        many.push(server.client(user, false).await);
    }
    // Let the conversation's quota fill up again first.
    tokio::time::sleep(Duration::from_secs(if full { 6 } else { 1 })).await;
    let together = flood(&many, total, over, "many").await;
    println!(
        "20 users, {total} sends in {over:?} into the same group: {} accepted, {} refused, {} other",
        together.accepted, together.refused, together.other
    );
    let after = server.limited().await;
    for (scope, value) in &after {
        let was = before
            .iter()
            .find(|(s, _)| s == scope)
            .map_or(0.0, |(_, v)| *v);
        if *value > was {
            println!("  refused by scope {scope}: {}", value - was);
        }
    }

    // What a refusal costs: Pings (100 per user, within a user's read burst) against sends
    // refused by alice's spent quota, 16 calls at a time.
    let calls = if full { 20_000 } else { 400 };
    let mut ping_clients = Vec::new();
    for i in 0..calls / 100 {
        ping_clients.push(server.client(&format!("ping{i}"), false).await);
    }
    let ping_cpu = cpu_per_call(&server, &ping_clients, calls, |mut c, _| async move {
        c.ping(PingRequest::default()).await.expect("ping");
    })
    .await;
    let flooders: Vec<Client> = (0..16).map(|_| alice.clone()).collect();
    let refused_cpu = cpu_per_call(&server, &flooders, calls, |mut c, i| async move {
        let _ = c.send_message(send_request(format!("cpu-{i}"))).await;
    })
    .await;
    println!(
        "server CPU per call: Ping {:.1} µs, refused send {:.1} µs ({:.2}× Ping)",
        ping_cpu.as_secs_f64() * 1e6,
        refused_cpu.as_secs_f64() * 1e6,
        refused_cpu.as_secs_f64() / ping_cpu.as_secs_f64().max(1e-9)
    );
    alice
        .ping(PingRequest::default())
        .await
        .expect("still served");
    if !full {
        assert!(one.refused > 0, "a flood is refused: {one:?}");
        println!("(smoke pass; run `cargo bench --bench protect` to measure)");
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(full));
}
