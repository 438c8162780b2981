//! The `Cache` conformance suite: every backend must pass these, through the trait only.
//! Instantiate it with `cache_conformance_suite!(factory)`, where `factory().await` returns
//! `Some((cache, guard))` for a fresh, empty cache, or `None` (after saying why) when the
//! backend is not available.

use std::time::Duration;

use bytes::Bytes;
use timeline::cache::*;

fn entry(seq: u64) -> HotEntry {
    HotEntry {
        conv_seq: seq,
        payload: Bytes::from(format!("m{seq}")),
    }
}

pub async fn sequences_allocate_ranges_for_many_keys_after_seeding(cache: &dyn Cache) {
    let conv = SeqKey::Conversation("g:a".into());
    let inbox = SeqKey::Inbox("u".into());
    let reqs = [
        SeqRequest {
            key: conv.clone(),
            count: 1,
        },
        SeqRequest {
            key: inbox.clone(),
            count: 5,
        },
    ];
    assert_eq!(
        cache.allocate(&reqs, 1).await.unwrap(),
        vec![None, None],
        "unseeded: nothing"
    );
    cache.seed(&conv, 41).await.unwrap();
    assert_eq!(
        cache.allocate(&reqs, 1).await.unwrap(),
        vec![Some(42), None]
    );
    cache.seed(&inbox, 0).await.unwrap();
    cache.seed(&inbox, 99).await.unwrap(); // NX: the first seed stays
    assert_eq!(
        cache.allocate(&reqs, 1).await.unwrap(),
        vec![Some(43), Some(1)]
    );
    assert_eq!(
        cache.allocate(&reqs, 1).await.unwrap(),
        vec![Some(44), Some(6)]
    );
    assert_eq!(cache.current(&inbox).await.unwrap(), Some(10));
    assert_eq!(
        cache.current(&SeqKey::Inbox("v".into())).await.unwrap(),
        None
    );
    let epoch = cache.epoch().await.unwrap();
    assert_eq!(
        cache.epoch().await.unwrap(),
        epoch,
        "stable while state lives"
    );
}

pub async fn fences_hold_back_a_conversations_allocations_until_lifted(cache: &dyn Cache) {
    let ttl = Duration::from_secs(30);
    let conv = |id: &str| SeqRequest {
        key: SeqKey::Conversation(id.into()),
        count: 1,
    };
    assert_eq!(
        cache.fence("g:f", 7, ttl).await.unwrap(),
        None,
        "no state: nothing fenced, seed first"
    );
    assert_eq!(cache.allocate(&[conv("g:f")], 1).await.unwrap(), vec![None]);
    cache
        .seed(&SeqKey::Conversation("g:f".into()), 10)
        .await
        .unwrap();
    assert_eq!(cache.fence("g:f", 7, ttl).await.unwrap(), Some(10));
    assert!(matches!(
        cache.allocate(&[conv("g:f")], 1).await,
        Err(CacheError::Fenced(_))
    ));
    assert!(
        matches!(cache.fence("g:f", 8, ttl).await, Err(CacheError::Fenced(_))),
        "one holder at a time"
    );
    assert_eq!(
        cache.fence("g:f", 7, ttl).await.unwrap(),
        Some(10),
        "the holder may fence again"
    );
    // Other conversations and inboxes are not held back.
    cache
        .seed(&SeqKey::Conversation("g:other".into()), 0)
        .await
        .unwrap();
    assert_eq!(
        cache.allocate(&[conv("g:other")], 1).await.unwrap(),
        vec![Some(1)]
    );
    cache.unfence("g:f", 8).await.unwrap();
    assert!(
        matches!(
            cache.allocate(&[conv("g:f")], 1).await,
            Err(CacheError::Fenced(_))
        ),
        "only the holder lifts it"
    );
    cache.unfence("g:f", 7).await.unwrap();
    assert_eq!(
        cache.allocate(&[conv("g:f")], 1).await.unwrap(),
        vec![Some(11)]
    );
    // A fence lapses by itself (a switch that died).
    assert_eq!(
        cache
            .fence("g:f", 9, Duration::from_millis(50))
            .await
            .unwrap(),
        Some(11)
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        cache.allocate(&[conv("g:f")], 1).await.unwrap(),
        vec![Some(12)]
    );
}

pub async fn messages_allocate_their_seq_and_count_together(cache: &dyn Cache) {
    let ttl = Duration::from_secs(30);
    assert_eq!(
        cache.allocate_message("g:m", true, 1).await.unwrap(),
        None,
        "no state: nothing allocated"
    );
    cache
        .seed(&SeqKey::Conversation("g:m".into()), 10)
        .await
        .unwrap();
    assert_eq!(
        cache.allocate_message("g:m", true, 1).await.unwrap(),
        None,
        "the count has no state yet"
    );
    assert_eq!(
        cache
            .current(&SeqKey::Conversation("g:m".into()))
            .await
            .unwrap(),
        Some(10),
        "nothing was allocated"
    );
    cache.seed(&SeqKey::Count("g:m".into()), 4).await.unwrap();
    assert_eq!(
        cache.allocate_message("g:m", true, 1).await.unwrap(),
        Some((11, 5))
    );
    assert_eq!(
        cache.allocate_message("g:m", false, 1).await.unwrap(),
        Some((12, 5)),
        "an entry that does not count takes a seq and keeps the count"
    );
    assert_eq!(
        cache.allocate_message("g:m", true, 1).await.unwrap(),
        Some((13, 6))
    );
    assert_eq!(
        cache.current(&SeqKey::Count("g:m".into())).await.unwrap(),
        Some(6)
    );
    // The conversation's fence holds them back like any conv_seq allocation.
    assert_eq!(cache.fence("g:m", 1, ttl).await.unwrap(), Some(13));
    assert!(matches!(
        cache.allocate_message("g:m", true, 1).await,
        Err(CacheError::Fenced(_))
    ));
    cache.unfence("g:m", 1).await.unwrap();
    assert_eq!(
        cache.allocate_message("g:m", true, 1).await.unwrap(),
        Some((14, 7))
    );
    // Concurrent allocations: a higher seq never has a lower count.
    let all =
        futures::future::join_all((0..40).map(|i| cache.allocate_message("g:m", i % 3 != 0, 1)))
            .await;
    let mut pairs: Vec<(u64, u64)> = all.into_iter().map(|r| r.unwrap().unwrap()).collect();
    pairs.sort();
    assert!(
        pairs
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
    );
}

pub async fn claims_are_exclusive_until_they_expire(cache: &dyn Cache) {
    assert_eq!(
        cache
            .claim("k", 1, Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        cache
            .claim("k", 2, Duration::from_millis(300))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        cache
            .claim("other", 3, Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        cache
            .claim("k", 4, Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
    cache.release_claim("k", 5).await.unwrap(); // not the holder: kept
    assert_eq!(
        cache.claim("k", 6, Duration::from_secs(30)).await.unwrap(),
        Some(4)
    );
    cache.release_claim("k", 4).await.unwrap();
    assert_eq!(
        cache.claim("k", 7, Duration::from_secs(30)).await.unwrap(),
        None
    );
}

pub async fn a_claim_is_extended_only_by_its_holder(cache: &dyn Cache) {
    let short = Duration::from_millis(300);
    assert_eq!(cache.claim("x", 1, short).await.unwrap(), None);
    assert!(
        !cache
            .extend_claim("x", 2, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        cache
            .extend_claim("x", 1, Duration::from_secs(30))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        cache.claim("x", 3, short).await.unwrap(),
        Some(1),
        "held past its first lease"
    );
    assert!(!cache.extend_claim("never", 1, short).await.unwrap());
    assert_eq!(
        cache.claim("never", 4, short).await.unwrap(),
        None,
        "extending nothing creates nothing"
    );
}

pub async fn rates_admit_a_burst_then_one_per_period(cache: &dyn Cache) {
    let period = Duration::from_millis(200);
    for i in 0..3 {
        assert_eq!(
            cache.admit_rate("r", period, 3).await.unwrap(),
            None,
            "call {i} of the burst"
        );
    }
    let wait = cache
        .admit_rate("r", period, 3)
        .await
        .unwrap()
        .expect("over the burst");
    assert!(
        wait > Duration::ZERO && wait <= period,
        "{wait:?}: the next call is at most one period away"
    );
    // A refused call is not counted: after the wait, exactly one more is admitted.
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    assert_eq!(cache.admit_rate("r", period, 3).await.unwrap(), None);
    assert!(cache.admit_rate("r", period, 3).await.unwrap().is_some());
    // Keys are independent; a burst of 1 is one call per period.
    assert_eq!(cache.admit_rate("s", period, 1).await.unwrap(), None);
    assert!(cache.admit_rate("s", period, 1).await.unwrap().is_some());
    // Once the quota is whole again the full burst is back.
    tokio::time::sleep(period * 3 + Duration::from_millis(50)).await;
    for _ in 0..3 {
        assert_eq!(cache.admit_rate("r", period, 3).await.unwrap(), None);
    }
}

pub async fn hot_windows_keep_the_newest_entries_and_their_head(cache: &dyn Cache) {
    assert_eq!(cache.hot_read("g:h", 0, 10).await.unwrap(), None);
    for seq in 1..=7u64 {
        cache
            .hot_append("g:h", entry(seq), 100 + seq, seq, 5, 1000 + seq as i64)
            .await
            .unwrap();
    }
    // Out of order and a second message at one seq (after a sequencer reset): both kept.
    cache
        .hot_append("g:h", entry(6), 999, 0, 5, 2000)
        .await
        .unwrap();
    let window = cache.hot_read("g:h", 0, 100).await.unwrap().unwrap();
    let seqs: Vec<u64> = window.entries.iter().map(|e| e.conv_seq).collect();
    assert_eq!(seqs, [4, 5, 6, 6, 7], "trimmed to the newest 5");
    assert_eq!(window.low_seq, 4);
    let after = cache.hot_read("g:h", 5, 2).await.unwrap().unwrap();
    assert_eq!(
        after.entries.iter().map(|e| e.conv_seq).collect::<Vec<_>>(),
        [6, 6]
    );
    assert_eq!(after.entries[0].payload, Bytes::from("m6"));

    let heads = cache
        .hot_heads(&["g:h".into(), "g:none".into(), "g:h".into()])
        .await
        .unwrap();
    let head = heads[0].unwrap();
    assert_eq!(
        (head.last_seq, head.last_message_id, head.last_activity_ms),
        (7, 107, 2000)
    );
    assert_eq!(
        head.last_count, 7,
        "the highest count (a hole's 0 leaves it)"
    );
    assert_eq!(heads[1], None);
    assert_eq!(heads[2], heads[0]);
}

pub async fn allocations_mark_conversations_active_until_verified(cache: &dyn Cache) {
    let conv = SeqKey::Conversation("g:s".into());
    cache.seed(&conv, 0).await.unwrap();
    cache.seed(&SeqKey::Inbox("u".into()), 0).await.unwrap();
    cache
        .allocate(
            &[SeqRequest {
                key: conv.clone(),
                count: 1,
            }],
            100,
        )
        .await
        .unwrap();
    cache
        .allocate(
            &[SeqRequest {
                key: SeqKey::Inbox("u".into()),
                count: 1,
            }],
            100,
        )
        .await
        .unwrap();
    assert_eq!(cache.active_conversations(99, 10).await.unwrap(), vec![]);
    assert_eq!(
        cache.active_conversations(100, 10).await.unwrap(),
        vec![("g:s".to_owned(), 100)]
    );
    assert_eq!(cache.verified_seq("g:s").await.unwrap(), None);
    // Another allocation after the sweep read it keeps it active.
    cache
        .allocate(
            &[SeqRequest {
                key: conv.clone(),
                count: 1,
            }],
            150,
        )
        .await
        .unwrap();
    cache.mark_verified("g:s", 1, 100).await.unwrap();
    assert_eq!(cache.verified_seq("g:s").await.unwrap(), Some(1));
    assert_eq!(
        cache.active_conversations(200, 10).await.unwrap(),
        vec![("g:s".to_owned(), 150)]
    );
    cache.mark_verified("g:s", 2, 150).await.unwrap();
    assert_eq!(cache.active_conversations(200, 10).await.unwrap(), vec![]);
    cache.mark_verified("g:s", 1, 150).await.unwrap();
    assert_eq!(
        cache.verified_seq("g:s").await.unwrap(),
        Some(2),
        "never moves back"
    );
}

pub async fn presence_lists_live_devices_until_they_lapse(cache: &dyn Cache) {
    let users = ["alice".to_owned(), "bob".to_owned(), "carol".to_owned()];
    let before = wall_ms();
    cache
        .set_presence("alice", "phone", "node-1", Duration::from_secs(30))
        .await
        .unwrap();
    cache
        .set_presence("alice", "laptop", "node-2", Duration::from_millis(200))
        .await
        .unwrap();
    cache
        .set_presence("bob", "phone", "node-1", Duration::from_secs(30))
        .await
        .unwrap();
    // A device that reconnects elsewhere moves.
    cache
        .set_presence("bob", "phone", "node-3", Duration::from_secs(30))
        .await
        .unwrap();
    let p = |d: &str, n: &str| Presence {
        device_id: d.into(),
        node: n.into(),
    };
    let devices = |all: &[UserPresence]| -> Vec<Vec<Presence>> {
        all.iter().map(|u| u.devices.clone()).collect()
    };
    let now = cache.presence(&users).await.unwrap();
    assert_eq!(
        devices(&now),
        vec![
            vec![p("laptop", "node-2"), p("phone", "node-1")],
            vec![p("phone", "node-3")],
            vec![],
        ]
    );
    // Last seen by the Cache's clock (Redis's TIME): allow for clock steps of a second.
    assert!(now[0].last_seen_ms >= before - 1000 && now[0].last_seen_ms <= wall_ms() + 1000);
    assert_eq!(now[2].last_seen_ms, 0, "carol was never seen");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen_before_leaving = cache.presence(&users).await.unwrap()[1].last_seen_ms;
    cache.clear_presence("bob", "phone").await.unwrap();
    let later = cache.presence(&users).await.unwrap();
    assert_eq!(
        devices(&later),
        vec![vec![p("phone", "node-1")], vec![], vec![]],
        "the laptop lapsed, bob's phone left"
    );
    assert!(
        later[1].last_seen_ms >= seen_before_leaving + 250,
        "leaving counts as last seen: {} after {seen_before_leaving}",
        later[1].last_seen_ms
    );
    assert_eq!(
        cache.presence(&[]).await.unwrap(),
        Vec::<UserPresence>::new()
    );
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn next_message(
    events: &mut futures::stream::BoxStream<'static, PubSubEvent>,
) -> (String, Bytes) {
    use futures::StreamExt;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event in time")
            .expect("the subscriber is open");
        if let PubSubEvent::Message { channel, payload } = event {
            return (channel, payload);
        }
    }
}

pub async fn one_subscriber_carries_every_channel_and_publishes_batch(cache: &dyn Cache) {
    use futures::StreamExt;
    let msg = |c: &str, p: Vec<u8>| (c.to_owned(), Bytes::from(p));
    assert_eq!(
        cache
            .publish(&[msg("u:alice", b"lost".to_vec())])
            .await
            .unwrap(),
        0,
        "nobody listens yet"
    );
    let mut first = cache.subscriber().await.unwrap();
    let mut second = cache.subscriber().await.unwrap();
    let channels = |names: &[&str]| names.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    first
        .control
        .subscribe(&channels(&["u:alice", "u:bob", "c:g:hot"]))
        .await
        .unwrap();
    second
        .control
        .subscribe(&channels(&["u:alice"]))
        .await
        .unwrap();
    // Subscribing twice holds the channel once.
    first
        .control
        .subscribe(&channels(&["u:alice"]))
        .await
        .unwrap();
    for i in 0..20u8 {
        let batch = [
            msg("u:alice", vec![i, 0, 255]),
            msg("u:bob", vec![i, 1]),
            msg("c:g:hot", vec![i, 2]),
            msg("u:nobody", vec![i, 3]),
        ];
        assert_eq!(
            cache.publish(&batch).await.unwrap(),
            4,
            "alice twice, bob, hot"
        );
    }
    for i in 0..20u8 {
        assert_eq!(
            next_message(&mut first.events).await,
            ("u:alice".to_owned(), Bytes::from(vec![i, 0, 255]))
        );
        assert_eq!(
            next_message(&mut first.events).await,
            ("u:bob".to_owned(), Bytes::from(vec![i, 1]))
        );
        assert_eq!(
            next_message(&mut first.events).await,
            ("c:g:hot".to_owned(), Bytes::from(vec![i, 2]))
        );
        assert_eq!(
            next_message(&mut second.events).await,
            ("u:alice".to_owned(), Bytes::from(vec![i, 0, 255]))
        );
    }
    let nothing = tokio::time::timeout(Duration::from_millis(100), second.events.next()).await;
    assert!(
        nothing.is_err(),
        "another channel's payloads do not reach it"
    );
    first
        .control
        .unsubscribe(&channels(&["u:bob", "c:g:hot"]))
        .await
        .unwrap();
    assert_eq!(
        cache
            .publish(&[msg("u:bob", vec![9]), msg("c:g:hot", vec![9])])
            .await
            .unwrap(),
        0,
        "unsubscribed"
    );
    drop(first);
    drop(second);
    // Dropped subscribers stop counting (Redis sees the connection close shortly after).
    let mut remaining = u64::MAX;
    for _ in 0..50 {
        remaining = cache.publish(&[msg("u:alice", vec![0])]).await.unwrap();
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, 0);
}

/// One `#[tokio::test]` per suite function, each on a fresh cache from `$factory`.
#[macro_export]
macro_rules! cache_conformance_suite {
    ($factory:expr) => {
        $crate::cache_conformance_suite!(@tests $factory;
            sequences_allocate_ranges_for_many_keys_after_seeding,
            messages_allocate_their_seq_and_count_together,
            claims_are_exclusive_until_they_expire,
            a_claim_is_extended_only_by_its_holder,
            rates_admit_a_burst_then_one_per_period,
            fences_hold_back_a_conversations_allocations_until_lifted,
            hot_windows_keep_the_newest_entries_and_their_head,
            allocations_mark_conversations_active_until_verified,
            presence_lists_live_devices_until_they_lapse,
            one_subscriber_carries_every_channel_and_publishes_batch,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                if let Some((cache, _guard)) = $factory().await {
                    support::cache_suite::$name(&*cache).await;
                }
            }
        )*
    };
}
