//! The Sync cursor: a versioned protobuf (`SyncCursor` in the proto), base64url without padding.
//! Clients treat it as opaque; the server rejects malformed, foreign and future cursors.
//!
//! It stays small for users in many hot conversations: each position is a 32-bit hash of the
//! conversation id (delta-encoded in sorted order) and a varint, about 6 bytes; only ids whose
//! hash collides with another of the user's conversations are spelled out.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;

use super::error::{TimelineResult, invalid};
use crate::proto::{HotPosition, SyncCursor};
use crate::store::InboxPosition;

pub const CURSOR_VERSION: u32 = 1;
/// Generous bound on an encoded cursor; rejects garbage before decoding it.
const MAX_ENCODED_LEN: usize = 256 * 1024;
/// Recently delivered message_ids carried for dedupe across pages.
pub const RECENT_IDS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    /// No cursor at all (the empty string): start at the oldest retained row. An issued cursor
    /// is never fresh, even at position 0, so that rows expiring while the device was away are
    /// reported rather than skipped.
    pub fresh: bool,
    /// The last inbox row delivered.
    pub inbox: InboxPosition,
    /// When that row's inbox_seq was allocated (ms): rows after it are younger.
    pub position_time_ms: i64,
    pub epoch: u64,
    /// Last conv_seq delivered per hot conversation, by hash (resolve with [`Cursor::hot`]).
    hot_by_hash: BTreeMap<u32, u64>,
    hot_by_id: BTreeMap<String, u64>,
    /// Recently delivered message_ids, oldest first.
    pub recent: Vec<u64>,
}

/// 32-bit FNV-1a of a conversation id.
fn hash32(id: &str) -> u32 {
    id.bytes().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

impl Cursor {
    pub fn start() -> Self {
        Self {
            fresh: true,
            ..Self::default()
        }
    }

    /// The positions of the given hot conversations (the user's), as far as the cursor has them.
    pub fn hot(&self, conversation_ids: &[String]) -> HashMap<String, u64> {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for id in conversation_ids {
            *counts.entry(hash32(id)).or_default() += 1;
        }
        conversation_ids
            .iter()
            .filter_map(|id| {
                let position = match self.hot_by_id.get(id) {
                    Some(p) => Some(*p),
                    None if counts[&hash32(id)] == 1 => self.hot_by_hash.get(&hash32(id)).copied(),
                    None => None,
                };
                position.map(|p| (id.clone(), p))
            })
            .collect()
    }

    /// Sets the hot positions; `all_hot` are every hot conversation of the user, to tell which
    /// hashes collide.
    pub fn set_hot(&mut self, positions: &HashMap<String, u64>, all_hot: &[String]) {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for id in all_hot.iter().chain(positions.keys()) {
            *counts.entry(hash32(id)).or_default() += 1;
        }
        self.hot_by_hash.clear();
        self.hot_by_id.clear();
        for (id, position) in positions {
            let h = hash32(id);
            // A hash shared with another conversation (counted twice when it is in both lists)
            // would be ambiguous: spell the id out.
            let shared = counts[&h] > 1 + usize::from(all_hot.contains(id));
            if shared {
                self.hot_by_id.insert(id.clone(), *position);
            } else {
                self.hot_by_hash.insert(h, *position);
            }
        }
    }

    /// Remembers delivered message_ids, keeping the newest [`RECENT_IDS`].
    pub fn remember(&mut self, ids: impl IntoIterator<Item = u64>) {
        self.recent.extend(ids);
        if self.recent.len() > RECENT_IDS {
            self.recent.drain(..self.recent.len() - RECENT_IDS);
        }
    }

    pub fn encode(&self, user_id: &str) -> String {
        let mut hot = Vec::with_capacity(self.hot_by_hash.len() * 6);
        let mut previous = 0u64;
        for (h, position) in &self.hot_by_hash {
            put_varint(&mut hot, u64::from(*h) - previous);
            put_varint(&mut hot, *position);
            previous = u64::from(*h);
        }
        // In delivery order (the oldest is forgotten first), as zigzag deltas: ids delivered
        // together are close, so each takes a few bytes.
        let mut recent = Vec::with_capacity(self.recent.len() * 5);
        let mut previous = 0u64;
        for id in &self.recent {
            put_varint(&mut recent, zigzag(id.wrapping_sub(previous) as i64));
            previous = *id;
        }
        let msg = SyncCursor {
            version: CURSOR_VERSION,
            user_tag: user_tag(user_id),
            inbox_seq: self.inbox.inbox_seq,
            inbox_message_id: self.inbox.message_id,
            epoch: self.epoch,
            position_time_ms: self.position_time_ms,
            hot_positions: hot,
            hot_collisions: self
                .hot_by_id
                .iter()
                .map(|(id, p)| HotPosition {
                    conversation_id: id.clone(),
                    conv_seq: *p,
                })
                .collect(),
            recent,
        };
        URL_SAFE_NO_PAD.encode(msg.encode_to_vec())
    }

    /// An empty string is the start cursor.
    pub fn decode(encoded: &str, user_id: &str) -> TimelineResult<Self> {
        if encoded.is_empty() {
            return Ok(Self::start());
        }
        if encoded.len() > MAX_ENCODED_LEN {
            return Err(invalid("cursor is too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| invalid("cursor is malformed: not base64url"))?;
        let msg = SyncCursor::decode(bytes.as_slice())
            .map_err(|_| invalid("cursor is malformed: not a sync cursor"))?;
        if msg.version != CURSOR_VERSION {
            return Err(invalid(format!(
                "cursor version {} is not supported",
                msg.version
            )));
        }
        if msg.user_tag != user_tag(user_id) {
            return Err(invalid("cursor belongs to another user"));
        }
        let bad = || invalid("cursor is malformed: bad packed positions");
        let mut hot_by_hash = BTreeMap::new();
        let mut input = msg.hot_positions.as_slice();
        let mut h = 0u64;
        while !input.is_empty() {
            h = h
                .checked_add(get_varint(&mut input).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            let position = get_varint(&mut input).ok_or_else(bad)?;
            hot_by_hash.insert(u32::try_from(h).map_err(|_| bad())?, position);
        }
        let mut recent = Vec::new();
        let mut input = msg.recent.as_slice();
        let mut id = 0u64;
        while !input.is_empty() {
            id = id.wrapping_add(unzigzag(get_varint(&mut input).ok_or_else(bad)?) as u64);
            recent.push(id);
        }
        if recent.len() > RECENT_IDS {
            return Err(bad());
        }
        Ok(Self {
            fresh: false,
            inbox: InboxPosition {
                inbox_seq: msg.inbox_seq,
                message_id: msg.inbox_message_id,
            },
            position_time_ms: msg.position_time_ms,
            epoch: msg.epoch,
            hot_by_hash,
            hot_by_id: msg
                .hot_collisions
                .into_iter()
                .map(|p| (p.conversation_id, p.conv_seq))
                .collect(),
            recent,
        })
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// FNV-1a of the user id: catches a cursor passed to the wrong account (a client bug). The
/// inbox read is scoped to the authenticated user anyway, so this is no security boundary.
fn user_tag(user_id: &str) -> u64 {
    user_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            fresh: false,
            inbox: InboxPosition {
                inbox_seq: 42,
                message_id: 7,
            },
            position_time_ms: 1_700_000_000_000,
            epoch: 9,
            ..Cursor::default()
        }
    }

    #[test]
    fn round_trips_for_its_user_only() {
        let mut c = cursor();
        let ids: Vec<String> = (0..50).map(|i| format!("g:room{i}")).collect();
        let positions: HashMap<String, u64> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u64 * 1000))
            .collect();
        c.set_hot(&positions, &ids);
        c.remember([383818763335630848, 383818763457265664, 383818763335630849]);
        let s = c.encode("alice");
        let back = Cursor::decode(&s, "alice").unwrap();
        assert_eq!(back, c);
        assert_eq!(back.hot(&ids), positions);
        assert!(Cursor::decode(&s, "bob").is_err());
        assert!(Cursor::decode("", "alice").unwrap().fresh);
        let issued_at_zero = Cursor::default().encode("alice");
        assert!(!Cursor::decode(&issued_at_zero, "alice").unwrap().fresh);
    }

    #[test]
    fn a_thousand_hot_conversations_fit_well_under_16_kib() {
        let ids: Vec<String> = (0..1000)
            .map(|i: u64| format!("g:{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        let positions: HashMap<String, u64> = ids.iter().map(|id| (id.clone(), 123_456)).collect();
        let mut c = cursor();
        c.set_hot(&positions, &ids);
        c.remember((0..RECENT_IDS as u64).map(|i| 383818763335630848 + i * 4_000_000));
        let s = c.encode("alice");
        assert!(s.len() < 10 * 1024, "{} bytes", s.len());
        assert_eq!(Cursor::decode(&s, "alice").unwrap().hot(&ids), positions);
    }

    #[test]
    fn colliding_hashes_are_spelled_out() {
        // Find two ids with the same 32-bit hash by brute force over a small space.
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (a, b) = (0u64..)
            .map(|i| format!("g:{i}"))
            .find_map(|id| {
                seen.insert(hash32(&id), id.clone())
                    .map(|other| (other, id))
            })
            .unwrap();
        let ids = vec![a.clone(), b.clone()];
        let positions = HashMap::from([(a.clone(), 1), (b.clone(), 2)]);
        let mut c = cursor();
        c.set_hot(&positions, &ids);
        let back = Cursor::decode(&c.encode("u"), "u").unwrap();
        assert_eq!(back.hot(&ids), positions);
    }

    #[test]
    fn garbage_is_invalid_argument_not_a_panic() {
        for bad in ["!!!", "AAAA", "____", "x", &"A".repeat(300_000)] {
            assert!(matches!(
                Cursor::decode(bad, "alice"),
                Err(crate::timeline::TimelineError::InvalidArgument(_))
            ));
        }
        let future = SyncCursor {
            version: 99,
            ..Default::default()
        };
        let s = URL_SAFE_NO_PAD.encode(future.encode_to_vec());
        assert!(Cursor::decode(&s, "alice").is_err());
        let truncated = SyncCursor {
            version: CURSOR_VERSION,
            user_tag: user_tag("alice"),
            hot_positions: vec![0x80, 0x80],
            ..Default::default()
        };
        let s = URL_SAFE_NO_PAD.encode(truncated.encode_to_vec());
        assert!(Cursor::decode(&s, "alice").is_err());
    }
}
