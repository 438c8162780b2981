//! Files read again without a restart: on SIGHUP, and when one of them changes (polled).
//! TLS certificates and token keys both rotate this way.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = std::convert::Infallible;

fn modified(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Calls `reload` on SIGHUP and whenever one of `paths` changes (checked every `interval`),
/// until the task is aborted. A failed reload is logged and the previous state stays in use.
/// The signal handler is registered before this returns: from then on SIGHUP reloads instead
/// of ending the process.
pub(super) fn watch(
    what: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    mut reload: impl FnMut() -> Result<(), String> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    let mut hangup: Option<Hangup> =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let mut hangup: Option<Hangup> = None;
    tokio::spawn(async move {
        let mut seen = modified(&paths);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            let asked = async {
                match hangup.as_mut() {
                    #[cfg(unix)]
                    Some(signal) => signal.recv().await.is_some(),
                    _ => std::future::pending().await,
                }
            };
            let by_signal = tokio::select! {
                _ = tick.tick() => false,
                got = asked => got,
            };
            let now = modified(&paths);
            if !by_signal && now == seen {
                continue;
            }
            seen = now;
            match reload() {
                Ok(()) => tracing::info!("{what} reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "{what}: reload failed, the previous one stays in use");
                }
            }
        }
    })
}
