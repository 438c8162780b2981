//! Push across nodes: two nodes in this process share one Store (as a cluster shares
//! ScyllaDB) and one real `redis-server`, each with its own Cache connection and push hub; and
//! presence of a node killed with SIGKILL lapsing by its TTL.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::timeline::cache::Cache;
use ::timeline::cache::redis::{RedisCache, RedisOptions};
use ::timeline::config::Config;
use ::timeline::proto::*;
use ::timeline::store::Store;
use ::timeline::store::embedded::EmbeddedStore;
use ::timeline::testkit::redis_server::RedisProcess;
use support::child::ChildServer;
use support::stream::{self, ids_once};
use support::*;

const DM: &str = "d:alice:bob";
const SMALL: &str = "g:small";
const HOT: &str = "g:hot";

/// Long heartbeats: whatever arrives within seconds was pushed, not found by a heartbeat.
fn quiet(config: &mut ::timeline::config::Config) {
    config.push.heartbeat = Duration::from_secs(60);
}

/// Sends through `client`, retrying while the Cache comes back (the same client_msg_id: one
/// message whatever the retries).
async fn send_retrying(client: &mut Client, conversation_id: &str, client_msg_id: &str) -> Message {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sent = client
            .send_message(SendMessageRequest {
                conversation_id: conversation_id.into(),
                client_msg_id: client_msg_id.into(),
                content_type: "text/plain".into(),
                body: client_msg_id.as_bytes().to_vec(),
            })
            .await;
        match sent {
            Ok(reply) => return reply.into_inner().message.expect("message"),
            Err(status) if Instant::now() < deadline => {
                eprintln!("send {client_msg_id}: {status:?}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("send {client_msg_id}: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_node_gets_what_another_node_accepted_and_a_redis_restart_loses_nothing() {
    let mut redis = RedisProcess::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        EmbeddedStore::open(dir.path(), Config::default().embedded_options()).expect("store");
    let a = TestServer::start_on_store(store.clone(), &redis.url(), 1, quiet).await;
    let b = TestServer::start_on_store(store.clone(), &redis.url(), 2, quiet).await;

    let mut alice = a.client("alice", "laptop").await;
    create_group(&mut alice, SMALL, &["bob", "carol"]).await;
    create_group(&mut alice, HOT, &["bob", "carol", "dave"]).await;
    set_mode(&mut operator(&a).await, HOT, DeliveryMode::Hot).await;

    let mut bob = b.client("bob", "phone").await;
    let mut on_b = stream::open(&mut bob, "", 0).await.expect("subscribe on B");
    // The catch-up (empty) first: the stream is then listening.
    assert!(on_b.take(1, Duration::from_millis(500)).await.is_empty());

    let mut sent = Vec::new();
    for (i, conversation) in [DM, SMALL, HOT].into_iter().enumerate() {
        sent.push(send(&mut alice, conversation, &format!("via-a-{i}")).await);
        let started = Instant::now();
        let got = on_b.take(1, Duration::from_secs(5)).await;
        assert_eq!(
            got.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            vec![sent[i].message_id],
            "{conversation}: a message accepted by A reaches B's stream"
        );
        // Hot pushes are coalesced to one per second at most.
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{conversation}: pushed"
        );
    }

    // Redis restarts: its pub/sub subscriptions (and the Cache's state) are gone. Nothing
    // sent before, during or after is lost or repeated on B's stream.
    redis.restart().unwrap_or_else(|e| panic!("{e}"));
    for i in 0..9 {
        let conversation = [DM, SMALL, HOT][i % 3];
        sent.push(send_retrying(&mut alice, conversation, &format!("after-{i}")).await);
    }
    let want: Vec<u64> = sent[3..].iter().map(|m| m.message_id).collect();
    let got = on_b.take(want.len(), Duration::from_secs(10)).await;
    let mut got_ids = ids_once(&got);
    got_ids.sort_unstable();
    let mut want_sorted = want.clone();
    want_sorted.sort_unstable();
    assert_eq!(got_ids, want_sorted, "after the restart");
    // And pushes flow again without any heartbeat: one more of each kind.
    for (i, conversation) in [DM, SMALL, HOT].into_iter().enumerate() {
        let message = send(&mut alice, conversation, &format!("later-{i}")).await;
        let got = on_b.take(1, Duration::from_secs(5)).await;
        assert_eq!(
            got.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            vec![message.message_id],
            "{conversation}: pushed after the restart"
        );
    }
    // B's view equals what Sync gives from scratch.
    let mut cursor = String::new();
    let synced = sync_all(&mut bob, &mut cursor, &[50]).await;
    assert_eq!(synced.len(), sent.len() + 3);

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_killed_node_lapses_by_its_ttl() {
    let redis = RedisProcess::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let redis_url = redis.url();
    let mut node = ChildServer::start(
        dir.path(),
        &[
            ("TIMELINE_CACHE", "redis"),
            ("TIMELINE_REDIS_URL", &redis_url),
            ("TIMELINE_PUSH_HEARTBEAT", "1s"),
        ],
    );
    let mut bob = node.client("bob", "phone").await;
    let _stream = stream::open(&mut bob, "", 0).await.expect("subscribe");
    let cache = RedisCache::connect(RedisOptions::single(redis.url())).expect("cache");
    let online =
        |p: &[::timeline::cache::UserPresence]| p[0].devices.iter().any(|d| d.device_id == "phone");
    let mut seen_online = false;
    for _ in 0..100 {
        if online(&cache.presence(&["bob".to_owned()]).await.unwrap()) {
            seen_online = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_online, "online while the stream is open");
    // Heartbeats (every second) keep it online past the 2.5 s TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(online(&cache.presence(&["bob".to_owned()]).await.unwrap()));

    // SIGKILL: nothing clears the entry; its TTL does.
    node.kill9();
    let killed = Instant::now();
    assert!(
        online(&cache.presence(&["bob".to_owned()]).await.unwrap()),
        "still listed right after the crash"
    );
    loop {
        let presence = cache.presence(&["bob".to_owned()]).await.unwrap();
        if !online(&presence) {
            assert!(presence[0].last_seen_ms > 0, "last seen is kept");
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(6), "lapses by TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        killed.elapsed() > Duration::from_millis(500),
        "by TTL, not cleared"
    );
}
