//! The gRPC services tools and load balancers expect beside ours, on the same port:
//!
//! - server reflection (`grpc.reflection.v1` and `v1alpha`), fed with the descriptor set the
//!   build compiles from `proto/`: grpcurl, grpcui, Postman and Evans need no proto file;
//! - the standard health service (`grpc.health.v1.Health`): `Check` and `Watch` for `""` and for
//!   `timeline.v1.TimelineService`, `SERVING` while the Store answers and the Cache answers
//!   (without the Cache sends cannot succeed), re-evaluated every second, `NOT_SERVING` from the
//!   start of a shutdown so that balancers drain the node.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::proto::timeline_service_server::TimelineServiceServer;
use crate::timeline::Timeline;

/// How often the health service re-evaluates readiness.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// A readiness probe that takes longer than this counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The fully-qualified name the health service reports besides `""`.
pub const SERVICE_NAME: &str =
    <TimelineServiceServer<super::grpc::TimelineApi> as NamedService>::NAME;

#[derive(Debug, thiserror::Error)]
#[error("cannot build the reflection service: {0}")]
pub struct ReflectionError(String);

/// `routes` with the health service and, when `reflection`, the reflection services; and the
/// reporter that sets the health status.
pub fn add_services(
    routes: Routes,
    reflection: bool,
) -> Result<(Routes, HealthReporter), ReflectionError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut routes = routes.add_service(health);
    if reflection {
        // Every service on the port, both reflection versions included (each builder would
        // otherwise list only one of them).
        let described = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
                .include_reflection_service(false)
        };
        let v1 = described()
            .build_v1()
            .map_err(|e| ReflectionError(e.to_string()))?;
        let v1alpha = described()
            .build_v1alpha()
            .map_err(|e| ReflectionError(e.to_string()))?;
        routes = routes.add_service(v1).add_service(v1alpha);
    }
    Ok((routes, reporter))
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Whether the node can serve every RPC: the Store and the Cache answer.
async fn ready(timeline: &Timeline) -> bool {
    let probe =
        async { timeline.store_ready().await.is_ok() && timeline.cache_ready().await.is_ok() };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .unwrap_or(false)
}

async fn evaluate(timeline: &Timeline) -> ServingStatus {
    if ready(timeline).await {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Reports the current status (before serving: no probe sees the service unregistered); then
/// keeps it current, in the background, until `stopping` turns true, and reports
/// `NOT_SERVING`.
pub async fn track_health(
    reporter: HealthReporter,
    timeline: Arc<Timeline>,
    mut stopping: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut last = evaluate(&timeline).await;
    set_all(&reporter, last).await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
                _ = stopping.wait_for(|s| *s) => break,
            }
            let status = evaluate(&timeline).await;
            if status != last {
                tracing::info!(?status, "gRPC health changed");
                set_all(&reporter, status).await;
                last = status;
            }
        }
        set_all(&reporter, ServingStatus::NotServing).await;
    })
}
