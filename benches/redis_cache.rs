//! The pipeline on the Redis Cache (a private `redis-server` on loopback), over the embedded
//! store:
//!
//! 1. Redis round trips per operation, counted by the backend (a pipeline counts once): sends
//!    to a direct chat, a group of 5 (fan-out) and a hot group of 1,000; Sync with nothing
//!    new and with new messages.
//! 2. Hot send throughput (32 concurrent senders into one hot group, no gRPC) against
//!    `redis-benchmark` running the hot-window append script alone with 32 clients, in the same
//!    run on the same machine: the ratio says how much of Redis's capacity a send costs.
//!
//! `cargo bench --bench redis_cache`; under `cargo test` it runs a short smoke pass.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{caller, group, send};
use timeline::cache::redis::{RedisCache, RedisOptions, scripts};
use timeline::store::DeliveryMode;
use timeline::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
use timeline::testkit::redis_server::RedisProcess;
use timeline::timeline::{Limits, SystemClock, Timeline};

const HOT_MEMBERS: usize = 1000;
const CONCURRENCY: usize = 32;

struct Env {
    timeline: Arc<Timeline>,
    cache: Arc<RedisCache>,
    _dir: tempfile::TempDir,
}

/// A fresh store over an emptied Redis (claims left by a previous store would hold ids);
/// `flat_out` turns the hot conversation's send rate off (the load runs send far above it).
fn env(redis: &RedisProcess, durability: Durability, flat_out: bool) -> Env {
    redis.flushall().expect("flushall");
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        EmbeddedStore::open(dir.path(), EmbeddedOptions::new(durability, 4096)).expect("store");
    let cache = Arc::new(RedisCache::connect(RedisOptions::single(redis.url())).expect("redis"));
    let defaults = Limits::default();
    let limits = Limits {
        max_members_per_call: 100_000,
        hot_conversation_sends_per_sec: if flat_out {
            0
        } else {
            defaults.hot_conversation_sends_per_sec
        },
        ..defaults
    };
    let timeline = Timeline::new(store, cache.clone(), limits, Arc::new(SystemClock));
    Env {
        timeline,
        cache,
        _dir: dir,
    }
}

/// A group of `members` created by m0, forced hot when `hot`.
async fn hot_or_not(t: &Timeline, id: &str, members: usize, hot: bool) {
    group(t, "m0", id, members).await;
    if hot {
        t.switch_mode(id, DeliveryMode::Hot, true)
            .await
            .expect("force hot");
    }
}

/// Round trips of `n` runs of `op`, per run.
async fn per_op<F, Fut>(cache: &RedisCache, n: usize, mut op: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = cache.round_trips();
    for i in 0..n {
        op(i).await;
    }
    (cache.round_trips() - before) as f64 / n as f64
}

async fn round_trips(redis: &RedisProcess, n: usize) {
    // The default limits: a hot send's round trips include its conversation's send rate.
    let e = env(redis, Durability::Buffered, false);
    let t = &e.timeline;
    hot_or_not(t, "g:five", 5, false).await;
    hot_or_not(t, "g:hot", HOT_MEMBERS, true).await;
    // Warm-up: conversations created, sequencers seeded, scripts loaded.
    for (sender, id) in [("m0", "d:m0:m1"), ("m0", "g:five"), ("m0", "g:hot")] {
        send(t, sender, id, usize::MAX).await;
    }
    println!("\nRedis round trips per operation ({n} each, counted by the backend)");
    for (name, id) in [
        ("SendMessage, direct chat (fan-out to 2)", "d:m0:m1"),
        ("SendMessage, group of 5 (fan-out)", "g:five"),
        ("SendMessage, hot group of 1,000", "g:hot"),
    ] {
        let rt = per_op(&e.cache, n, |i| send(t, "m0", id, i)).await;
        println!("  {name:<48} {rt:>6.2}");
    }
    let reader = caller("m1");
    let mut cursor = String::new();
    loop {
        let page = t.sync(&reader, &cursor, 500).await.expect("sync");
        cursor = page.next_cursor;
        if !page.has_more {
            break;
        }
    }
    let idle = per_op(&e.cache, n, |_| {
        let cursor = cursor.clone();
        let reader = reader.clone();
        async move {
            let page = t.sync(&reader, &cursor, 100).await.expect("sync");
            assert!(page.messages.is_empty());
        }
    })
    .await;
    println!(
        "  {:<48} {idle:>6.2}",
        "Sync, nothing new (1 hot + 2 fan-out)"
    );
    let mut fresh_calls = 0;
    for i in 0..n {
        for id in ["d:m0:m1", "g:five", "g:hot"] {
            send(t, "m0", id, n + i).await;
        }
        let sends = e.cache.round_trips();
        let page = t.sync(&reader, &cursor, 100).await.expect("sync");
        assert_eq!(page.messages.len(), 3);
        cursor = page.next_cursor;
        fresh_calls += e.cache.round_trips() - sends;
    }
    println!(
        "  {:<48} {:>6.2}",
        "Sync, 1 new message in each of the 3",
        fresh_calls as f64 / n as f64
    );
}

/// Hot sends per second from `CONCURRENCY` tasks for `duration`.
async fn hot_send_rate(redis: &RedisProcess, durability: Durability, duration: Duration) -> f64 {
    let e = env(redis, durability, true);
    hot_or_not(&e.timeline, "g:load", HOT_MEMBERS, true).await;
    send(&e.timeline, "m0", "g:load", usize::MAX).await;
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let t = e.timeline.clone();
            tokio::spawn(async move {
                let sender = format!("m{}", w + 1);
                let mut n = 0;
                while Instant::now() < deadline {
                    send(&t, &sender, "g:load", n).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut sends = 0;
    for task in tasks {
        sends += task.await.expect("sender");
    }
    sends as f64 / started.elapsed().as_secs_f64()
}

/// `redis-benchmark` running the hot-window append script (same keys shape, a member the
/// size of an encoded 100-byte message) with `CONCURRENCY` clients.
fn redis_benchmark_hot_append(redis: &RedisProcess, requests: usize) -> f64 {
    let sha: String = redis
        .query(redis::cmd("SCRIPT").arg("LOAD").arg(scripts::HOT_APPEND))
        .expect("script load");
    let member = format!("__rand_int__{}", "x".repeat(150));
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args(["-c", &CONCURRENCY.to_string(), "-n", &requests.to_string()])
        .args(["-r", "100000000", "-q"])
        .args(["EVALSHA", &sha, "2"])
        .args(["bench:{h:g:rb}:window", "bench:{h:g:rb}:head"])
        .args(["__rand_int__", &member, "__rand_int__", "1000"])
        .args(["1800000000000", "604800000", "__rand_int__"])
        .output()
        .expect("redis-benchmark (Debian: redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    // "EVALSHA …: 51020.41 requests per second, p50=…" (the progress lines end in \r).
    text.split(['\r', '\n'])
        .rev()
        .find_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no rate in redis-benchmark output: {text}"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let redis = RedisProcess::start().unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (n, duration, requests) = if full {
        (200, Duration::from_secs(10), 400_000)
    } else {
        (5, Duration::from_millis(300), 2_000)
    };
    runtime.block_on(round_trips(&redis, n));

    println!(
        "\nHot send path ({CONCURRENCY} concurrent senders, one hot group of {HOT_MEMBERS}) vs \
         redis-benchmark of its Redis primitive ({CONCURRENCY} clients), same run"
    );
    let primitive = redis_benchmark_hot_append(&redis, requests);
    println!(
        "  {:<48} {primitive:>10.0} /s",
        "redis-benchmark EVALSHA hot_append"
    );
    for (name, durability) in [
        ("hot SendMessage, store fsync (default)", Durability::Fsync),
        ("hot SendMessage, store buffered", Durability::Buffered),
    ] {
        let rate = runtime.block_on(hot_send_rate(&redis, durability, duration));
        println!(
            "  {name:<48} {rate:>10.0} /s  = {:.3} of the primitive",
            rate / primitive
        );
    }
    if !full {
        println!("(smoke pass; run `cargo bench --bench redis_cache` to measure)");
    }
}
