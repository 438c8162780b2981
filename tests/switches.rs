//! Exactly once across delivery-mode switches under concurrency, on the real pipeline and real
//! backends (embedded store; the local cache, then a private `redis-server`):
//!
//! four members send into one group as fast as they can, an operator forces the group's mode
//! back and forth, a fifth member joins and leaves over and over, and three readers follow their
//! own cursors with pages of 1, 3, 7 and 20. After a settle, every reader must hold every acked
//! message exactly once, and no cursor may have expired.
//!
//! The normal test run does a short round per cache. The long form, as the README describes:
//!
//!   SWITCH_TEST_SECS=20 SWITCH_TEST_RUNS=20 cargo test --release --test switches -- \
//!     --nocapture --test-threads 1

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use timeline::cache::Cache;
use timeline::cache::local::LocalCache;
use timeline::cache::redis::{RedisCache, RedisOptions};
use timeline::model::{ConversationKind, DeliveryMode, MessageKind};
use timeline::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
use timeline::testkit::redis_server::RedisProcess;
use timeline::timeline::{
    Caller, CreateConversation, Limits, SendMessage, SystemClock, Timeline, TimelineError,
};
use tokio::sync::Mutex;

const GROUP: &str = "g:flip";
const SENDERS: [&str; 4] = ["s0", "s1", "s2", "s3"];
const READERS: [&str; 3] = ["r0", "r1", "r2"];
const CHURNER: &str = "joiner";
const PAGES: [u32; 4] = [1, 3, 7, 20];

fn caller(user: &str) -> Caller {
    Caller {
        user_id: user.into(),
        device_id: "d".into(),
        admin: false,
    }
}

fn operator() -> Caller {
    Caller {
        user_id: "ops".into(),
        device_id: "console".into(),
        admin: true,
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one round saw, per reader: messages delivered twice, acked messages missing, and
/// pages that said `cursor_expired`.
#[derive(Debug, Default)]
struct Outcome {
    acked: usize,
    switches: usize,
    duplicates: BTreeMap<&'static str, usize>,
    lost: BTreeMap<&'static str, usize>,
    expired: BTreeMap<&'static str, usize>,
}

impl Outcome {
    fn clean(&self) -> bool {
        self.duplicates
            .values()
            .chain(self.lost.values())
            .chain(self.expired.values())
            .all(|n| *n == 0)
    }
}

async fn round(cache: Arc<dyn Cache>, run_for: Duration, flip_every: Duration) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Fsync, 4096))
        .expect("embedded store");
    let t = Timeline::new(
        store,
        cache,
        Limits {
            recovery_age: Duration::from_secs(1),
            // Readers trail fast writers by more than the default 10,000 rows: retention by
            // count (a rule of its own, tested apart) would expire their cursors.
            inbox_max_rows: u64::MAX,
            // Sends flat out: no conversation send rate.
            hot_conversation_sends_per_sec: 0,
            ..Limits::default()
        },
        Arc::new(SystemClock),
    );
    let members: Vec<String> = SENDERS
        .iter()
        .chain(&READERS)
        .map(|m| m.to_string())
        .collect();
    t.create_conversation(
        &caller(SENDERS[0]),
        CreateConversation {
            kind: ConversationKind::Group,
            conversation_id: GROUP.into(),
            title: "flip".into(),
            member_ids: members,
        },
    )
    .await
    .expect("create the group");

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for (n, sender) in SENDERS.iter().enumerate() {
        let (t, stop, acked) = (t.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let request = SendMessage {
                    conversation_id: GROUP.into(),
                    client_msg_id: format!("{n}-{i}"),
                    content_type: String::new(),
                    body: Bytes::from(format!("{sender} {i}")),
                };
                // A failed send is retried with the same client_msg_id, as a client would.
                for _ in 0..50 {
                    match t.send(&caller(sender), request.clone()).await {
                        Ok(m) => {
                            acked.lock().await.insert(m.message_id, m.conv_seq);
                            break;
                        }
                        Err(TimelineError::Aborted(_) | TimelineError::Cache(_)) => {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err(e) => panic!("send: {e}"),
                    }
                }
            }
        }));
    }
    let flipper = {
        let (t, stop) = (t.clone(), stop.clone());
        tokio::spawn(async move {
            let mut switches = 0;
            let mut mode = DeliveryMode::Hot;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(flip_every).await;
                match t
                    .set_conversation_mode(&operator(), GROUP, Some(mode))
                    .await
                {
                    Ok(_) => switches += 1,
                    Err(TimelineError::Aborted(_)) => continue,
                    Err(e) => panic!("switch: {e}"),
                }
                mode = match mode {
                    DeliveryMode::Hot => DeliveryMode::Fanout,
                    DeliveryMode::Fanout => DeliveryMode::Hot,
                };
            }
            switches
        })
    };
    let churn = {
        let (t, stop) = (t.clone(), stop.clone());
        tokio::spawn(async move {
            let owner = caller(SENDERS[0]);
            let who = [CHURNER.to_owned()];
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                t.add_members(&owner, GROUP, &who).await.expect("join");
                tokio::time::sleep(Duration::from_millis(100)).await;
                t.remove_members(&owner, GROUP, &who).await.expect("leave");
            }
        })
    };
    let mut readers = Vec::new();
    for reader in READERS {
        let (t, stop) = (t.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut cursor = String::new();
            let mut seen: Vec<(u64, u64)> = Vec::new();
            let mut expired = 0;
            let mut round = 0;
            let mut caught_up_since: Option<Instant> = None;
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                let limit = PAGES[round % PAGES.len()];
                round += 1;
                let page = t.sync(&caller(reader), &cursor, limit).await.expect("sync");
                if page.cursor_expired {
                    expired += 1;
                }
                seen.extend(
                    page.messages
                        .iter()
                        .filter(|m| m.kind == MessageKind::User)
                        .map(|m| (m.message_id, m.conv_seq)),
                );
                cursor = page.next_cursor;
                let idle = !page.has_more && !page.pending;
                if stopping && idle {
                    // Caught up after the writers stopped: twice in a row, a grace apart, so
                    // that late fan-outs and re-drives have landed.
                    match caught_up_since {
                        Some(at) if at.elapsed() > Duration::from_millis(1500) => break,
                        Some(_) => {}
                        None => caught_up_since = Some(Instant::now()),
                    }
                } else if !idle {
                    caught_up_since = None;
                }
                // A device paces its pages (and so trails the writers, as a phone does).
                tokio::time::sleep(Duration::from_millis(if idle { 5 } else { 2 })).await;
            }
            (reader, seen, expired)
        }));
    }

    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let switches = flipper.await.expect("flipper");
    churn.await.expect("churn");
    // Settle: re-drive what a failed step left, fill what was abandoned.
    t.recover_pending(i64::MAX).await.expect("recover");
    t.sweep_abandoned().await.expect("sweep");

    let acked = acked.lock().await.clone();
    let mut outcome = Outcome {
        acked: acked.len(),
        switches,
        ..Outcome::default()
    };
    for r in readers {
        let (reader, seen, expired) = r.await.expect("reader");
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for (id, _) in &seen {
            *counts.entry(*id).or_default() += 1;
        }
        let duplicates = counts.values().filter(|n| **n > 1).count();
        let lost = acked.keys().filter(|id| !counts.contains_key(id)).count();
        if duplicates > 0 {
            let mut twice: Vec<u64> = seen
                .iter()
                .filter(|(id, _)| counts[id] > 1)
                .map(|(_, seq)| *seq)
                .collect();
            twice.sort_unstable();
            twice.dedup();
            twice.truncate(10);
            eprintln!("{reader}: conv_seqs delivered twice (first ten): {twice:?}");
        }
        if lost > 0 {
            let mut missing: Vec<u64> = acked
                .iter()
                .filter(|(id, _)| !counts.contains_key(id))
                .map(|(_, seq)| *seq)
                .collect();
            missing.sort_unstable();
            missing.truncate(10);
            eprintln!("{reader}: acked conv_seqs never delivered (first ten): {missing:?}");
        }
        outcome.duplicates.insert(reader, duplicates);
        outcome.lost.insert(reader, lost);
        outcome.expired.insert(reader, expired);
    }
    outcome
}

async fn rounds(name: &str, mut cache: impl FnMut() -> Arc<dyn Cache>, default_secs: u64) {
    let secs = env_number("SWITCH_TEST_SECS", default_secs);
    let runs = env_number("SWITCH_TEST_RUNS", 1);
    let flip_ms = env_number("SWITCH_TEST_FLIP_MS", 150);
    let mut failed = 0;
    for run in 1..=runs {
        let outcome = round(
            cache(),
            Duration::from_secs(secs),
            Duration::from_millis(flip_ms),
        )
        .await;
        println!(
            "{name} run {run}/{runs}: {secs} s, {} acked sends, {} switches, duplicates {:?}, lost {:?}, expired {:?}",
            outcome.acked, outcome.switches, outcome.duplicates, outcome.lost, outcome.expired
        );
        assert!(
            outcome.acked > 0 && outcome.switches > 2,
            "the round did too little: {outcome:?}"
        );
        if !outcome.clean() {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 0,
        "{failed} of {runs} {name} runs lost, duplicated or expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_across_forced_switches_on_the_local_cache() {
    rounds("local", || Arc::new(LocalCache::new()), 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_across_forced_switches_on_redis() {
    let server = RedisProcess::start().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    rounds(
        "redis",
        || {
            server.flushall().expect("FLUSHALL");
            Arc::new(RedisCache::connect(RedisOptions::single(url.clone())).expect("connect"))
        },
        4,
    )
    .await;
}
