//! The world a case runs in: the pipeline over fault-injecting backends, the devices with
//! their cursors and what they received, and the model of what was acknowledged and who
//! belongs where — with the checks of G1–G4 and unread counts.

use super::*;

#[derive(Default)]
pub(super) struct Device {
    pub(super) cursor: String,
    pub(super) ids: HashSet<u64>,
    /// (conversation, conv_seq) delivered.
    pub(super) seqs: BTreeSet<(String, u64)>,
}

pub(super) struct World {
    pub(super) timeline: Arc<Timeline>,
    pub(super) clock: Arc<ManualClock>,
    pub(super) plan: Arc<FaultPlan>,
    pub(super) devices: Vec<Vec<Device>>,
    /// conversation -> member -> (joined_seq as the service reported it, step of the join).
    pub(super) members: BTreeMap<String, BTreeMap<usize, (u64, usize)>>,
    pub(super) left: BTreeSet<(String, usize)>,
    /// Who left what: (conversation, user, last conv_seq allocated at the leave, the re-join's
    /// joined_seq): the user gets no conv_seq strictly between the two.
    pub(super) away: Vec<(String, usize, u64, Option<u64>)>,
    /// message_id -> (the message, step at which it was acknowledged).
    pub(super) acked: BTreeMap<u64, (MessageRow, usize)>,
    /// (sender, client_msg_id) -> step of its first attempt: a joiner is owed what was first
    /// sent after the join.
    pub(super) first_attempt: BTreeMap<(usize, String), usize>,
    pub(super) step: usize,
    /// (sender, client_msg_id) -> message_id of its first ack.
    pub(super) by_client_id: BTreeMap<(usize, String), u64>,
    pub(super) last_client_id: Vec<Option<(String, String)>>,
    /// Every conversation a send was attempted to.
    pub(super) last_sent_to: BTreeSet<String>,
    pub(super) sends: usize,
    /// (sender, client_msg_id) whose every attempt was refused by slowmode: never delivered.
    pub(super) refused_only: BTreeSet<(String, String)>,
    /// (sender, client_msg_id) with an attempt that was not refused (it may have written).
    pub(super) attempted: BTreeSet<(String, String)>,
    /// Every recall or edit attempted: (target message_id, what it asked, acknowledged).
    pub(super) changes: Vec<(u64, MessageChange, bool)>,
    /// (user, message_id) the user hid (delete-for-me acknowledged).
    pub(super) hidden: BTreeSet<(usize, u64)>,
    pub(super) _dir: tempfile::TempDir,
}

pub(super) type Check = Result<(), TestCaseError>;

impl World {
    pub(super) async fn new(broken: Option<Broken>, backend: &Backend) -> Self {
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
            // Longer than a case's manual clock can run (40 ops of at most a few seconds), and
            // short enough that a case's first recovery pass reads few buckets.
            recovery_lookback: Duration::from_secs(300),
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
            away: Vec::new(),
            acked: BTreeMap::new(),
            step: 0,
            first_attempt: BTreeMap::new(),
            by_client_id: BTreeMap::new(),
            last_client_id: vec![None; USERS],
            last_sent_to: BTreeSet::new(),
            sends: 0,
            refused_only: BTreeSet::new(),
            attempted: BTreeSet::new(),
            changes: Vec::new(),
            hidden: BTreeSet::new(),
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
    pub(super) async fn sync_device(
        &mut self,
        u: usize,
        d: usize,
        limit: u32,
    ) -> Result<bool, TestCaseError> {
        let cursor = self.devices[u][d].cursor.clone();
        let page = self.timeline.sync(&caller(u, d), &cursor, limit).await;
        self.take_page(u, d, limit, page)
    }

    /// Checks and applies one page a device got; returns whether it should call again.
    pub(super) fn take_page(
        &mut self,
        u: usize,
        d: usize,
        limit: u32,
        page: crate::timeline::TimelineResult<crate::timeline::SyncPage>,
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
        for m in &page.messages {
            prop_assert!(
                !self
                    .refused_only
                    .contains(&(m.sender_id.clone(), m.client_msg_id.clone())),
                "a send refused by slowmode was delivered: {} #{} from {}",
                m.conversation_id,
                m.conv_seq,
                m.sender_id
            );
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

    pub(super) async fn send(
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
    pub(super) fn take_send(
        &mut self,
        sender: usize,
        conversation_id: String,
        client_msg_id: String,
        first: usize,
        result: crate::timeline::TimelineResult<MessageRow>,
    ) -> Check {
        self.last_sent_to.insert(conversation_id.clone());
        self.last_client_id[sender] = Some((conversation_id.clone(), client_msg_id.clone()));
        let id = (user(sender), client_msg_id.clone());
        if matches!(
            result,
            Err(crate::timeline::TimelineError::Throttled { .. })
        ) {
            if !self.attempted.contains(&id) {
                self.refused_only.insert(id);
            }
        } else {
            self.refused_only.remove(&id);
            self.attempted.insert(id);
        }
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

    pub(super) async fn apply(&mut self, op: &Op) -> Check {
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
                    for (c, who, _, until) in &mut self.away {
                        if c == id && *who == u && until.is_none() {
                            *until = Some(m.joined_seq);
                        }
                    }
                    self.members
                        .get_mut(id)
                        .unwrap()
                        .insert(u, (m.joined_seq, step));
                }
            }
            Op::Leave {
                user: u,
                group,
                fault,
            } => {
                let id = GROUPS[group];
                if self
                    .members
                    .get_mut(id)
                    .and_then(|m| m.remove(&u))
                    .is_some()
                {
                    self.plan.arm(fault);
                    let first = self
                        .timeline
                        .remove_members(&caller(u, 0), id, &[user(u)])
                        .await;
                    self.plan.disarm();
                    if first.is_err() {
                        // The first attempt may have removed the member before it failed.
                        match self
                            .timeline
                            .remove_members(&caller(u, 0), id, &[user(u)])
                            .await
                        {
                            Ok(_) | Err(crate::timeline::TimelineError::NotFound(_)) => {}
                            Err(e) => panic!("leave, retried: {e}"),
                        }
                    }
                    let last = self
                        .timeline
                        .current_seq(&crate::cache::SeqKey::Conversation(id.to_owned()))
                        .await
                        .expect("sequencer");
                    self.left.insert((id.to_owned(), u));
                    self.away.push((id.to_owned(), u, last, None));
                }
            }
            Op::Slowmode { group, on } => {
                let seconds = if on { 3600 } else { 0 };
                self.timeline
                    .set_slowmode(&caller(0, 0), GROUPS[group], seconds)
                    .await
                    .expect("the owner sets slowmode");
            }
            Op::Force { group, hot } => {
                let mode = if hot {
                    DeliveryMode::Hot
                } else {
                    DeliveryMode::Fanout
                };
                match self.timeline.switch_mode(GROUPS[group], mode, false).await {
                    // A switch that crashed (inside a send) holds its claim and fence until
                    // their leases lapse: the operator tries again later.
                    Ok(_)
                    | Err(crate::timeline::TimelineError::Cache(
                        crate::cache::CacheError::Fenced(_),
                    )) => {}
                    Err(e) => panic!("switch: {e:?}"),
                }
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
            Op::Recall {
                pick,
                by_owner,
                fault,
            } => {
                let Some(target) = self.pick_message(pick) else {
                    return Ok(());
                };
                let owner_may = by_owner && GROUPS.contains(&target.conversation_id.as_str());
                let actor = if owner_may {
                    0
                } else {
                    user_index(&target.sender_id)
                };
                self.plan.arm(fault);
                let result = self
                    .timeline
                    .recall(
                        &caller(actor, 1),
                        &target.conversation_id,
                        target.conv_seq,
                        target.message_id,
                    )
                    .await;
                self.plan.disarm();
                // A recall's client_msg_id is derived from its target: a second recall by the
                // same member replays the first, owed from the first attempt on.
                let step = self.step;
                let first = *self
                    .first_attempt
                    .entry((actor, format!("recall {}", target.message_id)))
                    .or_insert(step);
                let asked = MessageChange::Recall { at_ms: 0 };
                self.take_change(&target, asked, first, result);
            }
            Op::Edit { pick, fault } => {
                let Some(target) = self.pick_message(pick) else {
                    return Ok(());
                };
                self.sends += 1;
                let body = Bytes::from(format!("edit{}", self.sends));
                self.plan.arm(fault);
                let result = self
                    .timeline
                    .edit(
                        &caller(user_index(&target.sender_id), 1),
                        crate::timeline::EditMessage {
                            conversation_id: target.conversation_id.clone(),
                            conv_seq: target.conv_seq,
                            message_id: target.message_id,
                            client_msg_id: format!("e{}", self.sends),
                            content_type: String::new(),
                            body: body.clone(),
                        },
                    )
                    .await;
                self.plan.disarm();
                let asked = MessageChange::Edit {
                    content_type: String::new(),
                    body,
                    at_ms: 0,
                };
                let step = self.step;
                self.take_change(&target, asked, step, result);
            }
            Op::Hide { user: u, pick } => {
                let all: Vec<MessageRow> = self.acked.values().map(|(m, _)| m.clone()).collect();
                if all.is_empty() {
                    return Ok(());
                }
                let m = &all[pick % all.len()];
                let hidden = self
                    .timeline
                    .delete_for_me(
                        &caller(u, 1),
                        &m.conversation_id,
                        &[(m.conv_seq, m.message_id)],
                    )
                    .await;
                if hidden.is_ok() {
                    self.hidden.insert((u, m.message_id));
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

    /// The `pick`-th acknowledged user message, counting round.
    fn pick_message(&self, pick: usize) -> Option<MessageRow> {
        let users: Vec<&MessageRow> = self
            .acked
            .values()
            .map(|(m, _)| m)
            .filter(|m| m.kind == MessageKind::User)
            .collect();
        (!users.is_empty()).then(|| users[pick % users.len()].clone())
    }

    /// Records a change attempt; an acknowledged change's entry is owed like a message.
    fn take_change(
        &mut self,
        target: &MessageRow,
        asked: MessageChange,
        first: usize,
        result: crate::timeline::TimelineResult<crate::timeline::Changed>,
    ) {
        let acked = result.is_ok();
        if let Ok(changed) = result {
            self.acked
                .entry(changed.entry.message_id)
                .or_insert((changed.entry, first));
        }
        self.changes.push((target.message_id, asked, acked));
    }

    /// History shows each acknowledged change: a recalled message has no body; an edited one
    /// the body of its latest acknowledged edit. Attempts that failed may or may not have
    /// taken effect: then any of the bodies asked for will do.
    fn check_changes(&self, id: &str, history: &[MessageRow]) -> Check {
        for m in history.iter().filter(|m| m.kind == MessageKind::User) {
            let Some((original, _)) = self.acked.get(&m.message_id) else {
                continue;
            };
            let changes: Vec<&(u64, MessageChange, bool)> = self
                .changes
                .iter()
                .filter(|(target, _, _)| *target == m.message_id)
                .collect();
            let recall = |acked: bool| {
                changes
                    .iter()
                    .any(|(_, c, a)| matches!(c, MessageChange::Recall { .. }) && *a == acked)
            };
            if recall(true) {
                prop_assert!(
                    m.recalled() && m.body.is_empty(),
                    "history of {} shows recalled #{} as {:?}",
                    id,
                    m.conv_seq,
                    m.body
                );
                continue;
            }
            if recall(false) {
                continue;
            }
            prop_assert!(!m.recalled(), "#{} of {} recalled unasked", m.conv_seq, id);
            let edits: Vec<(&Bytes, bool)> = changes
                .iter()
                .filter_map(|(_, c, a)| match c {
                    MessageChange::Edit { body, .. } => Some((body, *a)),
                    _ => None,
                })
                .collect();
            if edits.iter().any(|(_, acked)| !acked) {
                prop_assert!(
                    m.body == original.body || edits.iter().any(|(b, _)| **b == m.body),
                    "#{} of {} has a body nobody asked for",
                    m.conv_seq,
                    id
                );
            } else if let Some((latest, _)) = edits.last() {
                prop_assert_eq!(
                    &m.body,
                    *latest,
                    "#{} of {}: the latest edit",
                    m.conv_seq,
                    id
                );
            } else {
                prop_assert_eq!(&m.body, &original.body);
            }
        }
        Ok(())
    }

    /// Switches `group` with a send (by `sender`) and then a sync (by `reader`'s `device`)
    /// interleaved just before the switch's `at`-th operation.
    pub(super) async fn switch_amid_traffic(
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
            crate::timeline::TimelineResult<MessageRow>,
            crate::timeline::TimelineResult<crate::timeline::SyncPage>,
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
    pub(super) fn conversations(&self) -> BTreeSet<String> {
        GROUPS
            .iter()
            .map(|g| g.to_string())
            .chain(self.last_sent_to.iter().cloned())
            .collect()
    }

    /// The whole history of a conversation (newest first), read by one of its members.
    pub(super) async fn history(&self, id: &str) -> Vec<MessageRow> {
        for u in 0..USERS {
            if let Ok(page) = self.timeline.history(&caller(u, 0), id, 0, 200).await {
                return page.messages;
            }
        }
        Vec::new()
    }

    /// Lets gap_grace and recovery_age pass, runs recovery and the sweeper, has every device
    /// catch up, and checks G1, G3 and unread counts.
    pub(super) async fn settle(&mut self) -> Check {
        self.clock.advance(Duration::from_secs(6));
        // Someone scrolls every conversation (history repairs gaps the sweeper missed).
        for id in self.conversations() {
            self.history(&id).await;
        }
        let now = self.timeline.now_ms();
        // Every node runs recovery: two passes at once over the same outbox.
        let (first, second) = tokio::join!(
            self.timeline.recover_pending(now),
            self.timeline.recover_pending(now)
        );
        first.expect("recovery");
        second.expect("recovery");
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
        for (id, u, after, until) in &self.away {
            // A re-join may start at or below the leave's last seq (see
            // `a_join_never_starts_above_a_seq_the_sequencer_may_reissue`): nothing in between.
            if until.is_some_and(|until| until <= after + 1) {
                continue;
            }
            for d in 0..DEVICES {
                let got = self.devices[*u][d]
                    .seqs
                    .range((id.clone(), after + 1)..(id.clone(), until.unwrap_or(u64::MAX)))
                    .next();
                prop_assert!(
                    got.is_none(),
                    "isolation: {}/d{} left {} after #{} and got #{:?}",
                    user(*u),
                    d,
                    id,
                    after,
                    got.map(|(_, seq)| seq)
                );
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
            let history = self.history(id).await;
            self.check_changes(id, &history)?;
            for &u in users.keys() {
                let hid: Vec<u64> = self
                    .hidden
                    .iter()
                    .filter(|(who, _)| *who == u)
                    .map(|(_, m)| *m)
                    .collect();
                if hid.is_empty() {
                    continue;
                }
                let mine = self
                    .timeline
                    .history(&caller(u, 0), id, 0, 200)
                    .await
                    .map(|p| p.messages)
                    .unwrap_or_default();
                for m in mine.iter().filter(|m| m.kind != MessageKind::Hole) {
                    prop_assert!(
                        !hid.contains(&m.message_id),
                        "{} hid {} #{} and history still shows it",
                        user(u),
                        id,
                        m.conv_seq
                    );
                }
            }
            let last_seq = history.first().map_or(0, |m| m.conv_seq);
            for (&u, &(joined, join_step)) in users {
                if self.left.contains(&(id.clone(), u)) {
                    continue;
                }
                // Owed: from the join's conv_seq on, and anything acknowledged after the join.
                for (m, _) in self.acked.values().filter(|(m, acked_at)| {
                    &m.conversation_id == id
                        && (m.conv_seq >= joined || *acked_at > join_step)
                        // A device syncing after the hide gets a hole in its place.
                        && !self.hidden.contains(&(u, m.message_id))
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
                // Unread counts the others' user messages after the read position. A seq
                // allocated and abandoned (a crash before its write; a hole now) may have
                // taken a count, and an own message whose read advance was lost counts: those
                // bound it from above; without either it is exact.
                let after: Vec<&MessageRow> = history
                    .iter()
                    .filter(|m| m.conv_seq > view.read_seq)
                    .collect();
                let others = after
                    .iter()
                    .filter(|m| m.kind == MessageKind::User && m.sender_id != user(u))
                    .count() as u64;
                let slack = after
                    .iter()
                    .filter(|m| {
                        m.kind == MessageKind::Hole
                            || (m.kind == MessageKind::User && m.sender_id == user(u))
                    })
                    .count() as u64;
                prop_assert!(
                    (others..=others + slack).contains(&view.unread),
                    "unread of {} for {} is {}: {} messages of others after read_seq {}, {} \
                     holes or own",
                    id,
                    user(u),
                    view.unread,
                    others,
                    view.read_seq,
                    slack
                );
            }
        }
        Ok(())
    }
}
