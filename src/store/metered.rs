//! A `Store` decorator that records the latency and errors of every operation, per backend.

use std::sync::Arc;

use super::*;
use crate::metrics::timed_decorator;
use crate::store::with_store_methods;

pub struct MeteredStore {
    inner: Arc<dyn Store>,
}

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        crate::metrics::register_backend_operations("store", inner.backend(), Self::OPERATIONS);
        Arc::new(Self { inner })
    }
}

with_store_methods!(timed_decorator { Store, MeteredStore, "store"; });
