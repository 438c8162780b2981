//! The Store conformance suite against ScyllaDB, when `SCYLLA_NODES` names a cluster
//! (`host:port`, comma-separated; see `ScyllaOptions::from_test_env` for the other variables).
//! Each test gets a fresh keyspace (`timeline migrate`'s statements, replication factor
//! `SCYLLA_RF`, default 1), dropped afterwards.
//!
//!   SCYLLA_NODES=127.0.0.1:9042 cargo test --test store_conformance_scylla
//!
//! Without `SCYLLA_NODES` every test says it was skipped and passes.

mod support;

use std::any::Any;
use std::sync::Arc;

use support::store_suite::BUCKET;
use timeline::store::Store;
use timeline::store::scylla::{SKIPPED_WITHOUT_CLUSTER, ScyllaOptions, ScyllaStore, TestKeyspace};

fn options() -> Option<ScyllaOptions> {
    let options = ScyllaOptions::from_test_env("conformance", BUCKET);
    if options.is_none() {
        eprintln!("{SKIPPED_WITHOUT_CLUSTER}");
    }
    options
}

async fn scylla() -> Option<(Arc<dyn Store>, Box<dyn Any>)> {
    let options = options()?;
    ScyllaStore::migrate(&options)
        .await
        .expect("migrate a fresh keyspace");
    let guard = TestKeyspace(options.clone());
    let store = ScyllaStore::connect(&options).await.expect("connect");
    Some((store, Box::new(guard)))
}

store_conformance_suite!(scylla);

#[tokio::test]
async fn migrate_is_idempotent() {
    let Some(options) = options() else { return };
    let _guard = TestKeyspace(options.clone());
    let first = ScyllaStore::migrate(&options).await.expect("first");
    let second = ScyllaStore::migrate(&options).await.expect("second");
    assert_eq!(first, second);
}
