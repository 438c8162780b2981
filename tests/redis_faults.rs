//! The service on a real Redis that fails under load: killed and restarted empty, flushed,
//! paused. Whatever happens, sends fail fast with UNAVAILABLE or succeed, nothing acked is
//! lost, no conv_seq is handed out twice, reads keep being served from the Store, and the
//! service recovers by itself when Redis is back.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::timeline::proto::*;
use ::timeline::testkit::redis_server::RedisProcess;
use support::{
    Client, TestServer, history_all, http_get, operator, send, set_mode, sync_all, sync_all_within,
};
use tokio::sync::Mutex;
use tonic::Code;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);
/// A failed send must come back within this (the timeout plus a reconnect attempt).
const FAIL_FAST: Duration = Duration::from_millis(2500);
/// Each conversation's writer: (sender, conversation).
const WRITERS: [(&str, &str); 3] = [
    ("alice", "d:alice:bob"),
    ("bob", "g:small"),
    ("carol", "g:hot"),
];

async fn start() -> TestServer {
    TestServer::start_with_redis(|c| {
        c.redis.response_timeout = REDIS_TIMEOUT;
        c.redis.connect_timeout = REDIS_TIMEOUT;
        c.limits.gap_grace = Duration::from_secs(1);
    })
    .await
}

/// Two groups of everyone (one forced hot) and a DM; every device's cursor issued before any
/// message, so that each must receive every message of its conversations.
async fn setup(server: &TestServer) -> BTreeMap<&'static str, String> {
    let mut alice = server.client("alice", "setup").await;
    for id in ["g:small", "g:hot"] {
        alice
            .create_conversation(CreateConversationRequest {
                kind: ConversationKind::Group as i32,
                conversation_id: id.into(),
                member_ids: vec!["bob".into(), "carol".into()],
                ..Default::default()
            })
            .await
            .expect("create");
    }
    set_mode(&mut operator(server).await, "g:hot", DeliveryMode::Hot).await;
    let mut cursors = BTreeMap::new();
    for user in USERS {
        let mut client = server.client(user, "check").await;
        let mut cursor = String::new();
        assert!(sync_all(&mut client, &mut cursor, &[50]).await.is_empty());
        cursors.insert(user, cursor);
    }
    cursors
}

#[derive(Default)]
struct WriterReport {
    acked: Vec<Message>,
    /// Code and duration of every failed attempt.
    failures: Vec<(Code, Duration)>,
}

/// Sends `n` messages one after another, retrying each with its client_msg_id until acked.
async fn write(mut client: Client, sender: &str, conversation: &str, n: usize) -> WriterReport {
    let mut report = WriterReport::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        let id = format!("{sender}-{i}");
        loop {
            let started = Instant::now();
            let result = client
                .send_message(SendMessageRequest {
                    conversation_id: conversation.into(),
                    client_msg_id: id.clone(),
                    content_type: "text/plain".into(),
                    body: id.clone().into_bytes(),
                })
                .await;
            match result {
                Ok(r) => {
                    report.acked.push(r.into_inner().message.expect("message"));
                    break;
                }
                Err(status) => {
                    report.failures.push((status.code(), started.elapsed()));
                    assert!(Instant::now() < deadline, "{id} never acked: {status:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    report
}

/// Follows bob's live cursor while the fault happens: every call must succeed.
async fn follow(mut client: Client, stop: Arc<Mutex<bool>>) -> (String, Vec<Message>, usize) {
    let mut cursor = String::new();
    let mut got = Vec::new();
    let mut calls = 0;
    while !*stop.lock().await {
        let page = client
            .sync(SyncRequest {
                cursor: cursor.clone(),
                limit: 20,
            })
            .await
            .unwrap_or_else(|s| panic!("sync failed during the fault: {s:?}"))
            .into_inner();
        calls += 1;
        got.extend(page.messages);
        cursor = page.next_cursor;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (cursor, got, calls)
}

/// Runs the writers and a live reader, applies `fault` mid-load, and checks every guarantee.
async fn under_load(fault: impl AsyncFnOnce(&mut RedisProcess), expect_failures: bool) {
    let mut server = start().await;
    let cursors = setup(&server).await;
    let stop = Arc::new(Mutex::new(false));
    let reader = tokio::spawn(follow(server.client("bob", "live").await, stop.clone()));
    let mut writers = Vec::new();
    for (sender, conversation) in WRITERS {
        let client = server.client(sender, "w").await;
        writers.push(tokio::spawn(write(client, sender, conversation, 80)));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    fault(server.redis.as_mut().expect("redis")).await;

    let mut acked: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    let mut failures = Vec::new();
    for (w, (_, conversation)) in writers.into_iter().zip(WRITERS) {
        let report = w.await.expect("writer");
        failures.extend(report.failures);
        // One sender per conversation, sequential: its acks are in conv_seq order, and a
        // sequencer re-seeded from anything but the Store's last value would repeat one.
        let seqs: Vec<u64> = report.acked.iter().map(|m| m.conv_seq).collect();
        assert!(
            seqs.windows(2).all(|p| p[0] < p[1]),
            "{conversation}: acked conv_seqs not increasing: {seqs:?}"
        );
        acked.insert(conversation.to_owned(), report.acked);
    }
    *stop.lock().await = true;
    let (live_cursor, mut live, calls) = reader.await.expect("reader");
    assert!(calls > 5, "the reader kept reading ({calls} syncs)");

    if expect_failures {
        assert!(!failures.is_empty(), "the fault was felt by the writers");
    }
    for (code, took) in &failures {
        // ABORTED: a retry found the client_msg_id claimed by an attempt that failed while
        // Redis could not even take the claim back; it waited `send_claim_wait` (2 s).
        let bound = match code {
            Code::Unavailable => FAIL_FAST,
            Code::Aborted => FAIL_FAST + Duration::from_secs(2),
            other => panic!("a failed send must be UNAVAILABLE (or ABORTED), got {other:?}"),
        };
        assert!(*took < bound, "a failed send ({code:?}) took {took:?}");
    }
    if expect_failures {
        assert!(failures.iter().any(|(c, _)| *c == Code::Unavailable));
    }

    // Every device, from a cursor issued before the first message, receives every acked
    // message of its conversations once, each conversation contiguous from 1.
    let mut checks = Vec::new();
    for user in USERS {
        let mut client = server.client(user, "check").await;
        let mut cursor = cursors[user].clone();
        checks.push((user, user, caught_up(&mut client, &mut cursor).await));
    }
    let mut bob = server.client("bob", "live").await;
    let mut cursor = live_cursor;
    live.extend(caught_up(&mut bob, &mut cursor).await);
    checks.push(("bob (live through the fault)", "bob", live));
    for (who, user, synced) in checks {
        check_delivery(who, user, &synced, &acked);
    }
    // History has the same messages.
    let mut alice = server.client("alice", "history").await;
    for (conversation, messages) in &acked {
        let history = history_ids(&mut alice, conversation).await;
        for m in messages {
            assert!(
                history.contains(&m.message_id),
                "{conversation}: history lacks {m:?}"
            );
        }
    }
    server.stop().await;
}

/// Syncs until nothing is pending or left (abandoned seqs become holes after the grace).
async fn caught_up(client: &mut Client, cursor: &mut String) -> Vec<Message> {
    sync_all_within(client, cursor, &[50], Duration::from_secs(30)).await
}

fn check_delivery(
    who: &str,
    user: &str,
    synced: &[Message],
    acked: &BTreeMap<String, Vec<Message>>,
) {
    let mut ids = HashSet::new();
    let mut seqs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in synced {
        assert!(ids.insert(m.message_id), "{who}: duplicate {m:?}");
        seqs.entry(&m.conversation_id).or_default().push(m.conv_seq);
    }
    for (conversation, messages) in acked {
        let member = !conversation.starts_with("d:") || conversation.split(':').any(|u| u == user);
        if !member {
            continue;
        }
        for m in messages {
            assert!(ids.contains(&m.message_id), "{who}: lost acked {m:?}");
        }
        // Contiguous from 1, each once. Not necessarily in conv_seq order: the feed is ordered
        // by inbox_seq, and two concurrent sends to one conversation (retries around the fault)
        // may take their inbox seqs in the other order (README "Known limits"; seen in CI as
        // ..., 17, 19, 18, 20, ...).
        let mut got = seqs.get(conversation.as_str()).cloned().unwrap_or_default();
        got.sort_unstable();
        let n = got.len() as u64;
        assert_eq!(
            got,
            (1..=n).collect::<Vec<_>>(),
            "{who}: {conversation} not contiguous"
        );
    }
}

async fn history_ids(client: &mut Client, conversation: &str) -> HashSet<u64> {
    let messages = history_all(client, conversation, 100).await;
    messages.iter().map(|m| m.message_id).collect()
}

#[tokio::test]
async fn redis_killed_and_restarted_empty_under_load() {
    under_load(
        async |redis| {
            redis.kill();
            tokio::time::sleep(Duration::from_millis(800)).await;
            redis.restart().expect("restart");
        },
        true,
    )
    .await;
}

#[tokio::test]
async fn redis_flushed_under_load() {
    under_load(
        async |redis| {
            redis.flushall().expect("flushall");
            tokio::time::sleep(Duration::from_millis(200)).await;
            redis.flushall().expect("flushall");
        },
        false,
    )
    .await;
}

#[tokio::test]
async fn redis_paused_under_load() {
    under_load(
        async |redis| {
            redis.pause().expect("pause");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            redis.resume().expect("resume");
        },
        true,
    )
    .await;
}

/// With Redis down: reads are served from the Store (small chats and hot conversations),
/// sends fail fast and leave nothing behind; when Redis returns empty, sequences continue
/// after the persisted values.
#[tokio::test]
async fn while_redis_is_down_reads_work_and_sends_fail_fast_then_recover() {
    let mut server = start().await;
    setup(&server).await;
    let mut alice = server.client("alice", "a").await;
    for (i, conversation) in ["d:alice:bob", "g:small", "g:hot", "g:hot"]
        .iter()
        .enumerate()
    {
        send(&mut alice, conversation, &format!("before-{i}")).await;
    }
    server.redis.as_mut().expect("redis").kill();

    let mut bob = server.client("bob", "fresh").await;
    let mut cursor = String::new();
    let synced = sync_all(&mut bob, &mut cursor, &[2, 50]).await;
    let seen: Vec<(&str, u64)> = synced
        .iter()
        .map(|m| (m.conversation_id.as_str(), m.conv_seq))
        .collect();
    assert_eq!(
        seen,
        [
            ("d:alice:bob", 1),
            ("g:small", 1),
            ("g:hot", 1),
            ("g:hot", 2)
        ],
        "small chats and the hot conversation synced from the Store"
    );
    assert_eq!(history_ids(&mut bob, "g:hot").await.len(), 2);
    let list = bob
        .list_conversations(ListConversationsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.conversations.len(), 3);
    let (status, ready) = http_get(server.addr, "/readyz").await;
    assert!(
        status == 200 && ready.contains("cache: degraded"),
        "{status} {ready}"
    );

    for conversation in ["d:alice:bob", "g:small", "g:hot"] {
        let started = Instant::now();
        let status = alice
            .send_message(SendMessageRequest {
                conversation_id: conversation.into(),
                client_msg_id: format!("during-{conversation}"),
                content_type: "text/plain".into(),
                body: b"x".to_vec(),
            })
            .await
            .expect_err("no sequencer, no send");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < FAIL_FAST,
            "took {:?}",
            started.elapsed()
        );
    }
    // Nothing of the failed sends is visible.
    assert!(sync_all(&mut bob, &mut cursor, &[50]).await.is_empty());

    server
        .redis
        .as_mut()
        .expect("redis")
        .restart()
        .expect("restart");
    let mut next = BTreeMap::new();
    for conversation in ["d:alice:bob", "g:small", "g:hot"] {
        // The retry of a failed send succeeds once Redis is back (the client's loop).
        let deadline = Instant::now() + Duration::from_secs(10);
        let m = loop {
            let r = alice
                .send_message(SendMessageRequest {
                    conversation_id: conversation.into(),
                    client_msg_id: format!("during-{conversation}"),
                    content_type: "text/plain".into(),
                    body: b"x".to_vec(),
                })
                .await;
            match r {
                Ok(r) => break r.into_inner().message.expect("message"),
                Err(s) if Instant::now() < deadline => {
                    assert_eq!(s.code(), Code::Unavailable);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => panic!("no recovery: {s:?}"),
            }
        };
        next.insert(conversation, m.conv_seq);
    }
    assert_eq!(
        next,
        BTreeMap::from([("d:alice:bob", 2), ("g:small", 2), ("g:hot", 3)]),
        "re-seeded from the Store, not from zero"
    );
    let after = sync_all(&mut bob, &mut cursor, &[50]).await;
    assert_eq!(after.len(), 3);
    server.stop().await;
}

/// The epoch names one life of Redis's state: stable while it lives, new after a flush or a
/// restart; a sequencer key lost with it reports no state (the pipeline re-seeds it from the
/// Store), and the scripts are reloaded into a restarted server without the caller noticing.
#[tokio::test]
async fn the_epoch_changes_when_redis_loses_its_state() {
    use ::timeline::cache::redis::{RedisCache, RedisOptions};
    use ::timeline::cache::*;

    let mut redis = RedisProcess::start().expect("redis-server");
    let mut options = RedisOptions::single(redis.url());
    options.response_timeout = REDIS_TIMEOUT;
    let cache = RedisCache::connect(options).expect("connect");
    let key = SeqKey::Conversation("g:e".into());
    let request = [SeqRequest {
        key: key.clone(),
        count: 1,
    }];
    let first = cache.epoch().await.unwrap();
    assert_eq!(cache.epoch().await.unwrap(), first);
    cache.seed(&key, 5).await.unwrap();
    assert_eq!(cache.allocate(&request, 1).await.unwrap(), [Some(6)]);

    redis.flushall().expect("flushall");
    let second = cache.epoch().await.unwrap();
    assert_ne!(second, first, "a flush is a new epoch");
    assert_eq!(cache.allocate(&request, 1).await.unwrap(), [None]);
    cache.seed(&key, 6).await.unwrap();
    assert_eq!(cache.allocate(&request, 1).await.unwrap(), [Some(7)]);

    redis.restart().expect("restart");
    // The first operation may find the old connection dead; the next reconnects.
    let deadline = Instant::now() + Duration::from_secs(5);
    let third = loop {
        match cache.epoch().await {
            Ok(e) => break e,
            Err(CacheError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no reconnect: {e}"),
        }
    };
    assert_ne!(third, second, "a restart is a new epoch");
    assert_eq!(cache.allocate(&request, 1).await.unwrap(), [None]);
    let entry = HotEntry {
        conv_seq: 1,
        payload: bytes::Bytes::from_static(b"m"),
    };
    cache.hot_append("g:e", entry, 9, 1, 10, 1).await.unwrap();
    assert_eq!(
        cache
            .hot_read("g:e", 0, 10)
            .await
            .unwrap()
            .unwrap()
            .entries
            .len(),
        1
    );
    let before = cache.round_trips();
    cache
        .hot_heads(&["g:e".into(), "g:f".into()])
        .await
        .unwrap();
    assert_eq!(
        cache.round_trips(),
        before + 1,
        "many heads, one round trip"
    );
}
