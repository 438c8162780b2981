//! The `[scylla]` section of the configuration: where the cluster is and how to talk to it,
//! parsed and validated once into typed values.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use ::scylla::statement::Consistency;
use serde::{Deserialize, Serialize};

/// How to reach ScyllaDB (`store = "scylla"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaOptions {
    /// Contact points, `host:port` (9042; the shard-aware port 19042 is found by the driver):
    /// a TOML array, or one comma-separated string.
    #[serde(deserialize_with = "crate::units::node_list")]
    pub nodes: Vec<String>,
    pub keyspace: Keyspace,
    /// Datacenter to prefer (and stay in, and for `migrate` to replicate in); empty: none.
    pub local_dc: String,
    /// Of every write: `local_quorum` (default), `quorum`, `each_quorum`, `all`, `one`, `two`,
    /// `three`, `local_one`.
    #[serde(with = "consistency_name")]
    pub write_consistency: Consistency,
    /// Of every read: the same names but `each_quorum`, which ScyllaDB refuses for reads.
    /// Reads at `local_quorum` see every write acknowledged at `local_quorum` in the same
    /// datacenter (R + W > RF).
    #[serde(with = "consistency_name")]
    pub read_consistency: Consistency,
    #[serde(with = "crate::units::human")]
    pub request_timeout: Duration,
    #[serde(with = "crate::units::human")]
    pub connect_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `timeline migrate`: replicas per datacenter (in `local_dc` when set, else in each).
    pub replication_factor: u32,
    /// From `[limits]`: sequence values per partition.
    #[serde(skip)]
    pub bucket_size: u64,
    /// From `[limits]`: the inbox rows' TTL.
    #[serde(skip)]
    pub inbox_ttl: Duration,
    /// From `[limits]`: the idempotency records' TTL.
    #[serde(skip)]
    pub idempotency_ttl: Duration,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: Keyspace("timeline".into()),
            local_dc: String::new(),
            write_consistency: Consistency::LocalQuorum,
            read_consistency: Consistency::LocalQuorum,
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            username: None,
            password: None,
            replication_factor: 3,
            bucket_size: 4096,
            inbox_ttl: Duration::from_secs(14 * 86_400),
            idempotency_ttl: Duration::from_secs(86_400),
        }
    }
}

impl ScyllaOptions {
    /// What the types cannot say: at least one node, positive numbers, both credentials or
    /// neither.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("scylla.nodes must name at least one host:port".into());
        }
        if self.replication_factor == 0 || self.request_timeout.is_zero() {
            return Err(
                "scylla.replication_factor and scylla.request_timeout must be positive".into(),
            );
        }
        if self.read_consistency == Consistency::EachQuorum {
            return Err(
                "scylla.read_consistency each_quorum: ScyllaDB refuses it for reads; use \
                 local_quorum (or quorum)"
                    .into(),
            );
        }
        if self.username.is_some() != self.password.is_some() {
            return Err("set both scylla.username and scylla.password, or neither".into());
        }
        Ok(())
    }
}

/// A keyspace name CQL takes unquoted: lower-case letters, digits and `_`, at most 48, not
/// starting with a digit. Only valid names can be constructed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Keyspace(String);

impl Keyspace {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Keyspace {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        if valid_keyspace(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "keyspace {name:?} must be lower-case letters, digits and _ (at most 48, not \
                 starting with a digit)"
            ))
        }
    }
}

impl TryFrom<String> for Keyspace {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl From<Keyspace> for String {
    fn from(k: Keyspace) -> String {
        k.0
    }
}

impl fmt::Display for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `name` is a keyspace name CQL takes unquoted.
pub fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

const CONSISTENCIES: &[(&str, Consistency)] = &[
    ("one", Consistency::One),
    ("two", Consistency::Two),
    ("three", Consistency::Three),
    ("quorum", Consistency::Quorum),
    ("all", Consistency::All),
    ("local_quorum", Consistency::LocalQuorum),
    ("each_quorum", Consistency::EachQuorum),
    ("local_one", Consistency::LocalOne),
];

/// Parses a consistency level by name (`local_quorum`, `quorum`, `one`, ...), any case.
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    let lower = s.to_ascii_lowercase();
    CONSISTENCIES
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, c)| *c)
        .ok_or_else(|| {
            format!(
                "scylla consistency {lower:?}: use local_quorum, quorum, each_quorum, all, one, \
                 two, three or local_one"
            )
        })
}

/// `#[serde(with)]` for a consistency level written by name.
mod consistency_name {
    use super::*;

    pub fn serialize<S: serde::Serializer>(c: &Consistency, s: S) -> Result<S::Ok, S::Error> {
        let name = CONSISTENCIES
            .iter()
            .find(|(_, known)| known == c)
            .map_or("local_quorum", |(name, _)| name);
        s.serialize_str(name)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Consistency, D::Error> {
        parse_consistency(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
