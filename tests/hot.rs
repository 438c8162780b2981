//! Hot conversations end to end: forced and automatic mode switches, merged Sync across them,
//! the Cache window and its Store fallback, unread counts from the Cache heads.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ::timeline::proto::*;
use support::{Client, TestServer, operator, send, set_mode, sync_all};
use tonic::Code;

/// Every message once, and each conversation's conv_seqs exactly 1..=n in order.
fn assert_contiguous_once(synced: &[Message], expected: &BTreeMap<&str, u64>) {
    let mut ids = HashSet::new();
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in synced {
        assert!(
            ids.insert(m.message_id),
            "duplicate {} ({} #{})",
            m.message_id,
            m.conversation_id,
            m.conv_seq
        );
        seqs.entry(m.conversation_id.clone())
            .or_default()
            .push(m.conv_seq);
    }
    for (conversation, n) in expected {
        let got = seqs.remove(*conversation).unwrap_or_default();
        assert_eq!(got, (1..=*n).collect::<Vec<_>>(), "{conversation}");
    }
    assert!(seqs.is_empty(), "unexpected: {:?}", seqs.keys());
}

#[tokio::test]
async fn forced_switches_keep_every_reader_exactly_once_in_order() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "a").await;
    alice
        .create_conversation(CreateConversationRequest {
            kind: ConversationKind::Group as i32,
            conversation_id: "big".into(),
            member_ids: vec!["bob".into(), "carol".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut bob = server.client("bob", "b").await;
    let mut bob_cursor = String::new();
    let mut bob_seen = Vec::new();

    // A plain member may not force a mode.
    let e = bob
        .set_conversation_mode(SetConversationModeRequest {
            conversation_id: "g:big".into(),
            mode: DeliveryMode::Hot as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let mut ops = operator(&server).await;
    let mut n = 0u64;
    for (round, mode) in [DeliveryMode::Hot, DeliveryMode::Fanout, DeliveryMode::Hot]
        .into_iter()
        .enumerate()
    {
        for _ in 0..7 {
            n += 1;
            send(&mut alice, "g:big", &format!("m{n}")).await;
            send(&mut alice, "d:alice:bob", &format!("d{n}")).await;
        }
        bob_seen.extend(sync_all(&mut bob, &mut bob_cursor, &[3, 1, 5]).await);
        let c = set_mode(&mut ops, "g:big", mode).await;
        assert_eq!(c.mode, mode as i32, "round {round}");
        assert_eq!(c.mode_since_seq, n + 1);
        assert!(c.mode_forced);
    }
    for _ in 0..5 {
        n += 1;
        send(&mut alice, "g:big", &format!("m{n}")).await;
    }
    bob_seen.extend(sync_all(&mut bob, &mut bob_cursor, &[2, 7]).await);
    assert_contiguous_once(
        &bob_seen,
        &BTreeMap::from([("g:big", n), ("d:alice:bob", 21)]),
    );

    // A new device reads the retained messages the same way; the sender's other device too.
    let mut carol = server.client("carol", "c").await;
    let fresh = sync_all(&mut carol, &mut String::new(), &[4]).await;
    assert_contiguous_once(&fresh, &BTreeMap::from([("g:big", n)]));
    let mut alice_laptop = server.client("alice", "laptop").await;
    let carbon = sync_all(&mut alice_laptop, &mut String::new(), &[50]).await;
    assert_contiguous_once(
        &carbon,
        &BTreeMap::from([("g:big", n), ("d:alice:bob", 21)]),
    );

    // History is one sequence whatever the mode.
    let history = bob
        .get_history(GetHistoryRequest {
            conversation_id: "g:big".into(),
            before_seq: 0,
            limit: 200,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        history
            .messages
            .iter()
            .map(|m| m.conv_seq)
            .collect::<Vec<_>>(),
        (1..=n).rev().collect::<Vec<_>>()
    );

    // Unread and last message come from the Cache head while hot.
    let list = bob
        .list_conversations(ListConversationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let big = list
        .conversations
        .iter()
        .find(|s| s.conversation.as_ref().unwrap().conversation_id == "g:big")
        .unwrap();
    assert_eq!(big.last_seq, n);
    assert_eq!(big.last_message.as_ref().unwrap().conv_seq, n);
    assert_eq!(big.unread_count, n);
    let r = bob
        .mark_read(MarkReadRequest {
            conversation_id: "g:big".into(),
            seq: n - 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.read_seq, r.unread_count), (n - 2, 2));
    send(&mut bob, "g:big", "bob-1").await;
    let view = bob
        .get_conversation(GetConversationRequest {
            conversation_id: "g:big".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (view.last_seq, view.unread_count),
        (n + 1, 0),
        "sending reads up to one's own"
    );

    // Back to automatic: below the threshold it returns to fan-out.
    let c = set_mode(&mut ops, "g:big", DeliveryMode::Unspecified).await;
    assert!(!c.mode_forced);
    assert_eq!(c.mode, DeliveryMode::Fanout as i32);
}

#[tokio::test]
async fn conversations_switch_by_size_with_hysteresis() {
    let server = TestServer::start_with(|c| {
        c.limits.hot_threshold = 6;
        c.limits.mode_min_dwell = Duration::ZERO;
    })
    .await;
    let mut alice = server.client("alice", "a").await;
    let members: Vec<String> = (1..=4).map(|i| format!("u{i}")).collect();
    alice
        .create_conversation(CreateConversationRequest {
            kind: ConversationKind::Group as i32,
            conversation_id: "grow".into(),
            member_ids: members,
            ..Default::default()
        })
        .await
        .unwrap();
    let mode = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.get_conversation(GetConversationRequest {
                conversation_id: "g:grow".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .conversation
            .unwrap()
        }
    };
    send(&mut alice, "g:grow", "1").await;
    assert_eq!(mode(&mut alice).await.mode, DeliveryMode::Fanout as i32);
    let add = |ids: &[&str]| AddMembersRequest {
        conversation_id: "g:grow".into(),
        user_ids: ids.iter().map(|s| s.to_string()).collect(),
    };
    alice.add_members(add(&["u5"])).await.unwrap();
    let c = mode(&mut alice).await;
    assert_eq!(
        (c.member_count, c.mode),
        (6, DeliveryMode::Hot as i32),
        "hot at the threshold"
    );
    assert_eq!(c.mode_since_seq, 2);
    send(&mut alice, "g:grow", "2").await;
    // Below the threshold but not below half of it: stays hot.
    let remove = |ids: &[&str]| RemoveMembersRequest {
        conversation_id: "g:grow".into(),
        user_ids: ids.iter().map(|s| s.to_string()).collect(),
    };
    alice.remove_members(remove(&["u5", "u4"])).await.unwrap();
    assert_eq!(
        mode(&mut alice).await.mode,
        DeliveryMode::Hot as i32,
        "hysteresis"
    );
    alice.remove_members(remove(&["u3", "u2"])).await.unwrap();
    let c = mode(&mut alice).await;
    assert_eq!((c.member_count, c.mode), (2, DeliveryMode::Fanout as i32));
    send(&mut alice, "g:grow", "3").await;

    // u1 joined at the start and saw every mode: 3 messages once each.
    let mut u1 = server.client("u1", "d").await;
    let synced = sync_all(&mut u1, &mut String::new(), &[1]).await;
    assert_contiguous_once(&synced, &BTreeMap::from([("g:grow", 3)]));
    // u5 joined at seq 2 and left: it keeps what it was entitled to, nothing after.
    let mut u5 = server.client("u5", "d").await;
    let synced = sync_all(&mut u5, &mut String::new(), &[10]).await;
    assert!(
        synced.iter().all(|m| m.conv_seq == 2),
        "{:?}",
        synced.iter().map(|m| m.conv_seq).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_group_created_past_the_threshold_is_hot_at_once_despite_the_dwell() {
    // Default dwell (60 s): it spaces switches, it must not delay the first one.
    let server = TestServer::start_with(|c| c.limits.hot_threshold = 4).await;
    let mut alice = server.client("alice", "a").await;
    alice
        .create_conversation(CreateConversationRequest {
            kind: ConversationKind::Group as i32,
            conversation_id: "crowd".into(),
            member_ids: (1..=5).map(|i| format!("u{i}")).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = alice
        .get_conversation(GetConversationRequest {
            conversation_id: "g:crowd".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!((c.member_count, c.mode), (6, DeliveryMode::Hot as i32));
    send(&mut alice, "g:crowd", "1").await;
    let mut u1 = server.client("u1", "d").await;
    let synced = sync_all(&mut u1, &mut String::new(), &[5]).await;
    assert_contiguous_once(&synced, &BTreeMap::from([("g:crowd", 1)]));
}

#[tokio::test]
async fn a_reader_behind_the_window_reads_the_rest_from_the_store() {
    let server = TestServer::start_with(|c| c.limits.hot_window = 4).await;
    let mut alice = server.client("alice", "a").await;
    alice
        .create_conversation(CreateConversationRequest {
            kind: ConversationKind::Group as i32,
            conversation_id: "w".into(),
            member_ids: vec!["bob".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ops = operator(&server).await;
    set_mode(&mut ops, "g:w", DeliveryMode::Hot).await;
    let mut bob = server.client("bob", "b").await;
    let mut cursor = String::new();
    assert!(sync_all(&mut bob, &mut cursor, &[5]).await.is_empty());
    for i in 1..=30 {
        send(&mut alice, "g:w", &format!("{i}")).await;
    }
    let synced = sync_all(&mut bob, &mut cursor, &[7, 2]).await;
    assert_contiguous_once(&synced, &BTreeMap::from([("g:w", 30)]));
    let page = bob
        .sync(SyncRequest { cursor, limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert!(page.messages.is_empty() && !page.has_more);
}

#[tokio::test]
async fn paging_through_many_hot_conversations_never_expires_the_cursor() {
    // Regression: with an empty inbox, a page cut at `limit` while hot sources had more
    // dated the inbox position 0, and the next call answered cursor_expired.
    let server = TestServer::start().await;
    let mut ops = operator(&server).await;
    let mut alice = server.client("alice", "a").await;
    let mut expected = BTreeMap::new();
    let ids: Vec<String> = (0..12).map(|i| format!("g:many{i}")).collect();
    for id in &ids {
        alice
            .create_conversation(CreateConversationRequest {
                kind: ConversationKind::Group as i32,
                conversation_id: id.clone(),
                member_ids: vec!["bob".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        set_mode(&mut ops, id, DeliveryMode::Hot).await;
        for n in 0..3 {
            send(&mut alice, id, &format!("{id}-{n}")).await;
        }
    }
    for id in &ids {
        expected.insert(id.as_str(), 3);
    }
    let mut bob = server.client("bob", "b").await;
    let synced = sync_all(&mut bob, &mut String::new(), &[5, 2]).await;
    assert_contiguous_once(&synced, &expected);
}
