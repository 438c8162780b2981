//! A push-stream client for tests: opens `Subscribe` with a cursor, reads events, and collects
//! messages the way an app would (keeping the last cursor received).

use std::collections::HashSet;
use std::time::Duration;

use ::timeline::proto::event::Event as Kind;
use ::timeline::proto::*;
use tokio::sync::mpsc;
use tonic::Streaming;

use super::Client;

pub struct Stream {
    pub events: Streaming<Event>,
    pub frames: mpsc::Sender<ClientFrame>,
    /// The cursor of the last batch received.
    pub cursor: String,
    /// Live batches received (each one wake-up of the stream).
    pub live_batches: usize,
}

pub fn subscribe_frame(cursor: &str, limit: u32) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Subscribe(SubscribeRequest {
            cursor: cursor.into(),
            limit,
        })),
    }
}

/// Opens a stream from `cursor` with batches of at most `limit` messages.
pub async fn open(client: &mut Client, cursor: &str, limit: u32) -> Result<Stream, tonic::Status> {
    let (frames, receiver) = mpsc::channel(8);
    frames.send(subscribe_frame(cursor, limit)).await.unwrap();
    let outgoing =
        futures::stream::unfold(
            receiver,
            |mut r| async move { r.recv().await.map(|f| (f, r)) },
        );
    let events = client.subscribe(outgoing).await?.into_inner();
    Ok(Stream {
        events,
        frames,
        cursor: cursor.to_owned(),
        live_batches: 0,
    })
}

impl Stream {
    /// The next event, or `None` when the stream ended or nothing came within `wait`. An
    /// error status ends it with `Err`.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Event>, tonic::Status> {
        match tokio::time::timeout(wait, self.events.message()).await {
            Err(_) => Ok(None),
            Ok(result) => {
                let event = result?;
                if let Some(Event {
                    event: Some(Kind::Batch(batch)),
                }) = &event
                {
                    self.cursor = batch.next_cursor.clone();
                    if batch.live {
                        self.live_batches += 1;
                    }
                }
                Ok(event)
            }
        }
    }

    /// Messages until `done` says enough (given all so far) or `wait` passes without an event.
    pub async fn messages_until(
        &mut self,
        wait: Duration,
        mut done: impl FnMut(&[Message]) -> bool,
    ) -> Vec<Message> {
        let mut got = Vec::new();
        while !done(&got) {
            match self.next(wait).await {
                Ok(Some(Event {
                    event: Some(Kind::Batch(batch)),
                })) => got.extend(batch.messages),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(status) => panic!("stream ended: {status:?}"),
            }
        }
        got
    }

    /// Exactly `n` messages (or what came before `wait` passed without any event).
    pub async fn take(&mut self, n: usize, wait: Duration) -> Vec<Message> {
        self.messages_until(wait, |got| got.len() >= n).await
    }

    /// Waits for the end status of the stream (skipping events) within `wait`.
    pub async fn end(&mut self, wait: Duration) -> Option<tonic::Status> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.events.message()).await {
                Err(_) => return None,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Some(tonic::Status::ok("")),
                Ok(Err(status)) => return Some(status),
            }
        }
    }
}

/// The ids in order, asserting none repeats.
pub fn ids_once(messages: &[Message]) -> Vec<u64> {
    let mut seen = HashSet::new();
    for m in messages {
        assert!(
            seen.insert(m.message_id),
            "message {} of {} (conv_seq {}) delivered twice",
            m.message_id,
            m.conversation_id,
            m.conv_seq
        );
    }
    messages.iter().map(|m| m.message_id).collect()
}
