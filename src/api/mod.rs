//! The edge: gRPC (h2c) and plain HTTP on one listener, authentication, error mapping.

pub mod auth;
pub mod codec;
mod conventions;
mod convert;
mod grpc;
mod http;
mod secret;
pub mod status;
mod stream;
mod websocket;

use std::future::Future;
use std::net::SocketAddr;

use axum::serve::ListenerExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use auth::Authenticator;
pub use grpc::TimelineApi;
pub use secret::{SECRET_FILE, SecretError, resolve_jwt_secret};

use crate::proto::timeline_service_server::TimelineServiceServer;

/// Serves gRPC and HTTP on `listener` until `shutdown` completes; with `reflection`, gRPC
/// server reflection too (the health service always).
pub async fn serve(
    listener: TcpListener,
    api: TimelineApi,
    metrics: PrometheusHandle,
    reflection: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeline = api.timeline.clone();
    let push = api.push.clone();
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
    // Without TCP_NODELAY small gRPC frames wait for delayed ACKs (tens of ms each).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // At shutdown, streams end first (telling clients to reconnect elsewhere): neither axum
    // nor tonic waits for them, and an open stream would hold the graceful shutdown forever.
    let grace = push.options().shutdown_grace;
    let (begun, shutting_down) = tokio::sync::oneshot::channel::<()>();
    // Each request learns its client's address: failed authentications are limited by it.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = begun.send(());
        // Balancers watching the health service stop sending new calls here.
        stopping.send_replace(true);
        push.shut_down().await;
    });
    // A client that never closes its side (a stream told to go, its request still open) would
    // hold the connection, and the shutdown, forever: past twice the grace, stop waiting.
    let bounded = async move {
        match shutting_down.await {
            Ok(()) => tokio::time::sleep(grace * 2).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = serving.into_future() => served,
        () = bounded => {
            tracing::warn!("connections still open {grace:?} after the streams ended: closing them");
            Ok(())
        }
    };
    health.abort();
    upkeep.abort();
    served
}
