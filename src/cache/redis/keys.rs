//! The Redis key layout. Every key a script touches carries the same hash tag (`{…}`), so that
//! on Redis Cluster one script runs on one slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{c<shard>}:seq:<conv>` | string | last conv_seq handed out |
//! | `P:{c<shard>}:active` | zset | conversations by last conv_seq allocation (ms), for the sweeper |
//! | `P:{c<shard>}:verified:<conv>` | string | conv_seq the sweeper verified up to |
//! | `P:{u:<user>}:seq` | string | last inbox_seq handed out |
//! | `P:{u:<user>}:presence` | hash | device → `<expiry ms>|<node>` |
//! | `P:{h:<conv>}:window` | zset | hot window: score conv_seq, member `seq ‖ message_id ‖ row` |
//! | `P:{h:<conv>}:head` | hash | hot head: `s` last seq, `m` its message_id, `t` last activity |
//! | `P:claim:<key>` | string | idempotency claim (single-key) |
//! | `P:epoch` | hash | `epoch` and the Redis `run` it was minted under |
//! | `P:ch:<channel>` | channel | pub/sub |
//!
//! A conversation's sequencer key shares its slot with one of `ACTIVE_SHARDS` active sets
//! (the allocation script records activity in the same atomic step); the sweeper reads all
//! shards. Hot windows are tagged by conversation, so each hot conversation is one slot.

/// Active-set shards: conversation sequencers spread over this many slots.
pub const ACTIVE_SHARDS: u32 = 64;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn conversation_seq(&self, conversation_id: &str) -> String {
        let shard = conversation_shard(conversation_id);
        format!("{}:{{c{shard}}}:seq:{conversation_id}", self.prefix)
    }

    /// Beside the conversation's sequencer (same slot): the allocate script checks it.
    pub fn fence(&self, conversation_id: &str) -> String {
        let shard = conversation_shard(conversation_id);
        format!("{}:{{c{shard}}}:fence:{conversation_id}", self.prefix)
    }

    pub fn active(&self, shard: u32) -> String {
        format!("{}:{{c{shard}}}:active", self.prefix)
    }

    pub fn active_of(&self, conversation_id: &str) -> String {
        self.active(conversation_shard(conversation_id))
    }

    pub fn verified(&self, conversation_id: &str) -> String {
        let shard = conversation_shard(conversation_id);
        format!("{}:{{c{shard}}}:verified:{conversation_id}", self.prefix)
    }

    /// Beside the conversation's sequencer (same slot: one script updates both).
    pub fn conversation_count(&self, conversation_id: &str) -> String {
        let shard = conversation_shard(conversation_id);
        format!("{}:{{c{shard}}}:count:{conversation_id}", self.prefix)
    }

    pub fn inbox_seq(&self, user_id: &str) -> String {
        format!("{}:{{u:{user_id}}}:seq", self.prefix)
    }

    pub fn presence(&self, user_id: &str) -> String {
        format!("{}:{{u:{user_id}}}:presence", self.prefix)
    }

    pub fn hot_window(&self, conversation_id: &str) -> String {
        format!("{}:{{h:{conversation_id}}}:window", self.prefix)
    }

    pub fn hot_head(&self, conversation_id: &str) -> String {
        format!("{}:{{h:{conversation_id}}}:head", self.prefix)
    }

    pub fn claim(&self, key: &str) -> String {
        format!("{}:claim:{key}", self.prefix)
    }

    pub fn rate(&self, key: &str) -> String {
        format!("{}:rate:{key}", self.prefix)
    }

    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    pub fn channel(&self, channel: &str) -> String {
        format!("{}:ch:{channel}", self.prefix)
    }
}

/// FNV-1a: stable across builds and platforms (unlike `DefaultHasher`), cheap.
fn conversation_shard(conversation_id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in conversation_id.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % ACTIVE_SHARDS
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, when not empty) or of the whole key, mod 16384.
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Reference values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        assert_eq!(hash_slot("foo{}{bar}"), hash_slot("foo{}{bar}"));
        assert_ne!(
            hash_slot("foo{}{bar}"),
            hash_slot("bar"),
            "empty tag: whole key"
        );
        assert_eq!(hash_slot("foo{{bar}}zap"), hash_slot("{bar"));
        assert_eq!(hash_slot("foo{bar}{zap}"), hash_slot("bar"));
    }

    #[test]
    fn the_keys_of_each_script_share_a_slot() {
        let keys = Keys::new("tl");
        for id in ["g:a", "dm:alice:bob", "g:{odd}", "g:ünïcode", ""] {
            let seq = hash_slot(&keys.conversation_seq(id));
            assert_eq!(seq, hash_slot(&keys.active_of(id)), "allocate: {id}");
            assert_eq!(seq, hash_slot(&keys.verified(id)), "mark_verified: {id}");
            assert_eq!(
                hash_slot(&keys.hot_window(id)),
                hash_slot(&keys.hot_head(id)),
                "hot_append: {id}"
            );
        }
        assert_eq!(
            hash_slot(&keys.inbox_seq("alice")),
            hash_slot(&keys.presence("alice"))
        );
    }

    #[test]
    fn load_spreads_over_slots() {
        let keys = Keys::new("tl");
        let conversations: std::collections::HashSet<u16> = (0..10_000)
            .map(|i| hash_slot(&keys.conversation_seq(&format!("g:{i}"))))
            .collect();
        assert_eq!(conversations.len(), ACTIVE_SHARDS as usize);
        let windows: std::collections::HashSet<u16> = (0..1000)
            .map(|i| hash_slot(&keys.hot_window(&format!("g:{i}"))))
            .collect();
        assert!(windows.len() > 900, "{} slots", windows.len());
    }
}
