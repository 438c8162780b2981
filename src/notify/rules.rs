//! Who is told of what. The pipeline's deliveries arrive as events (queued without waiting;
//! a full queue drops them, counted). For each recipient other than the sender:
//!
//! - presence says which devices have an open stream; the recipient's push targets minus those
//!   are the devices to notify (none: nothing to do);
//! - a coalescing window: a Cache claim `notify:<user>:<conversation>` for `interval` (small
//!   chats). The node that takes it notifies at once and, at the window's end, once more with
//!   the newest message and how many came meanwhile, if any did and are unread. Every other
//!   delivery in the window (on any node) finds the claim taken and stays silent, so nodes
//!   never notify one device twice for one window;
//! - a hot conversation has one window for all its members (`notify:hot:<conversation>`, for
//!   `hot_interval`): its holder reads the members page by page and notifies the offline ones
//!   once, then sums up at the end.
//!
//! Nothing is said to a recipient who has read the conversation up to the newest message, nor
//! about a message older than `max_age` (a late re-drive or a backfill).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::options::NotifyOptions;
use super::payload::{Device, Notification};
use super::webhook::{Pending, Sender, Webhook};
use crate::cache::Cache;
use crate::metrics;
use crate::model::{ConversationKind, MessageKind, MessageRow};
use crate::timeline::{Caller, DeliveryListener, Timeline, TimelineError, TimelineResult};

/// Deliveries handled at once.
const CONCURRENCY: usize = 32;
/// Members of a hot conversation read (and presence-checked) per page.
const MEMBER_PAGE: usize = 500;
/// Recipients of one page handled at once.
const RECIPIENTS_AT_ONCE: usize = 32;
/// Held windows remembered before expired ones are swept.
const HELD_SWEEP_AT: usize = 100_000;

enum Event {
    /// `message` was written to the inboxes of `users`.
    FannedOut(MessageRow, Vec<String>),
    /// `message` was appended to its hot conversation.
    Hot(MessageRow),
}

/// The node's notifier: the listener of its deliveries. Started only with a webhook URL.
pub struct Notifier {
    events: mpsc::Sender<Event>,
    /// Body bytes an event keeps: enough for the preview, so that a full queue of events holds
    /// no message bodies (10,000 of 64 KiB would be 640 MiB).
    preview_bytes: usize,
}

struct Rules {
    timeline: Arc<Timeline>,
    cache: Arc<dyn Cache>,
    webhook: Arc<Webhook>,
    options: NotifyOptions,
    /// Windows this node holds, by claim key, until when: a delivery inside one needs no
    /// Cache call (this node's summing-up covers it), so a busy conversation costs a claim per
    /// recipient per window, not per message.
    held: Mutex<HashMap<String, Instant>>,
}

impl Notifier {
    /// Starts the rules and the webhook sender and listens to `timeline`'s deliveries; `None`
    /// when no webhook is configured (validated options assumed).
    pub fn start(
        timeline: Arc<Timeline>,
        cache: Arc<dyn Cache>,
        options: NotifyOptions,
    ) -> Option<Arc<Self>> {
        let url: http::Uri = options.webhook_url.as_deref()?.parse().ok()?;
        let secret = options.webhook_secret.clone()?.into_bytes();
        let webhook = Arc::new(Webhook::new(options.queue));
        let sender = Sender::new(
            webhook.clone(),
            timeline.clone(),
            options.clone(),
            url,
            secret,
        );
        tokio::spawn(sender.run());
        let (events, queue) = mpsc::channel(options.queue);
        // A character is at most 4 bytes of UTF-8.
        let preview_bytes = options.preview_chars.saturating_mul(4);
        let rules = Arc::new(Rules {
            timeline: timeline.clone(),
            cache,
            webhook,
            options,
            held: Mutex::new(HashMap::new()),
        });
        tokio::spawn(rules.run(queue));
        let notifier = Arc::new(Self {
            events,
            preview_bytes,
        });
        timeline.add_listener(notifier.clone());
        Some(notifier)
    }

    fn push(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            ::metrics::counter!(metrics::NOTIFY_SKIPPED, "reason" => "overloaded").increment(1);
        }
    }
}

impl Notifier {
    /// The message as an event keeps it: its body cut to what a preview may show.
    fn kept(&self, message: &MessageRow) -> MessageRow {
        let shown = message.body.len().min(self.preview_bytes);
        MessageRow {
            // A copy: a slice would keep the whole body's buffer alive.
            body: bytes::Bytes::copy_from_slice(&message.body[..shown]),
            ..message.clone()
        }
    }
}

impl DeliveryListener for Notifier {
    fn fanned_out(&self, message: &MessageRow, users: &[&str]) {
        if message.kind == MessageKind::User {
            let users = users.iter().map(|u| (*u).to_owned()).collect();
            self.push(Event::FannedOut(self.kept(message), users));
        }
    }

    fn appended_hot(&self, message: &MessageRow) {
        if message.kind == MessageKind::User {
            self.push(Event::Hot(self.kept(message)));
        }
    }

    fn memberships_changed(&self, _conversation_id: &str, _users: &[String]) {}
}

/// A coalescing window of a conversation: one recipient's in a small chat, or a hot
/// conversation's for all its members.
enum Window {
    Recipient(String),
    Hot,
}

impl Window {
    /// The Cache claim that makes one node its holder.
    fn key(&self, conversation_id: &str) -> String {
        match self {
            Self::Recipient(user) => window_key(user, conversation_id),
            Self::Hot => format!("notify:hot:{conversation_id}"),
        }
    }
}

fn window_key(user: &str, conversation_id: &str) -> String {
    format!("notify:{user}:{conversation_id}")
}

fn skipped(reason: &'static str, n: u64) {
    ::metrics::counter!(metrics::NOTIFY_SKIPPED, "reason" => reason).increment(n);
}

impl Rules {
    async fn run(self: Arc<Self>, mut queue: mpsc::Receiver<Event>) {
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        while let Some(event) = queue.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let rules = self.clone();
            tokio::spawn(async move {
                if let Err(e) = rules.handle(event).await {
                    skipped("error", 1);
                    tracing::debug!(error = %e, "a delivery could not be notified");
                }
                drop(permit);
            });
        }
    }

    async fn handle(self: Arc<Self>, event: Event) -> TimelineResult<()> {
        let message = match &event {
            Event::FannedOut(m, _) | Event::Hot(m) => m,
        };
        let age_ms = self.timeline.now_ms() - message.created_at_ms;
        if age_ms > self.options.max_age.as_millis() as i64 {
            skipped("stale", 1);
            return Ok(());
        }
        match event {
            Event::FannedOut(message, users) => {
                // Recipients in a window this node holds are covered by its summing-up.
                let conversation = &message.conversation_id;
                let others: Vec<String> = users
                    .into_iter()
                    .filter(|u| *u != message.sender_id)
                    .collect();
                let count = others.len();
                let recipients: Vec<String> = others
                    .into_iter()
                    .filter(|u| !self.holds(&window_key(u, conversation)))
                    .collect();
                skipped("coalesced", (count - recipients.len()) as u64);
                let online = self.online_devices(&recipients).await?;
                let message = Arc::new(message);
                futures::stream::iter(recipients.into_iter().zip(online))
                    .for_each_concurrent(RECIPIENTS_AT_ONCE, |(user, online)| {
                        let rules = self.clone();
                        let message = message.clone();
                        async move {
                            if let Err(e) = rules.open_window(user, online, &message).await {
                                skipped("error", 1);
                                tracing::debug!(error = %e, "a recipient could not be notified");
                            }
                        }
                    })
                    .await;
            }
            Event::Hot(message) => self.open_hot_window(message).await?,
        }
        Ok(())
    }

    /// For each user, the devices with an open stream.
    async fn online_devices(&self, users: &[String]) -> TimelineResult<Vec<HashSet<String>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let presence = self.cache.presence(users).await?;
        Ok(presence
            .into_iter()
            .map(|p| p.devices.into_iter().map(|d| d.device_id).collect())
            .collect())
    }

    /// Takes `key` for `lease`: whether this node now holds the window.
    async fn take_window(&self, key: &str, lease: std::time::Duration) -> TimelineResult<bool> {
        if self.holds(key) {
            skipped("coalesced", 1);
            return Ok(false);
        }
        let holder = rand::random::<u64>();
        let started = Instant::now();
        let taken = self
            .timeline
            .take_claim(key, holder, lease)
            .await?
            .is_none();
        if taken {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.len() >= HELD_SWEEP_AT {
                let now = Instant::now();
                held.retain(|_, until| *until > now);
            }
            // From before the call: never believed held past the claim's own expiry.
            held.insert(key.to_owned(), started + lease);
        } else {
            skipped("coalesced", 1);
        }
        Ok(taken)
    }

    /// Whether this node holds the window `key` now.
    fn holds(&self, key: &str) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).is_some_and(|until| *until > Instant::now())
    }

    /// A small chat's window for one recipient: notify now, then sum up at its end.
    async fn open_window(
        self: Arc<Self>,
        user: String,
        online: HashSet<String>,
        message: &MessageRow,
    ) -> TimelineResult<()> {
        let key = window_key(&user, &message.conversation_id);
        if !self.take_window(&key, self.options.interval).await?
            || !self.notify(&user, &online, message, 1).await?
        {
            return Ok(());
        }
        self.spawn_sum_up(Window::Recipient(user), message);
        Ok(())
    }

    /// A hot conversation's window: its holder notifies every offline member once, then sums
    /// up at its end.
    async fn open_hot_window(self: Arc<Self>, message: MessageRow) -> TimelineResult<()> {
        if !self.take(&Window::Hot, &message.conversation_id).await? {
            return Ok(());
        }
        self.notify_members(&message, 1).await?;
        self.spawn_sum_up(Window::Hot, &message);
        Ok(())
    }

    async fn take(&self, window: &Window, conversation_id: &str) -> TimelineResult<bool> {
        self.take_window(&window.key(conversation_id), self.interval(window))
            .await
    }

    fn interval(&self, window: &Window) -> std::time::Duration {
        match window {
            Window::Recipient(_) => self.options.interval,
            Window::Hot => self.options.hot_interval,
        }
    }

    fn spawn_sum_up(self: Arc<Self>, window: Window, notified: &MessageRow) {
        let conversation_id = notified.conversation_id.clone();
        let seq = notified.conv_seq;
        tokio::spawn(async move {
            if let Err(e) = self.sum_up(window, conversation_id, seq).await {
                tracing::debug!(error = %e, "a window could not be summed up");
            }
        });
    }

    /// At the end of each window: if messages came since `notified`, take the next window and
    /// notify once with the newest of them.
    async fn sum_up(
        self: Arc<Self>,
        window: Window,
        conversation_id: String,
        mut notified: u64,
    ) -> TimelineResult<()> {
        loop {
            tokio::time::sleep(self.interval(&window)).await;
            let Some(newest) = self.timeline.newest_message(&conversation_id).await? else {
                return Ok(());
            };
            if newest.conv_seq <= notified {
                return Ok(());
            }
            // The recipient wrote last: it is using the app.
            if let Window::Recipient(user) = &window
                && newest.sender_id == *user
            {
                return Ok(());
            }
            if !self.take(&window, &conversation_id).await? {
                return Ok(());
            }
            let new_messages = newest.conv_seq - notified;
            match &window {
                Window::Recipient(user) => {
                    let online = self
                        .online_devices(std::slice::from_ref(user))
                        .await?
                        .pop()
                        .unwrap_or_default();
                    if !self.notify(user, &online, &newest, new_messages).await? {
                        return Ok(());
                    }
                }
                Window::Hot => self.notify_members(&newest, new_messages).await?,
            }
            notified = newest.conv_seq;
        }
    }

    /// Notifies every member of the message's conversation but its sender, page by page.
    async fn notify_members(
        self: &Arc<Self>,
        message: &MessageRow,
        new_messages: u64,
    ) -> TimelineResult<()> {
        let mut after: Option<String> = None;
        loop {
            let page = self
                .timeline
                .member_ids(&message.conversation_id, after.as_deref(), MEMBER_PAGE)
                .await?;
            let Some(last) = page.last().cloned() else {
                return Ok(());
            };
            let full = page.len() == MEMBER_PAGE;
            let recipients: Vec<String> = page
                .into_iter()
                .filter(|u| *u != message.sender_id)
                .collect();
            let online = self.online_devices(&recipients).await?;
            futures::stream::iter(recipients.into_iter().zip(online))
                .for_each_concurrent(RECIPIENTS_AT_ONCE, |(user, online)| async move {
                    if let Err(e) = self.notify(&user, &online, message, new_messages).await {
                        skipped("error", 1);
                        tracing::debug!(error = %e, "a member could not be notified");
                    }
                })
                .await;
            if !full {
                return Ok(());
            }
            after = Some(last);
        }
    }

    /// Queues a notification of `message` for the user's devices that have a push target and
    /// no open stream; false when there is nobody to tell.
    async fn notify(
        &self,
        user: &str,
        online: &HashSet<String>,
        message: &MessageRow,
        new_messages: u64,
    ) -> TimelineResult<bool> {
        let targets: Vec<_> = self
            .timeline
            .push_targets(user)
            .await?
            .into_iter()
            .filter(|t| !online.contains(&t.device_id))
            .collect();
        if targets.is_empty() {
            skipped("no_offline_device", 1);
            return Ok(false);
        }
        let recipient = Caller {
            user_id: user.to_owned(),
            device_id: String::new(),
            admin: false,
        };
        let view = match self
            .timeline
            .get_conversation(&recipient, &message.conversation_id)
            .await
        {
            Ok(view) => view,
            // Left since: not told.
            Err(TimelineError::NotFound(_)) => {
                skipped("not_a_member", 1);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if view.unread == 0 {
            skipped("read", 1);
            return Ok(false);
        }
        let notification = Notification {
            recipient: user.to_owned(),
            devices: targets
                .iter()
                .map(|t| Device {
                    device_id: t.device_id.clone(),
                    platform: t.platform.clone(),
                    token: t.token.clone(),
                    app_id: t.app_id.clone(),
                    locale: t.locale.clone(),
                })
                .collect(),
            conversation_id: message.conversation_id.clone(),
            conversation_kind: match view.conversation.kind {
                ConversationKind::Direct => "direct",
                ConversationKind::Group => "group",
            }
            .to_owned(),
            sender_id: message.sender_id.clone(),
            message_id: message.message_id.to_string(),
            conv_seq: message.conv_seq,
            created_at_ms: message.created_at_ms,
            content_type: message.content_type.clone(),
            preview: self.preview(message),
            new_messages,
            unread: view.unread,
        };
        self.webhook.enqueue(Pending {
            notification,
            targets,
        });
        Ok(true)
    }

    /// The first `preview_chars` characters of a text body (lossy UTF-8), if previews are on.
    fn preview(&self, message: &MessageRow) -> Option<String> {
        let n = self.options.preview_chars;
        if n == 0 || !message.content_type.starts_with("text/") {
            return None;
        }
        Some(
            String::from_utf8_lossy(&message.body)
                .chars()
                .take(n)
                .collect(),
        )
    }
}
