//! Accepting and keeping connections: bounds on open connections (per node and per source
//! address), a deadline for a connection's first request, an idle timeout, HTTP/2 keep-alive
//! pings and limits, optional TLS; each connection is then served by hyper with the router.
//!
//! Without these a client could open thousands of connections that send half a request (or
//! an HTTP/2 preface) and nothing more, and the node would keep every one of them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use super::tls::TlsAcceptors;
use crate::metrics::{CONNECTIONS_CLOSED, CONNECTIONS_OPEN, CONNECTIONS_REFUSED};
use crate::protect::ProtectOptions;

/// How long a connection told to close may take to finish what it is doing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The open connections, counted per node and per source address.
#[derive(Default)]
struct Tally {
    total: u32,
    per_source: HashMap<IpAddr, u32>,
}

struct Connections {
    tally: Mutex<Tally>,
    /// Signalled when the last connection closes.
    drained: Notify,
    max: u32,
    max_per_source: u32,
}

/// A connection's place in the tally, released on drop.
struct Slot {
    connections: Arc<Connections>,
    source: IpAddr,
}

impl Connections {
    fn open(self: &Arc<Self>, source: IpAddr) -> Result<Slot, &'static str> {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        if self.max > 0 && tally.total >= self.max {
            return Err("node");
        }
        let from_source = tally.per_source.entry(source).or_default();
        if self.max_per_source > 0 && *from_source >= self.max_per_source {
            return Err("source");
        }
        *from_source += 1;
        tally.total += 1;
        metrics::gauge!(CONNECTIONS_OPEN).set(f64::from(tally.total));
        Ok(Slot {
            connections: self.clone(),
            source,
        })
    }

    fn open_count(&self) -> u32 {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut tally = self
            .connections
            .tally
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = tally.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                tally.per_source.remove(&self.source);
            }
        }
        tally.total -= 1;
        metrics::gauge!(CONNECTIONS_OPEN).set(f64::from(tally.total));
        if tally.total == 0 {
            self.connections.drained.notify_waiters();
        }
    }
}

/// What a connection is doing: requests in flight (a response counts until its body ends)
/// and when that last changed.
struct Activity {
    opened: Instant,
    active: AtomicU32,
    /// Milliseconds after `opened` of the last start or end of a request.
    changed_ms: AtomicU64,
    served_any: AtomicBool,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            active: AtomicU32::new(0),
            changed_ms: AtomicU64::new(0),
            served_any: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        self.changed_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Release);
    }

    fn begin(self: &Arc<Self>) -> InFlightRequest {
        self.served_any.store(true, Ordering::Release);
        self.active.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlightRequest(self.clone())
    }

    /// Why the connection should close now, if it should.
    fn overdue(&self, options: &ProtectOptions) -> Option<&'static str> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let quiet = self.opened.elapsed().saturating_sub(Duration::from_millis(
            self.changed_ms.load(Ordering::Acquire),
        ));
        if !self.served_any.load(Ordering::Acquire) {
            (quiet >= options.first_request_timeout).then_some("first_request")
        } else {
            (quiet >= options.idle_timeout).then_some("idle")
        }
    }
}

struct InFlightRequest(Arc<Activity>);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// A response body that keeps its request counted as in flight until it ends (a push stream's
/// body lasts as long as the stream).
struct Tracked {
    inner: Body,
    _request: InFlightRequest,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Accepts on `listener` until `shutdown` completes, then runs `on_shutdown` (streams end
/// first), tells every connection to close, and waits for them up to `drain_bound`.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    options: ProtectOptions,
    tls: Option<TlsAcceptors>,
    shutdown: impl Future<Output = ()>,
    on_shutdown: impl Future<Output = ()>,
    drain_bound: Duration,
) -> std::io::Result<()> {
    let connections = Arc::new(Connections {
        tally: Mutex::new(Tally::default()),
        drained: Notify::new(),
        max: options.max_connections,
        max_per_source: options.max_connections_per_source,
    });
    let options = Arc::new(options);
    let (closing, close_watch) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is fine.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let slot = match connections.open(remote.ip()) {
            Ok(slot) => slot,
            Err(bound) => {
                // Closed as accepted: costs the node nothing more.
                metrics::counter!(CONNECTIONS_REFUSED, "bound" => bound).increment(1);
                drop(tcp);
                continue;
            }
        };
        // Without TCP_NODELAY small gRPC frames wait for delayed ACKs (tens of ms each).
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let options = options.clone();
        let tls = tls.clone();
        let close_watch = close_watch.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_one(tcp, remote, app, &options, close_watch).await,
                Some(tls) => {
                    let acceptor = tls.current();
                    match tokio::time::timeout(options.first_request_timeout, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(io)) => serve_one(io, remote, app, &options, close_watch).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            metrics::counter!(CONNECTIONS_CLOSED, "reason" => "tls_handshake")
                                .increment(1);
                        }
                        Err(_) => {
                            metrics::counter!(CONNECTIONS_CLOSED, "reason" => "first_request")
                                .increment(1);
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    on_shutdown.await;
    closing.send_replace(true);
    let drained = connections.drained.notified();
    if connections.open_count() > 0 && tokio::time::timeout(drain_bound, drained).await.is_err() {
        tracing::warn!(
            open = connections.open_count(),
            "connections still open {drain_bound:?} into the shutdown: closing them"
        );
    }
    Ok(())
}

/// Serves one connection until it ends, is idle too long, or the node shuts down.
async fn serve_one<I>(
    io: I,
    remote: SocketAddr,
    app: Router,
    options: &ProtectOptions,
    mut close_watch: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let tracked = activity.clone();
    let service = tower::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(remote));
        let in_flight = tracked.begin();
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|inner| {
                Body::new(Tracked {
                    inner,
                    _request: in_flight,
                })
            }))
        }
    });

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.first_request_timeout)
        .max_buf_size((options.max_header_bytes as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout)
        .max_concurrent_streams(options.max_concurrent_streams)
        .max_header_list_size(options.max_header_bytes)
        // WebSockets over HTTP/2 (RFC 8441).
        .enable_connect_protocol();
    let mut conn = pin!(
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
    );

    let tick = (options.first_request_timeout.min(options.idle_timeout) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(5));
    let mut check = tokio::time::interval(tick);
    let mut close_by: Option<tokio::time::Instant> = None;
    let mut told_to_close = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = check.tick(), if !told_to_close => {
                if let Some(reason) = activity.overdue(options) {
                    metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
                    conn.as_mut().graceful_shutdown();
                    told_to_close = true;
                    close_by = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                }
            }
            changed = close_watch.changed(), if !told_to_close => {
                if changed.is_err() || *close_watch.borrow() {
                    conn.as_mut().graceful_shutdown();
                    told_to_close = true;
                }
            }
            () = sleep_until(close_by) => {
                // A peer that neither finishes its request nor reads: drop the connection.
                return;
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_per_node_and_per_source_and_released() {
        let connections = Arc::new(Connections {
            tally: Mutex::new(Tally::default()),
            drained: Notify::new(),
            max: 3,
            max_per_source: 2,
        });
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = [connections.open(a).unwrap(), connections.open(a).unwrap()];
        assert_eq!(connections.open(a).err(), Some("source"));
        let other = connections.open(b).unwrap();
        assert_eq!(connections.open(b).err(), Some("node"));
        drop(first);
        assert_eq!(connections.open_count(), 1);
        let _again = connections.open(a).unwrap();
        drop(other);
        assert_eq!(connections.open_count(), 1);
        let forgotten = !connections
            .tally
            .lock()
            .unwrap()
            .per_source
            .contains_key(&b);
        assert!(forgotten, "a source with no connection is forgotten");
    }
}
