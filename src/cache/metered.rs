//! A `Cache` decorator that records the latency and errors of every operation, per backend.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::cache::with_cache_methods;
use crate::metrics::timed_decorator;

pub struct MeteredCache {
    inner: Arc<dyn Cache>,
}

impl MeteredCache {
    pub fn wrap(inner: Arc<dyn Cache>) -> Arc<dyn Cache> {
        crate::metrics::register_backend_operations("cache", inner.backend(), Self::OPERATIONS);
        Arc::new(Self { inner })
    }
}

with_cache_methods!(timed_decorator { Cache, MeteredCache, "cache"; });
