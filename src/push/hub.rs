//! One node's push hub: its open streams by user and by hot conversation, the node's one
//! subscriber connection (channels held while a local stream needs them), routing of hints to
//! streams, limits, and shutdown.
//!
//! Wake-ups never carry data and never queue per message: a stream has two flags and one
//! `Notify` (a permit, not a queue), so any burst of hints costs a stream one wake-up — at
//! once for its user's channel, and at most once per `hot_interval` for hot conversations.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, mpsc, watch};

use super::PushOptions;
use super::channels::{self, Ephemeral, Hint, Target, conversation_channel, user_channel};
use super::coalesce::CoalescedReads;
use super::events::{Control, OpenStream, PushEvent, StreamItem, Transport};
use super::publisher::Publisher;
use crate::cache::{Cache, CacheResult, PubSubEvent, SubscriberControl};
use crate::metrics;
use crate::timeline::Timeline;

/// Why a stream was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamLimitError {
    #[error("{user} already has {limit} streams open on this node")]
    PerUser { user: String, limit: usize },
    #[error("this node holds its limit of {0} streams; reconnect to another node")]
    Node(usize),
    #[error("this node is shutting down; reconnect to another node")]
    ShuttingDown,
}

/// What the hub and a stream's session share.
pub(super) struct Shared {
    pub user_id: String,
    pub device_id: String,
    /// A hint for the user: sync at once.
    pub wake_now: AtomicBool,
    /// A hint for a hot conversation: sync within `hot_interval`.
    pub hot_pending: AtomicBool,
    pub notify: Notify,
    /// The session's outgoing queue, for ephemeral events (dropped when full).
    pub out: mpsc::Sender<StreamItem>,
}

impl Shared {
    pub fn wake(&self) {
        self.wake_now.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

#[derive(Default)]
struct State {
    streams: HashMap<u64, Arc<Shared>>,
    by_user: HashMap<String, HashSet<u64>>,
    /// Hot conversations each stream reads, and the streams reading each.
    interest: HashMap<u64, HashSet<String>>,
    by_conversation: HashMap<String, HashSet<u64>>,
    /// Streams per (user, device): the online devices of this node.
    devices: HashMap<(String, String), usize>,
    /// Channels the subscriber holds.
    subscribed: HashSet<String>,
}

impl State {
    /// Whether a local stream needs `channel`.
    fn wanted(&self, channel: &str) -> bool {
        match channels::parse_channel(channel) {
            Some(Target::User(u)) => self.by_user.contains_key(u),
            Some(Target::Conversation(c)) => self.by_conversation.contains_key(c),
            None => false,
        }
    }
}

pub struct Hub {
    pub(super) timeline: Arc<Timeline>,
    /// The pipeline over `shared_reads`, for the streams' Syncs.
    reads: Arc<Timeline>,
    /// One read per node of what many streams ask at once; hints invalidate it.
    shared_reads: Arc<CoalescedReads>,
    pub(super) cache: Arc<dyn Cache>,
    pub(super) options: PushOptions,
    /// This node's name in presence entries.
    pub(super) node: String,
    pub(super) publisher: Arc<Publisher>,
    control: Arc<dyn SubscriberControl>,
    state: Mutex<State>,
    /// Serialises subscribe/unsubscribe so that the server sees them in decision order.
    applying: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// (sender, conversation) -> when its last typing event went out.
    pub(super) typing: Mutex<HashMap<(String, String), tokio::time::Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section leaves the maps consistent before anything can panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// Opens the node's subscriber, starts publishing the pipeline's hints, and routes what
    /// the subscriber hears to the streams.
    pub async fn start(
        timeline: Arc<Timeline>,
        cache: Arc<dyn Cache>,
        options: PushOptions,
        node: String,
    ) -> CacheResult<Arc<Self>> {
        let subscriber = cache.subscriber().await?;
        let publisher = Arc::new(Publisher::start(cache.clone()));
        timeline.add_listener(publisher.clone());
        let shared_reads =
            CoalescedReads::wrap(cache.clone(), options.shared_read_age(), options.heartbeat);
        let reads = timeline.reading_through(shared_reads.clone());
        let hub = Arc::new(Self {
            publisher,
            timeline,
            reads,
            shared_reads,
            cache,
            options,
            node,
            control: subscriber.control,
            state: Mutex::default(),
            applying: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            typing: Mutex::default(),
        });
        tokio::spawn(route(Arc::downgrade(&hub), subscriber.events));
        Ok(hub)
    }

    pub fn options(&self) -> &PushOptions {
        &self.options
    }

    pub fn timeline(&self) -> &Arc<Timeline> {
        &self.timeline
    }

    /// The pipeline as the streams read it: through the node's shared reads.
    pub(super) fn reads(&self) -> &Arc<Timeline> {
        &self.reads
    }

    /// The next Sync of `user_id`'s streams reads their inbox head afresh (a heartbeat's
    /// re-sync catches a hint that never came).
    pub(super) fn reread_inbox(&self, user_id: &str) {
        self.shared_reads.user_changed(user_id);
    }

    /// Admits a stream: registers it (within the limits), listens to its user's channel and
    /// marks the device online; the session that runs it is started by `Hub::open`.
    pub(super) async fn admit(
        self: &Arc<Self>,
        open: &OpenStream,
    ) -> Result<Admitted, StreamLimitError> {
        let (out, events) = mpsc::channel(self.options.stream_queue);
        let (control, frames) = mpsc::channel(4);
        let shared = Arc::new(Shared {
            user_id: open.caller.user_id.clone(),
            device_id: open.caller.device_id.clone(),
            wake_now: AtomicBool::new(false),
            hot_pending: AtomicBool::new(false),
            notify: Notify::new(),
            out,
        });
        let id = self.register(&shared, open.transport)?;
        let registration = Registration {
            hub: self.clone(),
            id,
            transport: open.transport,
        };
        // Before the first sync: whatever is published from here on wakes the stream (and what
        // was read of the user before the channel was held is not reused).
        self.apply_channels(vec![user_channel(&shared.user_id)])
            .await;
        self.shared_reads.user_changed(&shared.user_id);
        self.refresh_presence(&shared).await;
        Ok(Admitted {
            registration,
            shared,
            events,
            control,
            frames,
            shutdown: self.shutdown.subscribe(),
        })
    }

    fn register(
        &self,
        shared: &Arc<Shared>,
        transport: Transport,
    ) -> Result<u64, StreamLimitError> {
        if *self.shutdown.borrow() {
            return Err(StreamLimitError::ShuttingDown);
        }
        let mut state = lock(&self.state);
        if state.streams.len() >= self.options.max_streams {
            return Err(StreamLimitError::Node(self.options.max_streams));
        }
        let of_user = state.by_user.get(&shared.user_id).map_or(0, HashSet::len);
        if of_user >= self.options.max_streams_per_user {
            return Err(StreamLimitError::PerUser {
                user: shared.user_id.clone(),
                limit: self.options.max_streams_per_user,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        state.streams.insert(id, shared.clone());
        state
            .by_user
            .entry(shared.user_id.clone())
            .or_default()
            .insert(id);
        let device = state
            .devices
            .entry((shared.user_id.clone(), shared.device_id.clone()))
            .or_default();
        *device += 1;
        if *device == 1 {
            ::metrics::gauge!(metrics::PUSH_ONLINE_DEVICES).increment(1.0);
        }
        ::metrics::gauge!(metrics::PUSH_STREAMS_OPEN, "transport" => transport.name())
            .increment(1.0);
        Ok(id)
    }

    /// Forgets a stream; drops the channels no other local stream needs; marks the device
    /// offline when it was its last stream here.
    fn unregister(self: &Arc<Self>, id: u64, transport: Transport) {
        let mut released = Vec::new();
        let mut offline = None;
        {
            let mut state = lock(&self.state);
            let Some(shared) = state.streams.remove(&id) else {
                return;
            };
            if let Some(ids) = state.by_user.get_mut(&shared.user_id) {
                ids.remove(&id);
                if ids.is_empty() {
                    state.by_user.remove(&shared.user_id);
                    released.push(user_channel(&shared.user_id));
                }
            }
            for conversation in state.interest.remove(&id).unwrap_or_default() {
                if let Some(ids) = state.by_conversation.get_mut(&conversation) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        state.by_conversation.remove(&conversation);
                        released.push(conversation_channel(&conversation));
                    }
                }
            }
            let key = (shared.user_id.clone(), shared.device_id.clone());
            if let Some(count) = state.devices.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    state.devices.remove(&key);
                    ::metrics::gauge!(metrics::PUSH_ONLINE_DEVICES).decrement(1.0);
                    offline = Some(key);
                }
            }
        }
        ::metrics::gauge!(metrics::PUSH_STREAMS_OPEN, "transport" => transport.name())
            .decrement(1.0);
        let hub = self.clone();
        tokio::spawn(async move {
            if let Some((user, device)) = offline
                && let Err(e) = hub.cache.clear_presence(&user, &device).await
            {
                tracing::debug!(error = %e, "presence not cleared: it lapses by its TTL");
            }
            hub.apply_channels(released).await;
        });
    }

    /// Sets the hot conversations a stream reads; returns whether it now listens to one it did
    /// not before (the session then syncs again, so nothing published before the subscription
    /// took effect is missed).
    pub(super) async fn set_interest(&self, id: u64, conversations: &[String]) -> bool {
        let mut changed = Vec::new();
        let mut added = false;
        {
            let mut state = lock(&self.state);
            if !state.streams.contains_key(&id) {
                return false;
            }
            let wanted: HashSet<String> = conversations.iter().cloned().collect();
            let held = state.interest.remove(&id).unwrap_or_default();
            for conversation in wanted.difference(&held) {
                added = true;
                let ids = state
                    .by_conversation
                    .entry(conversation.clone())
                    .or_default();
                ids.insert(id);
                if ids.len() == 1 {
                    changed.push(conversation_channel(conversation));
                }
            }
            for conversation in held.difference(&wanted) {
                if let Some(ids) = state.by_conversation.get_mut(conversation) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        state.by_conversation.remove(conversation);
                        changed.push(conversation_channel(conversation));
                    }
                }
            }
            state.interest.insert(id, wanted);
        }
        let subscribed: Vec<String> = changed.clone();
        self.apply_channels(changed).await;
        // Hints published before the subscription were not heard: what was read of those
        // conversations before it is not reused.
        for channel in &subscribed {
            if let Some(Target::Conversation(c)) = channels::parse_channel(channel) {
                self.shared_reads.conversation_changed(c);
            }
        }
        added
    }

    /// Brings the subscriber in line with what local streams need for `channels`. Failures are
    /// logged: the subscriber subscribes what it holds again when its connection is back, and
    /// streams re-sync at their next heartbeat meanwhile.
    async fn apply_channels(&self, channels: Vec<String>) {
        if channels.is_empty() {
            return;
        }
        let _order = self.applying.lock().await;
        let (subscribe, unsubscribe) = {
            let mut state = lock(&self.state);
            let mut subscribe = Vec::new();
            let mut unsubscribe = Vec::new();
            for channel in channels {
                let wanted = state.wanted(&channel);
                if wanted && state.subscribed.insert(channel.clone()) {
                    subscribe.push(channel);
                } else if !wanted && state.subscribed.remove(&channel) {
                    unsubscribe.push(channel);
                }
            }
            (subscribe, unsubscribe)
        };
        if !subscribe.is_empty()
            && let Err(e) = self.control.subscribe(&subscribe).await
        {
            tracing::warn!(error = %e, "push: subscribing failed; streams re-sync on heartbeats");
            let mut state = lock(&self.state);
            for channel in &subscribe {
                state.subscribed.remove(channel);
            }
        }
        if !unsubscribe.is_empty()
            && let Err(e) = self.control.unsubscribe(&unsubscribe).await
        {
            tracing::debug!(error = %e, "push: unsubscribing failed");
        }
    }

    pub(super) async fn refresh_presence(&self, shared: &Shared) {
        if let Err(e) = self
            .cache
            .set_presence(
                &shared.user_id,
                &shared.device_id,
                &self.node,
                self.options.presence_ttl(),
            )
            .await
        {
            tracing::debug!(error = %e, "presence not refreshed");
        }
    }

    /// Routes one hint heard on `channel`.
    fn deliver(&self, channel: &str, hint: Hint) {
        let state = lock(&self.state);
        let (ids, hot) = match channels::parse_channel(channel) {
            Some(Target::User(u)) => {
                if hint == Hint::Wake {
                    self.shared_reads.user_changed(u);
                }
                (state.by_user.get(u), false)
            }
            Some(Target::Conversation(c)) => {
                if hint == Hint::Wake {
                    self.shared_reads.conversation_changed(c);
                }
                (state.by_conversation.get(c), true)
            }
            None => return,
        };
        let streams = ids
            .into_iter()
            .flatten()
            .filter_map(|id| state.streams.get(id));
        match hint {
            Hint::Wake if hot => {
                for shared in streams {
                    if shared.hot_pending.swap(true, Ordering::AcqRel) {
                        ::metrics::counter!(metrics::PUSH_WAKEUPS, "outcome" => "coalesced")
                            .increment(1);
                    } else {
                        shared.notify.notify_one();
                    }
                }
            }
            Hint::Wake => streams.for_each(|s| s.wake()),
            Hint::Ephemeral(event) => {
                let Ephemeral::Typing {
                    conversation_id,
                    user_id,
                    device_id,
                } = event;
                for shared in streams {
                    if shared.user_id == user_id && shared.device_id == device_id {
                        continue;
                    }
                    // Ephemeral: a stream with a full queue misses it.
                    let sent = shared.out.try_send(Ok(PushEvent::Typing {
                        conversation_id: conversation_id.clone(),
                        user_id: user_id.clone(),
                        device_id: device_id.clone(),
                    }));
                    if sent.is_ok() {
                        ::metrics::counter!(metrics::PUSH_EVENTS, "kind" => "typing").increment(1);
                    }
                }
            }
        }
    }

    /// Wakes every stream (after the subscriber lost its connection: hints were lost).
    fn wake_all(&self) {
        for shared in lock(&self.state).streams.values() {
            shared.wake();
        }
    }

    /// Ends every stream with a status telling the client to reconnect elsewhere, refuses new
    /// ones, and waits up to `shutdown_grace` for the streams to finish.
    pub async fn shut_down(&self) {
        self.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + self.options.shutdown_grace;
        while self.open_streams() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn open_streams(&self) -> usize {
        lock(&self.state).streams.len()
    }
}

/// A stream the hub accepted, and what its session runs with.
pub(super) struct Admitted {
    pub registration: Registration,
    pub shared: Arc<Shared>,
    /// What the session writes, for the transport to send.
    pub events: mpsc::Receiver<StreamItem>,
    /// Where the transport puts the client's frames, and where the session reads them.
    pub control: mpsc::Sender<Control>,
    pub frames: mpsc::Receiver<Control>,
    pub shutdown: watch::Receiver<bool>,
}

/// Unregisters a stream when its session ends, however it ends.
pub(super) struct Registration {
    hub: Arc<Hub>,
    pub id: u64,
    pub transport: Transport,
}

impl Registration {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id, self.transport);
    }
}

/// Routes what the node's subscriber hears until the hub is gone.
async fn route(hub: Weak<Hub>, mut events: futures::stream::BoxStream<'static, PubSubEvent>) {
    while let Some(event) = events.next().await {
        let Some(hub) = hub.upgrade() else { return };
        match event {
            PubSubEvent::Message { channel, payload } => {
                hub.deliver(&channel, channels::decode(&payload));
            }
            PubSubEvent::Reconnected => {
                tracing::info!("push: subscriber reconnected; every stream re-syncs");
                hub.shared_reads.forget_all();
                hub.wake_all();
            }
        }
    }
}
