//! The Store conformance suite against ScyllaDB, when `SCYLLA_NODES` names a cluster
//! (`host:port`, comma-separated; see `ScyllaOptions::from_test_env` for the other variables).
//! Each test gets a fresh keyspace (`timeline migrate`'s statements, replication factor
//! `SCYLLA_RF`, default 1), dropped afterwards.
//!
//! The tests are ignored by default (ScyllaDB cannot run on the build machines): run them with
//! `SCYLLA_NODES=127.0.0.1:9042 cargo test --test store_conformance_scylla -- --ignored`.

mod support;

use std::any::Any;
use std::sync::Arc;

use support::store_suite::BUCKET;
use timeline::store::Store;
use timeline::store::scylla::{ScyllaOptions, ScyllaStore};
use timeline::testkit::scylla::TestKeyspace;

fn options() -> ScyllaOptions {
    ScyllaOptions::from_test_env("conformance", BUCKET)
}

async fn scylla() -> Option<(Arc<dyn Store>, Box<dyn Any>)> {
    let options = options();
    ScyllaStore::migrate(&options)
        .await
        .expect("migrate a fresh keyspace");
    let guard = TestKeyspace(options.clone());
    let store = ScyllaStore::connect(&options).await.expect("connect");
    Some((store, Box::new(guard)))
}

store_conformance_suite!(
    #[ignore = "needs a ScyllaDB cluster: SCYLLA_NODES=host:9042 cargo test -- --ignored"]
    scylla
);

#[tokio::test]
#[ignore = "needs a ScyllaDB cluster: SCYLLA_NODES=host:9042 cargo test -- --ignored"]
async fn migrate_is_idempotent() {
    let options = options();
    let _guard = TestKeyspace(options.clone());
    let first = ScyllaStore::migrate(&options).await.expect("first");
    let second = ScyllaStore::migrate(&options).await.expect("second");
    assert_eq!(first, second);
}
