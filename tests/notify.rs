//! Offline notifications through a real HTTP receiver started by the test: who is notified
//! (offline devices with a push target, never the sender, never an open stream), the signature,
//! coalescing in small chats and hot groups, retries while the receiver fails, the bounded
//! queue, refused tokens, registration input, and sends never waiting for the webhook.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::timeline::config::Config;
use ::timeline::notify::{self, Batch, Notification};
use ::timeline::proto::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use support::*;
use tonic::Code;

const SECRET: &str = "a webhook secret of some length";
/// Long enough for a notification to arrive if one were coming.
const SETTLE: Duration = Duration::from_millis(1500);

/// What the receiver answers next.
#[derive(Default)]
struct Behaviour {
    /// Answer this many requests 503 first.
    fail_first: usize,
    /// Tokens to report invalid in every answer.
    invalid_tokens: Vec<String>,
    /// Hold each request until released.
    hold: bool,
}

#[derive(Default)]
struct Receiver {
    /// Every request: its headers and body, in arrival order (failed ones included).
    requests: Mutex<Vec<(HeaderMap, Bytes)>>,
    /// Batches answered 2xx.
    delivered: Mutex<Vec<Batch>>,
    behaviour: Mutex<Behaviour>,
    answered: std::sync::atomic::AtomicUsize,
}

impl Receiver {
    async fn start() -> (Arc<Self>, String) {
        let receiver = Arc::new(Self::default());
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn behave(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }

    fn notifications(&self) -> Vec<Notification> {
        let delivered = self.delivered.lock().unwrap();
        delivered
            .iter()
            .flat_map(|b| b.notifications.clone())
            .collect()
    }

    fn for_recipient(&self, user: &str) -> Vec<Notification> {
        self.notifications()
            .into_iter()
            .filter(|n| n.recipient == user)
            .collect()
    }

    /// Waits until `n` notifications arrived (or fails after 15 s).
    async fn wait_for(&self, n: usize) -> Vec<Notification> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.notifications();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} notifications, got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    receiver
        .requests
        .lock()
        .unwrap()
        .push((headers.clone(), body.clone()));
    while receiver.behaviour.lock().unwrap().hold {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    receiver
        .answered
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let (fail, invalid) = {
        let mut b = receiver.behaviour.lock().unwrap();
        let fail = b.fail_first > 0;
        b.fail_first = b.fail_first.saturating_sub(1);
        (fail, b.invalid_tokens.clone())
    };
    if fail {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    let signature = headers
        .get(notify::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !notify::verify(SECRET.as_bytes(), signature, &body, now_s() as i64, 300) {
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    let batch: Batch = serde_json::from_slice(&body).expect("a batch");
    receiver.delivered.lock().unwrap().push(batch);
    let answer = notify::Answer {
        invalid_tokens: invalid,
    };
    (StatusCode::OK, serde_json::to_string(&answer).unwrap())
}

async fn start(url: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let url = url.to_owned();
    TestServer::start_with(move |c| {
        c.notify.webhook_url = Some(url);
        c.notify.webhook_secret = Some(SECRET.into());
        c.notify.preview_chars = 5;
        c.notify.interval = Duration::from_secs(1);
        adjust(c);
    })
    .await
}

async fn register(server: &TestServer, user: &str, device: &str) {
    let mut client = server.client(user, device).await;
    client
        .register_push_target(RegisterPushTargetRequest {
            device_id: String::new(),
            platform: PushPlatform::Apns as i32,
            token: format!("tok-{user}-{device}"),
            app_id: "com.example.chat".into(),
            locale: "en".into(),
        })
        .await
        .expect("register");
}

/// Opens a stream for the device and waits until presence shows it online.
async fn online(server: &TestServer, user: &str, device: &str) -> stream::Stream {
    let mut client = server.client(user, device).await;
    let opened = stream::open(&mut client, "", 50).await.expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = client
            .get_presence(GetPresenceRequest {
                user_ids: vec![user.into()],
            })
            .await
            .expect("presence")
            .into_inner();
        if seen.users[0].device_ids.iter().any(|d| d == device) {
            return opened;
        }
        assert!(
            Instant::now() < deadline,
            "{user}/{device} never came online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn devices(n: &Notification) -> Vec<String> {
    let mut d: Vec<String> = n.devices.iter().map(|d| d.device_id.clone()).collect();
    d.sort();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_are_notified_once_signed_and_online_ones_and_the_sender_never() {
    let (receiver, url) = Receiver::start().await;
    let server = start(&url, |_| {}).await;
    let mut alice = server.client("alice", "laptop").await;
    create_group(&mut alice, "g:team", &["bob", "carol", "dave", "erin"]).await;
    // bob: one device, offline. carol: laptop online, tablet offline. dave: his only
    // registered device online. erin: nothing registered. alice (the sender) registered.
    for (user, device) in [
        ("alice", "laptop"),
        ("bob", "phone"),
        ("carol", "laptop"),
        ("carol", "tablet"),
        ("dave", "laptop"),
    ] {
        register(&server, user, device).await;
    }
    let _carol = online(&server, "carol", "laptop").await;
    let _dave = online(&server, "dave", "laptop").await;
    let sent = send_text(&mut alice, "g:team", "m1", "hello team").await;

    let got = receiver.wait_for(2).await;
    tokio::time::sleep(SETTLE).await;
    let got_later = receiver.notifications();
    assert_eq!(
        got_later.len(),
        2,
        "nobody else, nothing twice: {got_later:?}"
    );
    let by_user: BTreeMap<&str, &Notification> =
        got.iter().map(|n| (n.recipient.as_str(), n)).collect();
    assert_eq!(
        by_user.keys().copied().collect::<Vec<_>>(),
        ["bob", "carol"]
    );
    assert_eq!(devices(by_user["bob"]), ["phone"]);
    assert_eq!(
        devices(by_user["carol"]),
        ["tablet"],
        "only the offline device"
    );
    let bob = by_user["bob"];
    assert_eq!(bob.devices[0].token, "tok-bob-phone");
    assert_eq!(bob.devices[0].platform, "apns");
    assert_eq!(bob.devices[0].app_id, "com.example.chat");
    assert_eq!(bob.conversation_id, "g:team");
    assert_eq!(bob.conversation_kind, "group");
    assert_eq!(bob.sender_id, "alice");
    assert_eq!(bob.message_id, sent.message_id.to_string());
    assert_eq!(bob.conv_seq, sent.conv_seq);
    assert_eq!(
        bob.preview.as_deref(),
        Some("hello"),
        "the first 5 characters"
    );
    assert_eq!((bob.new_messages, bob.unread), (1, 1));
    // Every request carried a valid signature (the receiver refuses others) and an id.
    for (headers, _) in receiver.requests.lock().unwrap().iter() {
        assert!(headers.contains_key(notify::DELIVERY_HEADER));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_in_a_small_chat_is_one_notification_now_and_one_summing_it_up() {
    let (receiver, url) = Receiver::start().await;
    let server = start(&url, |_| {}).await;
    register(&server, "bob", "phone").await;
    let mut alice = server.client("alice", "laptop").await;
    let mut last = None;
    for i in 0..6 {
        last = Some(
            send_text(
                &mut alice,
                "d:alice:bob",
                &format!("b{i}"),
                &format!("burst {i}"),
            )
            .await,
        );
    }
    let last = last.unwrap();
    let got = receiver.wait_for(2).await;
    tokio::time::sleep(SETTLE * 2).await;
    let got_later = receiver.for_recipient("bob");
    assert_eq!(got_later.len(), 2, "{got_later:?}");
    assert_eq!((got[0].conv_seq, got[0].new_messages), (1, 1));
    assert_eq!(got[0].conversation_kind, "direct");
    let summary = &got[1];
    assert_eq!(
        summary.message_id,
        last.message_id.to_string(),
        "the newest"
    );
    assert_eq!(
        summary.new_messages, 5,
        "the ones since the first notification"
    );
    assert_eq!(summary.unread, 6);
    // Once read, a quiet window says nothing more; a new message after it notifies again.
    let mut bob = server.client("bob", "phone").await;
    bob.mark_read(MarkReadRequest {
        conversation_id: "d:alice:bob".into(),
        seq: last.conv_seq,
    })
    .await
    .expect("read");
    tokio::time::sleep(SETTLE).await;
    send_text(&mut alice, "d:alice:bob", "after", "again").await;
    let got = receiver.wait_for(3).await;
    assert_eq!((got[2].unread, got[2].new_messages), (1, 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_group_notifies_each_offline_member_once_per_hot_interval() {
    let (receiver, url) = Receiver::start().await;
    let server = start(&url, |c| c.notify.hot_interval = Duration::from_secs(60)).await;
    let mut alice = server.client("alice", "laptop").await;
    let members = ["bob", "carol", "dave"];
    create_group(&mut alice, "g:hot", &members).await;
    set_mode(&mut operator(&server).await, "g:hot", DeliveryMode::Hot).await;
    for user in members {
        register(&server, user, "phone").await;
    }
    for i in 0..10 {
        send_text(&mut alice, "g:hot", &format!("h{i}"), "busy").await;
    }
    receiver.wait_for(3).await;
    tokio::time::sleep(SETTLE).await;
    let got = receiver.notifications();
    let mut recipients: Vec<&str> = got.iter().map(|n| n.recipient.as_str()).collect();
    recipients.sort();
    assert_eq!(recipients, members, "one each: {got:?}");
    assert!(
        got.iter()
            .all(|n| n.conversation_id == "g:hot" && n.new_messages == 1)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_batch_again_until_it_takes_it() {
    let (receiver, url) = Receiver::start().await;
    receiver.behave(|b| b.fail_first = 3);
    let server = start(&url, |_| {}).await;
    register(&server, "bob", "phone").await;
    let mut alice = server.client("alice", "laptop").await;
    send_text(&mut alice, "d:alice:bob", "r1", "are you there").await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].recipient, "bob");
    let requests = receiver.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 4, "three 503s, then delivered");
    let ids: Vec<_> = requests
        .iter()
        .map(|(h, _)| h[notify::DELIVERY_HEADER].clone())
        .collect();
    assert!(
        ids.windows(2).all(|p| p[0] == p[1]),
        "one batch, retried: {ids:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_keeps_the_newest_when_the_receiver_cannot_keep_up_and_sends_never_wait() {
    let (receiver, url) = Receiver::start().await;
    receiver.behave(|b| b.hold = true);
    let server = start(&url, |c| {
        c.notify.queue = 4;
        c.notify.batch = 1;
    })
    .await;
    let mut alice = server.client("alice", "laptop").await;
    let recipients: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    for user in &recipients {
        register(&server, user, "phone").await;
    }
    // Ten conversations, ten windows: ten notifications, while the receiver holds the first.
    for user in &recipients {
        send_text(
            &mut alice,
            &::timeline::timeline::ids::direct_id("alice", user).unwrap(),
            user,
            "hi",
        )
        .await;
    }
    // Every send was acked while the receiver had answered nothing.
    assert_eq!(
        receiver.answered.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // Metrics are per process (the other tests' servers count too), but only this test
    // drops: five dropped means all ten were queued behind the one in flight.
    let dropped = "timeline_notify_notifications_total{outcome=\"dropped\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, dropped).await < 5.0 {
        assert!(Instant::now() < deadline, "not all queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.behave(|b| b.hold = false);
    // The one in flight and the four queued last; five dropped, oldest first.
    let got = receiver.wait_for(5).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(receiver.notifications().len(), 5);
    let names: std::collections::BTreeSet<&str> =
        got.iter().map(|n| n.recipient.as_str()).collect();
    assert_eq!(names.len(), 5, "five recipients once each: {names:?}");
    assert_eq!(metric(&server, dropped).await, 5.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_receiver_refuses_is_unregistered() {
    let (receiver, url) = Receiver::start().await;
    receiver.behave(|b| b.invalid_tokens = vec!["tok-bob-phone".into()]);
    let server = start(&url, |_| {}).await;
    register(&server, "bob", "phone").await;
    register(&server, "bob", "tablet").await;
    let mut alice = server.client("alice", "laptop").await;
    send_text(&mut alice, "d:alice:bob", "t1", "first").await;
    let got = receiver.wait_for(1).await;
    assert_eq!(devices(&got[0]), ["phone", "tablet"]);
    // Another conversation (another window): only the tablet is left.
    create_group(&mut alice, "g:other", &["bob"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_text(&mut alice, "g:other", "t2", "second").await;
    let got = receiver.wait_for(2).await;
    assert_eq!(devices(&got[1]), ["tablet"]);
    server.stop().await;
}

#[tokio::test]
async fn bad_registration_input_is_invalid_argument() {
    let (_receiver, url) = Receiver::start().await;
    let server = start(&url, |_| {}).await;
    let mut bob = server.client("bob", "phone").await;
    let good = RegisterPushTargetRequest {
        device_id: String::new(),
        platform: PushPlatform::Fcm as i32,
        token: "fcm-token".into(),
        app_id: "app".into(),
        locale: String::new(),
    };
    let cases = [
        RegisterPushTargetRequest {
            token: String::new(),
            ..good.clone()
        },
        RegisterPushTargetRequest {
            token: "has space".into(),
            ..good.clone()
        },
        RegisterPushTargetRequest {
            token: "x".repeat(4097),
            ..good.clone()
        },
        RegisterPushTargetRequest {
            platform: PushPlatform::Unspecified as i32,
            ..good.clone()
        },
        RegisterPushTargetRequest {
            platform: 99,
            ..good.clone()
        },
        RegisterPushTargetRequest {
            device_id: "bad device".into(),
            ..good.clone()
        },
        RegisterPushTargetRequest {
            locale: "x".repeat(36),
            ..good.clone()
        },
    ];
    for case in cases {
        let status = bob
            .register_push_target(case.clone())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{case:?}: {status:?}");
    }
    let ok = bob
        .register_push_target(good)
        .await
        .expect("register")
        .into_inner();
    assert_eq!(ok.device_id, "phone", "the calling device");
    bob.unregister_push_target(UnregisterPushTargetRequest::default())
        .await
        .expect("unregister");
    let status = bob
        .unregister_push_target(UnregisterPushTargetRequest {
            device_id: "bad device".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

/// The value of one sample of the node's `/metrics`, 0 when absent.
async fn metric(server: &TestServer, sample: &str) -> f64 {
    let (_, body) = http_get(server.addr, "/metrics").await;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .map(|v| v.trim().parse().unwrap_or(0.0))
        })
        .unwrap_or(0.0)
}

/// Two nodes share one Store and one Redis, as a cluster does: a burst sent through both
/// still makes one notification now and one summing up, never one per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_a_cluster_never_notify_a_window_twice() {
    use ::timeline::store::Store;
    let (receiver, url) = Receiver::start().await;
    let redis =
        ::timeline::testkit::redis_server::RedisProcess::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = ::timeline::store::embedded::EmbeddedStore::open(
        dir.path(),
        Config::default().embedded_options(),
    )
    .expect("store");
    let webhook = |c: &mut Config| {
        c.notify.webhook_url = Some(url.clone());
        c.notify.webhook_secret = Some(SECRET.into());
        c.notify.interval = Duration::from_secs(1);
    };
    let a = TestServer::start_on_store(store.clone(), &redis.url(), 1, webhook).await;
    let b = TestServer::start_on_store(store.clone(), &redis.url(), 2, webhook).await;
    register(&a, "bob", "phone").await;
    let mut via_a = a.client("alice", "laptop").await;
    let mut via_b = b.client("alice", "laptop").await;
    for i in 0..6 {
        let client = if i % 2 == 0 { &mut via_a } else { &mut via_b };
        send_text(client, "d:alice:bob", &format!("c{i}"), "ping").await;
    }
    let got = receiver.wait_for(2).await;
    tokio::time::sleep(SETTLE * 2).await;
    let got_later = receiver.notifications();
    assert_eq!(got_later.len(), 2, "{got_later:?}");
    assert_eq!((got[0].conv_seq, got[0].new_messages), (1, 1));
    assert_eq!((got[1].conv_seq, got[1].new_messages), (6, 5));
    a.stop().await;
    b.stop().await;
}
