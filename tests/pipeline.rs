//! The domain pipeline driven directly (no network) over the embedded store and local cache,
//! for states that only a crash produces: an outbox entry whose fan-out never ran, a sequencer
//! that lost its state.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use timeline::cache::local::LocalCache;
use timeline::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
use timeline::store::*;
use timeline::timeline::{Caller, CreateConversation, Limits, SendMessage, SystemClock, Timeline};

struct Fixture {
    timeline: Arc<Timeline>,
    store: Arc<EmbeddedStore>,
    cache: Arc<LocalCache>,
    _dir: tempfile::TempDir,
}

const GRACE: Duration = Duration::from_millis(300);

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

fn fixture_with(adjust: impl FnOnce(&mut Limits)) -> Fixture {
    let mut limits = Limits {
        recovery_age: Duration::ZERO,
        gap_grace: GRACE,
        ..Limits::default()
    };
    adjust(&mut limits);
    let dir = tempfile::tempdir().unwrap();
    let store =
        EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Fsync, 4096)).unwrap();
    let cache = Arc::new(LocalCache::new());
    let timeline = Timeline::new(store.clone(), cache.clone(), limits, Arc::new(SystemClock));
    Fixture {
        timeline,
        store,
        cache,
        _dir: dir,
    }
}

fn caller(user: &str) -> Caller {
    Caller {
        user_id: user.into(),
        device_id: "d1".into(),
        admin: false,
    }
}

/// A new group's id.
async fn group(t: &Timeline, owner: &str, members: &[&str]) -> String {
    timeline::testkit::groups::group(t, owner, members)
        .await
        .conversation_id
}

/// What a crash right after the durable step leaves: the message, its outbox entry and its
/// idempotency record, but no inbox rows.
async fn crash_after_durable_write(
    f: &Fixture,
    conv: &str,
    conv_seq: u64,
    message_id: u64,
) -> MessageRow {
    crash_after_durable_write_with(f, conv, conv_seq, message_id, Vec::new()).await
}

/// The same, with the inbox allocation a multi-step backend records before its fan-out writes.
async fn crash_after_durable_write_with(
    f: &Fixture,
    conv: &str,
    conv_seq: u64,
    message_id: u64,
    inbox_allocation: Vec<(String, u64)>,
) -> MessageRow {
    // Old enough to be re-driven and for its recorded seqs to be past the gap rule.
    let created_at_ms = f.timeline.now_ms() - 60_000;
    let message = MessageRow {
        conversation_id: conv.into(),
        conv_seq,
        message_id,
        sender_id: "alice".into(),
        sender_device_id: "d1".into(),
        client_msg_id: "lost-ack".into(),
        content_type: "text/plain".into(),
        body: Bytes::from_static(b"hello"),
        created_at_ms,
        kind: MessageKind::User,
        count_seq: conv_seq,
        target_message_id: 0,
        edited_at_ms: 0,
        recalled_at_ms: 0,
    };
    let key = OutboxKey::for_message(&message);
    f.store
        .write_message(&MessageWrite {
            message: message.clone(),
            pending: Some(PendingFanoutRow {
                bucket: key.bucket,
                shard: key.shard,
                message_id,
                conversation_id: conv.into(),
                conv_seq,
                created_at_ms,
                inbox_allocation,
            }),
            idempotency: Some(IdempotencyRow {
                sender_id: "alice".into(),
                client_msg_id: "lost-ack".into(),
                message_id,
                conversation_id: conv.into(),
                conv_seq,
                created_at_ms: f.timeline.now_ms(),
            }),
        })
        .await
        .unwrap();
    message
}

/// A backend whose fan-out is several writes recorded the allocation, and a crash stopped it
/// after some rows landed. Long after (a reader may have given the missing seqs up), the
/// re-drive writes only the missing users, under fresh seqs: nobody gets the message twice.
#[tokio::test]
async fn a_late_redrive_completes_a_partial_fanout_without_copies() {
    let f = fixture();
    let conv = group(&f.timeline, "alice", &["bob", "carol"]).await;
    let allocation: Vec<(String, u64)> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| (u.to_string(), 1))
        .collect();
    let message = crash_after_durable_write_with(&f, &conv, 1, 4343, allocation).await;
    // alice's and bob's rows landed before the crash; carol's did not.
    let landed = |user: &str| InboxRow {
        user_id: user.into(),
        inbox_seq: 1,
        allocated_at_ms: message.created_at_ms,
        message: message.clone(),
    };
    f.store
        .write_fanout(&FanoutWrite {
            inbox: vec![landed("alice"), landed("bob")],
            activity: Vec::new(),
            clear_pending: None,
        })
        .await
        .unwrap();

    assert_eq!(
        f.timeline
            .recover_pending(f.timeline.now_ms())
            .await
            .unwrap(),
        1
    );
    for user in ["alice", "bob", "carol"] {
        let rows = f
            .store
            .read_inbox(user, 0, InboxPosition::default(), 10)
            .await
            .unwrap();
        let copies = rows
            .iter()
            .filter(|r| r.message.message_id == message.message_id)
            .count();
        assert_eq!(copies, 1, "{user}: {rows:?}");
        assert_eq!(synced_ids(&f.timeline, user).await, [message.message_id]);
    }
    assert!(
        f.store
            .get_pending(OutboxKey::for_message(&message))
            .await
            .unwrap()
            .is_none()
    );
}

async fn synced_ids(t: &Timeline, user: &str) -> Vec<u64> {
    let page = t.sync(&caller(user), "", 500).await.unwrap();
    page.messages.iter().map(|m| m.message_id).collect()
}

#[tokio::test]
async fn recovery_redrives_a_fanout_that_a_crash_interrupted() {
    let f = fixture();
    let conv = group(&f.timeline, "alice", &["bob", "carol"]).await;
    let message = crash_after_durable_write(&f, &conv, 1, 4242).await;
    assert!(
        synced_ids(&f.timeline, "bob").await.is_empty(),
        "not delivered before recovery"
    );

    let redriven = f
        .timeline
        .recover_pending(f.timeline.now_ms())
        .await
        .unwrap();
    assert_eq!(redriven, 1);
    for user in ["alice", "bob", "carol"] {
        assert_eq!(
            synced_ids(&f.timeline, user).await,
            [message.message_id],
            "{user}"
        );
    }
    let key = OutboxKey::for_message(&message);
    assert!(
        f.store
            .list_pending(key.bucket, key.shard, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A second pass finds nothing and delivers nothing twice.
    assert_eq!(
        f.timeline
            .recover_pending(f.timeline.now_ms())
            .await
            .unwrap(),
        0
    );
    assert_eq!(synced_ids(&f.timeline, "bob").await.len(), 1);
}

#[tokio::test]
async fn an_idempotent_retry_completes_the_interrupted_fanout_before_acking() {
    let f = fixture();
    let conv = group(&f.timeline, "alice", &["bob"]).await;
    let first = crash_after_durable_write(&f, &conv, 1, 777).await;
    let retry = f
        .timeline
        .send(
            &caller("alice"),
            SendMessage {
                conversation_id: conv.clone(),
                client_msg_id: "lost-ack".into(),
                content_type: String::new(),
                body: Bytes::from_static(b"hello"),
            },
        )
        .await
        .unwrap();
    assert_eq!(retry, first, "the retry answers with the first message");
    assert_eq!(synced_ids(&f.timeline, "bob").await, [777]);
    let history = f
        .timeline
        .history(&caller("bob"), &conv, 0, 10)
        .await
        .unwrap();
    assert_eq!(history.messages.len(), 1, "one message, not two");
}

#[tokio::test]
async fn a_sequencer_that_lost_its_state_continues_after_the_persisted_values() {
    let f = fixture();
    let conv = group(&f.timeline, "alice", &["bob"]).await;
    let send = |t: Arc<Timeline>, n: u32| {
        let conv = conv.clone();
        async move {
            t.send(
                &caller("alice"),
                SendMessage {
                    conversation_id: conv,
                    client_msg_id: format!("m{n}"),
                    content_type: String::new(),
                    body: Bytes::from_static(b"x"),
                },
            )
            .await
            .unwrap()
        }
    };
    for n in 0..5 {
        send(f.timeline.clone(), n).await;
    }
    // A new pipeline over the same store with a fresh (empty) cache: a restarted node.
    let restarted = Timeline::new(
        f.store.clone(),
        Arc::new(LocalCache::new()),
        Limits::default(),
        Arc::new(SystemClock),
    );
    let m = send(restarted.clone(), 5).await;
    assert_eq!(
        m.conv_seq, 6,
        "conv_seq continues after the last persisted one"
    );
    let page = restarted.sync(&caller("bob"), "", 100).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.conv_seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "no inbox_seq was reused");
}

/// A fresh device whose first page stops at a young gap before anything was delivered gets a
/// cursor that its next Sync takes up where it stopped: cursors expire by the retention rules
/// only (found by the switch reproduction: such a cursor was answered with cursor_expired).
#[tokio::test]
async fn a_fresh_cursor_stopped_at_a_young_gap_does_not_expire() {
    use timeline::cache::{Cache, SeqKey, SeqRequest};
    let f = fixture();
    let conv = group(&f.timeline, "alice", &["bob"]).await;
    // A writer took bob's first inbox seq and has not written its row yet.
    let bob_inbox = SeqKey::Inbox("bob".into());
    f.cache.seed(&bob_inbox, 0).await.unwrap();
    let taken = f
        .cache
        .allocate(
            &[SeqRequest {
                key: bob_inbox,
                count: 1,
            }],
            f.timeline.now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(taken, vec![Some(1)]);
    let sent = f
        .timeline
        .send(
            &caller("alice"),
            SendMessage {
                conversation_id: conv,
                client_msg_id: "after-the-gap".into(),
                content_type: String::new(),
                body: Bytes::from_static(b"hi"),
            },
        )
        .await
        .unwrap();

    let first = f.timeline.sync(&caller("bob"), "", 10).await.unwrap();
    assert!(first.messages.is_empty() && first.pending && !first.cursor_expired);
    let again = f
        .timeline
        .sync(&caller("bob"), &first.next_cursor, 10)
        .await
        .unwrap();
    assert!(!again.cursor_expired, "expired with nothing dropped");
    tokio::time::sleep(GRACE * 2).await;
    let after = f
        .timeline
        .sync(&caller("bob"), &again.next_cursor, 10)
        .await
        .unwrap();
    assert!(!after.cursor_expired);
    assert_eq!(
        after
            .messages
            .iter()
            .map(|m| m.message_id)
            .collect::<Vec<_>>(),
        [sent.message_id],
        "the gap is skipped once old, the row after it delivered"
    );
}

/// A user at `max_conversations_per_user` cannot join another conversation (the list and
/// Sync read that many and would leave the rest out); after a leave they can again.
#[tokio::test]
async fn a_join_past_the_conversation_cap_is_refused_with_a_clear_error() {
    let f = fixture_with(|l| l.max_conversations_per_user = 2);
    let first = group(&f.timeline, "alice", &["bob"]).await;
    group(&f.timeline, "carol", &["bob"]).await;
    let refused = f
        .timeline
        .create_conversation(
            &caller("dave"),
            CreateConversation {
                kind: ConversationKind::Group,
                conversation_id: String::new(),
                title: "third".into(),
                member_ids: vec!["bob".into()],
            },
        )
        .await
        .expect_err("bob is in 2 conversations");
    let text = refused.to_string();
    assert!(
        text.contains("bob") && text.contains("max_conversations_per_user"),
        "{text}"
    );
    let direct = f
        .timeline
        .send(
            &caller("erin"),
            SendMessage {
                conversation_id: "d:bob:erin".into(),
                client_msg_id: "c1".into(),
                content_type: "text/plain".into(),
                body: Bytes::from_static(b"hi"),
            },
        )
        .await;
    assert!(direct.is_err(), "a new direct chat is a join too");
    f.timeline
        .remove_members(&caller("bob"), &first, &["bob".into()])
        .await
        .unwrap();
    group(&f.timeline, "dave", &["bob"]).await;
}
