//! Layered configuration (DESIGN §10): defaults < `timeline.toml` < `TIMELINE_*` environment <
//! command-line flags. Keys are flat; each key `k` is also the variable `TIMELINE_<K>`.
//! Unknown keys are rejected with an error naming them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cache::redis::RedisOptions;
use crate::store::embedded::{Durability, EmbeddedOptions};
use crate::store::scylla::{ScyllaOptions, parse_consistency, valid_keyspace};
use crate::timeline::Limits;
use crate::timeline::ids::MAX_NODE_ID;

pub const DEFAULT_CONFIG_FILE: &str = "timeline.toml";
pub const ENV_PREFIX: &str = "TIMELINE_";
/// File in the data directory holding the generated JWT secret.
pub const SECRET_FILE: &str = "jwt_secret";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Invalid(String),
    #[error("configuration I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// fjall in `data_dir`: no external service.
    Embedded,
    /// A ScyllaDB cluster (`scylla_*` keys): shared by many nodes.
    Scylla,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// In-process: one node only.
    Local,
    /// Redis (or Redis Cluster): shared by many nodes.
    Redis,
}

/// A duration written for people: `500ms`, `3s`, `10m`, `24h`, `14d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 500ms, 3s, 10m, 24h or 14d"))?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            _ => return Err(format!("{s:?} has no unit: use ms, s, m, h or d")),
        };
        ms.map(|ms| HumanDuration(Duration::from_millis(ms)))
            .ok_or_else(|| format!("{s:?} is too long"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The effective configuration. Every field is a key of `timeline.toml` and a `TIMELINE_*`
/// variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address serving gRPC (h2c) and HTTP on one port.
    pub listen: SocketAddr,
    /// Where the embedded store and the generated secret live.
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub cache: CacheKind,
    /// With `cache = "redis"`: the server, `redis://[user:password@]host:port[/db]`.
    pub redis_url: String,
    /// With `cache = "redis"`: comma-separated Redis Cluster seed nodes (`redis://host:port`);
    /// when set, used instead of `redis_url`.
    pub redis_cluster_nodes: String,
    /// Prefix of every Redis key and channel (several deployments can share one Redis).
    pub redis_key_prefix: String,
    /// Longest wait for one Redis reply; sends fail with UNAVAILABLE after it.
    pub redis_timeout: HumanDuration,
    pub redis_connect_timeout: HumanDuration,
    /// With `store = "scylla"`: comma-separated contact points, `host:port`.
    pub scylla_nodes: String,
    pub scylla_keyspace: String,
    /// Datacenter to route to (and, for `migrate`, to replicate in); empty: any.
    pub scylla_local_dc: String,
    /// `local_quorum` (default), `quorum`, `each_quorum`, `all`, `one`, `local_one`, ...
    pub scylla_consistency: String,
    /// Replicas per datacenter created by `timeline migrate`.
    pub scylla_replication_factor: u32,
    pub scylla_request_timeout: HumanDuration,
    pub scylla_connect_timeout: HumanDuration,
    pub scylla_username: Option<String>,
    pub scylla_password: Option<String>,
    /// HS256 secret for tokens; generated into the data dir when unset (embedded mode).
    pub jwt_secret: Option<String>,
    /// `fsync` (every ack is on disk, group commit) or `buffered`.
    pub durability: Durability,
    /// 0..=1023, unique per node: part of every message_id.
    pub node_id: u16,
    pub max_body_bytes: usize,
    pub max_group_members: u32,
    pub max_members_per_call: usize,
    pub max_conversations_per_user: usize,
    pub sync_default_limit: u32,
    pub sync_max_limit: u32,
    pub history_default_limit: u32,
    pub history_max_limit: u32,
    pub list_default_limit: u32,
    pub list_max_limit: u32,
    /// Sequence values per storage partition; fixed once data is written.
    pub bucket_size: u64,
    pub inbox_retention: HumanDuration,
    pub inbox_max_rows: u64,
    pub gap_grace: HumanDuration,
    pub idempotency_ttl: HumanDuration,
    pub recovery_interval: HumanDuration,
    pub recovery_age: HumanDuration,
    /// Members from which a conversation is hot (read at sync time instead of fanned out).
    pub hot_threshold: u32,
    /// Fan-out rate (members x sends per second) from which a conversation is hot.
    pub hot_fanout_rows_per_sec: u64,
    /// Least time between two automatic mode switches of a conversation.
    pub mode_min_dwell: HumanDuration,
    /// Messages of a hot conversation kept in the Cache window.
    pub hot_window: usize,
    /// tracing filter, e.g. `info` or `timeline=debug`.
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("timeline-data"),
            store: StoreKind::Embedded,
            cache: CacheKind::Local,
            redis_url: "redis://127.0.0.1:6379/".into(),
            redis_cluster_nodes: String::new(),
            redis_key_prefix: "timeline".into(),
            redis_timeout: HumanDuration(Duration::from_millis(500)),
            redis_connect_timeout: HumanDuration(Duration::from_secs(1)),
            scylla_nodes: "127.0.0.1:9042".into(),
            scylla_keyspace: "timeline".into(),
            scylla_local_dc: String::new(),
            scylla_consistency: "local_quorum".into(),
            scylla_replication_factor: 3,
            scylla_request_timeout: HumanDuration(Duration::from_secs(2)),
            scylla_connect_timeout: HumanDuration(Duration::from_secs(5)),
            scylla_username: None,
            scylla_password: None,
            jwt_secret: None,
            durability: Durability::Fsync,
            node_id: limits.node_id,
            max_body_bytes: limits.max_body_bytes,
            max_group_members: limits.max_group_members,
            max_members_per_call: limits.max_members_per_call,
            max_conversations_per_user: limits.max_conversations_per_user,
            sync_default_limit: limits.sync_default_limit,
            sync_max_limit: limits.sync_max_limit,
            history_default_limit: limits.history_default_limit,
            history_max_limit: limits.history_max_limit,
            list_default_limit: limits.list_default_limit,
            list_max_limit: limits.list_max_limit,
            bucket_size: limits.bucket_size,
            inbox_retention: HumanDuration(limits.inbox_retention),
            inbox_max_rows: limits.inbox_max_rows,
            gap_grace: HumanDuration(limits.gap_grace),
            idempotency_ttl: HumanDuration(limits.idempotency_ttl),
            recovery_interval: HumanDuration(Duration::from_secs(1)),
            recovery_age: HumanDuration(limits.recovery_age),
            hot_threshold: limits.hot_threshold,
            hot_fanout_rows_per_sec: limits.hot_fanout_rows_per_sec,
            mode_min_dwell: HumanDuration(limits.mode_min_dwell),
            hot_window: limits.hot_window,
            log: "info,fjall=warn,lsm_tree=warn".into(),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Loads the layers. `file` is the config file; without one, `timeline.toml` in the working
    /// directory is read when it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        let config: Config = figment
            .merge(Env::prefixed(ENV_PREFIX))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id > MAX_NODE_ID {
            return fail(format!(
                "node_id must be at most {MAX_NODE_ID}, got {}",
                self.node_id
            ));
        }
        if self.bucket_size == 0 {
            return fail("bucket_size must be positive".into());
        }
        if self.sync_max_limit == 0 || self.history_max_limit == 0 || self.list_max_limit == 0 {
            return fail("page size limits must be positive".into());
        }
        if self.sync_default_limit > self.sync_max_limit
            || self.history_default_limit > self.history_max_limit
            || self.list_default_limit > self.list_max_limit
        {
            return fail("a default page size exceeds its maximum".into());
        }
        if self.gap_grace.0.is_zero() {
            return fail("gap_grace must be positive".into());
        }
        if self.inbox_retention.0 <= self.gap_grace.0 {
            return fail("inbox_retention must be longer than gap_grace".into());
        }
        if self.hot_window == 0 || self.hot_threshold < 2 {
            return fail("hot_window must be positive and hot_threshold at least 2".into());
        }
        if self.recovery_interval.0.is_zero() {
            return fail("recovery_interval must be positive".into());
        }
        if self.redis_timeout.0.is_zero() || self.redis_connect_timeout.0.is_zero() {
            return fail("redis_timeout and redis_connect_timeout must be positive".into());
        }
        if self.redis_key_prefix.is_empty() || self.redis_key_prefix.contains(['{', '}']) {
            return fail("redis_key_prefix must be non-empty and free of braces".into());
        }
        if self.store == StoreKind::Scylla {
            if let Err(e) = parse_consistency(&self.scylla_consistency) {
                return fail(e);
            }
            if !valid_keyspace(&self.scylla_keyspace) {
                return fail(format!(
                    "scylla_keyspace {:?} must be lower-case letters, digits and _ (at most 48)",
                    self.scylla_keyspace
                ));
            }
            if self.scylla_nodes().is_empty() {
                return fail("scylla_nodes must name at least one host:port".into());
            }
            if self.scylla_replication_factor == 0 || self.scylla_request_timeout.0.is_zero() {
                return fail(
                    "scylla_replication_factor and scylla_request_timeout must be positive".into(),
                );
            }
            if self.scylla_username.is_some() != self.scylla_password.is_some() {
                return fail("set both scylla_username and scylla_password, or neither".into());
            }
        }
        if matches!(&self.jwt_secret, Some(s) if s.len() < 32) {
            return fail("jwt_secret must be at least 32 characters".into());
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            node_id: self.node_id,
            bucket_size: self.bucket_size,
            max_body_bytes: self.max_body_bytes,
            sync_default_limit: self.sync_default_limit,
            sync_max_limit: self.sync_max_limit,
            history_default_limit: self.history_default_limit,
            history_max_limit: self.history_max_limit,
            list_default_limit: self.list_default_limit,
            list_max_limit: self.list_max_limit,
            max_group_members: self.max_group_members,
            max_members_per_call: self.max_members_per_call,
            max_conversations_per_user: self.max_conversations_per_user,
            inbox_retention: self.inbox_retention.0,
            inbox_max_rows: self.inbox_max_rows,
            gap_grace: self.gap_grace.0,
            idempotency_ttl: self.idempotency_ttl.0,
            recovery_age: self.recovery_age.0,
            hot_threshold: self.hot_threshold,
            hot_fanout_rows_per_sec: self.hot_fanout_rows_per_sec,
            mode_min_dwell: self.mode_min_dwell.0,
            hot_window: self.hot_window,
            ..Limits::default()
        }
    }

    /// How to open the embedded store: its TTLs are the retention settings.
    pub fn embedded_options(&self) -> EmbeddedOptions {
        EmbeddedOptions {
            inbox_ttl: Some(self.inbox_retention.0),
            idempotency_ttl: Some(self.idempotency_ttl.0),
            ..EmbeddedOptions::new(self.durability, self.bucket_size)
        }
    }

    fn scylla_nodes(&self) -> Vec<String> {
        comma_list(&self.scylla_nodes)
    }

    /// How to reach ScyllaDB (`store = "scylla"`); its TTLs are the retention settings.
    pub fn scylla_options(&self) -> Result<ScyllaOptions, ConfigError> {
        Ok(ScyllaOptions {
            nodes: self.scylla_nodes(),
            keyspace: self.scylla_keyspace.clone(),
            local_dc: self.scylla_local_dc.clone(),
            consistency: parse_consistency(&self.scylla_consistency)
                .map_err(ConfigError::Invalid)?,
            request_timeout: self.scylla_request_timeout.0,
            connect_timeout: self.scylla_connect_timeout.0,
            username: self.scylla_username.clone(),
            password: self.scylla_password.clone(),
            replication_factor: self.scylla_replication_factor,
            bucket_size: self.bucket_size,
            inbox_ttl: self.inbox_retention.0,
            idempotency_ttl: self.idempotency_ttl.0,
        })
    }

    /// How to reach Redis (`cache = "redis"`).
    pub fn redis_options(&self) -> RedisOptions {
        RedisOptions {
            url: self.redis_url.clone(),
            cluster_nodes: comma_list(&self.redis_cluster_nodes),
            key_prefix: self.redis_key_prefix.clone(),
            response_timeout: self.redis_timeout.0,
            connect_timeout: self.redis_connect_timeout.0,
        }
    }

    /// The configuration as TOML with the secret masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.jwt_secret.is_some() {
            shown.jwt_secret = Some("********".into());
        }
        if shown.scylla_password.is_some() {
            shown.scylla_password = Some("********".into());
        }
        shown.redis_url = mask_password(&shown.redis_url);
        shown.redis_cluster_nodes = shown
            .redis_cluster_nodes
            .split(',')
            .map(mask_password)
            .collect::<Vec<_>>()
            .join(",");
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// The configured secret, or the one generated into the data dir on first start.
    /// Returns the secret and whether it was generated just now.
    pub fn resolve_jwt_secret(&self) -> Result<(String, bool), ConfigError> {
        if let Some(secret) = &self.jwt_secret {
            return Ok((secret.clone(), false));
        }
        let path = self.data_dir.join(SECRET_FILE);
        let io = |source| ConfigError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), false)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(&self.data_dir).map_err(io)?;
        let secret: String = (0..4)
            .map(|_| format!("{:016x}", rand::random::<u64>()))
            .collect();
        write_private(&path, &secret).map_err(io)?;
        Ok((secret, true))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// The non-empty, trimmed items of a comma-separated list (node addresses).
pub fn comma_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// figment names unknown fields as `unknown field `x``; add where it came from.
fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            match &e.kind {
                figment::error::Kind::UnknownField(field, _) => {
                    format!("unknown key {field:?}{source}")
                }
                _ => format!("{e}{source}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `redis://user:secret@host` shown as `redis://user:********@host`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or("", |(u, _)| u);
            if credentials.contains(':') {
                format!("{scheme}://{user}:********@{host}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a private working directory and environment (figment's Jail), with
    /// `toml` as ./timeline.toml and `env` set.
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn load(toml: &str, env: &[(&str, &str)], overrides: Overrides) -> Result<Config, String> {
        let mut result = Err(String::new());
        figment::Jail::expect_with(|jail| {
            jail.create_file(DEFAULT_CONFIG_FILE, toml)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            result = Config::load(None, &overrides).map_err(|e| e.to_string());
            Ok(())
        });
        result
    }

    #[test]
    fn layers_apply_in_order() {
        let c = load(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"from-file\"\ngap_grace = \"5s\"\ncache = \"local\"\n",
            &[("TIMELINE_DATA_DIR", "from-env"), ("TIMELINE_CACHE", "local")],
            Overrides { listen: Some("127.0.0.1:2".parse().unwrap()), data_dir: None },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.data_dir, PathBuf::from("from-env"));
        assert_eq!(c.gap_grace, HumanDuration(Duration::from_secs(5)));
        assert_eq!(c.sync_max_limit, 500);
    }

    #[test]
    fn unknown_keys_are_named_wherever_they_come_from() {
        let err = load("listne = \"127.0.0.1:1\"\n", &[], Overrides::default()).unwrap_err();
        assert!(err.contains("listne"), "{err}");
        let err = load("", &[("TIMELINE_BOGUS_KEY", "1")], Overrides::default()).unwrap_err();
        assert!(err.contains("bogus_key"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = load("gap_grace = \"3 parsecs\"\n", &[], Overrides::default()).unwrap_err();
        assert!(err.contains("parsecs"), "{err}");
        assert!(load("node_id = 5000\n", &[], Overrides::default()).is_err());
        let err = load("", &[("TIMELINE_STORE", "postgres")], Overrides::default()).unwrap_err();
        assert!(err.contains("postgres"), "{err}");
    }

    #[test]
    fn durations_parse_and_print() {
        for (text, ms) in [
            ("500ms", 500),
            ("3s", 3000),
            ("10m", 600_000),
            ("24h", 86_400_000),
            ("14d", 1_209_600_000),
        ] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms);
            assert_eq!(
                d.to_string().parse::<HumanDuration>().unwrap(),
                d,
                "{text} round-trips"
            );
        }
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
        assert!("3".parse::<HumanDuration>().is_err());
        assert!("s".parse::<HumanDuration>().is_err());
        assert!("99999999999999999999d".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn secrets_are_masked_and_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let (a, generated) = config.resolve_jwt_secret().unwrap();
        assert!(generated && a.len() >= 32);
        let (b, generated) = config.resolve_jwt_secret().unwrap();
        assert!(!generated);
        assert_eq!(a, b);
        let shown = Config {
            jwt_secret: Some("s".repeat(40)),
            ..config
        }
        .to_masked_toml();
        assert!(shown.contains("********") && !shown.contains(&"s".repeat(40)));
    }
}
