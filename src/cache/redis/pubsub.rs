//! One subscriber connection per node, carrying every channel the node holds.
//!
//! - One Redis server: a RESP2 pub/sub connection split into its sink (SUBSCRIBE and
//!   UNSUBSCRIBE, many channels per command) and its message stream. A task forwards messages
//!   and, when the connection drops or stops answering a periodic PING (a connection that
//!   silently stopped receiving after a failover), reconnects, subscribes every held channel
//!   again in batches, and reports [`PubSubEvent::Reconnected`].
//! - Redis Cluster: sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`, Redis ≥ 7), so a publish reaches
//!   only the shard owning the channel's slot instead of being broadcast over the cluster bus.
//!   The driver's RESP3 cluster connection resubscribes by itself; a lost connection is
//!   reported as `Reconnected` so that listeners re-sync.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::PubSubSink;
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{PushInfo, PushKind, RedisError, Value};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{CacheError, CacheResult, PubSubEvent, Subscriber, SubscriberControl, unavailable};

/// Events a subscriber may have unread before newer ones are dropped (at most once).
const EVENT_BUFFER: usize = 16_384;
/// Channels per SUBSCRIBE when resubscribing after a reconnect.
const RESUBSCRIBE_BATCH: usize = 512;
/// A lost subscriber connection is retried this often.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// How often an idle subscriber checks that its connection still answers.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Channels held and the sink of the current connection (none while reconnecting).
#[derive(Default)]
struct Held {
    channels: HashSet<String>,
    sink: Option<PubSubSink>,
}

struct SingleControl {
    held: Arc<Mutex<Held>>,
    prefix: String,
    timeout: Duration,
}

/// The Redis channel names of logical channels.
fn prefixed(prefix: &str, channels: &[String]) -> Vec<String> {
    channels.iter().map(|c| format!("{prefix}{c}")).collect()
}

fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(|p| p.into_inner())
}

fn timed_out() -> CacheError {
    CacheError::Unavailable("redis: subscriber timed out".into())
}

#[async_trait]
impl SubscriberControl for SingleControl {
    async fn subscribe(&self, channels: &[String]) -> CacheResult<()> {
        let channels = prefixed(&self.prefix, channels);
        let sink = {
            let mut held = lock(&self.held);
            held.channels.extend(channels.iter().cloned());
            held.sink.clone()
        };
        // Without a connection the channels are subscribed when it is back (and the
        // listener hears `Reconnected`).
        let mut sink = sink.ok_or_else(|| CacheError::Unavailable("redis: reconnecting".into()))?;
        tokio::time::timeout(self.timeout, sink.subscribe(&channels))
            .await
            .map_err(|_| timed_out())?
            .map_err(unavailable)
    }

    async fn unsubscribe(&self, channels: &[String]) -> CacheResult<()> {
        let channels = prefixed(&self.prefix, channels);
        let sink = {
            let mut held = lock(&self.held);
            for channel in &channels {
                held.channels.remove(channel);
            }
            held.sink.clone()
        };
        let Some(mut sink) = sink else { return Ok(()) };
        tokio::time::timeout(self.timeout, sink.unsubscribe(&channels))
            .await
            .map_err(|_| timed_out())?
            .map_err(unavailable)
    }
}

/// Opens the subscriber of one Redis server: returns once the first connection is up.
pub(super) async fn single(
    client: ::redis::Client,
    prefix: String,
    timeout: Duration,
) -> CacheResult<Subscriber> {
    let held = Arc::new(Mutex::new(Held::default()));
    let (events, receiver) = mpsc::channel(EVENT_BUFFER);
    let first = connect(&client, timeout).await.map_err(unavailable)?;
    tokio::spawn(forward(
        client,
        prefix.clone(),
        timeout,
        held.clone(),
        events,
        first,
    ));
    Ok(Subscriber {
        control: Arc::new(SingleControl {
            held,
            prefix,
            timeout,
        }),
        events: futures::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|event| (event, r))
        })
        .boxed(),
    })
}

async fn connect(
    client: &::redis::Client,
    timeout: Duration,
) -> Result<::redis::aio::PubSub, RedisError> {
    match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
        Ok(connected) => connected,
        Err(_) => Err(RedisError::from((
            ::redis::ErrorKind::Io,
            "pub/sub connect timed out",
        ))),
    }
}

/// Forwards messages until the events receiver is dropped, reconnecting as needed.
async fn forward(
    client: ::redis::Client,
    prefix: String,
    timeout: Duration,
    held: Arc<Mutex<Held>>,
    events: mpsc::Sender<PubSubEvent>,
    first: ::redis::aio::PubSub,
) {
    let mut connection = Some(first);
    let mut reconnected = false;
    loop {
        let pubsub = match connection.take() {
            Some(pubsub) => pubsub,
            None => match connect(&client, timeout).await {
                Ok(pubsub) => pubsub,
                Err(_) => {
                    if events.is_closed() {
                        return;
                    }
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue;
                }
            },
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = {
            let mut held = lock(&held);
            held.sink = Some(sink.clone());
            held.channels.iter().cloned().collect()
        };
        let mut resubscribed = true;
        for batch in channels.chunks(RESUBSCRIBE_BATCH) {
            match tokio::time::timeout(timeout, sink.subscribe(batch)).await {
                Ok(Ok(())) => {}
                _ => {
                    resubscribed = false;
                    break;
                }
            }
        }
        if resubscribed {
            if reconnected {
                ::metrics::counter!(crate::metrics::PUBSUB_RECONNECTS).increment(1);
                if events.send(PubSubEvent::Reconnected).await.is_err() {
                    return;
                }
            }
            let mut probe = tokio::time::interval(PROBE_INTERVAL);
            probe.reset();
            loop {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(m) => {
                            let Some(channel) = m.get_channel_name().strip_prefix(&prefix) else {
                                continue;
                            };
                            let event = PubSubEvent::Message {
                                channel: channel.to_owned(),
                                payload: bytes::Bytes::copy_from_slice(m.get_payload_bytes()),
                            };
                            // A full buffer drops the event (at most once) rather than stall.
                            if let Err(mpsc::error::TrySendError::Closed(_)) = events.try_send(event) {
                                return;
                            }
                        }
                        None => break,
                    },
                    _ = probe.tick() => {
                        let answered = tokio::time::timeout(timeout, sink.ping::<Value>()).await;
                        if !matches!(answered, Ok(Ok(_))) {
                            break;
                        }
                    }
                    _ = events.closed() => return,
                }
            }
        }
        lock(&held).sink = None;
        tracing::warn!("redis subscriber connection lost; reconnecting");
        reconnected = true;
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

struct ClusterControl {
    connection: ClusterConnection,
    prefix: String,
    timeout: Duration,
}

#[async_trait]
impl SubscriberControl for ClusterControl {
    async fn subscribe(&self, channels: &[String]) -> CacheResult<()> {
        let mut connection = self.connection.clone();
        let channels = prefixed(&self.prefix, channels);
        tokio::time::timeout(self.timeout, connection.ssubscribe(&channels))
            .await
            .map_err(|_| timed_out())?
            .map_err(unavailable)
    }

    async fn unsubscribe(&self, channels: &[String]) -> CacheResult<()> {
        let mut connection = self.connection.clone();
        let channels = prefixed(&self.prefix, channels);
        tokio::time::timeout(self.timeout, connection.sunsubscribe(&channels))
            .await
            .map_err(|_| timed_out())?
            .map_err(unavailable)
    }
}

/// Opens the sharded-pub/sub subscriber of a Redis Cluster (RESP3).
pub(super) async fn cluster(
    nodes: Vec<String>,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
) -> CacheResult<Subscriber> {
    let (pushes, mut received) = mpsc::unbounded_channel::<PushInfo>();
    let client = ClusterClient::builder(nodes)
        .use_protocol(::redis::ProtocolVersion::RESP3)
        .push_sender(pushes)
        .connection_timeout(connect_timeout)
        .response_timeout(timeout)
        .build()
        .map_err(|e| CacheError::Protocol(format!("redis configuration: {e}")))?;
    let connection = tokio::time::timeout(connect_timeout, client.get_async_connection())
        .await
        .map_err(|_| timed_out())?
        .map_err(unavailable)?;
    let (events, receiver) = mpsc::channel(EVENT_BUFFER);
    let control = ClusterControl {
        connection,
        prefix: prefix.clone(),
        timeout,
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                push = received.recv() => {
                    let Some(push) = push else { return };
                    let event = match push.kind {
                        PushKind::SMessage | PushKind::Message => {
                            match cluster_message(&push.data, &prefix) {
                                Some(event) => event,
                                None => continue,
                            }
                        }
                        PushKind::Disconnection => {
                            ::metrics::counter!(crate::metrics::PUBSUB_RECONNECTS).increment(1);
                            PubSubEvent::Reconnected
                        }
                        _ => continue,
                    };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = events.try_send(event) {
                        return;
                    }
                }
                _ = events.closed() => return,
            }
        }
    });
    Ok(Subscriber {
        control: Arc::new(control),
        events: futures::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|event| (event, r))
        })
        .boxed(),
    })
}

/// `[channel, payload]` of a (sharded) message push.
fn cluster_message(data: &[Value], prefix: &str) -> Option<PubSubEvent> {
    let [Value::BulkString(channel), Value::BulkString(payload), ..] = data else {
        return None;
    };
    let channel = std::str::from_utf8(channel).ok()?.strip_prefix(prefix)?;
    Some(PubSubEvent::Message {
        channel: channel.to_owned(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}
