//! One running node: backends chosen by configuration, the pipeline over them, background
//! loops, and the API on a listener.

use std::future::Future;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::api::{self, Authenticator};
use crate::cache::local::LocalCache;
use crate::cache::metered::MeteredCache;
use crate::cache::redis::RedisCache;
use crate::cache::{Cache, CacheError};
use crate::config::{CacheKind, Config, ConfigError, StoreKind};
use crate::metrics;
use crate::notify::Notifier;
use crate::protect::Protection;
use crate::push::Hub;
use crate::store::embedded::EmbeddedStore;
use crate::store::metered::MeteredStore;
use crate::store::scylla::ScyllaStore;
use crate::store::{Store, StoreError};
use crate::timeline::{SystemClock, Timeline};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Secret(#[from] api::SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] api::TlsError),
    #[error(transparent)]
    Auth(#[from] api::AuthError),
}

pub struct Node {
    pub timeline: Arc<Timeline>,
    pub auth: Arc<Authenticator>,
    pub push: Arc<Hub>,
    /// Offline notifications, when a webhook is configured.
    pub notify: Option<Arc<Notifier>>,
    pub protect: Arc<Protection>,
    pub metrics: PrometheusHandle,
}

impl Node {
    pub async fn build(config: &Config) -> Result<Self, ServerError> {
        config.validate()?;
        let metrics = metrics::init();
        let (secret, generated) =
            api::resolve_jwt_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
        if generated {
            tracing::warn!(
                path = %config.data_dir.join(api::SECRET_FILE).display(),
                "no jwt_secret configured: generated a random one into the data directory"
            );
        }
        let store: Arc<dyn Store> = match config.store {
            StoreKind::Embedded => {
                EmbeddedStore::open(&config.data_dir, config.embedded_options())?
            }
            StoreKind::Scylla => ScyllaStore::connect(&config.scylla_options()).await?,
        };
        Self::build_on(config, store, metrics, &secret).await
    }

    /// A node over a Store opened already: several nodes of one process (tests) share one, as
    /// nodes of a cluster share ScyllaDB.
    pub async fn build_on_store(
        config: &Config,
        store: Arc<dyn Store>,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let metrics = metrics::init();
        let (secret, _) = api::resolve_jwt_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
        Self::build_on(config, store, metrics, &secret).await
    }

    async fn build_on(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: PrometheusHandle,
        secret: &str,
    ) -> Result<Self, ServerError> {
        let cache: Arc<dyn Cache> = match config.cache {
            CacheKind::Local => Arc::new(LocalCache::new()),
            CacheKind::Redis => Arc::new(RedisCache::connect(config.redis_options())?),
        };
        let cache = MeteredCache::wrap(cache);
        let timeline = Timeline::new(
            MeteredStore::wrap(store),
            cache.clone(),
            config.limits(),
            Arc::new(SystemClock),
        );
        let push = Hub::start(
            timeline.clone(),
            cache.clone(),
            config.push.clone(),
            config.node_id.to_string(),
        )
        .await?;
        let notify = Notifier::start(timeline.clone(), cache, config.notify.clone());
        Ok(Self {
            timeline,
            auth: Arc::new(Authenticator::with_options(secret, &config.auth)?),
            push,
            notify,
            protect: Protection::new(config.protect.clone()),
            metrics,
        })
    }

    /// Serves on `listener` until `shutdown`, with the recovery and metrics loops running.
    pub async fn serve(
        self,
        config: &Config,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let recovery = self
            .timeline
            .spawn_recovery(config.limits.recovery_interval);
        let upkeep = metrics::spawn_upkeep(self.metrics.clone());
        let keys_watch = self.auth.watch_keys();
        let (tls, tls_watch) = match api::TlsAcceptors::start(&config.tls)? {
            Some((acceptors, watch)) => (Some(acceptors), Some(watch)),
            None => (None, None),
        };
        let served = api::serve(
            listener,
            api::TimelineApi {
                timeline: self.timeline.clone(),
                auth: self.auth.clone(),
                push: self.push.clone(),
                protect: self.protect.clone(),
            },
            self.metrics.clone(),
            config.grpc_reflection,
            tls,
            shutdown,
        )
        .await;
        recovery.abort();
        upkeep.abort();
        for watch in [tls_watch, keys_watch].into_iter().flatten() {
            watch.abort();
        }
        self.timeline.flush_store().await?;
        Ok(served?)
    }
}
