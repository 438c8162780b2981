//! Model-based property test of the delivery guarantees (README "Guarantees and how the tests prove them").
//!
//! Random sequences of operations — sends by random members into groups and direct chats,
//! retries, joins, leaves, forced and automatic mode switches, syncs by random devices with
//! random page sizes, crashes between any two steps of a send, late writes, dropped Cache
//! writes, Cache (sequencer) resets, recovery passes, clock advances — run against the real
//! pipeline over the embedded store and local cache wrapped in fault injectors, and against a
//! small model of what was acknowledged and who belongs where. Checked:
//!
//! - G1 no loss: after settling (gap_grace passed, recovery ran), every acked message reached
//!   every device of every member who joined at or before it and never left;
//! - G2 no duplicates: a device never sees a message_id twice;
//! - G3 order: per device and conversation, no conv_seq twice, and once settled every conv_seq
//!   from the join to the conversation's last is there (holes included as entries);
//! - G4 idempotent send: the same (sender, client_msg_id) acks with the same message;
//! - unread = last_seq - read_seq, with last_seq the conversation's last conv_seq.
//!
//! The same test runs with the Cache on a private `redis-server` (a Cache reset is a
//! FLUSHALL there), with fewer cases: `PROPTEST_REDIS_CASES` (default 150); and with the Store
//! on ScyllaDB when `SCYLLA_NODES` names a cluster (`PROPTEST_SCYLLA_CASES`, default 30; one
//! keyspace, truncated before each case).
//!
//! `PROPTEST_CASES` sets the case count (default 2,000); `PROPTEST_RNG_SEED` fixes the seed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};

use super::{Broken, Caller, CreateConversation, Limits, SendMessage, Timeline};
use crate::cache::Cache;
use crate::cache::local::LocalCache;
use crate::cache::redis::{RedisCache, RedisOptions};
use crate::store::embedded::{Durability, EmbeddedOptions, EmbeddedStore};
use crate::store::scylla::{ScyllaOptions, ScyllaStore};
use crate::store::*;
use crate::testkit::faults::*;
use crate::testkit::redis_server::RedisProcess;
use crate::testkit::scylla::TestKeyspace;

const USERS: usize = 4;
const DEVICES: usize = 2;
const GROUPS: [&str; 2] = ["g:zero", "g:one"];
const GRACE: Duration = Duration::from_secs(3);

fn user(u: usize) -> String {
    format!("u{u}")
}

fn caller(u: usize, device: usize) -> Caller {
    Caller {
        user_id: user(u),
        device_id: format!("d{device}"),
        admin: true,
    }
}

/// conv 0 and 1 are the groups; 2 is the sender's direct chat with the next user.
fn conversation_id(sender: usize, conv: usize) -> String {
    match conv {
        0 | 1 => GROUPS[conv].to_owned(),
        _ => {
            let (a, b) = (user(sender), user((sender + 1) % USERS));
            if a < b {
                format!("d:{a}:{b}")
            } else {
                format!("d:{b}:{a}")
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Send {
        sender: usize,
        conv: usize,
        fault: Option<Fault>,
    },
    Retry {
        sender: usize,
        fault: Option<Fault>,
    },
    Join {
        user: usize,
        group: usize,
    },
    Leave {
        user: usize,
        group: usize,
    },
    Force {
        group: usize,
        hot: bool,
    },
    /// A switch with a send and a sync running just before its `at`-th Store/Cache operation,
    /// as concurrent requests would.
    SwitchAmidTraffic {
        group: usize,
        hot: bool,
        at: usize,
        sender: usize,
        reader: usize,
        device: usize,
        limit: u32,
    },
    Sync {
        user: usize,
        device: usize,
        limit: u32,
    },
    MarkRead {
        user: usize,
        conv: usize,
    },
    Advance {
        ms: u64,
    },
    Settle,
    ResetCache,
}

fn fault() -> impl Strategy<Value = Option<Fault>> {
    let kind = prop_oneof![
        4 => Just(FaultKind::Crash),
        2 => Just(FaultKind::Late(GRACE + Duration::from_millis(500))),
        1 => Just(FaultKind::Drop),
        1 => Just(FaultKind::ResetCache),
    ];
    prop_oneof![
        3 => Just(None),
        2 => (0usize..16, kind).prop_map(|(at, kind)| Some(Fault { at, kind })),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..USERS, 0usize..3, fault()).prop_map(|(sender, conv, fault)| Op::Send { sender, conv, fault }),
        2 => (0..USERS, fault()).prop_map(|(sender, fault)| Op::Retry { sender, fault }),
        2 => (1..USERS, 0usize..2).prop_map(|(user, group)| Op::Join { user, group }),
        1 => (1..USERS, 0usize..2).prop_map(|(user, group)| Op::Leave { user, group }),
        2 => (0usize..2, any::<bool>()).prop_map(|(group, hot)| Op::Force { group, hot }),
        3 => (0usize..2, any::<bool>(), 0usize..12, 0..USERS, 0..USERS, 0..DEVICES, 1u32..8)
            .prop_map(|(group, hot, at, sender, reader, device, limit)| Op::SwitchAmidTraffic {
                group, hot, at, sender, reader, device, limit,
            }),
        6 => (0..USERS, 0..DEVICES, 1u32..8).prop_map(|(user, device, limit)| Op::Sync { user, device, limit }),
        1 => (0..USERS, 0usize..3).prop_map(|(user, conv)| Op::MarkRead { user, conv }),
        2 => (0u64..4000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Settle),
        1 => Just(Op::ResetCache),
    ]
}

#[derive(Default)]
struct Device {
    cursor: String,
    ids: HashSet<u64>,
    /// (conversation, conv_seq) delivered.
    seqs: BTreeSet<(String, u64)>,
}

struct World {
    timeline: Arc<Timeline>,
    clock: Arc<ManualClock>,
    plan: Arc<FaultPlan>,
    devices: Vec<Vec<Device>>,
    /// conversation -> member -> (joined_seq as the service reported it, step of the join).
    members: BTreeMap<String, BTreeMap<usize, (u64, usize)>>,
    left: BTreeSet<(String, usize)>,
    /// message_id -> (the message, step at which it was acknowledged).
    acked: BTreeMap<u64, (MessageRow, usize)>,
    /// (sender, client_msg_id) -> step of its first attempt: a joiner is owed what was first
    /// sent after the join.
    first_attempt: BTreeMap<(usize, String), usize>,
    step: usize,
    /// (sender, client_msg_id) -> message_id of its first ack.
    by_client_id: BTreeMap<(usize, String), u64>,
    last_client_id: Vec<Option<(String, String)>>,
    /// Every conversation a send was attempted to.
    last_sent_to: BTreeSet<String>,
    sends: usize,
    _dir: tempfile::TempDir,
}

type Check = Result<(), TestCaseError>;

impl World {
    async fn new(broken: Option<Broken>, backend: &Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = match &backend.store {
            None => EmbeddedStore::open(dir.path(), EmbeddedOptions::new(Durability::Buffered, 8))
                .expect("store"),
            Some(options) => {
                let scylla = ScyllaStore::connect(options).await.expect("scylla store");
                scylla.truncate_tables().await.expect("truncate");
                scylla
            }
        };
        let (cache, lose): (Arc<dyn Cache>, Arc<dyn LoseState>) = match &backend.cache {
            CacheBackend::Local => {
                let local = Arc::new(LocalCache::new());
                (local.clone(), local)
            }
            CacheBackend::Redis(server) => {
                server.flushall().expect("FLUSHALL");
                let options = RedisOptions::single(server.url());
                let redis = RedisCache::connect(options).expect("redis cache");
                (Arc::new(redis), server.clone())
            }
        };
        let clock = ManualClock::new(1_800_000_000_000);
        let plan = FaultPlan::new(clock.clone(), lose);
        let limits = Limits {
            bucket_size: 8,
            hot_threshold: 4,
            mode_min_dwell: Duration::from_secs(1),
            hot_window: 5,
            gap_grace: GRACE,
            recovery_age: Duration::from_secs(5),
            send_claim_wait: Duration::ZERO,
            // A send held back by a switch's fence fails at once (a client retries later).
            send_fence_wait: Duration::ZERO,
            broken,
            ..Limits::default()
        };
        let timeline = Timeline::new(
            Arc::new(FaultyStore {
                inner: store,
                plan: plan.clone(),
            }),
            Arc::new(FaultyCache {
                inner: cache,
                plan: plan.clone(),
            }),
            limits,
            clock.clone(),
        );
        let mut world = Self {
            timeline,
            clock,
            plan,
            devices: (0..USERS)
                .map(|_| (0..DEVICES).map(|_| Device::default()).collect())
                .collect(),
            members: BTreeMap::new(),
            left: BTreeSet::new(),
            acked: BTreeMap::new(),
            step: 0,
            first_attempt: BTreeMap::new(),
            by_client_id: BTreeMap::new(),
            last_client_id: vec![None; USERS],
            last_sent_to: BTreeSet::new(),
            sends: 0,
            _dir: dir,
        };
        for (g, others) in [(0usize, vec![1, 2]), (1, vec![3])] {
            let req = CreateConversation {
                kind: ConversationKind::Group,
                conversation_id: GROUPS[g].into(),
                title: String::new(),
                member_ids: others.iter().map(|&u| user(u)).collect(),
            };
            world
                .timeline
                .create_conversation(&caller(0, 0), req)
                .await
                .expect("create");
            let m = world.members.entry(GROUPS[g].into()).or_default();
            for u in std::iter::once(0).chain(others) {
                m.insert(u, (1, 0));
            }
        }
        // Every device holds an issued cursor from the start (a fresh one starts hot
        // conversations at their recent window only).
        for u in 0..USERS {
            for d in 0..DEVICES {
                world.sync_device(u, d, 8).await.expect("initial sync");
            }
        }
        world
    }

    /// One Sync call; returns whether the device should call again (more, or pending).
    async fn sync_device(&mut self, u: usize, d: usize, limit: u32) -> Result<bool, TestCaseError> {
        let cursor = self.devices[u][d].cursor.clone();
        let page = self.timeline.sync(&caller(u, d), &cursor, limit).await;
        self.take_page(u, d, limit, page)
    }

    /// Checks and applies one page a device got; returns whether it should call again.
    fn take_page(
        &mut self,
        u: usize,
        d: usize,
        limit: u32,
        page: super::TimelineResult<super::SyncPage>,
    ) -> Result<bool, TestCaseError> {
        let page = match page {
            Ok(page) => page,
            // A fault elsewhere cannot fail a sync here (none is armed), but keep it honest.
            Err(e) => return Err(TestCaseError::fail(format!("sync failed: {e}"))),
        };
        prop_assert!(!page.cursor_expired);
        prop_assert!(page.messages.len() <= limit as usize);
        if page.has_more {
            prop_assert_eq!(page.messages.len(), limit as usize, "exact-count pages");
        }
        let device = &mut self.devices[u][d];
        for m in &page.messages {
            prop_assert!(
                device.ids.insert(m.message_id),
                "G2: {} got message {} twice",
                user(u),
                m.message_id
            );
            prop_assert!(
                device.seqs.insert((m.conversation_id.clone(), m.conv_seq)),
                "G3: {} got {} #{} twice",
                user(u),
                m.conversation_id,
                m.conv_seq
            );
        }
        device.cursor = page.next_cursor;
        if page.pending {
            // The client syncs again shortly: time passes meanwhile.
            self.clock.advance(Duration::from_millis(500));
        }
        Ok(page.has_more || page.pending)
    }

    async fn send(
        &mut self,
        sender: usize,
        conversation_id: String,
        client_msg_id: String,
        fault: Option<Fault>,
    ) -> Check {
        let step = self.step;
        let first = *self
            .first_attempt
            .entry((sender, client_msg_id.clone()))
            .or_insert(step);
        self.plan.arm(fault);
        let result = self
            .timeline
            .send(
                &caller(sender, self.sends % DEVICES),
                SendMessage {
                    conversation_id: conversation_id.clone(),
                    client_msg_id: client_msg_id.clone(),
                    content_type: String::new(),
                    body: Bytes::from(client_msg_id.clone()),
                },
            )
            .await;
        self.plan.disarm();
        self.take_send(sender, conversation_id, client_msg_id, first, result)
    }

    /// Records what one send attempt (first tried at step `first`) answered.
    fn take_send(
        &mut self,
        sender: usize,
        conversation_id: String,
        client_msg_id: String,
        first: usize,
        result: super::TimelineResult<MessageRow>,
    ) -> Check {
        self.last_sent_to.insert(conversation_id.clone());
        self.last_client_id[sender] = Some((conversation_id.clone(), client_msg_id.clone()));
        if let Ok(message) = result {
            let key = (sender, client_msg_id);
            if let Some(first) = self.by_client_id.get(&key) {
                prop_assert_eq!(
                    *first,
                    message.message_id,
                    "G4: a retry made a second message"
                );
            }
            self.by_client_id.insert(key, message.message_id);
            self.acked
                .entry(message.message_id)
                .or_insert((message, first));
        }
        Ok(())
    }

    async fn apply(&mut self, op: &Op) -> Check {
        self.step += 1;
        match *op {
            Op::Send {
                sender,
                conv,
                fault,
            } => {
                self.sends += 1;
                let id = conversation_id(sender, conv);
                let client_msg_id = format!("c{}", self.sends);
                self.send(sender, id, client_msg_id, fault).await?;
            }
            Op::Retry { sender, fault } => {
                if let Some((id, client_msg_id)) = self.last_client_id[sender].clone() {
                    self.send(sender, id, client_msg_id, fault).await?;
                }
            }
            Op::Join { user: u, group } => {
                let id = GROUPS[group];
                if self.members[id].contains_key(&u) {
                    return Ok(());
                }
                let (_, added) = self
                    .timeline
                    .add_members(&caller(0, 0), id, &[user(u)])
                    .await
                    .expect("join");
                let step = self.step;
                for m in added {
                    self.members
                        .get_mut(id)
                        .unwrap()
                        .insert(u, (m.joined_seq, step));
                }
            }
            Op::Leave { user: u, group } => {
                let id = GROUPS[group];
                if self
                    .members
                    .get_mut(id)
                    .and_then(|m| m.remove(&u))
                    .is_some()
                {
                    self.timeline
                        .remove_members(&caller(u, 0), id, &[user(u)])
                        .await
                        .expect("leave");
                    self.left.insert((id.to_owned(), u));
                }
            }
            Op::Force { group, hot } => {
                let mode = if hot {
                    DeliveryMode::Hot
                } else {
                    DeliveryMode::Fanout
                };
                self.timeline
                    .switch_mode(GROUPS[group], mode, false)
                    .await
                    .expect("switch");
            }
            Op::SwitchAmidTraffic {
                group,
                hot,
                at,
                sender,
                reader,
                device,
                limit,
            } => {
                self.switch_amid_traffic(group, hot, at, (sender, reader, device, limit))
                    .await?;
            }
            Op::Sync {
                user: u,
                device,
                limit,
            } => {
                self.sync_device(u, device, limit).await?;
            }
            Op::MarkRead { user: u, conv } => {
                let id = conversation_id(u, conv);
                let member = self.members.get(&id).is_none_or(|m| m.contains_key(&u));
                if member
                    && let Ok((read, unread)) =
                        self.timeline.mark_read(&caller(u, 0), &id, u64::MAX).await
                {
                    prop_assert_eq!(unread, 0, "G1 unread: marked everything read at {}", read);
                }
            }
            Op::Advance { ms } => self.clock.advance(Duration::from_millis(ms)),
            Op::Settle => self.settle().await?,
            Op::ResetCache => self.plan.arm(Some(Fault {
                at: 0,
                kind: FaultKind::ResetCache,
            })),
        }
        Ok(())
    }

    /// Switches `group` with a send (by `sender`) and then a sync (by `reader`'s `device`)
    /// interleaved just before the switch's `at`-th operation.
    async fn switch_amid_traffic(
        &mut self,
        group: usize,
        hot: bool,
        at: usize,
        (sender, reader, device, limit): (usize, usize, usize, u32),
    ) -> Check {
        let mode = if hot {
            DeliveryMode::Hot
        } else {
            DeliveryMode::Fanout
        };
        self.sends += 1;
        let client_msg_id = format!("c{}", self.sends);
        let first = *self
            .first_attempt
            .entry((sender, client_msg_id.clone()))
            .or_insert(self.step);
        type Seen = (
            super::TimelineResult<MessageRow>,
            super::TimelineResult<super::SyncPage>,
        );
        let seen: Arc<std::sync::Mutex<Option<Seen>>> = Arc::default();
        let (timeline, out, cursor) = (
            self.timeline.clone(),
            seen.clone(),
            self.devices[reader][device].cursor.clone(),
        );
        let request = SendMessage {
            conversation_id: GROUPS[group].into(),
            client_msg_id: client_msg_id.clone(),
            content_type: String::new(),
            body: Bytes::from(client_msg_id.clone()),
        };
        self.plan.interleave(
            at,
            Box::new(move || {
                Box::pin(async move {
                    let sent = timeline.send(&caller(sender, 0), request).await;
                    let page = timeline.sync(&caller(reader, device), &cursor, limit).await;
                    *out.lock().unwrap_or_else(|p| p.into_inner()) = Some((sent, page));
                })
            }),
        );
        let switched = self.timeline.switch_mode(GROUPS[group], mode, false).await;
        self.plan.disarm();
        switched.map_err(|e| TestCaseError::fail(format!("switch failed: {e}")))?;
        let interleaved = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((sent, page)) = interleaved {
            self.take_send(sender, GROUPS[group].into(), client_msg_id, first, sent)?;
            self.take_page(reader, device, limit, page)?;
        }
        Ok(())
    }

    /// The groups, and the direct chats a send went to (they exist from their first send on;
    /// both users are members from seq 1).
    fn conversations(&self) -> BTreeSet<String> {
        GROUPS
            .iter()
            .map(|g| g.to_string())
            .chain(self.last_sent_to.iter().cloned())
            .collect()
    }

    /// The whole history of a conversation (newest first), read by one of its members.
    async fn history(&self, id: &str) -> Vec<MessageRow> {
        for u in 0..USERS {
            if let Ok(page) = self.timeline.history(&caller(u, 0), id, 0, 200).await {
                return page.messages;
            }
        }
        Vec::new()
    }

    /// Lets gap_grace and recovery_age pass, runs recovery and the sweeper, has every device
    /// catch up, and checks G1, G3 and unread counts.
    async fn settle(&mut self) -> Check {
        self.clock.advance(Duration::from_secs(6));
        // Someone scrolls every conversation (history repairs gaps the sweeper missed).
        for id in self.conversations() {
            self.history(&id).await;
        }
        let now = self.timeline.now_ms();
        self.timeline.recover_pending(now).await.expect("recovery");
        self.timeline.sweep_abandoned().await.expect("sweep");
        for u in 0..USERS {
            for d in 0..DEVICES {
                let mut rounds = 0;
                while self.sync_device(u, d, 7).await? {
                    rounds += 1;
                    prop_assert!(rounds < 500, "sync of {} does not converge", user(u));
                }
            }
        }
        let mut members = self.members.clone();
        for id in self.conversations() {
            let exists = self
                .timeline
                .store
                .get_conversation(&id)
                .await
                .expect("read")
                .is_some();
            if id.starts_with("d:") && exists {
                let entry = members.entry(id.clone()).or_default();
                for u in 0..USERS {
                    if id.split(':').any(|p| p == user(u)) {
                        entry.insert(u, (1, 0));
                    }
                }
            }
        }
        for (id, users) in &members {
            let last_seq = self.history(id).await.first().map_or(0, |m| m.conv_seq);
            for (&u, &(joined, join_step)) in users {
                if self.left.contains(&(id.clone(), u)) {
                    continue;
                }
                // Owed: from the join's conv_seq on, and anything acknowledged after the join.
                for (m, _) in self.acked.values().filter(|(m, acked_at)| {
                    &m.conversation_id == id && (m.conv_seq >= joined || *acked_at > join_step)
                }) {
                    for d in 0..DEVICES {
                        prop_assert!(
                            self.devices[u][d].ids.contains(&m.message_id),
                            "G1: {}/d{} lacks {} #{} ({})",
                            user(u),
                            d,
                            id,
                            m.conv_seq,
                            m.message_id
                        );
                    }
                }
                for d in 0..DEVICES {
                    for seq in joined..=last_seq {
                        prop_assert!(
                            self.devices[u][d].seqs.contains(&(id.clone(), seq)),
                            "G3: {}/d{} has no entry for {} #{} (last {})",
                            user(u),
                            d,
                            id,
                            seq,
                            last_seq
                        );
                    }
                }
                let view = self
                    .timeline
                    .get_conversation(&caller(u, 0), id)
                    .await
                    .expect("get");
                prop_assert_eq!(
                    view.last_seq,
                    last_seq,
                    "last_seq of {} for {}",
                    id,
                    user(u)
                );
                prop_assert_eq!(view.unread, last_seq.saturating_sub(view.read_seq));
            }
        }
        Ok(())
    }
}

/// Which Cache the pipeline runs on.
enum CacheBackend {
    Local,
    /// One server for all cases, flushed before each.
    Redis(Arc<RedisProcess>),
}

/// The backends under the pipeline: the Store is embedded unless a ScyllaDB keyspace is given.
struct Backend {
    cache: CacheBackend,
    store: Option<ScyllaOptions>,
}

const LOCAL: Backend = Backend {
    cache: CacheBackend::Local,
    store: None,
};

fn run_case(ops: &[Op], broken: Option<Broken>) -> Check {
    run_case_on(ops, broken, &LOCAL)
}

fn run_case_on(ops: &[Op], broken: Option<Broken>, backend: &Backend) -> Check {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut world = World::new(broken, backend).await;
        for op in ops {
            world.apply(op).await?;
        }
        world.settle().await
    })
}

fn runner(cases: u32) -> TestRunner {
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    match std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(seed) => {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
        }
        None => TestRunner::new(config),
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

#[test]
fn the_pipeline_keeps_the_delivery_guarantees_under_faults() {
    let mut runner = runner(cases());
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        run_case(&ops, None)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn the_pipeline_keeps_the_delivery_guarantees_on_redis() {
    let server = RedisProcess::start().unwrap_or_else(|e| panic!("{e}"));
    let backend = Backend {
        cache: CacheBackend::Redis(Arc::new(server)),
        store: None,
    };
    let cases = std::env::var("PROPTEST_REDIS_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let mut runner = runner(cases);
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        run_case_on(&ops, None, &backend)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
#[ignore = "needs a ScyllaDB cluster: SCYLLA_NODES=host:9042 cargo test -- --ignored"]
fn the_pipeline_keeps_the_delivery_guarantees_on_scylla() {
    let options = ScyllaOptions::from_test_env("property", 8);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(ScyllaStore::migrate(&options))
        .expect("migrate a fresh keyspace");
    drop(runtime);
    let _keyspace = TestKeyspace(options.clone());
    let backend = Backend {
        cache: CacheBackend::Local,
        store: Some(options),
    };
    let cases = std::env::var("PROPTEST_SCYLLA_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut runner = runner(cases);
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        run_case_on(&ops, None, &backend)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The test can fail: each deliberately broken pipeline is caught within a few hundred cases.
#[test]
fn broken_pipelines_are_caught() {
    for variant in [
        Broken::MergeWithoutDedupe,
        Broken::GapsSkippedNotFilled,
        Broken::SendWithoutOutbox,
        Broken::SwitchWithoutFence,
    ] {
        let mut runner = runner(1000);
        let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
            run_case(&ops, Some(variant))
        });
        match result {
            Err(proptest::test_runner::TestError::Fail(reason, minimal)) => {
                println!(
                    "{variant:?} caught, minimal case of {} ops: {reason}",
                    minimal.len()
                );
            }
            other => panic!("{variant:?} was not caught: {other:?}"),
        }
    }
}

/// Found by the property test: a join after a crashed send's allocation, then a Cache loss:
/// the next message reused the seq and landed below the new member's joined_seq.
#[test]
fn a_join_never_starts_above_a_seq_the_sequencer_may_reissue() {
    let ops = [
        Op::Send {
            sender: 0,
            conv: 1,
            fault: None,
        },
        Op::Send {
            sender: 0,
            conv: 1,
            fault: Some(Fault {
                at: 6,
                kind: FaultKind::Drop,
            }),
        },
        Op::Join { user: 1, group: 1 },
        Op::Send {
            sender: 0,
            conv: 2,
            fault: Some(Fault {
                at: 0,
                kind: FaultKind::ResetCache,
            }),
        },
    ];
    if let Err(e) = run_case(&ops, None) {
        panic!("{e}");
    }
    let after_the_join = [
        ops.as_slice(),
        &[Op::Send {
            sender: 0,
            conv: 1,
            fault: None,
        }],
    ]
    .concat();
    if let Err(e) = run_case(&after_the_join, None) {
        panic!("{e}");
    }
}
