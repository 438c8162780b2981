//! The ScyllaDB cluster the Scylla tests run against, and the keyspaces they create and drop.
//!
//! Those tests are `#[ignore]`d: ScyllaDB cannot run on the build machines. Run them with
//! `SCYLLA_NODES=host:9042[,host:9042] cargo test -- --ignored`.

use std::time::Duration;

use ::scylla::statement::Consistency;

use crate::store::scylla::{ScyllaOptions, ScyllaStore, parse_consistency};

/// The reason every ScyllaDB test is ignored by default.
pub const NEEDS_CLUSTER: &str =
    "needs a ScyllaDB cluster: SCYLLA_NODES=host:9042 cargo test -- --ignored";

impl ScyllaOptions {
    /// The cluster named by `SCYLLA_NODES` (`host:port`, comma-separated), with `SCYLLA_RF`
    /// (default 1), `SCYLLA_CONSISTENCY`, `SCYLLA_LOCAL_DC`, `SCYLLA_USERNAME`/`SCYLLA_PASSWORD`;
    /// a fresh keyspace named after `purpose`, the process and a counter.
    ///
    /// # Panics
    /// When `SCYLLA_NODES` is unset or a variable is malformed: an ignored test run on purpose
    /// must say why it cannot run, never pass without running.
    pub fn from_test_env(purpose: &str, bucket_size: u64) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(nodes) = env("SCYLLA_NODES") else {
            panic!("SCYLLA_NODES is not set: this test {NEEDS_CLUSTER}");
        };
        let parsed = |k: &str, what: &str| {
            env(k).map(|v| {
                v.parse()
                    .unwrap_or_else(|e| panic!("{k}={v:?} is not {what}: {e}"))
            })
        };
        let consistency = env("SCYLLA_CONSISTENCY").map_or(Consistency::LocalQuorum, |c| {
            parse_consistency(&c).unwrap_or_else(|e| panic!("SCYLLA_CONSISTENCY: {e}"))
        });
        Self {
            nodes: crate::units::comma_list(&nodes),
            keyspace: format!(
                "timeline_{purpose}_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
            .parse()
            .expect("a valid keyspace name"),
            local_dc: env("SCYLLA_LOCAL_DC").unwrap_or_default(),
            write_consistency: consistency,
            read_consistency: consistency,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            username: env("SCYLLA_USERNAME"),
            password: env("SCYLLA_PASSWORD"),
            replication_factor: parsed("SCYLLA_RF", "a number").unwrap_or(1),
            bucket_size,
            ..Self::default()
        }
    }
}

/// Drops its keyspace when dropped, from a thread of its own (Drop cannot await): the
/// ScyllaDB tests' cleanup.
pub struct TestKeyspace(pub ScyllaOptions);

impl Drop for TestKeyspace {
    fn drop(&mut self) {
        let options = self.0.clone();
        let _ = std::thread::spawn(move || {
            let dropped = tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(ScyllaStore::drop_keyspace(&options))
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = dropped {
                eprintln!("could not drop keyspace {}: {e}", options.keyspace);
            }
        })
        .join();
    }
}
