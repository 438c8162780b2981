//! The Store conformance suite against the embedded backend, plus what only it promises:
//! data survives reopening, and the bucket size cannot change under existing data.

mod support;

use std::any::Any;
use std::sync::Arc;

use support::store_suite::{BUCKET, message};
use timeline::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
use timeline::store::*;

async fn embedded() -> Option<(Arc<dyn Store>, Box<dyn Any>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Fsync, BUCKET))
        .expect("open");
    Some((store, Box::new(dir)))
}

store_conformance_suite!(embedded);

#[tokio::test]
async fn embedded_data_survives_reopen_and_pins_its_bucket_size() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Fsync, BUCKET))
                .unwrap();
        store
            .write_message(&MessageWrite {
                message: message("g:a", 3, 33),
                pending: None,
                idempotency: None,
            })
            .await
            .unwrap();
    }
    let store = reopen(dir.path(), BUCKET).await.expect("reopen");
    assert_eq!(store.last_conv_seq("g:a").await.unwrap(), 3);
    drop(store);
    let err = reopen(dir.path(), BUCKET * 2).await;
    assert!(matches!(err, Err(StoreError::Config(_))), "{:?}", err.err());
}

/// Opens again, waiting while the previous handle's writer thread still holds the lock.
async fn reopen(dir: &std::path::Path, bucket: u64) -> StoreResult<Arc<EmbeddedStore>> {
    for _ in 0..50 {
        match EmbeddedStore::open(dir, EmbeddedOptions::new(Durability::Fsync, bucket)) {
            Err(StoreError::Io(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
    EmbeddedStore::open(dir, EmbeddedOptions::new(Durability::Fsync, bucket))
}
