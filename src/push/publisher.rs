//! Publishes the pipeline's delivery hints: queued without waiting (a send's ack never waits
//! for them), then sent by one task in batches — each batch one Cache round trip, so a send
//! costs at most one pipelined round trip of publishes whatever its member count, and fewer
//! under load. Wake-ups for the same channel within a batch are sent once.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::channels::{conversation_channel, user_channel, wake_payload};
use crate::cache::Cache;
use crate::metrics;
use crate::model::MessageRow;
use crate::timeline::DeliveryListener;

/// Batches of hints waiting to be published; a full queue drops new hints (counted), which
/// delays those streams until their next wake-up or heartbeat but loses no data.
const QUEUE: usize = 16_384;
/// Publishes sent in one round trip at most.
const MAX_BATCH: usize = 4096;

pub struct Publisher {
    queue: mpsc::Sender<Vec<(String, Bytes)>>,
}

impl Publisher {
    /// Starts the publishing task; it ends when the publisher is dropped.
    pub fn start(cache: Arc<dyn Cache>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(publish_batches(cache, receiver));
        Self { queue }
    }

    pub fn send(&self, hints: Vec<(String, Bytes)>, kind: &'static str) {
        let count = hints.len() as u64;
        if count == 0 {
            return;
        }
        match self.queue.try_send(hints) {
            Ok(()) => {
                ::metrics::counter!(metrics::PUSH_HINTS_PUBLISHED, "kind" => kind).increment(count)
            }
            Err(_) => ::metrics::counter!(metrics::PUSH_HINTS_PUBLISHED, "kind" => "dropped")
                .increment(count),
        }
    }

    fn wake_users<'a>(&self, users: impl Iterator<Item = &'a str>) {
        let hints = users.map(|u| (user_channel(u), wake_payload())).collect();
        self.send(hints, "user");
    }
}

async fn publish_batches(cache: Arc<dyn Cache>, mut queue: mpsc::Receiver<Vec<(String, Bytes)>>) {
    while let Some(first) = queue.recv().await {
        let mut batch = first;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        // One wake-up per channel is enough; ephemeral events all go.
        let wake = wake_payload();
        let mut woken = HashSet::new();
        batch.retain(|(channel, payload)| *payload != wake || woken.insert(channel.clone()));
        if let Err(e) = cache.publish(&batch).await {
            // Hints are best effort: streams re-sync at their next heartbeat.
            tracing::debug!(error = %e, hints = batch.len(), "push hints not published");
        }
    }
}

impl DeliveryListener for Publisher {
    fn fanned_out(&self, _message: &MessageRow, users: &[&str]) {
        self.wake_users(users.iter().copied());
    }

    fn appended_hot(&self, message: &MessageRow) {
        self.send(
            vec![(
                conversation_channel(&message.conversation_id),
                wake_payload(),
            )],
            "conversation",
        );
    }

    fn memberships_changed(&self, _conversation_id: &str, users: &[String]) {
        self.wake_users(users.iter().map(String::as_str));
    }
}
