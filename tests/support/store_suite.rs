//! The `Store` conformance suite: every backend must pass these, through the trait only.
//! Instantiate it with `store_conformance_suite!(factory)`, where `factory().await` returns
//! `Some((store, guard))`: a fresh, empty store opened with `bucket_size = BUCKET` and whatever
//! must live as long as it (a temp dir); or `None` when the backend is not available here, after
//! saying so.

use bytes::Bytes;
use timeline::store::*;

pub const BUCKET: u64 = 16;

pub fn message(conversation_id: &str, conv_seq: u64, message_id: u64) -> MessageRow {
    MessageRow {
        conversation_id: conversation_id.into(),
        conv_seq,
        message_id,
        sender_id: "alice".into(),
        sender_device_id: "phone".into(),
        client_msg_id: format!("c{message_id}"),
        content_type: "text/plain".into(),
        body: Bytes::from(format!("body {message_id}")),
        created_at_ms: 1_700_000_000_000 + message_id as i64,
        kind: MessageKind::User,
        count_seq: conv_seq,
        target_message_id: 0,
        edited_at_ms: 0,
        recalled_at_ms: 0,
    }
}

fn conversation(id: &str) -> ConversationRow {
    ConversationRow {
        conversation_id: id.into(),
        kind: ConversationKind::Group,
        title: "t".into(),
        created_at_ms: 1,
        created_by: "alice".into(),
        member_count: 1,
        mode_spans: ConversationRow::initial_spans(),
        mode_forced: false,
        mode_changed_at_ms: 1,
        slowmode_seconds: 0,
    }
}

fn user_conversation(user: &str, conv: &str) -> UserConversationRow {
    UserConversationRow {
        user_id: user.into(),
        conversation_id: conv.into(),
        kind: ConversationKind::Group,
        mode: DeliveryMode::Fanout,
        last_message_id: 0,
        last_seq: 0,
        read_seq: 0,
        joined_seq: 1,
        joined_at_ms: 5,
        last_count: 0,
        read_count: 0,
    }
}

fn inbox(user: &str, inbox_seq: u64, m: &MessageRow) -> InboxRow {
    InboxRow {
        user_id: user.into(),
        inbox_seq,
        allocated_at_ms: 7,
        message: m.clone(),
    }
}

async fn write_plain(store: &dyn Store, m: &MessageRow) {
    store
        .write_message(&MessageWrite {
            message: m.clone(),
            pending: None,
            idempotency: None,
        })
        .await
        .unwrap();
}

pub async fn conversations_insert_if_absent(store: &dyn Store) {
    let row = conversation("g:one");
    assert_eq!(
        store.insert_conversation_if_absent(&row).await.unwrap(),
        None
    );
    let other = ConversationRow {
        title: "other".into(),
        ..row.clone()
    };
    assert_eq!(
        store.insert_conversation_if_absent(&other).await.unwrap(),
        Some(row.clone())
    );
    assert_eq!(
        store.get_conversation("g:one").await.unwrap(),
        Some(row.clone())
    );
    assert_eq!(store.get_conversation("g:on").await.unwrap(), None);
    // Of two counts, the one that started later wins, whatever order they are set in.
    let created = row.created_at_ms;
    store
        .set_member_count("g:one", 42, created + 20)
        .await
        .unwrap();
    assert_eq!(member_count(store, "g:one").await, 42);
    store
        .set_member_count("g:one", 41, created + 10)
        .await
        .unwrap();
    assert_eq!(
        member_count(store, "g:one").await,
        42,
        "an older count does not win"
    );
    store
        .set_member_count("g:one", 43, created + 30)
        .await
        .unwrap();
    assert_eq!(member_count(store, "g:one").await, 43);
    // A creation's count is as of its creation: any later count replaces it.
    let two = ConversationRow {
        created_at_ms: 1_000,
        ..conversation("g:two")
    };
    store.insert_conversation_if_absent(&two).await.unwrap();
    store
        .set_member_count("g:two", 7, two.created_at_ms - 1)
        .await
        .unwrap();
    assert_eq!(member_count(store, "g:two").await, two.member_count);
    store
        .set_member_count("g:two", 8, two.created_at_ms + 1)
        .await
        .unwrap();
    assert_eq!(member_count(store, "g:two").await, 8);

    // Slowmode: off until set, then read back with the row; other writes keep it.
    let slowmode = |id: &'static str| async move {
        store
            .get_conversation(id)
            .await
            .unwrap()
            .unwrap()
            .slowmode_seconds
    };
    assert_eq!(slowmode("g:two").await, 0);
    store.set_slowmode("g:two", 30).await.unwrap();
    assert_eq!(slowmode("g:two").await, 30);
    assert_eq!(slowmode("g:one").await, 0, "another conversation's");
    store
        .set_member_count("g:two", 9, two.created_at_ms + 2)
        .await
        .unwrap();
    store
        .update_conversation_mode("g:two", &ConversationRow::initial_spans(), true, 5)
        .await
        .unwrap();
    assert_eq!(slowmode("g:two").await, 30);
    store.set_slowmode("g:two", 0).await.unwrap();
    assert_eq!(slowmode("g:two").await, 0);
}

async fn member_count(store: &dyn Store, id: &str) -> u32 {
    store
        .get_conversation(id)
        .await
        .unwrap()
        .unwrap()
        .member_count
}

pub async fn members_page_in_user_order_per_conversation(store: &dyn Store) {
    for (conv, users) in [("g:a", vec!["u3", "u1", "u2", "u10"]), ("g:ab", vec!["x"])] {
        for u in users {
            let member = MemberRow {
                conversation_id: conv.into(),
                user_id: u.into(),
                role: Role::Member,
                joined_seq: 1,
                joined_at_ms: 1,
            };
            store
                .add_member(&member, &user_conversation(u, conv))
                .await
                .unwrap();
        }
    }
    let ids = |rows: Vec<MemberRow>| rows.into_iter().map(|m| m.user_id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_members("g:a", None, 10).await.unwrap()),
        ["u1", "u10", "u2", "u3"]
    );
    assert_eq!(
        ids(store.list_members("g:a", None, 2).await.unwrap()),
        ["u1", "u10"]
    );
    assert_eq!(
        ids(store.list_members("g:a", Some("u10"), 10).await.unwrap()),
        ["u2", "u3"]
    );
    assert_eq!(store.count_members("g:a").await.unwrap(), 4);
    assert_eq!(store.count_members("g:ab").await.unwrap(), 1);
    assert!(store.get_member("g:a", "u2").await.unwrap().is_some());
    assert!(
        store
            .get_user_conversation("u2", "g:a")
            .await
            .unwrap()
            .is_some()
    );
    store.remove_member("g:a", "u2").await.unwrap();
    assert!(store.get_member("g:a", "u2").await.unwrap().is_none());
    // Its membership went with it (one unit): nothing left that Sync would read.
    assert!(
        store
            .get_user_conversation("u2", "g:a")
            .await
            .unwrap()
            .is_none_or(|row| row.joined_seq == 0)
    );
    assert_eq!(store.count_members("g:a").await.unwrap(), 3);
    // Each member came with its read state.
    assert_eq!(
        store
            .get_user_conversation("u3", "g:a")
            .await
            .unwrap()
            .unwrap()
            .joined_seq,
        1
    );
    assert_eq!(
        store
            .list_user_conversations("x", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn user_conversations_read_state_only_moves_forward(store: &dyn Store) {
    for conv in ["g:b", "g:a", "d:alice:bob"] {
        store
            .upsert_user_conversation(&user_conversation("alice", conv))
            .await
            .unwrap();
    }
    store
        .upsert_user_conversation(&user_conversation("alice2", "g:z"))
        .await
        .unwrap();
    let convs = |rows: Vec<UserConversationRow>| {
        rows.into_iter()
            .map(|r| r.conversation_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        convs(
            store
                .list_user_conversations("alice", None, 10)
                .await
                .unwrap()
        ),
        ["d:alice:bob", "g:a", "g:b"]
    );
    assert_eq!(
        convs(
            store
                .list_user_conversations("alice", Some("g:a"), 10)
                .await
                .unwrap()
        ),
        ["g:b"]
    );

    let row = store
        .advance_read_seq("alice", "g:a", 5, 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.read_seq, row.read_count), (5, 4));
    let row = store
        .advance_read_seq("alice", "g:a", 3, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.read_seq, row.read_count),
        (5, 4),
        "read_seq and read_count never move back"
    );
    let stored = store
        .get_user_conversation("alice", "g:a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.read_seq, stored.read_count), (5, 4));
    assert_eq!(
        store
            .advance_read_seq("alice", "g:nope", 3, 3)
            .await
            .unwrap(),
        None
    );
    store.remove_member("g:a", "alice").await.unwrap();
    assert!(
        store
            .get_user_conversation("alice", "g:a")
            .await
            .unwrap()
            .is_none_or(|row| row.joined_seq == 0)
    );
}

pub async fn message_write_is_one_unit_with_outbox_and_idempotency(store: &dyn Store) {
    let m = message("g:a", 1, 100);
    let pending = outbox_entry("g:a", 1, 100, 10, Vec::new());
    let idem = IdempotencyRow {
        sender_id: "alice".into(),
        client_msg_id: "c100".into(),
        message_id: 100,
        conversation_id: "g:a".into(),
        conv_seq: 1,
        created_at_ms: 10,
    };
    store
        .write_message(&MessageWrite {
            message: m.clone(),
            pending: Some(pending.clone()),
            idempotency: Some(idem.clone()),
        })
        .await
        .unwrap();
    let read = store
        .read_messages(
            "g:a",
            0,
            SeqRange { from: 1, to: 1 },
            ReadOrder::Ascending,
            10,
        )
        .await
        .unwrap();
    assert_eq!(read, vec![m]);
    assert_eq!(
        store.get_pending(pending.key()).await.unwrap(),
        Some(pending.clone())
    );
    assert_eq!(
        store
            .list_pending(pending.bucket, pending.shard, 10)
            .await
            .unwrap(),
        vec![pending.clone()]
    );
    assert_eq!(
        store
            .get_idempotency("alice", "c100", 20, 1000)
            .await
            .unwrap(),
        Some(idem)
    );
    assert_eq!(
        store
            .get_idempotency("alice", "c100", 2000, 1000)
            .await
            .unwrap(),
        None,
        "TTL"
    );
    assert_eq!(
        store
            .get_idempotency("alice", "c10", 20, 1000)
            .await
            .unwrap(),
        None
    );
    store.delete_pending(pending.key()).await.unwrap();
    assert_eq!(store.get_pending(pending.key()).await.unwrap(), None);
}

pub async fn messages_read_by_range_in_both_orders(store: &dyn Store) {
    for seq in 1..=40u64 {
        write_plain(store, &message("g:a", seq, 1000 + seq)).await;
    }
    write_plain(store, &message("g:ab", 1, 5000)).await;
    // Two messages may share a conv_seq after a sequencer reset: message_id orders them.
    write_plain(store, &message("g:a", 20, 999)).await;

    let seqs = |rows: Vec<MessageRow>| {
        rows.iter()
            .map(|m| (m.conv_seq, m.message_id))
            .collect::<Vec<_>>()
    };
    let asc = store
        .read_messages(
            "g:a",
            1,
            SeqRange { from: 18, to: 21 },
            ReadOrder::Ascending,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        seqs(asc),
        [(18, 1018), (19, 1019), (20, 999), (20, 1020), (21, 1021)]
    );
    let desc = store
        .read_messages(
            "g:a",
            1,
            SeqRange { from: 16, to: 31 },
            ReadOrder::Descending,
            3,
        )
        .await
        .unwrap();
    assert_eq!(seqs(desc), [(31, 1031), (30, 1030), (29, 1029)]);
    // A bucket holds only its own seqs.
    let bucket0 = store
        .read_messages(
            "g:a",
            0,
            SeqRange { from: 0, to: 100 },
            ReadOrder::Ascending,
            100,
        )
        .await
        .unwrap();
    assert_eq!(bucket0.len(), 15);
    assert!(
        bucket0
            .iter()
            .all(|m| m.conversation_id == "g:a" && m.conv_seq < BUCKET)
    );
    assert_eq!(store.last_conv_seq("g:a").await.unwrap(), 40);
    assert_eq!(store.last_conv_seq("g:ab").await.unwrap(), 1);
    assert_eq!(store.last_conv_seq("g:none").await.unwrap(), 0);
    assert_eq!(store.last_count("g:a").await.unwrap(), 40);
    assert_eq!(store.last_count("g:none").await.unwrap(), 0);
    // A hole above the last message has no count: the count stays the message's.
    assert!(
        store
            .insert_hole_if_slot_empty(&hole_message("g:a", 41, 5))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.last_conv_seq("g:a").await.unwrap(), 41);
    assert_eq!(store.last_count("g:a").await.unwrap(), 40);
}

pub async fn messages_change_in_place_and_changes_converge(store: &dyn Store) {
    let at = |seq: u64| async move {
        store
            .read_messages(
                "g:c",
                seq / BUCKET,
                SeqRange { from: seq, to: seq },
                ReadOrder::Ascending,
                10,
            )
            .await
            .unwrap()
            .remove(0)
    };
    let mut entry = message("g:c", 3, 3003);
    entry.kind = MessageKind::Edit;
    entry.target_message_id = 3001;
    entry.count_seq = 2;
    for m in [message("g:c", 1, 3001), message("g:c", 2, 3002), entry] {
        write_plain(store, &m).await;
    }
    let edited = at(3).await;
    assert_eq!(
        (edited.kind, edited.target_message_id, edited.count_seq),
        (MessageKind::Edit, 3001, 2),
        "a change entry keeps its kind, target and count"
    );
    let base = message("g:c", 1, 3001).created_at_ms;
    let edit = |body: &str, at_ms: i64| MessageChange::Edit {
        content_type: "text/markdown".into(),
        body: Bytes::from(body.to_owned()),
        at_ms,
    };
    store
        .update_message("g:c", 1, 3001, &edit("second", base + 2_000))
        .await
        .unwrap();
    // An older edit arriving later does not win.
    store
        .update_message("g:c", 1, 3001, &edit("first", base + 1_000))
        .await
        .unwrap();
    let m = at(1).await;
    assert_eq!(
        (m.body.clone(), m.content_type.as_str(), m.edited_at_ms),
        (Bytes::from("second"), "text/markdown", base + 2_000)
    );
    assert_eq!((m.sender_id.as_str(), m.count_seq), ("alice", 1));
    store
        .update_message(
            "g:c",
            1,
            3001,
            &MessageChange::Recall {
                at_ms: base + 3_000,
            },
        )
        .await
        .unwrap();
    // An edit after the recall (a race the pipeline lost) does not bring the body back.
    store
        .update_message("g:c", 1, 3001, &edit("again", base + 4_000))
        .await
        .unwrap();
    let m = at(1).await;
    assert!(m.recalled(), "recalled");
    assert!(m.body.is_empty(), "a recalled message has no body");
    assert_eq!(
        at(2).await.body,
        Bytes::from("body 3002"),
        "others untouched"
    );
}

pub async fn fanout_writes_inbox_raises_activity_and_clears_outbox(store: &dyn Store) {
    store
        .upsert_user_conversation(&user_conversation("bob", "g:a"))
        .await
        .unwrap();
    store
        .upsert_user_conversation(&user_conversation("alice", "g:a"))
        .await
        .unwrap();
    let m5 = message("g:a", 5, 105);
    let m4 = message("g:a", 4, 104);
    let pending = outbox_entry("g:a", 5, 105, 1, Vec::new());
    let pending_key = pending.key();
    store
        .write_message(&MessageWrite {
            message: m5.clone(),
            pending: Some(pending),
            idempotency: None,
        })
        .await
        .unwrap();
    let activity = |user: &str, m: &MessageRow, read: Option<u64>, inbox_seq| ActivityUpdate {
        user_id: user.into(),
        conversation_id: "g:a".into(),
        last_seq: m.conv_seq,
        last_message_id: m.message_id,
        read_seq: read,
        count_seq: m.count_seq,
        inbox_seq,
    };
    store
        .write_fanout(&FanoutWrite {
            inbox: vec![
                inbox("bob", 1, &m5),
                inbox("alice", 1, &m5),
                inbox("carol", 1, &m5),
            ],
            activity: vec![
                activity("bob", &m5, None, 1),
                activity("alice", &m5, Some(5), 1),
                // carol has no row (left): no row is created for her.
                activity("carol", &m5, None, 1),
            ],
            clear_pending: Some(pending_key),
        })
        .await
        .unwrap();
    // An older message fanned out later does not move last_seq back.
    store
        .write_fanout(&FanoutWrite {
            inbox: vec![inbox("bob", 2, &m4)],
            activity: vec![activity("bob", &m4, None, 2)],
            clear_pending: None,
        })
        .await
        .unwrap();
    let bob = store
        .get_user_conversation("bob", "g:a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (bob.last_seq, bob.last_message_id, bob.read_seq),
        (5, 105, 0)
    );
    assert_eq!((bob.last_count, bob.read_count), (5, 0));
    let alice = store
        .get_user_conversation("alice", "g:a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((alice.last_seq, alice.read_seq), (5, 5));
    assert_eq!((alice.last_count, alice.read_count), (5, 5));
    // A hole's fan-out (count 0) raises last_seq and leaves the count.
    let hole = hole_message("g:a", 6, 9);
    store
        .write_fanout(&FanoutWrite {
            inbox: vec![inbox("bob", 3, &hole)],
            activity: vec![activity("bob", &hole, None, 3)],
            clear_pending: None,
        })
        .await
        .unwrap();
    let bob = store
        .get_user_conversation("bob", "g:a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((bob.last_seq, bob.last_count), (6, 5));
    let carol = store.get_user_conversation("carol", "g:a").await.unwrap();
    assert!(
        carol.is_none_or(|r| r.joined_seq == 0),
        "no real row appears for carol"
    );
    assert_eq!(store.get_pending(pending_key).await.unwrap(), None);
    let rows = store
        .read_inbox("bob", 0, InboxPosition::default(), 10)
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.message.message_id)
            .collect::<Vec<_>>(),
        [105, 104, hole.message_id]
    );
}

pub async fn inbox_reads_after_a_position_per_user_and_bucket(store: &dyn Store) {
    let mut rows = Vec::new();
    for seq in 1..=40u64 {
        rows.push(inbox("u1", seq, &message("d:u1:u2", seq, 2000 + seq)));
    }
    rows.push(inbox("u10", 1, &message("d:u10:u2", 1, 9000)));
    // Same inbox_seq twice (sequencer reset): both kept, ordered by message_id.
    rows.push(inbox("u1", 20, &message("d:u1:u2", 99, 1500)));
    store
        .write_fanout(&FanoutWrite {
            inbox: rows,
            activity: Vec::new(),
            clear_pending: None,
        })
        .await
        .unwrap();
    let keys = |rows: Vec<InboxRow>| {
        rows.iter()
            .map(|r| (r.inbox_seq, r.message.message_id))
            .collect::<Vec<_>>()
    };

    let first = store
        .read_inbox("u1", 0, InboxPosition::default(), 100)
        .await
        .unwrap();
    assert_eq!(first.len(), 15, "bucket 0 holds seqs 1..=15");
    assert!(first.iter().all(|r| r.user_id == "u1"));
    let after = InboxPosition {
        inbox_seq: 19,
        message_id: 2019,
    };
    assert_eq!(
        keys(store.read_inbox("u1", 1, after, 3).await.unwrap()),
        [(20, 1500), (20, 2020), (21, 2021)]
    );
    let mid = InboxPosition {
        inbox_seq: 20,
        message_id: 1500,
    };
    assert_eq!(
        keys(store.read_inbox("u1", 1, mid, 1).await.unwrap()),
        [(20, 2020)]
    );
    // A position in an earlier bucket reads the later bucket from its start.
    assert_eq!(
        keys(store.read_inbox("u1", 2, after, 1).await.unwrap()),
        [(32, 2032)]
    );
    assert_eq!(store.last_inbox_seq("u1").await.unwrap(), 40);
    assert_eq!(store.last_inbox_seq("u10").await.unwrap(), 1);
    assert_eq!(store.last_inbox_seq("u100").await.unwrap(), 0);

    assert_eq!(store.inbox_floor("u1").await.unwrap(), 0);
    store.drop_inbox_bucket("u1", 0, BUCKET).await.unwrap();
    store.drop_inbox_bucket("u1", 1, BUCKET).await.unwrap();
    assert!(
        store
            .read_inbox("u1", 1, InboxPosition::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.inbox_floor("u1").await.unwrap(), 2 * BUCKET);
    assert_eq!(
        store
            .read_inbox("u1", 2, InboxPosition::default(), 100)
            .await
            .unwrap()
            .len(),
        9
    );
    assert_eq!(
        store.inbox_floor("u10").await.unwrap(),
        0,
        "other users keep theirs"
    );
    assert_eq!(
        store
            .read_inbox("u10", 0, InboxPosition::default(), 9)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn outbox_is_listed_per_time_bucket_and_shard(store: &dyn Store) {
    let bucket_ms = OUTBOX_BUCKET_MS;
    // (message_id, created_at): ids 16 and 32 share shard 0, 17 is in shard 1; 48 is in
    // shard 0 of the next time bucket.
    for (id, at) in [(16u64, 1), (32, bucket_ms - 1), (17, 5), (48, bucket_ms)] {
        store
            .write_message(&MessageWrite {
                message: message("g:a", id, id),
                pending: Some(outbox_entry("g:a", id, id, at, vec![("bob".into(), 3)])),
                idempotency: None,
            })
            .await
            .unwrap();
    }
    let ids = |rows: Vec<PendingFanoutRow>| rows.iter().map(|p| p.message_id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_pending(0, 0, 10).await.unwrap()), [16, 32]);
    assert_eq!(store.list_pending(0, 0, 1).await.unwrap().len(), 1);
    assert_eq!(ids(store.list_pending(1, 0, 10).await.unwrap()), [48]);
    let shard1 = store.list_pending(0, 1, 10).await.unwrap();
    assert_eq!(ids(shard1.clone()), [17]);
    assert_eq!(shard1[0].inbox_allocation, vec![("bob".to_owned(), 3)]);
    assert_eq!(shard1[0].key(), OutboxKey::of(17, 5));
    store.delete_pending(OutboxKey::of(16, 1)).await.unwrap();
    assert_eq!(ids(store.list_pending(0, 0, 10).await.unwrap()), [32]);
    assert!(store.list_pending(2, 0, 10).await.unwrap().is_empty());
}

/// The outbox entry a send writes for message `id` created at `at`.
pub fn outbox_entry(
    conversation_id: &str,
    conv_seq: u64,
    id: u64,
    at: i64,
    inbox_allocation: Vec<(String, u64)>,
) -> PendingFanoutRow {
    let key = OutboxKey::of(id, at);
    PendingFanoutRow {
        bucket: key.bucket,
        shard: key.shard,
        message_id: id,
        conversation_id: conversation_id.into(),
        conv_seq,
        created_at_ms: at,
        inbox_allocation,
    }
}

pub async fn modes_only_rise_for_users_and_holes_fill_only_empty_slots(store: &dyn Store) {
    store
        .insert_conversation_if_absent(&conversation("g:m"))
        .await
        .unwrap();
    let spans = vec![
        ModeSpan {
            since_seq: 1,
            mode: DeliveryMode::Fanout,
        },
        ModeSpan {
            since_seq: 9,
            mode: DeliveryMode::Hot,
        },
    ];
    store
        .update_conversation_mode("g:m", &spans, true, 77)
        .await
        .unwrap();
    let row = store.get_conversation("g:m").await.unwrap().unwrap();
    assert_eq!(
        (
            row.mode_spans.clone(),
            row.mode_forced,
            row.mode_changed_at_ms
        ),
        (spans, true, 77)
    );
    assert_eq!(
        (
            row.mode(),
            row.mode_since_seq(),
            row.mode_at(8),
            row.mode_at(9)
        ),
        (
            DeliveryMode::Hot,
            9,
            DeliveryMode::Fanout,
            DeliveryMode::Hot
        )
    );

    store
        .upsert_user_conversation(&user_conversation("alice", "g:m"))
        .await
        .unwrap();
    store
        .raise_user_conversation_mode("alice", "g:m", DeliveryMode::Hot)
        .await
        .unwrap();
    store
        .raise_user_conversation_mode("alice", "g:m", DeliveryMode::Fanout)
        .await
        .unwrap();
    store
        .raise_user_conversation_mode("nobody", "g:m", DeliveryMode::Hot)
        .await
        .unwrap();
    assert!(
        store
            .get_user_conversation("nobody", "g:m")
            .await
            .unwrap()
            .is_none_or(|r| r.joined_seq == 0)
    );
    let hot = store.list_hot_conversations("alice", 10).await.unwrap();
    assert_eq!(
        hot.iter()
            .map(|r| r.conversation_id.as_str())
            .collect::<Vec<_>>(),
        ["g:m"]
    );
    assert!(
        store
            .list_hot_conversations("bob", 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A later full write (a re-join, say) does not lower it either.
    store
        .upsert_user_conversation(&user_conversation("alice", "g:m"))
        .await
        .unwrap();
    let alice = store
        .get_user_conversation("alice", "g:m")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.mode, DeliveryMode::Hot);
    // A hot flag raised for a user without membership (a switch racing a leave) is no source.
    assert!(
        store
            .list_hot_conversations("nobody", 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A leave takes the hot flag with it.
    store.remove_member("g:m", "alice").await.unwrap();
    assert!(
        store
            .list_hot_conversations("alice", 10)
            .await
            .unwrap()
            .is_empty()
    );

    write_plain(store, &message("g:m", 3, 33)).await;
    let taken = store
        .insert_hole_if_slot_empty(&hole_message("g:m", 3, 1))
        .await
        .unwrap();
    assert_eq!(taken.iter().map(|m| m.message_id).collect::<Vec<_>>(), [33]);
    let hole = hole_message("g:m", 4, 1);
    assert!(
        store
            .insert_hole_if_slot_empty(&hole)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.insert_hole_if_slot_empty(&hole).await.unwrap(),
        vec![hole.clone()]
    );
    let rows = store
        .read_messages(
            "g:m",
            0,
            SeqRange { from: 3, to: 4 },
            ReadOrder::Ascending,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .map(|m| (m.conv_seq, m.kind))
            .collect::<Vec<_>>(),
        [(3, MessageKind::User), (4, MessageKind::Hole)]
    );
    assert_eq!(hole_message_id("g:m", 4), hole.message_id);
    assert_ne!(hole_message_id("g:m", 4), hole_message_id("g:m", 5));
    assert!(hole.message_id >> 63 == 1, "never a snowflake");
}

pub async fn hidden_messages_are_kept_per_user_and_conversation(store: &dyn Store) {
    store
        .hide_messages("alice", "g:h", &[(3, 30), (1, 10), (7, 70)])
        .await
        .unwrap();
    // Again, and another user, another conversation, and g:h's prefix as another id.
    store
        .hide_messages("alice", "g:h", &[(3, 30)])
        .await
        .unwrap();
    store.hide_messages("bob", "g:h", &[(2, 20)]).await.unwrap();
    store
        .hide_messages("alice", "g:hh", &[(2, 22)])
        .await
        .unwrap();
    let all = SeqRange {
        from: 0,
        to: u64::MAX >> 1,
    };
    assert_eq!(
        store.list_hidden("alice", "g:h", all, 100).await.unwrap(),
        [(1, 10), (3, 30), (7, 70)]
    );
    assert_eq!(
        store
            .list_hidden("alice", "g:h", SeqRange { from: 2, to: 7 }, 100)
            .await
            .unwrap(),
        [(3, 30), (7, 70)],
        "an inclusive range"
    );
    assert_eq!(
        store.list_hidden("alice", "g:h", all, 1).await.unwrap(),
        [(1, 10)]
    );
    assert_eq!(
        store.list_hidden("bob", "g:h", all, 100).await.unwrap(),
        [(2, 20)]
    );
    assert!(
        store
            .list_hidden("carol", "g:h", all, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn push_targets_are_kept_per_device_and_the_newest_registration_wins(store: &dyn Store) {
    let target = |device: &str, token: &str, at: i64| PushTargetRow {
        user_id: "alice".into(),
        device_id: device.into(),
        platform: "apns".into(),
        token: token.into(),
        app_id: "com.example.chat".into(),
        locale: "de-CH".into(),
        registered_at_ms: at,
    };
    let listed = |user: &'static str| async move {
        let mut rows = store.list_push_targets(user).await.unwrap();
        rows.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        rows
    };
    store
        .put_push_target(&target("phone", "t1", 1_000))
        .await
        .unwrap();
    store
        .put_push_target(&target("tablet", "t2", 1_000))
        .await
        .unwrap();
    assert_eq!(
        listed("alice").await,
        [target("phone", "t1", 1_000), target("tablet", "t2", 1_000)]
    );
    assert!(
        listed("alice2").await.is_empty(),
        "per user, not per prefix"
    );
    // A re-registration replaces the device's token; an older one arriving late does not.
    store
        .put_push_target(&target("phone", "t3", 2_000))
        .await
        .unwrap();
    store
        .put_push_target(&target("phone", "t1", 1_500))
        .await
        .unwrap();
    assert_eq!(listed("alice").await[0], target("phone", "t3", 2_000));
    // A removal decided on the old registration (its token was refused) keeps the new one.
    store
        .delete_push_target("alice", "phone", 1_000)
        .await
        .unwrap();
    assert_eq!(listed("alice").await[0], target("phone", "t3", 2_000));
    store
        .delete_push_target("alice", "phone", 2_000)
        .await
        .unwrap();
    assert_eq!(listed("alice").await, [target("tablet", "t2", 1_000)]);
    // Removing what is not there is no error.
    store
        .delete_push_target("alice", "watch", 5_000)
        .await
        .unwrap();
}

/// One `#[tokio::test]` per suite function, each on a fresh store from `$factory`.
#[macro_export]
macro_rules! store_conformance_suite {
    ($(#[$attr:meta])* $factory:path) => {
        $crate::store_conformance_suite!(@tests [$(#[$attr])*] $factory;
            conversations_insert_if_absent,
            members_page_in_user_order_per_conversation,
            user_conversations_read_state_only_moves_forward,
            message_write_is_one_unit_with_outbox_and_idempotency,
            messages_read_by_range_in_both_orders,
            messages_change_in_place_and_changes_converge,
            fanout_writes_inbox_raises_activity_and_clears_outbox,
            inbox_reads_after_a_position_per_user_and_bucket,
            outbox_is_listed_per_time_bucket_and_shard,
            modes_only_rise_for_users_and_holes_fill_only_empty_slots,
            push_targets_are_kept_per_device_and_the_newest_registration_wins,
            hidden_messages_are_kept_per_user_and_conversation,
        );
    };
    (@tests $attrs:tt $factory:path; $($name:ident),* $(,)?) => {
        $( $crate::store_conformance_suite!(@one $attrs $factory; $name); )*
    };
    (@one [$($attrs:tt)*] $factory:path; $name:ident) => {
        #[tokio::test]
        $($attrs)*
        async fn $name() {
            if let Some((store, _guard)) = $factory().await {
                support::store_suite::$name(&*store).await;
            }
        }
    };
}
