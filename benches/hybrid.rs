//! Hybrid diffusion costs, measured on the pipeline over the embedded store (fsync on) and the
//! local cache, with the default thresholds (hot at 500 members):
//!
//! 1. SendMessage against member count: inbox rows written per send and latency, showing the
//!    knee where conversations turn hot;
//! 2. Sync against the number of hot conversations of the reader, with nothing new and with
//!    one new message in each of ten of them.
//!
//! `cargo bench --bench hybrid`; under `cargo test` it runs a short smoke pass.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{caller, group, percentile, send};
use timeline::cache::local::LocalCache;
use timeline::store::DeliveryMode;
use timeline::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
use timeline::timeline::{CreateConversation, Limits, SystemClock, Timeline};

/// The value of a counter in the Prometheus rendering (0 when absent).
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Env {
    timeline: Arc<Timeline>,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Fsync, 4096))
        .expect("store");
    let limits = Limits {
        max_members_per_call: 100_000,
        mode_min_dwell: Duration::ZERO,
        // Sends flat out: no conversation send rate.
        hot_conversation_sends_per_sec: 0,
        ..Limits::default()
    };
    let timeline = Timeline::new(
        store,
        Arc::new(LocalCache::new()),
        limits,
        Arc::new(SystemClock),
    );
    Env {
        timeline,
        _dir: dir,
    }
}

async fn send_cost(sizes: &[usize], sends: usize) {
    let metrics = timeline::metrics::init();
    println!(
        "\nSendMessage against member count (hot_threshold 500, {sends} sends each after one warm-up send)"
    );
    println!(
        "{:>8} {:>7} {:>18} {:>9} {:>9}",
        "members", "mode", "inbox rows / send", "p50 ms", "p99 ms"
    );
    for &members in sizes {
        let e = env();
        let id = format!("g:size{members}");
        group(&e.timeline, "owner", &id, members).await;
        // The warm-up send also lets a large group switch to hot (no dwell here).
        send(&e.timeline, "owner", &id, 0).await;
        let before = counter(&metrics.render(), "timeline_inbox_rows_written_total");
        let mut latencies = Vec::with_capacity(sends);
        for n in 1..=sends {
            let started = Instant::now();
            send(&e.timeline, "owner", &id, n).await;
            latencies.push(started.elapsed());
        }
        let rows = counter(&metrics.render(), "timeline_inbox_rows_written_total") - before;
        let mode = e
            .timeline
            .get_conversation(&caller("owner"), &id)
            .await
            .expect("conversation")
            .conversation
            .mode();
        println!(
            "{:>8} {:>7} {:>18.0} {:>9.2} {:>9.2}",
            members,
            if mode == DeliveryMode::Hot {
                "hot"
            } else {
                "fanout"
            },
            rows / sends as f64,
            percentile(&mut latencies, 0.5),
            percentile(&mut latencies, 0.99),
        );
    }
}

async fn sync_cost(counts: &[usize], iterations: usize) {
    println!("\nSync (limit 100) against the reader's hot conversations ({iterations} calls each)");
    println!(
        "{:>6} {:>22} {:>22}",
        "hot", "nothing new p50/p99 ms", "10 new p50/p99 ms"
    );
    for &count in counts {
        let e = env();
        let t = &e.timeline;
        for c in 0..count {
            let id = format!("g:hot{c}");
            t.create_conversation(
                &caller("owner"),
                CreateConversation {
                    kind: timeline::store::ConversationKind::Group,
                    conversation_id: id.clone(),
                    title: String::new(),
                    member_ids: vec!["reader".into()],
                },
            )
            .await
            .expect("create");
            t.switch_mode(&id, DeliveryMode::Hot, true)
                .await
                .expect("force hot");
            send(t, "owner", &id, 0).await;
        }
        let reader = caller("reader");
        let mut cursor = String::new();
        loop {
            let page = t.sync(&reader, &cursor, 500).await.expect("sync");
            cursor = page.next_cursor;
            if !page.has_more {
                break;
            }
        }
        let mut idle = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            let page = t.sync(&reader, &cursor, 100).await.expect("sync");
            idle.push(started.elapsed());
            assert!(page.messages.is_empty());
        }
        for c in 0..count.min(10) {
            send(
                t,
                "owner",
                &format!("g:hot{}", c * count / count.min(10)),
                1,
            )
            .await;
        }
        let mut fresh = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            let page = t.sync(&reader, &cursor, 100).await.expect("sync");
            fresh.push(started.elapsed());
            assert_eq!(page.messages.len(), count.min(10));
        }
        println!(
            "{:>6} {:>10.2} / {:>9.2} {:>10.2} / {:>9.2}",
            count,
            percentile(&mut idle, 0.5),
            percentile(&mut idle, 0.99),
            percentile(&mut fresh, 0.5),
            percentile(&mut fresh, 0.99),
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if full {
            send_cost(&[2, 10, 100, 499, 500, 5_000, 50_000], 50).await;
            sync_cost(&[1, 10, 100, 1_000], 50).await;
        } else {
            send_cost(&[2, 10], 3).await;
            sync_cost(&[1, 10], 3).await;
            println!("(smoke pass; run `cargo bench --bench hybrid` to measure)");
        }
    });
}
