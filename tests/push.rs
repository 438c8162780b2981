//! Push streams on one node (gRPC `Subscribe`): catch-up in Sync's pages then live batches,
//! resume by cursor across disconnects, hot coalescing, heartbeats and token expiry, typing,
//! presence, limits and shutdown. Runs on the local Cache, and on Redis with
//! `TIMELINE_TEST_CACHE=redis`.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use ::timeline::proto::event::Event as Kind;
use ::timeline::proto::*;
use rand::{Rng, SeedableRng};
use support::stream::{self, Stream, ids_once};
use support::*;

const DM: &str = "d:alice:bob";
const SMALL: &str = "g:small";
const HOT: &str = "g:hot";
const QUIET: Duration = Duration::from_secs(10);

/// A direct chat, a small group and a hot group (forced hot), all with alice and bob.
async fn three_conversations(server: &TestServer) {
    let mut alice = server.client("alice", "laptop").await;
    create_group(&mut alice, SMALL, &["bob", "carol"]).await;
    create_group(&mut alice, HOT, &["bob", "carol", "dave"]).await;
    set_mode(&mut operator(server).await, HOT, DeliveryMode::Hot).await;
}

fn quiet_heartbeats(config: &mut ::timeline::config::Config) {
    config.push.heartbeat = Duration::from_secs(60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_catches_up_in_pages_then_gets_each_new_message_once_in_sync_order() {
    let server = TestServer::start_with(quiet_heartbeats).await;
    three_conversations(&server).await;
    let mut alice = server.client("alice", "laptop").await;
    let mut bob = server.client("bob", "phone").await;
    let targets = [DM, SMALL, HOT];
    // A backlog of several pages of 7.
    for i in 0..25 {
        send(&mut alice, targets[i % 3], &format!("old-{i}")).await;
    }
    let mut stream = stream::open(&mut bob, "", 7).await.expect("subscribe");
    let mut batches = Vec::new();
    while batches
        .iter()
        .map(|b: &SyncBatch| b.messages.len())
        .sum::<usize>()
        < 25
    {
        match stream.next(QUIET).await.expect("stream") {
            Some(Event {
                event: Some(Kind::Batch(batch)),
            }) => batches.push(batch),
            Some(_) => {}
            None => panic!("the backlog did not arrive"),
        }
    }
    assert!(batches.len() >= 4, "pages of at most 7");
    for batch in &batches {
        assert!(batch.messages.len() <= 7);
        assert!(!batch.live, "catching up");
    }
    let mut got: Vec<Message> = batches.into_iter().flat_map(|b| b.messages).collect();

    // Live: each message is pushed without polling (the heartbeat is a minute away).
    for i in 0..12 {
        let sent = send(&mut alice, targets[i % 3], &format!("new-{i}")).await;
        let started = Instant::now();
        let live = stream.take(1, QUIET).await;
        assert_eq!(live.len(), 1, "message {i} pushed");
        assert_eq!(live[0].message_id, sent.message_id);
        assert!(started.elapsed() < Duration::from_secs(3), "pushed at once");
        got.extend(live);
    }
    assert!(stream.live_batches >= 12);

    // The same messages, in the same order, as a client polling Sync with pages of 7.
    let mut cursor = String::new();
    let synced = sync_all(&mut bob, &mut cursor, &[7]).await;
    assert_eq!(ids_once(&got), ids_once(&synced));
    // The stream's last cursor is current: Sync from it has nothing more.
    let mut resumed = stream.cursor.clone();
    assert!(sync_all(&mut bob, &mut resumed, &[7]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_from_its_last_cursor_after_disconnects_loses_and_repeats_nothing() {
    let server = TestServer::start_with(quiet_heartbeats).await;
    three_conversations(&server).await;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    const PER_SENDER: usize = 60;
    let mut senders = Vec::new();
    for (s, target) in [DM, SMALL, HOT].into_iter().enumerate() {
        let mut alice = server.client("alice", &format!("device-{s}")).await;
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_SENDER {
                acked.push(
                    send(&mut alice, target, &format!("{s}-{i}"))
                        .await
                        .message_id,
                );
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            acked
        }));
    }
    let mut bob = server.client("bob", "phone").await;
    let mut cursor = String::new();
    let mut got: Vec<Message> = Vec::new();
    let mut reconnects = 0;
    let total = 3 * PER_SENDER;
    let started = Instant::now();
    while got.len() < total {
        assert!(started.elapsed() < Duration::from_secs(120), "caught up");
        let mut stream = stream::open(&mut bob, &cursor, rng.random_range(1..=20))
            .await
            .expect("subscribe");
        // A random number of events, then the connection drops.
        for _ in 0..rng.random_range(1..=6) {
            match stream.next(QUIET).await.expect("stream") {
                Some(Event {
                    event: Some(Kind::Batch(batch)),
                }) => got.extend(batch.messages),
                Some(_) => {}
                None => break,
            }
        }
        cursor = stream.cursor.clone();
        drop(stream);
        reconnects += 1;
    }
    let mut acked = HashSet::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    let ids = ids_once(&got);
    assert_eq!(ids.iter().copied().collect::<HashSet<_>>(), acked);
    // Each conversation arrives contiguous.
    let mut seqs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in &got {
        seqs.entry(&m.conversation_id).or_default().push(m.conv_seq);
    }
    for (conversation, mut s) in seqs {
        s.sort_unstable();
        assert_eq!(
            s,
            (1..=PER_SENDER as u64).collect::<Vec<_>>(),
            "{conversation}"
        );
    }
    assert!(
        reconnects > 5,
        "the stream was dropped and resumed ({reconnects})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_into_a_hot_group_wakes_a_stream_at_most_twice_a_second_and_delivers_all() {
    let server = TestServer::start_with(quiet_heartbeats).await;
    three_conversations(&server).await;
    let mut bob = server.client("bob", "phone").await;
    let mut stream = stream::open(&mut bob, "", 500).await.expect("subscribe");
    assert!(stream.take(1, Duration::from_secs(2)).await.is_empty());
    // Let the first catch-up's time pass, so the burst's first wake-up is immediate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = stream.live_batches;
    let started = Instant::now();
    let mut senders = Vec::new();
    for s in 0..10 {
        let mut alice = server.client("alice", &format!("d{s}")).await;
        senders.push(tokio::spawn(async move {
            for i in 0..10 {
                send(&mut alice, HOT, &format!("burst-{s}-{i}")).await;
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let burst = started.elapsed();
    let got = stream.take(100, Duration::from_secs(5)).await;
    assert_eq!(ids_once(&got).len(), 100, "every hot message arrives");
    let wakeups = stream.live_batches - before;
    // One wake-up at once, then at most one per second while the burst lasts.
    let allowed = 2 + burst.as_millis() as usize / 1000;
    println!("100 hot messages sent in {burst:?}: {wakeups} wake-ups");
    assert!(
        wakeups <= allowed,
        "{wakeups} wake-ups for a burst of {burst:?}"
    );
    if burst < Duration::from_secs(1) {
        assert!(wakeups <= 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_flow_and_an_expiring_token_ends_the_stream_unless_refreshed() {
    let server = TestServer::start_with(|c| c.push.heartbeat = Duration::from_millis(300)).await;
    let mut bob = server.client("bob", "phone").await;
    let mut stream = stream::open(&mut bob, "", 0).await.expect("subscribe");
    let mut beats = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Ok(Some(Event {
            event: Some(Kind::Heartbeat(_)),
        })) = stream.next(Duration::from_millis(500)).await
        {
            beats += 1;
        }
    }
    assert!(beats >= 2, "{beats} heartbeats in 1.5 s at 300 ms");

    // A token valid for 2 s ends the stream with UNAUTHENTICATED when it expires.
    let short = |ttl: u64| {
        server
            .auth
            .mint("bob", "tablet", Duration::from_secs(ttl), now_s())
            .unwrap()
    };
    let mut tablet = client_with_header(&server.url(), Some(format!("Bearer {}", short(2)))).await;
    let mut expiring = stream::open(&mut tablet, "", 0).await.expect("subscribe");
    let ended = expiring.end(Duration::from_secs(6)).await.expect("ended");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");

    // Refreshed in time, it outlives the first token.
    let mut refreshed = stream::open(&mut tablet_with(&server, short(2)).await, "", 0)
        .await
        .expect("subscribe");
    refreshed
        .frames
        .send(ClientFrame {
            frame: Some(client_frame::Frame::Refresh(RefreshToken {
                token: short(3600),
            })),
        })
        .await
        .unwrap();
    assert!(
        refreshed.end(Duration::from_secs(4)).await.is_none(),
        "still open"
    );

    // A refresh naming someone else ends it.
    let alice = server
        .auth
        .mint("alice", "tablet", Duration::from_secs(60), now_s())
        .unwrap();
    refreshed
        .frames
        .send(ClientFrame {
            frame: Some(client_frame::Frame::Refresh(RefreshToken { token: alice })),
        })
        .await
        .unwrap();
    let ended = refreshed.end(Duration::from_secs(3)).await.expect("ended");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated);
    drop(stream);
}

async fn tablet_with(server: &TestServer, token: String) -> Client {
    client_with_header(&server.url(), Some(format!("Bearer {token}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_opening_frames_and_tokens_are_refused_with_clear_statuses() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob", "phone").await;
    // A refresh first.
    let frames = futures::stream::iter(vec![ClientFrame {
        frame: Some(client_frame::Frame::Refresh(RefreshToken {
            token: "x".into(),
        })),
    }]);
    let status = bob.subscribe(frames).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // No frame at all.
    let status = bob
        .subscribe(futures::stream::iter(Vec::<ClientFrame>::new()))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // A cursor that is not one.
    let mut stream = stream::open(&mut bob, "garbage!", 0).await.expect("opened");
    let ended = stream.end(QUIET).await.expect("ended");
    assert_eq!(ended.code(), tonic::Code::InvalidArgument, "{ended:?}");
    // Without a valid token.
    let mut anonymous = client_with_header(&server.url(), None).await;
    let status = stream::open(&mut anonymous, "", 0)
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut forged = client_with_header(&server.url(), Some("Bearer a.b.c".into())).await;
    let status = stream::open(&mut forged, "", 0)
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_other_members_streams_once_a_second() {
    let server = TestServer::start_with(quiet_heartbeats).await;
    three_conversations(&server).await;
    let mut alice = server.client("alice", "laptop").await;
    let mut bob = server.client("bob", "phone").await;
    let mut alice_phone = server.client("alice", "phone").await;
    let mut bobs = stream::open(&mut bob, "", 0).await.unwrap();
    let mut alices_laptop = stream::open(&mut alice, "", 0).await.unwrap();
    let mut alices_phone = stream::open(&mut alice_phone, "", 0).await.unwrap();
    for s in [&mut bobs, &mut alices_laptop, &mut alices_phone] {
        s.take(1, Duration::from_millis(500)).await;
    }
    for conversation in [SMALL, HOT] {
        let typing = |c: &str| SendTypingRequest {
            conversation_id: c.into(),
        };
        let sent = alice
            .send_typing(typing(conversation))
            .await
            .unwrap()
            .into_inner();
        assert!(sent.sent);
        let again = alice
            .send_typing(typing(conversation))
            .await
            .unwrap()
            .into_inner();
        assert!(!again.sent, "one per second");
        let heard = typing_event(&mut bobs).await.expect("bob hears it");
        assert_eq!(
            (
                heard.conversation_id.as_str(),
                heard.user_id.as_str(),
                heard.device_id.as_str()
            ),
            (conversation, "alice", "laptop")
        );
        assert!(
            typing_event(&mut alices_phone).await.is_some(),
            "her other device too"
        );
        assert!(
            typing_event(&mut alices_laptop).await.is_none(),
            "not the typing device"
        );
        assert!(typing_event(&mut bobs).await.is_none(), "once");
    }
    let mut eve = server.client("eve", "x").await;
    let status = eve
        .send_typing(SendTypingRequest {
            conversation_id: SMALL.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

async fn typing_event(stream: &mut Stream) -> Option<Typing> {
    let until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < until {
        if let Ok(Some(Event {
            event: Some(Kind::Typing(t)),
        })) = stream.next(Duration::from_millis(700)).await
        {
            return Some(t);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_shows_open_streams_to_members_only_and_last_seen_after_close() {
    let server = TestServer::start_with(quiet_heartbeats).await;
    three_conversations(&server).await;
    let mut alice = server.client("alice", "laptop").await;
    let mut bob = server.client("bob", "phone").await;
    let mut eve = server.client("eve", "x").await;
    let presence = |users: &[&str]| GetPresenceRequest {
        user_ids: users.iter().map(|u| u.to_string()).collect(),
    };
    let before = alice
        .get_presence(presence(&["bob", "eve"]))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert!(!before[0].online && before[0].device_ids.is_empty());

    let stream = stream::open(&mut bob, "", 0).await.unwrap();
    let mut eves = stream::open(&mut eve, "", 0).await.unwrap();
    eves.take(1, Duration::from_millis(300)).await;
    let online = alice
        .get_presence(presence(&["bob", "eve", "alice"]))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(online[0].device_ids, vec!["phone".to_owned()]);
    assert!(online[0].online && online[0].last_seen_ms > 0);
    // Eve shares no conversation with alice: she looks never seen, though she is online.
    assert_eq!(
        online[1],
        UserPresence {
            user_id: "eve".into(),
            ..Default::default()
        }
    );
    assert!(!online[2].online, "alice has no stream open");

    let closed_at = now_s() as i64 * 1000;
    drop(stream);
    let mut offline = None;
    for _ in 0..50 {
        let p = alice
            .get_presence(presence(&["bob"]))
            .await
            .unwrap()
            .into_inner()
            .users
            .remove(0);
        if !p.online {
            offline = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let offline = offline.expect("offline after close");
    assert!(offline.device_ids.is_empty());
    assert!(
        offline.last_seen_ms >= closed_at - 2000,
        "last seen when it closed"
    );
    let too_many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let status = alice
        .get_presence(GetPresenceRequest { user_ids: too_many })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limits_refuse_with_resource_exhausted_and_shutdown_tells_clients_to_reconnect() {
    let server = TestServer::start_with(|c| {
        c.push.max_streams_per_user = 2;
        c.push.max_streams = 3;
        c.push.shutdown_grace = Duration::from_secs(2);
    })
    .await;
    let mut bob = server.client("bob", "phone").await;
    let mut carol = server.client("carol", "phone").await;
    let mut dave = server.client("dave", "phone").await;
    let mut held = vec![
        stream::open(&mut bob, "", 0).await.unwrap(),
        stream::open(&mut bob, "", 0).await.unwrap(),
    ];
    let status = stream::open(&mut bob, "", 0).await.err().expect("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    held.push(stream::open(&mut carol, "", 0).await.unwrap());
    let status = stream::open(&mut dave, "", 0).await.err().expect("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "node limit");
    // A closed stream frees its place.
    drop(held.pop());
    let mut freed = None;
    for _ in 0..50 {
        if let Ok(s) = stream::open(&mut dave, "", 0).await {
            freed = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.push(freed.expect("a place freed"));

    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    for stream in &mut held {
        let ended = stream.end(Duration::from_secs(10)).await.expect("ended");
        assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "streams end at once"
    );
    // The clients keep their side of the streams open: the server stops anyway, in bounded time.
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded shutdown"
    );
}
