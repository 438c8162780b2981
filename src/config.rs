//! Layered configuration: defaults < `timeline.toml` < `TIMELINE_*` environment <
//! command-line flags. Top-level keys say what the node is (`listen`, `data_dir`, `store`,
//! `cache`, `node_id`, ...); each part has a section parsed into its own typed options:
//! `[limits]` ([`Limits`]), `[embedded]`, `[redis]` ([`RedisOptions`]), `[scylla]`
//! ([`ScyllaOptions`]), `[push]` ([`PushOptions`]), `[notify]` ([`NotifyOptions`]), `[protect]`
//! ([`ProtectOptions`]), `[tls]` ([`TlsOptions`]) and `[auth]` ([`AuthOptions`]). Unknown keys are rejected with an error naming them.
//!
//! Environment variables: `TIMELINE_<KEY>` for a top-level key and `TIMELINE_<SECTION>__<KEY>`
//! for a key of a section (`TIMELINE_SCYLLA__NODES`, `TIMELINE_LIMITS__GAP_GRACE`). The flat
//! names of earlier versions still work: `TIMELINE_REDIS_<KEY>`, `TIMELINE_SCYLLA_<KEY>`,
//! `TIMELINE_DURABILITY` and `TIMELINE_<LIMIT>` (e.g. `TIMELINE_GAP_GRACE`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::api::{AuthOptions, TlsOptions};
use crate::cache::redis::RedisOptions;
use crate::notify::NotifyOptions;
use crate::protect::ProtectOptions;
use crate::push::PushOptions;
use crate::store::embedded::{Durability, EmbeddedOptions};
use crate::store::scylla::ScyllaOptions;
use crate::timeline::Limits;
pub use crate::units::HumanDuration;

pub const DEFAULT_CONFIG_FILE: &str = "timeline.toml";
pub const ENV_PREFIX: &str = "TIMELINE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// fjall in `data_dir`: no external service.
    Embedded,
    /// A ScyllaDB cluster (`[scylla]`): shared by many nodes.
    Scylla,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// In-process: one node only.
    Local,
    /// Redis or Redis Cluster (`[redis]`): shared by many nodes.
    Redis,
}

/// The `[embedded]` section: how the embedded store writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedSection {
    /// `fsync` (every ack is on disk, group commit) or `buffered`.
    pub durability: Durability,
}

impl Default for EmbeddedSection {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address serving gRPC (h2c) and HTTP on one port.
    pub listen: SocketAddr,
    /// Where the embedded store and the generated secret live.
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub cache: CacheKind,
    /// 0..=1023, unique per node: part of every message_id.
    pub node_id: u16,
    /// HS256 secret for tokens; generated into the data dir when unset (embedded mode). Tokens
    /// signed by an auth server's private key: `[auth]`.
    pub jwt_secret: Option<String>,
    /// tracing filter, e.g. `info` or `timeline=debug`.
    pub log: String,
    /// Serve gRPC server reflection (grpcurl and other tools need no proto file).
    pub grpc_reflection: bool,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub embedded: EmbeddedSection,
    #[serde(default)]
    pub redis: RedisOptions,
    #[serde(default)]
    pub scylla: ScyllaOptions,
    #[serde(default)]
    pub push: PushOptions,
    #[serde(default)]
    pub notify: NotifyOptions,
    #[serde(default)]
    pub protect: ProtectOptions,
    #[serde(default)]
    pub tls: TlsOptions,
    #[serde(default)]
    pub auth: AuthOptions,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("timeline-data"),
            store: StoreKind::Embedded,
            cache: CacheKind::Local,
            node_id: 0,
            jwt_secret: None,
            log: "info,fjall=warn,lsm_tree=warn".into(),
            grpc_reflection: true,
            limits: Limits::default(),
            embedded: EmbeddedSection::default(),
            redis: RedisOptions::default(),
            scylla: ScyllaOptions::default(),
            push: PushOptions::default(),
            notify: NotifyOptions::default(),
            protect: ProtectOptions::default(),
            tls: TlsOptions::default(),
            auth: AuthOptions::default(),
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

/// The key an environment variable (prefix stripped, lower case) sets: `a__b` is `a.b`, and the
/// flat names of earlier versions map to their section.
fn env_key(name: &str, limit_keys: &[String]) -> String {
    if name.contains("__") {
        return name.replace("__", ".");
    }
    for section in ["redis", "scylla", "push"] {
        if let Some(key) = name.strip_prefix(section).and_then(|k| k.strip_prefix('_')) {
            return format!("{section}.{key}");
        }
    }
    if name == "durability" {
        return "embedded.durability".into();
    }
    if limit_keys.iter().any(|k| k == name) {
        return format!("limits.{name}");
    }
    name.to_owned()
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
        let limit_keys = Limits::keys();
        let config: Config =
            figment
                .merge(Env::prefixed(ENV_PREFIX).map(move |name| {
                    env_key(&name.as_str().to_ascii_lowercase(), &limit_keys).into()
                }))
                .merge(Serialized::defaults(overrides))
                .extract()
                .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// What the types cannot say, for the node and each section it uses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = ConfigError::Invalid;
        if self.node_id > crate::timeline::ids::MAX_NODE_ID {
            return Err(invalid(format!(
                "node_id must be at most {}, got {}",
                crate::timeline::ids::MAX_NODE_ID,
                self.node_id
            )));
        }
        self.limits.validate().map_err(invalid)?;
        self.redis.validate().map_err(invalid)?;
        self.push.validate().map_err(invalid)?;
        self.notify.validate().map_err(invalid)?;
        self.protect.validate().map_err(invalid)?;
        self.tls.validate().map_err(|e| invalid(e.to_string()))?;
        self.auth.validate().map_err(invalid)?;
        if self.store == StoreKind::Scylla {
            self.scylla.validate().map_err(invalid)?;
        }
        if matches!(&self.jwt_secret, Some(s) if s.len() < 32) {
            return Err(invalid("jwt_secret must be at least 32 characters".into()));
        }
        Ok(())
    }

    /// The pipeline's limits, with this node's id.
    pub fn limits(&self) -> Limits {
        Limits {
            node_id: self.node_id,
            ..self.limits.clone()
        }
    }

    /// How to open the embedded store: its TTLs are the retention settings.
    pub fn embedded_options(&self) -> EmbeddedOptions {
        EmbeddedOptions {
            inbox_ttl: Some(self.limits.inbox_retention),
            idempotency_ttl: Some(self.limits.idempotency_ttl),
            ..EmbeddedOptions::new(self.embedded.durability, self.limits.bucket_size)
        }
    }

    /// How to reach ScyllaDB (`store = "scylla"`); its TTLs are the retention settings.
    pub fn scylla_options(&self) -> ScyllaOptions {
        ScyllaOptions {
            bucket_size: self.limits.bucket_size,
            inbox_ttl: self.limits.inbox_retention,
            idempotency_ttl: self.limits.idempotency_ttl,
            ..self.scylla.clone()
        }
    }

    /// How to reach Redis (`cache = "redis"`).
    pub fn redis_options(&self) -> RedisOptions {
        self.redis.clone()
    }

    /// The configuration as TOML with the secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.jwt_secret.is_some() {
            shown.jwt_secret = Some("********".into());
        }
        if shown.scylla.password.is_some() {
            shown.scylla.password = Some("********".into());
        }
        shown.redis.url = mask_password(&shown.redis.url);
        for node in &mut shown.redis.cluster_nodes {
            *node = mask_password(node);
        }
        let mut text = toml::to_string(&shown)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}"));
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
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
                    // The path ends with the field itself.
                    let key = if e.path.is_empty() {
                        field.clone()
                    } else {
                        e.path.join(".")
                    };
                    format!("unknown key {key:?}{source}")
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
    use std::time::Duration;

    use super::*;
    use crate::api::resolve_jwt_secret;

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
            "listen = \"127.0.0.1:1\"\ndata_dir = \"from-file\"\ncache = \"local\"\n[limits]\ngap_grace = \"5s\"\n",
            &[
                ("TIMELINE_DATA_DIR", "from-env"),
                ("TIMELINE_CACHE", "local"),
                // Nested names, and the flat names of earlier versions.
                ("TIMELINE_SCYLLA__NODES", "a:1, b:2"),
                ("TIMELINE_SCYLLA_KEYSPACE", "legacy_ks"),
                ("TIMELINE_REDIS__KEY_PREFIX", "nested"),
                ("TIMELINE_REDIS_TIMEOUT", "2s"),
                ("TIMELINE_HOT_WINDOW", "7"),
                ("TIMELINE_DURABILITY", "buffered"),
            ],
            Overrides { listen: Some("127.0.0.1:2".parse().unwrap()), data_dir: None },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.data_dir, PathBuf::from("from-env"));
        assert_eq!(c.limits.gap_grace, Duration::from_secs(5));
        assert_eq!(c.limits.sync_max_limit, 500);
        assert_eq!(c.scylla.nodes, vec!["a:1", "b:2"]);
        assert_eq!(c.scylla.keyspace.as_str(), "legacy_ks");
        assert_eq!(c.redis.key_prefix, "nested");
        assert_eq!(c.redis.response_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.hot_window, 7);
        assert_eq!(c.embedded.durability, Durability::Buffered);
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
        let err = load(
            "[limits]\ngap_grace = \"3 parsecs\"\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.contains("parsecs"), "{err}");
        assert!(load("node_id = 5000\n", &[], Overrides::default()).is_err());
        let err = load("", &[("TIMELINE_STORE", "postgres")], Overrides::default()).unwrap_err();
        assert!(err.contains("postgres"), "{err}");
        let err = load(
            "[scylla]\nwrite_consistency = \"most\"\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.contains("most"), "{err}");
        let err = load("[limits]\nbogus = 1\n", &[], Overrides::default()).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn secrets_are_masked_and_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let resolve = || resolve_jwt_secret(config.jwt_secret.as_deref(), &config.data_dir);
        let (a, generated) = resolve().unwrap();
        assert!(generated && a.len() >= 32);
        let (b, generated) = resolve().unwrap();
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
