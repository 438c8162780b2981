//! The `Cache` on Redis (one server, or Redis Cluster): what many nodes share. Each method is
//! one round trip — a command, a Lua script (`scripts.rs`) where a step must be atomic, or a
//! pipeline of them for many keys (on a cluster, the per-slot commands go out concurrently).
//!
//! Redis failing never blocks for long: connections time out after `redis_timeout`, errors
//! surface as `CacheError::Unavailable`, and the connection is re-established in the
//! background when Redis returns.

pub mod keys;
mod pubsub;
pub mod scripts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind, Value};
use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::*;
use keys::{ACTIVE_SHARDS, Keys};

/// Sequencer keys idle this long are dropped (re-seeded from the Store on next use).
const SEQ_IDLE_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Hot windows of conversations silent this long are dropped (readers use the Store).
const HOT_IDLE_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Sweeper marks live as long as sequencer keys.
const VERIFIED_TTL: Duration = SEQ_IDLE_TTL;
/// A user's presence hash (devices and last-seen time) outlives its last write this long.
const LAST_SEEN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Where the Redis is and how long to wait for it: the `[redis]` section of the configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`, used unless `cluster_nodes` is set.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, a TOML array or one comma-separated
    /// string); when not empty, cluster mode.
    #[serde(deserialize_with = "crate::units::node_list")]
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key and channel (several deployments can share one Redis).
    pub key_prefix: String,
    /// Longest wait for one reply: sends fail with UNAVAILABLE after it.
    #[serde(rename = "timeout", with = "crate::units::human")]
    pub response_timeout: Duration,
    #[serde(with = "crate::units::human")]
    pub connect_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self::single("redis://127.0.0.1:6379/")
    }
}

impl RedisOptions {
    pub fn single(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster_nodes: Vec::new(),
            key_prefix: "timeline".into(),
            response_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// What the types cannot say: positive timeouts, a prefix that keeps keys in their slots.
    pub fn validate(&self) -> Result<(), String> {
        if self.response_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err("redis.timeout and redis.connect_timeout must be positive".into());
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err("redis.key_prefix must be non-empty and free of braces".into());
        }
        Ok(())
    }
}

enum Connection {
    Single(ConnectionManager),
    /// Connected on first use, so a node starts while the cluster is still coming up.
    Cluster(Box<LazyCluster>),
}

struct LazyCluster {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

pub struct RedisCache {
    connection: Connection,
    /// Pub/sub needs a connection of its own: one per node (see `pubsub.rs`).
    pubsub_client: ::redis::Client,
    keys: Keys,
    scripts: Scripts,
    options: RedisOptions,
    round_trips: AtomicU64,
}

struct Scripts {
    allocate: Script,
    allocate_message: Script,
    fence: Script,
    release_claim: Script,
    extend_claim: Script,
    admit_rate: Script,
    epoch: Script,
    hot_append: Script,
    hot_read: Script,
    mark_verified: Script,
    set_presence: Script,
    clear_presence: Script,
    presence: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            allocate: Script::new(scripts::ALLOCATE),
            allocate_message: Script::new(scripts::ALLOCATE_MESSAGE),
            fence: Script::new(scripts::FENCE),
            release_claim: Script::new(scripts::RELEASE_CLAIM),
            extend_claim: Script::new(scripts::EXTEND_CLAIM),
            admit_rate: Script::new(scripts::ADMIT_RATE),
            epoch: Script::new(scripts::EPOCH),
            hot_append: Script::new(scripts::HOT_APPEND),
            hot_read: Script::new(scripts::HOT_READ),
            mark_verified: Script::new(scripts::MARK_VERIFIED),
            set_presence: Script::new(scripts::SET_PRESENCE),
            clear_presence: Script::new(scripts::CLEAR_PRESENCE),
            presence: Script::new(scripts::PRESENCE),
        }
    }

    fn all(&self) -> [&Script; 13] {
        [
            &self.allocate,
            &self.allocate_message,
            &self.fence,
            &self.release_claim,
            &self.extend_claim,
            &self.admit_rate,
            &self.epoch,
            &self.hot_append,
            &self.hot_read,
            &self.mark_verified,
            &self.set_presence,
            &self.clear_presence,
            &self.presence,
        ]
    }
}

/// `EVALSHA` of `script` (loaded on demand: see `RedisCache::run`).
fn eval(script: &Script, keys: &[&str], args: &[&[u8]]) -> Cmd {
    let mut cmd = ::redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

fn unavailable(e: RedisError) -> CacheError {
    CacheError::Unavailable(format!("redis: {e}"))
}

/// Whether an error means "Redis is not there right now" (retry later) rather than a bug.
fn is_transient(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
    ) || e.is_timeout()
        || e.is_connection_dropped()
}

fn to_cache_error(e: RedisError) -> CacheError {
    // The scripts answer `redis.error_reply('FENCED')`, which Redis sends as `ERR FENCED`.
    if e.code() == Some("FENCED") || e.detail() == Some("FENCED") {
        CacheError::Fenced(e.to_string())
    } else if is_transient(&e) {
        unavailable(e)
    } else {
        CacheError::Protocol(format!("redis: {e}"))
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn num(n: impl ToString) -> Vec<u8> {
    n.to_string().into_bytes()
}

impl RedisCache {
    /// Prepares the connection; nothing is sent until the first operation, so a node starts
    /// while Redis is still down (its operations fail as unavailable until Redis is up).
    pub fn connect(options: RedisOptions) -> CacheResult<Self> {
        let invalid = |e: RedisError| CacheError::Protocol(format!("redis configuration: {e}"));
        let (connection, pubsub_url) = if options.cluster_nodes.is_empty() {
            let client = ::redis::Client::open(options.url.as_str()).map_err(invalid)?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(options.response_timeout))
                .set_connection_timeout(Some(options.connect_timeout))
                // One attempt per operation: while Redis is down, fail fast and let the next
                // operation try again, instead of queueing callers behind a backoff.
                .set_number_of_retries(1)
                .set_max_delay(options.connect_timeout);
            let manager =
                ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?;
            (Connection::Single(manager), options.url.clone())
        } else {
            let client = ClusterClient::builder(options.cluster_nodes.clone())
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                .retries(2)
                .build()
                .map_err(invalid)?;
            let connection = Connection::Cluster(Box::new(LazyCluster {
                client,
                connection: OnceCell::new(),
            }));
            (connection, options.cluster_nodes[0].clone())
        };
        Ok(Self {
            connection,
            pubsub_client: ::redis::Client::open(pubsub_url.as_str()).map_err(invalid)?,
            keys: Keys::new(&options.key_prefix),
            scripts: Scripts::new(),
            options,
            round_trips: AtomicU64::new(0),
        })
    }

    /// Round trips to Redis since start (a pipeline or a set of concurrent per-slot commands
    /// counts once): what the benchmark divides by sends and syncs.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn count_round_trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(crate::metrics::CACHE_ROUND_TRIPS, "backend" => "redis").increment(1);
    }

    async fn cluster(lazy: &LazyCluster) -> Result<ClusterConnection, RedisError> {
        lazy.connection
            .get_or_try_init(|| lazy.client.get_async_connection())
            .await
            .cloned()
    }

    /// Sends `cmds` in one round trip and returns their replies in order.
    async fn send(&self, cmds: &[Cmd]) -> Result<Vec<Value>, RedisError> {
        match &self.connection {
            Connection::Single(manager) => {
                let mut conn = manager.clone();
                if let [cmd] = cmds {
                    return Ok(vec![cmd.query_async(&mut conn).await?]);
                }
                let mut pipe = ::redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd.clone());
                }
                pipe.query_async(&mut conn).await
            }
            Connection::Cluster(lazy) => {
                let conn = Self::cluster(lazy).await?;
                // A cluster pipeline must stay within one slot: send the commands
                // concurrently instead (the connection multiplexes them per node).
                futures::future::try_join_all(cmds.iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                }))
                .await
            }
        }
    }

    /// Runs `cmds` (one round trip), loading the scripts once and retrying when Redis lost
    /// them (a restart or `SCRIPT FLUSH`), and converts each reply.
    async fn run<T: FromRedisValue>(&self, cmds: &[Cmd]) -> CacheResult<Vec<T>> {
        self.count_round_trip();
        let replies = match self.send(cmds).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load_scripts().await.map_err(to_cache_error)?;
                self.count_round_trip();
                self.send(cmds).await
            }
            other => other,
        }
        .map_err(to_cache_error)?;
        replies
            .into_iter()
            .map(|v| {
                T::from_redis_value(v)
                    .map_err(|e| CacheError::Protocol(format!("redis reply: {e}")))
            })
            .collect()
    }

    async fn run_one<T: FromRedisValue>(&self, cmd: Cmd) -> CacheResult<T> {
        self.run(std::slice::from_ref(&cmd))
            .await?
            .pop()
            .ok_or_else(|| CacheError::Protocol("redis: no reply".into()))
    }

    async fn load_scripts(&self) -> Result<(), RedisError> {
        for script in self.scripts.all() {
            match &self.connection {
                Connection::Single(manager) => {
                    script
                        .prepare_invoke()
                        .load_async(&mut manager.clone())
                        .await?;
                }
                Connection::Cluster(lazy) => {
                    let mut conn = Self::cluster(lazy).await?;
                    script.prepare_invoke().load_async(&mut conn).await?;
                }
            }
        }
        Ok(())
    }

    fn seq_key(&self, key: &SeqKey) -> String {
        match key {
            SeqKey::Conversation(c) => self.keys.conversation_seq(c),
            SeqKey::Inbox(u) => self.keys.inbox_seq(u),
            SeqKey::Count(c) => self.keys.conversation_count(c),
        }
    }
}

/// A window member: `conv_seq ‖ message_id` (big-endian, so members of one score sort by
/// message_id, and two messages at one conv_seq stay two entries) then the encoded row.
fn window_member(entry: &HotEntry, message_id: u64) -> Vec<u8> {
    let mut member = Vec::with_capacity(16 + entry.payload.len());
    member.extend_from_slice(&entry.conv_seq.to_be_bytes());
    member.extend_from_slice(&message_id.to_be_bytes());
    member.extend_from_slice(&entry.payload);
    member
}

fn parse_member(member: &[u8]) -> CacheResult<HotEntry> {
    if member.len() < 16 {
        return Err(CacheError::Protocol(format!(
            "hot window member of {} bytes",
            member.len()
        )));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&member[..8]);
    Ok(HotEntry {
        conv_seq: u64::from_be_bytes(seq),
        payload: Bytes::copy_from_slice(&member[16..]),
    })
}

fn parse_number<T: std::str::FromStr>(what: &str, s: &str) -> CacheResult<T> {
    s.parse()
        .map_err(|_| CacheError::Protocol(format!("redis: {what} is {s:?}, not a number")))
}

#[async_trait]
impl Cache for RedisCache {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn allocate(
        &self,
        requests: &[SeqRequest],
        now_ms: i64,
    ) -> CacheResult<Vec<Option<u64>>> {
        let ttl = num(ms(SEQ_IDLE_TTL));
        let now = num(now_ms);
        let cmds: Vec<Cmd> = requests
            .iter()
            .map(|r| {
                let count = num(r.count);
                match &r.key {
                    SeqKey::Conversation(c) => eval(
                        &self.scripts.allocate,
                        &[
                            &self.keys.conversation_seq(c),
                            &self.keys.active_of(c),
                            &self.keys.fence(c),
                        ],
                        &[&count, &now, c.as_bytes(), &ttl],
                    ),
                    SeqKey::Inbox(u) => eval(
                        &self.scripts.allocate,
                        &[&self.keys.inbox_seq(u)],
                        &[&count, &now, b"", &ttl],
                    ),
                    SeqKey::Count(c) => eval(
                        &self.scripts.allocate,
                        &[&self.keys.conversation_count(c)],
                        &[&count, &now, b"", &ttl],
                    ),
                }
            })
            .collect();
        let lasts: Vec<Option<u64>> = self.run(&cmds).await?;
        Ok(requests
            .iter()
            .zip(lasts)
            .map(|(r, last)| last.map(|last| last + 1 - r.count))
            .collect())
    }

    async fn allocate_message(
        &self,
        conversation_id: &str,
        countable: bool,
        now_ms: i64,
    ) -> CacheResult<Option<(u64, u64)>> {
        let c = conversation_id;
        let cmd = eval(
            &self.scripts.allocate_message,
            &[
                &self.keys.conversation_seq(c),
                &self.keys.conversation_count(c),
                &self.keys.active_of(c),
                &self.keys.fence(c),
            ],
            &[
                &num(u64::from(countable)),
                &num(now_ms),
                c.as_bytes(),
                &num(ms(SEQ_IDLE_TTL)),
            ],
        );
        self.run_one(cmd).await
    }

    async fn fence(
        &self,
        conversation_id: &str,
        holder: u64,
        ttl: Duration,
    ) -> CacheResult<Option<u64>> {
        let cmd = eval(
            &self.scripts.fence,
            &[
                &self.keys.conversation_seq(conversation_id),
                &self.keys.fence(conversation_id),
            ],
            &[&num(holder), &num(ms(ttl).max(1))],
        );
        self.run_one(cmd).await
    }

    async fn unfence(&self, conversation_id: &str, holder: u64) -> CacheResult<()> {
        let cmd = eval(
            &self.scripts.release_claim,
            &[&self.keys.fence(conversation_id)],
            &[&num(holder)],
        );
        self.run_one::<Value>(cmd).await?;
        Ok(())
    }

    async fn seed(&self, key: &SeqKey, last_value: u64) -> CacheResult<()> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.seq_key(key))
            .arg(last_value)
            .arg("NX")
            .arg("PX")
            .arg(ms(SEQ_IDLE_TTL));
        self.run_one::<Value>(cmd).await?;
        Ok(())
    }

    async fn current(&self, key: &SeqKey) -> CacheResult<Option<u64>> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(self.seq_key(key));
        self.run_one(cmd).await
    }

    async fn claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<Option<u64>> {
        // SET … NX GET (Redis ≥ 7.0): sets and answers nil, or answers the holder's value.
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.keys.claim(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ms(ttl).max(1))
            .arg("GET");
        self.run_one(cmd).await
    }

    async fn release_claim(&self, key: &str, value: u64) -> CacheResult<()> {
        let cmd = eval(
            &self.scripts.release_claim,
            &[&self.keys.claim(key)],
            &[&num(value)],
        );
        self.run_one::<Value>(cmd).await?;
        Ok(())
    }

    async fn admit_rate(
        &self,
        key: &str,
        period: Duration,
        burst: u32,
    ) -> CacheResult<Option<Duration>> {
        let period_us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX).max(1);
        let cmd = eval(
            &self.scripts.admit_rate,
            &[&self.keys.rate(key)],
            &[&num(period_us), &num(u64::from(burst.max(1)))],
        );
        let wait_us: i64 = self.run_one(cmd).await?;
        Ok(u64::try_from(wait_us).ok().map(Duration::from_micros))
    }

    async fn extend_claim(&self, key: &str, value: u64, ttl: Duration) -> CacheResult<bool> {
        let cmd = eval(
            &self.scripts.extend_claim,
            &[&self.keys.claim(key)],
            &[&num(value), &num(ms(ttl).max(1))],
        );
        Ok(self.run_one::<i64>(cmd).await? == 1)
    }

    async fn epoch(&self) -> CacheResult<u64> {
        let candidate = num(rand::random::<u64>() >> 1);
        let cmd = eval(&self.scripts.epoch, &[&self.keys.epoch()], &[&candidate]);
        let epoch: String = self.run_one(cmd).await?;
        parse_number("the epoch", &epoch)
    }

    async fn hot_append(
        &self,
        conversation_id: &str,
        entry: HotEntry,
        message_id: u64,
        count_seq: u64,
        window: usize,
        now_ms: i64,
    ) -> CacheResult<()> {
        let cmd = eval(
            &self.scripts.hot_append,
            &[
                &self.keys.hot_window(conversation_id),
                &self.keys.hot_head(conversation_id),
            ],
            &[
                &num(entry.conv_seq),
                &window_member(&entry, message_id),
                &num(message_id),
                &num(window.max(1)),
                &num(now_ms),
                &num(ms(HOT_IDLE_TTL)),
                &num(count_seq),
            ],
        );
        self.run_one::<Value>(cmd).await?;
        Ok(())
    }

    async fn hot_heads(&self, conversation_ids: &[String]) -> CacheResult<Vec<Option<HotHead>>> {
        if conversation_ids.is_empty() {
            return Ok(Vec::new());
        }
        let cmds: Vec<Cmd> = conversation_ids
            .iter()
            .map(|c| {
                let mut cmd = ::redis::cmd("HMGET");
                cmd.arg(self.keys.hot_head(c)).arg(&["s", "m", "t", "c"]);
                cmd
            })
            .collect();
        type Reply = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let replies: Vec<Reply> = self.run(&cmds).await?;
        replies
            .into_iter()
            .map(|reply| match reply {
                (Some(s), Some(m), Some(t), c) => Ok(Some(HotHead {
                    last_seq: parse_number("a head seq", &s)?,
                    last_message_id: parse_number("a head message_id", &m)?,
                    last_activity_ms: parse_number("a head activity", &t)?,
                    // A head an older node wrote has no count.
                    last_count: c.map_or(Ok(0), |c| parse_number("a head count", &c))?,
                })),
                _ => Ok(None),
            })
            .collect()
    }

    async fn hot_read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> CacheResult<Option<HotWindow>> {
        let cmd = eval(
            &self.scripts.hot_read,
            &[&self.keys.hot_window(conversation_id)],
            &[&num(after_seq), &num(limit)],
        );
        let members: Vec<Vec<u8>> = self.run_one(cmd).await?;
        let Some((low, entries)) = members.split_first() else {
            return Ok(None);
        };
        Ok(Some(HotWindow {
            low_seq: parse_member(low)?.conv_seq,
            entries: entries
                .iter()
                .map(|m| parse_member(m))
                .collect::<CacheResult<_>>()?,
        }))
    }

    async fn active_conversations(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> CacheResult<Vec<(String, i64)>> {
        let cmds: Vec<Cmd> = (0..ACTIVE_SHARDS)
            .map(|shard| {
                let mut cmd = ::redis::cmd("ZRANGE");
                cmd.arg(self.keys.active(shard))
                    .arg("-inf")
                    .arg(before_ms)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .arg("WITHSCORES");
                cmd
            })
            .collect();
        let shards: Vec<Vec<(String, f64)>> = self.run(&cmds).await?;
        let mut out: Vec<(String, i64)> = shards
            .into_iter()
            .flatten()
            .map(|(c, at)| (c, at as i64))
            .collect();
        out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        out.truncate(limit);
        Ok(out)
    }

    async fn verified_seq(&self, conversation_id: &str) -> CacheResult<Option<u64>> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(self.keys.verified(conversation_id));
        self.run_one(cmd).await
    }

    async fn mark_verified(
        &self,
        conversation_id: &str,
        seq: u64,
        allocated_at_ms: i64,
    ) -> CacheResult<()> {
        let cmd = eval(
            &self.scripts.mark_verified,
            &[
                &self.keys.verified(conversation_id),
                &self.keys.active_of(conversation_id),
            ],
            &[
                &num(seq),
                conversation_id.as_bytes(),
                &num(allocated_at_ms),
                &num(ms(VERIFIED_TTL)),
            ],
        );
        self.run_one::<Value>(cmd).await?;
        Ok(())
    }

    async fn set_presence(
        &self,
        user_id: &str,
        device_id: &str,
        node: &str,
        ttl: Duration,
    ) -> CacheResult<()> {
        let cmd = eval(
            &self.scripts.set_presence,
            &[&self.keys.presence(user_id)],
            &[
                device_id.as_bytes(),
                node.as_bytes(),
                &num(ms(ttl).max(1)),
                &num(ms(LAST_SEEN_TTL)),
            ],
        );
        self.run_one::<Value>(cmd).await?;
        Ok(())
    }

    async fn clear_presence(&self, user_id: &str, device_id: &str) -> CacheResult<()> {
        let cmd = eval(
            &self.scripts.clear_presence,
            &[&self.keys.presence(user_id)],
            &[device_id.as_bytes(), &num(ms(LAST_SEEN_TTL))],
        );
        self.run_one::<Value>(cmd).await?;
        Ok(())
    }

    async fn presence(&self, user_ids: &[String]) -> CacheResult<Vec<UserPresence>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let cmds: Vec<Cmd> = user_ids
            .iter()
            .map(|u| eval(&self.scripts.presence, &[&self.keys.presence(u)], &[]))
            .collect();
        // Each reply: last-seen ms, then device and node pairs.
        let replies: Vec<(i64, Vec<(String, String)>)> = self.run(&cmds).await?;
        Ok(replies
            .into_iter()
            .map(|(last_seen_ms, pairs)| {
                let mut devices: Vec<Presence> = pairs
                    .into_iter()
                    .map(|(device_id, node)| Presence { device_id, node })
                    .collect();
                devices.sort();
                UserPresence {
                    devices,
                    last_seen_ms,
                }
            })
            .collect())
    }

    async fn publish(&self, messages: &[(String, Bytes)]) -> CacheResult<u64> {
        if messages.is_empty() {
            return Ok(0);
        }
        // On a cluster, sharded: the publish reaches only the shard owning the channel.
        let command = match self.connection {
            Connection::Single(_) => "PUBLISH",
            Connection::Cluster(_) => "SPUBLISH",
        };
        let cmds: Vec<Cmd> = messages
            .iter()
            .map(|(channel, payload)| {
                let mut cmd = ::redis::cmd(command);
                cmd.arg(self.keys.channel(channel)).arg(payload.as_ref());
                cmd
            })
            .collect();
        let received: Vec<u64> = self.run(&cmds).await?;
        Ok(received.into_iter().sum())
    }

    async fn subscriber(&self) -> CacheResult<Subscriber> {
        let prefix = self.keys.channel("");
        if self.options.cluster_nodes.is_empty() {
            pubsub::single(
                self.pubsub_client.clone(),
                prefix,
                self.options
                    .connect_timeout
                    .max(self.options.response_timeout),
            )
            .await
        } else {
            pubsub::cluster(
                self.options.cluster_nodes.clone(),
                prefix,
                self.options.response_timeout,
                self.options.connect_timeout,
            )
            .await
        }
    }
}
