//! The edge: gRPC and plain HTTP on one listener (cleartext h2c/HTTP/1.1, or TLS),
//! connection bounds, authentication, rate limits, error mapping.

pub mod auth;
pub mod codec;
mod connections;
mod conventions;
mod convert;
mod grpc;
mod http;
mod reload;
mod secret;
pub mod status;
mod stream;
pub mod tls;
mod websocket;

use std::future::Future;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use auth::{AuthError, AuthOptions, Authenticator, PublicKeyFile};
pub use grpc::TimelineApi;
pub use secret::{SECRET_FILE, SecretError, resolve_jwt_secret};
pub use tls::{TlsAcceptors, TlsError, TlsOptions};

use crate::proto::timeline_service_server::TimelineServiceServer;

/// Serves gRPC and HTTP on `listener` (over TLS when `tls` is given) until `shutdown`
/// completes; with `reflection`, gRPC server reflection too (the health service always).
pub async fn serve(
    listener: TcpListener,
    api: TimelineApi,
    metrics: PrometheusHandle,
    reflection: bool,
    tls: Option<TlsAcceptors>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeline = api.timeline.clone();
    let push = api.push.clone();
    let protect = api.protect.options().clone();
    let max_body = timeline.limits().max_body_bytes;
    let upkeep = api.protect.spawn_upkeep();
    let grpc = TimelineServiceServer::new(api.clone())
        .max_decoding_message_size(max_body + 64 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let (routes, health) = conventions::add_services(tonic::service::Routes::new(grpc), reflection)
        .map_err(std::io::Error::other)?;
    let app = routes
        .into_axum_router()
        .merge(http::router(api, metrics, max_body));
    let (stopping, stop_watch) = tokio::sync::watch::channel(false);
    let health = conventions::track_health(health, timeline, stop_watch).await;
    // At shutdown, streams end first (telling clients to reconnect elsewhere): an open stream
    // would otherwise hold its connection, and the shutdown, forever. A client that never
    // closes its side (a stream told to go, its request still open) is waited for twice the
    // grace at most.
    let grace = push.options().shutdown_grace;
    let on_shutdown = async move {
        // Balancers watching the health service stop sending new calls here.
        stopping.send_replace(true);
        push.shut_down().await;
    };
    let served = connections::serve(
        listener,
        app,
        protect,
        tls,
        shutdown,
        on_shutdown,
        grace * 2,
    )
    .await;
    health.abort();
    upkeep.abort();
    served
}
