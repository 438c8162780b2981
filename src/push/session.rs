//! One stream's session: catch up from the cursor through Sync, page by page, then wait for
//! wake-ups, heartbeats, token refreshes and shutdown; every batch carries the cursor to
//! resume from, so the client's last received cursor is its acknowledgement and the server
//! keeps no per-stream delivery state beyond it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::events::*;
use super::hub::{Admitted, Hub, Registration, Shared, StreamLimitError};
use crate::metrics;

/// How soon a stream stopped at a young gap (`pending`) syncs again.
const PENDING_RETRY: Duration = Duration::from_millis(100);

struct Session {
    registration: Registration,
    shared: Arc<Shared>,
    open: OpenStream,
    shutdown: watch::Receiver<bool>,
    expires: Instant,
    cursor: String,
    /// The hot conversations the stream listens to, as the last sync listed them.
    hot: Vec<String>,
    live: bool,
}

impl Hub {
    /// Opens a stream: registers it (within the limits), listens to its user's channel, marks
    /// the device online, and starts its session. Returns the events to write to the client
    /// and where the client's control frames go.
    pub async fn open(
        self: &Arc<Self>,
        open: OpenStream,
    ) -> Result<(mpsc::Receiver<StreamItem>, mpsc::Sender<Control>), StreamLimitError> {
        let Admitted {
            registration,
            shared,
            events,
            control,
            frames,
            shutdown,
        } = self.admit(&open).await?;
        tokio::spawn(run(registration, shared, open, frames, shutdown));
        Ok((events, control))
    }
}

/// Runs a stream until it ends, then sends its end to the client and unregisters it.
async fn run(
    registration: Registration,
    shared: Arc<Shared>,
    open: OpenStream,
    control: mpsc::Receiver<Control>,
    shutdown: watch::Receiver<bool>,
) {
    let mut session = Session {
        expires: deadline_of(open.expires_at_ms, registration.hub().timeline().now_ms()),
        cursor: open.cursor.clone(),
        registration,
        shared,
        open,
        shutdown,
        hot: Vec::new(),
        live: false,
    };
    let end = session.serve(control).await;
    ::metrics::counter!(metrics::PUSH_STREAMS_ENDED, "reason" => end.reason()).increment(1);
    if !matches!(end, StreamEnd::Client) {
        let grace = session.registration.hub().options.shutdown_grace;
        let _ = tokio::time::timeout(grace, session.shared.out.send(Err(end))).await;
    }
}

/// Completes when the node shuts down (or the hub is gone).
async fn shut_down(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|down| *down).await;
}

/// The instant a wall-clock expiry (Unix ms) falls on.
fn deadline_of(expires_at_ms: i64, now_ms: i64) -> Instant {
    let left = u64::try_from(expires_at_ms.saturating_sub(now_ms)).unwrap_or(0);
    Instant::now() + Duration::from_millis(left)
}

impl Session {
    async fn serve(&mut self, mut control: mpsc::Receiver<Control>) -> StreamEnd {
        let hub = self.registration.hub().clone();
        let options = hub.options.clone();
        // Heartbeats start at a random point of the first interval, so that streams opened
        // together (a reconnect herd) do not beat together.
        let first = options.heartbeat / 2 + options.heartbeat.mul_f64(rand::random::<f64>() / 2.0);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + first, options.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled_since: Option<Instant> = None;
        let mut last_sync = Instant::now() - options.hot_interval;
        let mut hot_due: Option<Instant> = None;
        let mut pending_due: Option<Instant> = None;
        let mut control_open = true;
        let mut need_sync = true;
        loop {
            if need_sync {
                need_sync = false;
                hot_due = None;
                pending_due = None;
                // The sync below covers every hint heard so far.
                self.shared.wake_now.store(false, Ordering::Release);
                self.shared.hot_pending.store(false, Ordering::Release);
                last_sync = Instant::now();
                match self.catch_up().await {
                    Ok(true) => pending_due = Some(Instant::now() + PENDING_RETRY),
                    Ok(false) => {}
                    Err(end) => return end,
                }
            }
            let far = Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                biased;
                _ = shut_down(&mut self.shutdown) => return StreamEnd::Shutdown,
                _ = self.shared.out.closed() => return StreamEnd::Client,
                _ = sleep_until(self.expires) => return StreamEnd::Expired,
                frame = control.recv(), if control_open => match frame {
                    Some(Control::Refresh { expires_at_ms }) => {
                        self.expires = deadline_of(expires_at_ms, hub.timeline().now_ms());
                    }
                    Some(Control::Reject(end)) => return end,
                    // The client sends no more frames (a gRPC half-close): the stream goes on.
                    None => control_open = false,
                },
                _ = self.shared.notify.notified() => {
                    if self.shared.wake_now.load(Ordering::Acquire) {
                        need_sync = true;
                        ::metrics::counter!(metrics::PUSH_WAKEUPS, "outcome" => "synced").increment(1);
                    } else if self.shared.hot_pending.load(Ordering::Acquire) && hot_due.is_none() {
                        hot_due = Some((last_sync + options.hot_interval).max(Instant::now()));
                    }
                }
                _ = sleep_until(hot_due.unwrap_or(far)), if hot_due.is_some() => {
                    need_sync = true;
                    ::metrics::counter!(metrics::PUSH_WAKEUPS, "outcome" => "synced").increment(1);
                }
                _ = sleep_until(pending_due.unwrap_or(far)), if pending_due.is_some() => need_sync = true,
                _ = heartbeat.tick() => {
                    let beat = Ok(PushEvent::Heartbeat { server_time_ms: hub.timeline().now_ms() });
                    match self.shared.out.try_send(beat) {
                        Ok(()) => {
                            stalled_since = None;
                            ::metrics::counter!(metrics::PUSH_EVENTS, "kind" => "heartbeat").increment(1);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            let since = *stalled_since.get_or_insert_with(Instant::now);
                            if since.elapsed() + options.heartbeat / 2 >= options.heartbeat * 2 {
                                return StreamEnd::Slow;
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return StreamEnd::Client,
                    }
                    hub.refresh_presence(&self.shared).await;
                    // A hint lost on the way (pub/sub is at most once) is caught here.
                    hub.reread_inbox(&self.shared.user_id);
                    need_sync = true;
                }
            }
        }
    }

    /// Syncs until caught up, sending each non-empty page (and the first one always, so the
    /// client learns its cursor). Returns whether the last page was `pending`.
    async fn catch_up(&mut self) -> Result<bool, StreamEnd> {
        let hub = self.registration.hub().clone();
        let stall_limit = hub.options.heartbeat * 2;
        loop {
            // Read ahead only when the client can take the batch: a slow client is not
            // buffered for, it catches up from its cursor as it drains.
            let permit = tokio::select! {
                biased;
                _ = shut_down(&mut self.shutdown) => return Err(StreamEnd::Shutdown),
                _ = sleep_until(self.expires) => return Err(StreamEnd::Expired),
                permit = self.shared.out.reserve() => permit.map_err(|_| StreamEnd::Client)?,
                _ = tokio::time::sleep(stall_limit) => return Err(StreamEnd::Slow),
            };
            let page = hub
                .reads()
                .sync(&self.open.caller, &self.cursor, self.open.limit)
                .await
                .map_err(StreamEnd::failed)?;
            let mut listening_anew = false;
            if !page.cursor_expired && page.hot_conversations != self.hot {
                listening_anew = hub
                    .set_interest(self.registration.id, &page.hot_conversations)
                    .await;
                self.hot = page.hot_conversations.clone();
            }
            let (has_more, pending, expired) = (page.has_more, page.pending, page.cursor_expired);
            self.cursor = page.next_cursor.clone();
            let final_page = !has_more && !listening_anew && !expired;
            // The last page of the first catch-up goes out even when empty: the client then
            // knows it is caught up, and holds a cursor.
            if !page.messages.is_empty() || expired || (!self.live && final_page) {
                ::metrics::counter!(metrics::PUSH_EVENTS, "kind" => "batch").increment(1);
                ::metrics::counter!(metrics::PUSH_MESSAGES).increment(page.messages.len() as u64);
                if self.live {
                    let now = hub.timeline().now_ms();
                    for message in &page.messages {
                        let waited = (now - message.created_at_ms).max(0) as f64 / 1000.0;
                        ::metrics::histogram!(metrics::PUSH_LATENCY).record(waited);
                    }
                }
                permit.send(Ok(PushEvent::Batch {
                    page,
                    live: self.live,
                }));
            }
            // An expired cursor starts over at the oldest retained row.
            if !final_page {
                continue;
            }
            self.live = true;
            return Ok(pending);
        }
    }
}
