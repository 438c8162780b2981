use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

#[test]
fn prefix_end_is_the_next_prefix() {
    assert_eq!(prefix_end(b"ab\0"), b"ab\x01".to_vec());
    assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
}

#[test]
fn keys_of_one_partition_sort_by_clustering_order() {
    let a = inbox_key("u1", 0, 2, 9);
    let b = inbox_key("u1", 0, 10, 1);
    let other_user = inbox_key("u1x", 0, 0, 0);
    assert!(a < b);
    assert!(b < prefix_end(&key(&["u1"], &[])));
    assert!(other_user > prefix_end(&key(&["u1"], &[])) || other_user < key(&["u1"], &[]));
    assert_eq!(tail_u64(&b, 2), 10);
}

#[tokio::test]
async fn compaction_removes_rows_past_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        inbox_ttl: Some(Duration::from_secs(3600)),
        idempotency_ttl: Some(Duration::from_secs(3600)),
        ..EmbeddedOptions::new(Durability::Fsync, 16)
    };
    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let row = |seq: u64, allocated_at_ms: i64| InboxRow {
        user_id: "u".into(),
        inbox_seq: seq,
        allocated_at_ms,
        message: MessageRow {
            conversation_id: "d:u:v".into(),
            conv_seq: seq,
            message_id: seq,
            sender_id: "v".into(),
            sender_device_id: "d".into(),
            client_msg_id: String::new(),
            content_type: "text/plain".into(),
            body: bytes::Bytes::new(),
            created_at_ms: allocated_at_ms,
            kind: MessageKind::User,
            count_seq: seq,
            target_message_id: 0,
            edited_at_ms: 0,
            recalled_at_ms: 0,
        },
    };
    let two_hours_ago = now - 2 * 3600 * 1000;
    store
        .write_fanout(&FanoutWrite {
            inbox: vec![row(1, two_hours_ago), row(2, now)],
            activity: Vec::new(),
            clear_pending: None,
        })
        .await
        .unwrap();
    let idem = |id: &str, created_at_ms| IdempotencyRow {
        sender_id: "u".into(),
        client_msg_id: id.into(),
        message_id: 1,
        conversation_id: "d:u:v".into(),
        conv_seq: 1,
        created_at_ms,
    };
    for (id, at) in [("old", two_hours_ago), ("new", now)] {
        let m = row(3, now).message;
        store
            .write_message(&MessageWrite {
                message: m,
                pending: None,
                idempotency: Some(idem(id, at)),
            })
            .await
            .unwrap();
    }
    for ks in [&store.tables.inbox, &store.tables.idempotency] {
        ks.rotate_memtable_and_wait().unwrap();
        ks.major_compact().unwrap();
    }
    let left = store
        .read_inbox("u", 0, InboxPosition::default(), 10)
        .await
        .unwrap();
    assert_eq!(left.iter().map(|r| r.inbox_seq).collect::<Vec<_>>(), [2]);
    let forever = i64::MAX / 2;
    assert!(
        store
            .get_idempotency("u", "old", now, forever)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_idempotency("u", "new", now, forever)
            .await
            .unwrap()
            .is_some()
    );
}

#[test]
fn values_round_trip_and_reject_unknown_formats() {
    let v = encode(&42u64).unwrap();
    assert_eq!(decode::<u64>(&v).unwrap(), 42);
    assert!(matches!(
        decode::<u64>(&[9, 1]),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(decode::<u64>(&[]), Err(StoreError::Corrupt(_))));
}

#[tokio::test]
async fn outbox_entries_of_the_per_shard_layout_move_to_time_buckets_on_open() {
    #[derive(serde::Serialize)]
    struct OldEntry {
        shard: u32,
        message_id: u64,
        conversation_id: String,
        conv_seq: u64,
        created_at_ms: i64,
        inbox_allocation: Vec<(String, u64)>,
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::builder(dir.path().join("tables")).open().unwrap();
        let old = db
            .keyspace("pending_fanout", KeyspaceCreateOptions::default)
            .unwrap();
        let entry = OldEntry {
            shard: 3,
            message_id: 35,
            conversation_id: "g:a".into(),
            conv_seq: 7,
            created_at_ms: 25_000,
            inbox_allocation: vec![("bob".into(), 2)],
        };
        let mut k = 3u32.to_be_bytes().to_vec();
        k.extend_from_slice(&35u64.to_be_bytes());
        old.insert(k, encode(&entry).unwrap()).unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let store =
        EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Fsync, 16)).unwrap();
    let key = OutboxKey::of(35, 25_000);
    let moved = store.get_pending(key).await.unwrap().expect("moved");
    assert_eq!(
        (moved.bucket, moved.shard, moved.conv_seq),
        (2, 3, 7),
        "{moved:?}"
    );
    assert_eq!(moved.inbox_allocation, vec![("bob".to_owned(), 2)]);
    drop(store);
    // Moved once: the old keyspace is gone, a second open finds the entry where it is.
    let store =
        EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Fsync, 16)).unwrap();
    assert_eq!(store.list_pending(2, 3, 10).await.unwrap().len(), 1);
}
