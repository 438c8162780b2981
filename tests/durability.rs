//! G5: with the default fsync policy, every acked message survives `kill -9` of the server.
//!
//! The real binary runs as a child process on an ephemeral port; senders keep sending while it
//! is killed with SIGKILL mid-flight; a new process on the same data directory must still hold
//! every acked message, deliver each exactly once to every member's sync, and complete fan-outs
//! the crash interrupted (the outbox recovery) — without reusing a conv_seq.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ::timeline::proto::*;
use support::child::ChildServer;
use support::{history_all, sync_all};
use tokio::sync::Mutex;

const MEMBERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_sigkill_mid_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(
        dir.path(),
        &[
            ("TIMELINE_RECOVERY_INTERVAL", "100ms"),
            ("TIMELINE_RECOVERY_AGE", "200ms"),
        ],
    );
    let mut alice = server.client("alice", "d").await;
    alice
        .create_conversation(CreateConversationRequest {
            kind: ConversationKind::Group as i32,
            conversation_id: "crash".into(),
            member_ids: MEMBERS[1..].iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        })
        .await
        .expect("create");

    // Senders run until the server dies under them; every ack is recorded.
    let acked: Arc<Mutex<Vec<Message>>> = Arc::default();
    let mut senders = Vec::new();
    for (s, user) in MEMBERS.iter().enumerate() {
        let mut client = server.client(user, "d").await;
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let conversation_id = if i % 2 == 0 {
                    "g:crash".to_owned()
                } else {
                    dm(user, MEMBERS[(s + 1) % 4])
                };
                let sent = client
                    .send_message(SendMessageRequest {
                        conversation_id,
                        client_msg_id: format!("{user}-{i}"),
                        content_type: "text/plain".into(),
                        body: format!("{user} {i}").into_bytes(),
                    })
                    .await;
                match sent {
                    Ok(r) => acked
                        .lock()
                        .await
                        .push(r.into_inner().message.expect("message")),
                    Err(_) => return,
                }
            }
        }));
    }
    while acked.lock().await.len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().await.clone();

    let server = ChildServer::start(
        dir.path(),
        &[
            ("TIMELINE_RECOVERY_INTERVAL", "100ms"),
            ("TIMELINE_RECOVERY_AGE", "200ms"),
        ],
    );
    // Recovery completes interrupted fan-outs shortly after start.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut conversations: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    let mut reader = server.client("alice", "d").await;
    for conversation in std::iter::once("g:crash".to_owned())
        .chain((0..4).map(|s| dm(MEMBERS[s], MEMBERS[(s + 1) % 4])))
    {
        let member = match conversation.split(':').nth(1) {
            Some(first) if conversation.starts_with("d:") => first,
            _ => "alice",
        };
        let mut client = server.client(member, "d").await;
        let messages = history_all(&mut client, &conversation, 200).await;
        let seqs: Vec<u64> = messages.iter().rev().map(|m| m.conv_seq).collect();
        let unique: HashSet<u64> = seqs.iter().copied().collect();
        assert_eq!(
            unique.len(),
            seqs.len(),
            "{conversation}: a conv_seq was reused"
        );
        conversations.insert(conversation, messages);
    }
    let stored: HashSet<u64> = conversations
        .values()
        .flatten()
        .map(|m| m.message_id)
        .collect();
    for m in &acked {
        assert!(
            stored.contains(&m.message_id),
            "acked message {} ({}) lost",
            m.message_id,
            m.conversation_id
        );
    }

    // Every stored message reaches every member's sync exactly once, including those whose
    // fan-out the kill interrupted.
    for user in MEMBERS {
        let mut client = server.client(user, "d").await;
        let synced = sync_all(&mut client, &mut String::new(), &[97]).await;
        let mut seen = HashSet::new();
        for m in &synced {
            assert!(
                seen.insert(m.message_id),
                "{user} got {} twice",
                m.message_id
            );
        }
        for (conversation, messages) in &conversations {
            let member =
                conversation == "g:crash" || conversation.split(':').any(|part| part == user);
            for m in messages {
                assert_eq!(
                    seen.contains(&m.message_id),
                    member,
                    "{user} / {conversation} / {}",
                    m.conv_seq
                );
            }
        }
    }

    // The restarted sequencer continues after the persisted values.
    let before = conversations["g:crash"]
        .iter()
        .map(|m| m.conv_seq)
        .max()
        .unwrap_or(0);
    let next = reader
        .send_message(SendMessageRequest {
            conversation_id: "g:crash".into(),
            client_msg_id: "after-restart".into(),
            ..Default::default()
        })
        .await
        .expect("send after restart")
        .into_inner()
        .message
        .unwrap();
    assert_eq!(next.conv_seq, before + 1);
    println!(
        "durability: {} acked before SIGKILL, {} stored after restart",
        acked.len(),
        stored.len()
    );
}

fn dm(a: &str, b: &str) -> String {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    format!("d:{lo}:{hi}")
}
