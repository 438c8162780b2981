//! The Cache conformance suite against the local (in-process) backend.

mod support;

use std::any::Any;
use std::sync::Arc;

use timeline::cache::Cache;
use timeline::cache::local::LocalCache;

async fn local() -> Option<(Arc<dyn Cache>, Box<dyn Any>)> {
    Some((Arc::new(LocalCache::new()), Box::new(())))
}

cache_conformance_suite!(local);
