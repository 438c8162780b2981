//! The protections at the edge, end to end: per-user rate limits with their retry delay on
//! gRPC and HTTP, failed authentications limited per source address, authentication before a
//! POST body is decoded, and shedding of reads before sends when the node is full.

mod support;

use std::time::{Duration, Instant};

use ::timeline::protect::ProtectOptions;
use ::timeline::proto::*;
use tonic::Code;
use tonic_types::StatusExt;

use support::{Client, TestServer, client_with_header, create_group, http_client, send_text};

fn protected(
    adjust: impl FnOnce(&mut ProtectOptions),
) -> impl FnOnce(&mut ::timeline::config::Config) {
    move |config| {
        let mut protect = ProtectOptions::default();
        adjust(&mut protect);
        config.protect = protect;
    }
}

fn send_request(conversation_id: &str, client_msg_id: String) -> SendMessageRequest {
    SendMessageRequest {
        conversation_id: conversation_id.into(),
        client_msg_id,
        body: b"flood".to_vec(),
        ..Default::default()
    }
}

async fn message_count(client: &mut Client, conversation_id: &str) -> usize {
    support::history_all(client, conversation_id, 100)
        .await
        .len()
}

/// The retry delay a refusal carries, as `google.rpc.RetryInfo` and as `retry-after` metadata;
/// the two agree.
fn retry_delay(status: &tonic::Status) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo in {status:?}"));
    let seconds: u64 = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retry-after in {status:?}"));
    assert_eq!(seconds, delay.as_millis().div_ceil(1000).max(1) as u64);
    delay
}

#[tokio::test]
async fn a_senders_burst_is_held_to_its_quota_and_refills() {
    let server = TestServer::start_with(protected(|p| {
        p.user_sends_per_sec = 2;
        p.user_send_burst = 5;
    }))
    .await;
    let mut alice = server.client("alice", "a").await;
    let mut bob = server.client("bob", "b").await;
    create_group(&mut alice, "flood", &["bob"]).await;

    let started = Instant::now();
    let mut accepted = 0;
    let mut refused = Vec::new();
    for i in 0..30 {
        match alice
            .send_message(send_request("g:flood", format!("f{i}")))
            .await
        {
            Ok(_) => accepted += 1,
            Err(status) => refused.push(status),
        }
    }
    // The burst, plus what refilled at 2/s while the calls ran.
    let refill = (started.elapsed().as_secs_f64() * 2.0).floor() as usize;
    assert!(
        (5..=5 + refill + 1).contains(&accepted),
        "{accepted} accepted in {:?}",
        started.elapsed()
    );
    assert_eq!(accepted + refused.len(), 30);
    for status in &refused {
        let delay = retry_delay(status);
        assert!(delay <= Duration::from_millis(500), "{delay:?} at 2/s");
        assert!(status.message().contains("send"), "{status:?}");
    }
    // A refused send wrote nothing: the conversation holds exactly the accepted ones.
    assert_eq!(message_count(&mut bob, "g:flood").await, accepted);

    // Another user, and the sender's reads, have their own quotas.
    send_text(&mut bob, "g:flood", "b1", "mine").await;
    assert_eq!(message_count(&mut alice, "g:flood").await, accepted + 1);

    // After the delay it said, the sender may send again. (What refilled while the checks
    // above ran is spent first: on a slow machine that can be a cell or two.)
    let mut spent = 0;
    let delay = loop {
        match alice
            .send_message(send_request("g:flood", format!("spend{spent}")))
            .await
        {
            Ok(_) => spent += 1,
            Err(status) => break retry_delay(&status),
        }
        assert!(spent <= 20, "the quota never ran out again");
    };
    tokio::time::sleep(delay).await;
    alice
        .send_message(send_request("g:flood", "again".into()))
        .await
        .expect("refilled");
}

/// One POST; the status, the `retry-after` header and the body.
async fn post(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Option<String>, String) {
    use http_body_util::BodyExt;
    let mut request = ::http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", server.addr))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body,
        )))
        .unwrap();
    let response = http_client().request(request).await.expect("POST");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn the_post_surface_authenticates_first_and_answers_429_with_retry_after() {
    let server = TestServer::start_with(protected(|p| {
        p.user_reads_per_sec = 1;
        p.user_read_burst = 2;
    }))
    .await;
    let token = server.token("alice", "a");

    // A garbage body: without a token it is refused for the token, not for the body.
    let garbage = b"{\"conversation_id\": [1, 2";
    let (status, _, body) = post(&server, "/v1/GetHistory", None, garbage).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("UNAUTHENTICATED"), "{body}");
    let (status, _, body) = post(&server, "/v1/GetHistory", Some("x.y.z"), garbage).await;
    assert_eq!(status, 401, "{body}");
    // With a valid token, the body is the problem (and the read is charged).
    let (status, _, body) = post(&server, "/v1/GetHistory", Some(&token), garbage).await;
    assert_eq!(status, 400, "{body}");

    // Reads: a burst of 2, then 429 with Retry-After in whole seconds.
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(post(&server, "/v1/ListConversations", Some(&token), b"{}").await);
    }
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(
        !refused.is_empty() && answers.iter().all(|(s, _, _)| *s == 200 || *s == 429),
        "{answers:?}"
    );
    for (_, retry_after, body) in refused {
        assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
        assert!(body.contains("RESOURCE_EXHAUSTED"), "{body}");
    }
    // Sends are another class: not refused.
    let (status, _, body) = post(
        &server,
        "/v1/SendMessage",
        Some(&token),
        br#"{"conversation_id": "d:alice:bob", "body": "aGk="}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn failed_authentications_are_limited_per_address_and_valid_tokens_are_not() {
    let server = TestServer::start_with(protected(|p| {
        p.source_auth_failures_per_sec = 1;
        p.source_auth_failure_burst = 3;
    }))
    .await;
    let mut forger = client_with_header(&server.url(), Some("Bearer x.y.z".into())).await;
    let mut codes = Vec::new();
    let started = Instant::now();
    for _ in 0..6 {
        codes.push(forger.ping(PingRequest::default()).await.unwrap_err());
    }
    let unauthenticated = codes
        .iter()
        .filter(|s| s.code() == Code::Unauthenticated)
        .count();
    // The burst of 3, and what refilled at 1/s meanwhile.
    let refill = started.elapsed().as_secs() as usize + 1;
    assert!(
        (3..=3 + refill).contains(&unauthenticated) && unauthenticated < 6,
        "{codes:?}"
    );
    let limited: Vec<_> = codes
        .iter()
        .filter(|s| s.code() == Code::ResourceExhausted)
        .collect();
    assert_eq!(limited.len(), 6 - unauthenticated, "{codes:?}");
    for status in limited {
        assert!(retry_delay(status) <= Duration::from_secs(1));
        assert!(
            !status.message().contains("x.y.z"),
            "never echoes the token"
        );
    }
    // The same address with a valid token is served: only failures are charged.
    let mut alice = server.client("alice", "a").await;
    for _ in 0..10 {
        alice
            .ping(PingRequest::default())
            .await
            .expect("valid token");
    }
}

#[tokio::test]
async fn an_overloaded_node_sheds_reads_before_sends_and_recovers() {
    // Three requests at once; reads may take two of the places.
    let server = TestServer::start_with_redis(|config| {
        config.protect = ProtectOptions {
            max_in_flight: 3,
            non_send_share_percent: 67,
            ..ProtectOptions::unlimited()
        };
        // Sends wait on the paused Redis instead of failing at once.
        config.redis.response_timeout = Duration::from_secs(20);
    })
    .await;
    let mut alice = server.client("alice", "a").await;
    create_group(&mut alice, "busy", &["bob"]).await;
    send_text(&mut alice, "g:busy", "warm", "before").await;
    let redis = server.redis.as_ref().expect("redis");

    redis.pause().expect("pause");
    let stuck: Vec<_> = (0..2)
        .map(|i| {
            let mut c = alice.clone();
            tokio::spawn(async move {
                c.send_message(send_request("g:busy", format!("stuck{i}")))
                    .await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.protect.in_flight() < 2 {
        assert!(Instant::now() < deadline, "the sends never got stuck");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Two in flight: a read is shed at once, with a retry delay.
    let started = Instant::now();
    let shed = alice
        .get_history(GetHistoryRequest {
            conversation_id: "g:busy".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    retry_delay(&shed);
    assert!(shed.message().contains("overloaded"), "{shed:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "shed fast");
    // A send still gets the last place; the one after it is shed.
    let third = {
        let mut c = alice.clone();
        tokio::spawn(async move { c.send_message(send_request("g:busy", "third".into())).await })
    };
    while server.protect.in_flight() < 3 {
        assert!(Instant::now() < deadline, "the third send was not admitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fourth = alice
        .send_message(send_request("g:busy", "fourth".into()))
        .await
        .unwrap_err();
    retry_delay(&fourth);

    redis.resume().expect("resume");
    for task in stuck.into_iter().chain([third]) {
        let _ = task.await.expect("task");
    }
    // Recovered: everything is served again, and the shed send can be retried.
    assert_eq!(server.protect.in_flight(), 0);
    alice
        .send_message(send_request("g:busy", "fourth".into()))
        .await
        .expect("retried after the overload");
    assert!(message_count(&mut alice, "g:busy").await >= 2);
}

#[tokio::test]
async fn the_defaults_let_a_person_through_and_hold_a_script() {
    let server = TestServer::start_with(protected(|_| {})).await;
    let defaults = ProtectOptions::default();
    let mut alice = server.client("alice", "a").await;
    create_group(&mut alice, "chat", &["bob"]).await;
    // A person: a few messages in a row, reading between them.
    let started = Instant::now();
    for i in 0..10 {
        send_text(&mut alice, "g:chat", &format!("p{i}"), "hello").await;
        message_count(&mut alice, "g:chat").await;
    }
    // A script: 200 sends as fast as the node answers.
    let mut accepted = 10;
    for i in 0..200 {
        if alice
            .send_message(send_request("g:chat", format!("s{i}")))
            .await
            .is_ok()
        {
            accepted += 1;
        }
    }
    let refill =
        (started.elapsed().as_secs_f64() * f64::from(defaults.user_sends_per_sec)).ceil() as usize;
    let quota = defaults.user_send_burst as usize + refill;
    assert!(
        accepted <= quota + 1 && accepted < 210,
        "{accepted} accepted in {:?}",
        started.elapsed()
    );
}

/// Open files this process may have: the connection test sizes itself to fit.
fn open_file_budget() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

/// Reads until the server closes the connection; `false` if it is still open at `deadline`.
async fn closed_by(stream: &mut tokio::net::TcpStream, deadline: tokio::time::Instant) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A complete `POST /v1/Ping` over HTTP/1.1 from `source`: the status line.
async fn ping_from(server: &TestServer, source: [u8; 4], token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let mut stream = socket.connect(server.addr).await.expect("connect");
    let request = format!(
        "POST /v1/Ping HTTP/1.1\r\nhost: timeline\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("answered in time")
        .expect("read");
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_bounded_and_closed_while_others_are_served() {
    const PER_SOURCE: usize = 400;
    let server = TestServer::start_with(|config| {
        config.protect = ProtectOptions {
            max_connections_per_source: PER_SOURCE as u32,
            first_request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            ..ProtectOptions::unlimited()
        };
    })
    .await;
    let token = server.token("alice", "a");
    // Thousands where the process may open them: half an HTTP/1.1 request, or an HTTP/2
    // preface, and then nothing.
    let count = 2_000.min(open_file_budget().saturating_sub(PER_SOURCE + 400));
    assert!(
        count > PER_SOURCE,
        "too few open files allowed to test with"
    );
    let mut idle = Vec::with_capacity(count);
    for i in 0..count {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let opening: &[u8] = if i % 2 == 0 {
            b"POST /v1/Ping HTTP/1.1\r\nhost: timeline\r\n"
        } else {
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        };
        // A connection over the bound may be closed before this is written.
        let _ = stream.write_all(opening).await;
        idle.push(stream);
    }
    let opened = Instant::now();

    // Meanwhile a client from another address is served.
    assert!(
        ping_from(&server, [127, 0, 0, 2], &token)
            .await
            .contains(" 200 "),
        "served during the flood"
    );
    // Those over the per-source bound were closed at once.
    // At once, but the accept loop may trail the kernel's backlog on a loaded machine.
    let soon = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut refused = 0;
    for stream in &mut idle[PER_SOURCE + 50..] {
        if closed_by(stream, soon).await {
            refused += 1;
        }
    }
    assert_eq!(refused, count - PER_SOURCE - 50, "over the bound: closed");
    // The rest within the first-request timeout (1 s), plus the check interval and the grace
    // (and slack for a loaded machine).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (i, stream) in idle.iter_mut().enumerate().take(PER_SOURCE) {
        assert!(
            closed_by(stream, deadline).await,
            "connection {i} still open {:?} after it opened",
            opened.elapsed()
        );
    }
    drop(idle);

    // The bound is free again.
    assert!(
        ping_from(&server, [127, 0, 0, 1], &token)
            .await
            .contains(" 200 ")
    );
    let mut alice = server.client("alice", "a").await;
    alice.ping(PingRequest::default()).await.expect("gRPC");

    // An HTTP/2 connection with nothing in flight is closed after the idle timeout (2 s)...
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let request = ::http::Request::post(format!("http://{}/v1/Ping", server.addr))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("h2 request");
    assert_eq!(response.status(), 200);
    drop(response);
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(6), connection)
        .await
        .expect("idle HTTP/2 connection kept")
        .unwrap()
        .ok();
    assert!(
        answered.elapsed() >= Duration::from_millis(1_900),
        "closed before the idle timeout: {:?}",
        answered.elapsed()
    );

    // ... and an HTTP/1.1 keep-alive connection waiting for its next request after the first
    // request timeout (1 s), as hyper reads the next request's headers under that deadline.
    let mut kept = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!(
            "POST /v1/Ping HTTP/1.1\r\nhost: timeline\r\nauthorization: Bearer {token}\r\n\
             content-length: 0\r\n\r\n"
        );
        kept.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        kept.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    let answered = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(closed_by(&mut kept, deadline).await, "idle connection kept");
    assert!(answered.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_conversations_send_rate_holds_across_two_nodes_on_one_redis() {
    use ::timeline::store::Store;
    use ::timeline::store::embedded::EmbeddedStore;
    let redis =
        ::timeline::testkit::redis_server::RedisProcess::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn Store> = EmbeddedStore::open(
        dir.path(),
        ::timeline::config::Config::default().embedded_options(),
    )
    .expect("store");
    let limited = |config: &mut ::timeline::config::Config| {
        config.limits.hot_conversation_sends_per_sec = 4;
        config.limits.hot_conversation_send_burst = 10;
    };
    let a = TestServer::start_on_store(store.clone(), &redis.url(), 1, limited).await;
    let b = TestServer::start_on_store(store.clone(), &redis.url(), 2, limited).await;
    let mut alice = a.client("alice", "a").await;
    let mut bob = b.client("bob", "b").await;
    create_group(&mut alice, "stage", &["bob"]).await;
    create_group(&mut alice, "small", &["bob"]).await;
    support::set_mode(
        &mut support::operator(&a).await,
        "g:stage",
        DeliveryMode::Hot,
    )
    .await;

    // Two senders on two nodes, flat out: together they get the one quota.
    let started = Instant::now();
    let (mut accepted, mut refused) = (0usize, Vec::new());
    for i in 0..20 {
        for (client, who) in [(&mut alice, "a"), (&mut bob, "b")] {
            match client
                .send_message(send_request("g:stage", format!("{who}{i}")))
                .await
            {
                Ok(_) => accepted += 1,
                Err(status) => refused.push(status),
            }
        }
    }
    let refill = (started.elapsed().as_secs_f64() * 4.0).ceil() as usize;
    assert!(
        (10..=10 + refill + 1).contains(&accepted),
        "{accepted} accepted in {:?}",
        started.elapsed()
    );
    for status in &refused {
        assert!(
            retry_delay(status) <= Duration::from_millis(250),
            "{status:?}"
        );
        assert!(status.message().contains("g:stage"), "{status:?}");
    }
    assert_eq!(message_count(&mut alice, "g:stage").await, accepted);

    // A small (fan-out) conversation has no conversation rate.
    for i in 0..30 {
        send_text(&mut alice, "g:small", &format!("s{i}"), "fine").await;
    }

    // Slowmode holds across nodes too: bob's second message, through the other node, waits.
    alice
        .set_slowmode(SetSlowmodeRequest {
            conversation_id: "g:small".into(),
            slowmode_seconds: 60,
        })
        .await
        .expect("slowmode");
    let mut bob_on_a = a.client("bob", "b2").await;
    bob_on_a
        .send_message(SendMessageRequest {
            conversation_id: "g:small".into(),
            body: b"one".to_vec(),
            ..Default::default()
        })
        .await
        .expect("first");
    let refused = bob
        .send_message(SendMessageRequest {
            conversation_id: "g:small".into(),
            body: b"two".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        retry_delay(&refused) > Duration::from_secs(55),
        "{refused:?}"
    );
}

#[tokio::test]
async fn slowmode_holds_members_to_one_message_per_period_and_exempts_the_owner() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "a").await;
    let mut bob = server.client("bob", "b").await;
    let mut carol = server.client("carol", "c").await;
    create_group(&mut alice, "slow", &["bob", "carol"]).await;
    let set = |seconds: u32, conv: &'static str| SetSlowmodeRequest {
        conversation_id: conv.into(),
        slowmode_seconds: seconds,
    };

    // Who may set it, and what.
    let e = bob.set_slowmode(set(2, "g:slow")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = alice.set_slowmode(set(21_601, "g:slow")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("21600"), "{e:?}");
    send_text(&mut alice, "d:alice:bob", "d1", "hi").await;
    let e = alice.set_slowmode(set(2, "d:alice:bob")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let mut eve = server.client("eve", "e").await;
    let e = eve.set_slowmode(set(2, "g:slow")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let set_to = alice
        .set_slowmode(set(2, "g:slow"))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(set_to.slowmode_seconds, 2);
    let shown = bob
        .get_conversation(GetConversationRequest {
            conversation_id: "g:slow".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(shown.slowmode_seconds, 2);

    // A member: one message, then told when the next may go; each member on their own.
    let first = alice_or_bob_send(&mut bob, "b1").await.expect("first");
    let refused = alice_or_bob_send(&mut bob, "b2").await.unwrap_err();
    let delay = retry_delay(&refused);
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
    assert!(refused.message().contains("slowmode"), "{refused:?}");
    // A retry of the message that went is answered with it, not refused.
    let again = alice_or_bob_send(&mut bob, "b1").await.expect("retry");
    assert_eq!(again.message_id, first.message_id);
    alice_or_bob_send(&mut carol, "c1")
        .await
        .expect("carol's own");
    // The owner is exempt.
    for i in 0..5 {
        alice_or_bob_send(&mut alice, &format!("a{i}"))
            .await
            .expect("owner");
    }
    tokio::time::sleep(delay).await;
    alice_or_bob_send(&mut bob, "b2")
        .await
        .expect("after the delay");
    // Nothing refused was written: bob's two, carol's one, alice's five.
    assert_eq!(message_count(&mut carol, "g:slow").await, 8);

    // Off again.
    alice.set_slowmode(set(0, "g:slow")).await.unwrap();
    alice_or_bob_send(&mut bob, "b3").await.expect("off");
    alice_or_bob_send(&mut bob, "b4").await.expect("off");
}

async fn alice_or_bob_send(client: &mut Client, id: &str) -> Result<Message, tonic::Status> {
    client
        .send_message(send_request("g:slow", id.to_owned()))
        .await
        .map(|r| r.into_inner().message.expect("message"))
}
