//! Helpers shared by the benchmarks that drive the pipeline in-process.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use timeline::store::ConversationKind;
use timeline::timeline::{Caller, CreateConversation, SendMessage, Timeline};

/// An operator caller (may force modes) named `user`.
pub fn caller(user: &str) -> Caller {
    Caller {
        user_id: user.into(),
        device_id: "bench".into(),
        admin: true,
    }
}

/// The `p` quantile of `samples`, in milliseconds.
pub fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// A group created by `creator` with members `m1`..`m{members-1}` besides them.
pub async fn group(t: &Timeline, creator: &str, id: &str, members: usize) {
    t.create_conversation(
        &caller(creator),
        CreateConversation {
            kind: ConversationKind::Group,
            conversation_id: id.into(),
            title: String::new(),
            member_ids: (1..members).map(|i| format!("m{i}")).collect(),
        },
    )
    .await
    .expect("create group");
}

/// Sends a 100-byte message, the `n`-th of this sender in this conversation.
pub async fn send(t: &Timeline, sender: &str, conversation_id: &str, n: usize) {
    t.send(
        &caller(sender),
        SendMessage {
            conversation_id: conversation_id.into(),
            client_msg_id: format!("{sender}-{conversation_id}-{n}"),
            content_type: String::new(),
            body: Bytes::from_static(&[b'x'; 100]),
        },
    )
    .await
    .expect("send");
}
