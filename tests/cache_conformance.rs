//! The Cache conformance suite against every backend: the local (in-process) one, and Redis
//! on a private `redis-server` per test.

mod support;

use std::any::Any;
use std::sync::Arc;

use timeline::cache::Cache;

mod local {
    use super::*;
    use timeline::cache::local::LocalCache;

    async fn local() -> Option<(Arc<dyn Cache>, Box<dyn Any>)> {
        Some((Arc::new(LocalCache::new()), Box::new(())))
    }

    cache_conformance_suite!(local);
}

mod redis {
    use super::*;
    use timeline::cache::redis::{RedisCache, RedisOptions};
    use timeline::testkit::redis_server::RedisProcess;

    async fn redis() -> Option<(Arc<dyn Cache>, Box<dyn Any>)> {
        let server = RedisProcess::start().expect("redis-server");
        let cache = RedisCache::connect(RedisOptions::single(server.url())).expect("connect");
        Some((Arc::new(cache), Box::new(server)))
    }

    cache_conformance_suite!(redis);
}
