//! Prometheus metrics through the `metrics` facade: names, help texts, buckets, and helpers.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "timeline_requests_total";
pub const REQUEST_DURATION: &str = "timeline_request_duration_seconds";
pub const SEND_FANOUT_WIDTH: &str = "timeline_send_fanout_width";
pub const INBOX_ROWS_WRITTEN: &str = "timeline_inbox_rows_written_total";
pub const MESSAGES_SENT: &str = "timeline_messages_sent_total";
pub const SYNC_ITEMS: &str = "timeline_sync_items_returned";
pub const SYNC_PENDING: &str = "timeline_sync_pending_total";
pub const SYNC_GAPS_SKIPPED: &str = "timeline_sync_gaps_skipped_total";
pub const SYNC_CURSOR_EXPIRED: &str = "timeline_sync_cursor_expired_total";
pub const RECOVERY_REDRIVES: &str = "timeline_recovery_redrives_total";
pub const IDEMPOTENT_REPLAYS: &str = "timeline_idempotent_replays_total";
pub const SEQUENCER_RESEEDS: &str = "timeline_sequencer_reseeds_total";
pub const MODE_SWITCHES: &str = "timeline_mode_switches_total";
pub const HOLES_FILLED: &str = "timeline_holes_filled_total";
pub const LATE_REWRITES: &str = "timeline_late_writes_rewritten_total";
pub const MESSAGE_CHANGES: &str = "timeline_message_changes_total";
pub const SYNC_SOURCES: &str = "timeline_sync_sources_merged";
pub const HOT_WINDOW_READS: &str = "timeline_hot_window_reads_total";
pub const STORE_OP_DURATION: &str = "timeline_store_operation_duration_seconds";
pub const STORE_OP_ERRORS: &str = "timeline_store_operation_errors_total";
pub const CACHE_OP_DURATION: &str = "timeline_cache_operation_duration_seconds";
pub const CACHE_OP_ERRORS: &str = "timeline_cache_operation_errors_total";
pub const CACHE_FALLBACKS: &str = "timeline_cache_fallbacks_total";
pub const CACHE_ROUND_TRIPS: &str = "timeline_cache_round_trips_total";
pub const BUILD_INFO: &str = "timeline_build_info";
pub const PUSH_STREAMS_OPEN: &str = "timeline_push_streams_open";
pub const PUSH_EVENTS: &str = "timeline_push_events_total";
pub const PUSH_MESSAGES: &str = "timeline_push_messages_total";
pub const PUSH_WAKEUPS: &str = "timeline_push_wakeups_total";
pub const PUSH_LATENCY: &str = "timeline_push_latency_seconds";
pub const PUSH_ONLINE_DEVICES: &str = "timeline_push_online_devices";
pub const PUSH_STREAMS_ENDED: &str = "timeline_push_streams_ended_total";
pub const PUSH_HINTS_PUBLISHED: &str = "timeline_push_hints_published_total";
pub const PUBSUB_RECONNECTS: &str = "timeline_pubsub_reconnects_total";
pub const NOTIFY_NOTIFICATIONS: &str = "timeline_notify_notifications_total";
pub const NOTIFY_SKIPPED: &str = "timeline_notify_skipped_total";
pub const NOTIFY_WEBHOOK_DURATION: &str = "timeline_notify_webhook_duration_seconds";
pub const NOTIFY_QUEUE_DEPTH: &str = "timeline_notify_queue_depth";
pub const LIMITED_REQUESTS: &str = "timeline_limited_requests_total";
pub const IN_FLIGHT: &str = "timeline_in_flight_requests";
pub const IN_FLIGHT_LIMIT: &str = "timeline_in_flight_limit";
pub const CONNECTIONS_OPEN: &str = "timeline_connections_open";
pub const CONNECTIONS_REFUSED: &str = "timeline_connections_refused_total";
pub const CONNECTIONS_CLOSED: &str = "timeline_connections_closed_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const WIDTH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0,
];
const ITEM_BUCKETS: &[f64] = &[0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0];
const SOURCE_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 25.0, 100.0, 250.0, 1000.0];

/// Installs the process-wide recorder once and returns the handle that renders `/metrics`.
/// Several servers in one process (tests) share it.
pub fn init() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(SEND_FANOUT_WIDTH.into()), WIDTH_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(SYNC_ITEMS.into()), ITEM_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(SYNC_SOURCES.into()), SOURCE_BUCKETS)
                })
                .map(|b| b.build_recorder())
                // The bucket lists are constants, never empty: building cannot fail.
                .unwrap_or_else(|e| unreachable!("invalid histogram buckets: {e}"));
            let handle = recorder.handle();
            // Fails only when another recorder is installed already (an embedding program's):
            // then ours renders nothing, which is that program's choice.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            register_known_series();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            for transport in ["grpc", "websocket"] {
                gauge!(PUSH_STREAMS_OPEN, "transport" => transport).increment(0.0);
            }
            gauge!(PUSH_ONLINE_DEVICES).increment(0.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(REQUESTS, "RPCs served, by rpc and gRPC status code.");
    describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "RPC latency by rpc."
    );
    describe_histogram!(
        SEND_FANOUT_WIDTH,
        "Inbox rows written by one fan-out send (members)."
    );
    describe_counter!(
        INBOX_ROWS_WRITTEN,
        "Inbox rows written by fan-out sends and re-drives."
    );
    describe_counter!(MESSAGES_SENT, "Messages accepted, by delivery mode.");
    describe_histogram!(SYNC_ITEMS, "Messages returned by one Sync call.");
    describe_counter!(
        SYNC_PENDING,
        "Sync responses held back at a young gap (pending)."
    );
    describe_counter!(
        SYNC_GAPS_SKIPPED,
        "Abandoned sequence numbers skipped by Sync."
    );
    describe_counter!(
        SYNC_CURSOR_EXPIRED,
        "Sync calls whose cursor pointed before retention."
    );
    describe_counter!(
        RECOVERY_REDRIVES,
        "Pending fan-outs re-driven by recovery or retries."
    );
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        "Sends answered from the idempotency record."
    );
    describe_counter!(
        SEQUENCER_RESEEDS,
        "Sequencer keys re-seeded from the store."
    );
    describe_counter!(
        MODE_SWITCHES,
        "Delivery mode switches, by target mode and whether forced."
    );
    describe_counter!(
        HOLES_FILLED,
        "Abandoned conv_seqs filled with a hole marker, by who found them."
    );
    describe_counter!(
        LATE_REWRITES,
        "Writes that finished later than gap_grace/2 and were rewritten under a fresh seq."
    );
    describe_counter!(
        MESSAGE_CHANGES,
        "Changes to sent messages, by kind: recall, edit, hide (delete-for-me; one per message)."
    );
    describe_histogram!(
        SYNC_SOURCES,
        "Sources merged by one Sync call (the inbox plus hot conversations read)."
    );
    describe_counter!(
        HOT_WINDOW_READS,
        "Hot source reads, by result: hit (the Cache window covered it) or miss (read from the Store)."
    );
    describe_histogram!(
        STORE_OP_DURATION,
        metrics::Unit::Seconds,
        "Store operation latency."
    );
    describe_counter!(STORE_OP_ERRORS, "Store operations that failed.");
    describe_histogram!(
        CACHE_OP_DURATION,
        metrics::Unit::Seconds,
        "Cache operation latency."
    );
    describe_counter!(CACHE_OP_ERRORS, "Cache operations that failed.");
    describe_counter!(
        CACHE_FALLBACKS,
        "Reads served without the Cache while it failed, by what was read instead from the Store."
    );
    describe_counter!(
        CACHE_ROUND_TRIPS,
        "Round trips to the Cache server (a pipeline counts once), by backend."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_gauge!(
        PUSH_STREAMS_OPEN,
        "Push streams open on this node, by transport."
    );
    describe_counter!(
        PUSH_EVENTS,
        "Events written to push streams, by kind (batch, heartbeat, typing)."
    );
    describe_counter!(PUSH_MESSAGES, "Messages written to push streams.");
    describe_counter!(
        PUSH_WAKEUPS,
        "Push stream wake-ups, by outcome: synced, or coalesced into a pending hot re-sync."
    );
    describe_histogram!(
        PUSH_LATENCY,
        metrics::Unit::Seconds,
        "From a message's durable write to its event written to a live push stream."
    );
    describe_gauge!(
        PUSH_ONLINE_DEVICES,
        "Devices with a push stream open on this node."
    );
    describe_counter!(
        PUSH_STREAMS_ENDED,
        "Push streams ended, by reason (client, expired, slow, shutdown, error)."
    );
    describe_counter!(
        PUSH_HINTS_PUBLISHED,
        "Push hints published, by kind (user, conversation, typing, dropped)."
    );
    describe_counter!(
        PUBSUB_RECONNECTS,
        "Times the node's pub/sub subscriber lost its connection and came back."
    );
    describe_counter!(
        NOTIFY_NOTIFICATIONS,
        "Offline notifications, by outcome: queued, sent (the webhook took them), failed (refused or retries exhausted), dropped (queue full)."
    );
    describe_counter!(
        NOTIFY_SKIPPED,
        "Recipients not notified of a delivery, by reason (coalesced, no_offline_device, read, not_a_member, stale, overloaded, error)."
    );
    describe_histogram!(
        NOTIFY_WEBHOOK_DURATION,
        metrics::Unit::Seconds,
        "Webhook request latency, by outcome (delivered, retry, rejected)."
    );
    describe_gauge!(
        NOTIFY_QUEUE_DEPTH,
        "Offline notifications waiting for the webhook on this node."
    );
    describe_counter!(
        LIMITED_REQUESTS,
        "Requests refused with RESOURCE_EXHAUSTED, by class (send, write, read) and scope (user: the user's rate; conversation: a hot conversation's send rate; slowmode: a member in a conversation's slowmode; source: failed authentications of an address; overload: shed by the in-flight bound)."
    );
    describe_gauge!(IN_FLIGHT, "Requests this node is serving now.");
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open on this node.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed as accepted, by the bound they were over (node, source)."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections the node closed, by reason (first_request: no complete request in time; idle; tls_handshake: failed)."
    );
    describe_gauge!(
        IN_FLIGHT_LIMIT,
        "Requests this node serves at once before shedding (0: unbounded)."
    );
}

/// Counters of rare events exist from the start at 0 (for every label value the code uses),
/// so that dashboards and alerts see "none" rather than "no data" and `rate()` works from the
/// first increment.
fn register_known_series() {
    for name in [
        SYNC_PENDING,
        SYNC_GAPS_SKIPPED,
        SYNC_CURSOR_EXPIRED,
        IDEMPOTENT_REPLAYS,
        SEQUENCER_RESEEDS,
        INBOX_ROWS_WRITTEN,
        PUSH_MESSAGES,
        PUBSUB_RECONNECTS,
    ] {
        counter!(name).increment(0);
    }
    let labelled: [(&str, &str, &[&str]); 14] = [
        (
            NOTIFY_NOTIFICATIONS,
            "outcome",
            &["queued", "sent", "failed", "dropped"],
        ),
        (
            NOTIFY_SKIPPED,
            "reason",
            &[
                "coalesced",
                "no_offline_device",
                "read",
                "not_a_member",
                "stale",
                "overloaded",
                "error",
            ],
        ),
        (PUSH_EVENTS, "kind", &["batch", "heartbeat", "typing"]),
        (PUSH_WAKEUPS, "outcome", &["synced", "coalesced"]),
        (
            PUSH_STREAMS_ENDED,
            "reason",
            &["client", "expired", "slow", "shutdown", "error"],
        ),
        (
            PUSH_HINTS_PUBLISHED,
            "kind",
            &["user", "conversation", "typing", "dropped"],
        ),
        (MESSAGES_SENT, "mode", &["fanout", "hot"]),
        (RECOVERY_REDRIVES, "trigger", &["recovery", "retry"]),
        (HOLES_FILLED, "found_by", &["sync", "history", "sweeper"]),
        (MESSAGE_CHANGES, "kind", &["recall", "edit", "hide"]),
        (LATE_REWRITES, "what", &["message", "inbox"]),
        (HOT_WINDOW_READS, "result", &["hit", "miss"]),
        (
            CACHE_FALLBACKS,
            "read",
            &[
                "epoch",
                "sequence",
                "hot_heads",
                "hot_window",
                "hole_append",
                "history_repair",
                "send_rate",
            ],
        ),
        (MODE_SWITCHES, "to", &["hot", "fanout"]),
    ];
    for bound in ["node", "source"] {
        counter!(CONNECTIONS_REFUSED, "bound" => bound).increment(0);
    }
    for reason in ["first_request", "idle", "tls_handshake"] {
        counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(0);
    }
    gauge!(CONNECTIONS_OPEN).set(0.0);
    for class in ["send", "write", "read"] {
        for scope in ["user", "source", "overload"] {
            counter!(LIMITED_REQUESTS, "class" => class, "scope" => scope).increment(0);
        }
    }
    for scope in ["conversation", "slowmode"] {
        counter!(LIMITED_REQUESTS, "class" => "send", "scope" => scope).increment(0);
    }
    for (name, label, values) in labelled {
        for value in values {
            if name == MODE_SWITCHES {
                for forced in ["true", "false"] {
                    counter!(name, label => *value, "forced" => forced).increment(0);
                }
            } else {
                counter!(name, label => *value).increment(0);
            }
        }
    }
}

/// Registers the error counter of every operation of a Store or Cache backend at 0.
pub fn register_backend_operations(
    kind: &'static str,
    backend: &'static str,
    operations: &[&'static str],
) {
    let errors = if kind == "store" {
        STORE_OP_ERRORS
    } else {
        CACHE_OP_ERRORS
    };
    for operation in operations {
        counter!(errors, "backend" => backend, "operation" => *operation).increment(0);
    }
}

/// Renders histograms' buckets and drains idle state now and then.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// A request refused by a rate limit or the in-flight bound.
pub fn record_limited(class: &'static str, scope: &'static str) {
    counter!(LIMITED_REQUESTS, "class" => class, "scope" => scope).increment(1);
}

pub fn record_request(rpc: &'static str, code: &'static str, elapsed: Duration) {
    counter!(REQUESTS, "rpc" => rpc, "code" => code).increment(1);
    histogram!(REQUEST_DURATION, "rpc" => rpc).record(elapsed.as_secs_f64());
}

/// Times one Store or Cache operation and counts its failure.
pub async fn observe_backend_op<T, E>(
    kind: &'static str,
    backend: &'static str,
    operation: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = fut.await;
    let (duration, errors) = match kind {
        "store" => (STORE_OP_DURATION, STORE_OP_ERRORS),
        _ => (CACHE_OP_DURATION, CACHE_OP_ERRORS),
    };
    histogram!(duration, "backend" => backend, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        counter!(errors, "backend" => backend, "operation" => operation).increment(1);
    }
    result
}

/// Implements `$trait` for a decorator whose `inner` field holds the decorated backend: every
/// listed method is forwarded, timed under its own name with [`observe_backend_op`].
macro_rules! timed_decorator {
    ($trait:path, $ty:ty, $kind:literal; $( $(#[$attr:meta])* fn $name:ident(&self $(, $arg:ident: $argty:ty)* ) -> $ret:ty $(= $dropped:expr)?; )*) => {
        impl $ty {
            /// The operations this decorator times, by name.
            pub const OPERATIONS: &'static [&'static str] = &[$(stringify!($name)),*];
        }

        #[async_trait::async_trait]
        impl $trait for $ty {
            fn backend(&self) -> &'static str {
                self.inner.backend()
            }
            $(
                async fn $name(&self $(, $arg: $argty)*) -> $ret {
                    $crate::metrics::observe_backend_op($kind, self.inner.backend(), stringify!($name),
                        self.inner.$name($($arg),*)).await
                }
            )*
        }
    };
}
pub(crate) use timed_decorator;
