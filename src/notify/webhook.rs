//! The queue of notifications and the one task per node that POSTs them: batches of up to
//! `batch`, each retried with exponential backoff and jitter while the receiver fails (5xx,
//! 408, 429, timeouts, refused connections) up to `max_attempts`; other 4xx drop the batch.
//! The queue is bounded: when the receiver cannot keep up, the oldest notifications go
//! first (counted), never unbounded memory. Sends never wait for any of this.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use super::options::NotifyOptions;
use super::payload::{Answer, Batch, DELIVERY_HEADER, Notification, SIGNATURE_HEADER, sign};
use crate::metrics;
use crate::store::PushTargetRow;
use crate::timeline::Timeline;

/// A receiver's answer is read up to this size.
const MAX_ANSWER_BYTES: usize = 1 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A notification with the registrations its devices came from (to remove refused ones).
pub(super) struct Pending {
    pub notification: Notification,
    pub targets: Vec<PushTargetRow>,
}

pub(super) struct Webhook {
    queue: Mutex<VecDeque<Pending>>,
    wake: Notify,
    capacity: usize,
}

impl Webhook {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            capacity,
        }
    }

    /// Queues one notification, dropping the oldest when full; never waits.
    pub(super) fn enqueue(&self, pending: Pending) {
        let depth = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() >= self.capacity {
                queue.pop_front();
                ::metrics::counter!(metrics::NOTIFY_NOTIFICATIONS, "outcome" => "dropped")
                    .increment(1);
            }
            queue.push_back(pending);
            queue.len()
        };
        ::metrics::counter!(metrics::NOTIFY_NOTIFICATIONS, "outcome" => "queued").increment(1);
        ::metrics::gauge!(metrics::NOTIFY_QUEUE_DEPTH).set(depth as f64);
        self.wake.notify_one();
    }

    /// Up to `n` notifications, waiting for the first.
    async fn take(&self, n: usize) -> Vec<Pending> {
        loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if !queue.is_empty() {
                    let take = n.min(queue.len());
                    let batch: Vec<Pending> = queue.drain(..take).collect();
                    ::metrics::gauge!(metrics::NOTIFY_QUEUE_DEPTH).set(queue.len() as f64);
                    return batch;
                }
            }
            self.wake.notified().await;
        }
    }
}

/// How one attempt went.
enum Attempt {
    Delivered(Answer),
    /// Worth another attempt (a 5xx, 408, 429, a timeout or no connection).
    Retry(String),
    /// Another attempt would be refused the same way.
    Rejected(http::StatusCode),
}

pub(super) struct Sender {
    webhook: Arc<Webhook>,
    timeline: Arc<Timeline>,
    options: NotifyOptions,
    url: http::Uri,
    secret: Vec<u8>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Sender {
    pub(super) fn new(
        webhook: Arc<Webhook>,
        timeline: Arc<Timeline>,
        options: NotifyOptions,
        url: http::Uri,
        secret: Vec<u8>,
    ) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build_http();
        Self {
            webhook,
            timeline,
            options,
            url,
            secret,
            client,
        }
    }

    /// Sends batches for as long as the node runs.
    pub(super) async fn run(self) {
        loop {
            let batch = self.webhook.take(self.options.batch).await;
            self.deliver(batch).await;
        }
    }

    async fn deliver(&self, batch: Vec<Pending>) {
        let count = batch.len() as u64;
        let delivery_id = format!("{:016x}", rand::random::<u64>());
        let body = Batch {
            delivery_id: delivery_id.clone(),
            notifications: batch.iter().map(|p| p.notification.clone()).collect(),
        };
        let body = match serde_json::to_vec(&body) {
            Ok(json) => Bytes::from(json),
            Err(e) => {
                tracing::error!(error = %e, "a notification batch could not be encoded");
                ::metrics::counter!(metrics::NOTIFY_NOTIFICATIONS, "outcome" => "failed")
                    .increment(count);
                return;
            }
        };
        for attempt in 1..=self.options.max_attempts {
            let started = tokio::time::Instant::now();
            let outcome = self.post(&body, &delivery_id).await;
            let label = match &outcome {
                Attempt::Delivered(_) => "delivered",
                Attempt::Retry(_) => "retry",
                Attempt::Rejected(_) => "rejected",
            };
            ::metrics::histogram!(metrics::NOTIFY_WEBHOOK_DURATION, "outcome" => label)
                .record(started.elapsed().as_secs_f64());
            match outcome {
                Attempt::Delivered(answer) => {
                    ::metrics::counter!(metrics::NOTIFY_NOTIFICATIONS, "outcome" => "sent")
                        .increment(count);
                    self.drop_refused(&batch, &answer).await;
                    return;
                }
                Attempt::Rejected(status) => {
                    tracing::warn!(%status, notifications = count, "the webhook refused a batch: dropped");
                    break;
                }
                Attempt::Retry(why) if attempt < self.options.max_attempts => {
                    let wait = backoff(attempt);
                    tracing::debug!(attempt, reason = %why, ?wait, "webhook attempt failed: retrying");
                    tokio::time::sleep(wait).await;
                }
                Attempt::Retry(why) => {
                    tracing::warn!(attempts = attempt, reason = %why, notifications = count, "webhook unreachable: batch dropped");
                }
            }
        }
        ::metrics::counter!(metrics::NOTIFY_NOTIFICATIONS, "outcome" => "failed").increment(count);
    }

    async fn post(&self, body: &Bytes, delivery_id: &str) -> Attempt {
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let request = http::Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&self.secret, now_s, body))
            .header(DELIVERY_HEADER, delivery_id)
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(format!("building the request: {e}")),
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{e}"))?;
            let status = response.status();
            let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok::<_, String>((status, answer))
        };
        match tokio::time::timeout(self.options.timeout, exchange).await {
            Err(_) => Attempt::Retry("timed out".into()),
            Ok(Err(e)) => Attempt::Retry(e),
            Ok(Ok((status, answer))) if status.is_success() => {
                // An empty or unknown answer refuses nothing.
                Attempt::Delivered(serde_json::from_slice(&answer).unwrap_or_default())
            }
            Ok(Ok((status, _)))
                if status.is_server_error()
                    || status == http::StatusCode::REQUEST_TIMEOUT
                    || status == http::StatusCode::TOO_MANY_REQUESTS =>
            {
                Attempt::Retry(format!("answered {status}"))
            }
            Ok(Ok((status, _))) => Attempt::Rejected(status),
        }
    }

    /// Removes the registrations whose token the receiver said is no longer valid.
    async fn drop_refused(&self, batch: &[Pending], answer: &Answer) {
        if answer.invalid_tokens.is_empty() {
            return;
        }
        let refused: std::collections::HashSet<&str> =
            answer.invalid_tokens.iter().map(String::as_str).collect();
        for target in batch.iter().flat_map(|p| &p.targets) {
            if refused.contains(target.token.as_str())
                && let Err(e) = self.timeline.drop_refused_push_target(target).await
            {
                tracing::warn!(error = %e, "a refused push target could not be removed");
            }
        }
    }
}

/// Full jitter over an exponentially growing cap: `attempt` 1 waits up to 200 ms, then 400 ms,
/// ..., at most 30 s; never less than half the cap, so retries do not hammer a receiver.
fn backoff(attempt: u32) -> Duration {
    let cap = FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let half = cap / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for attempt in 1..40 {
            let wait = backoff(attempt);
            let cap = FIRST_BACKOFF
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(
                wait >= cap / 2 && wait <= cap,
                "{attempt}: {wait:?} of {cap:?}"
            );
        }
        assert!(backoff(30) <= MAX_BACKOFF);
    }
}
