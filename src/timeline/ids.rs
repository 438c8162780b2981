//! Identifiers: validation of user and conversation ids, and message_id snowflakes.

use std::sync::Mutex;

use super::error::{TimelineResult, invalid};

/// 2024-01-01T00:00:00Z: message_id counts milliseconds from here.
pub const SNOWFLAKE_EPOCH_MS: i64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const COUNTER_BITS: u32 = 12;
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;
pub const MAX_ID_LEN: usize = 64;
pub const MAX_CLIENT_MSG_ID_LEN: usize = 128;
pub const MAX_CONTENT_TYPE_LEN: usize = 128;

pub const DIRECT_PREFIX: &str = "d:";
pub const GROUP_PREFIX: &str = "g:";

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')
}

/// A user or device id: 1 to 64 bytes of `[A-Za-z0-9_.:@-]`.
pub fn validate_user_id(what: &str, id: &str) -> TimelineResult<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(is_id_char) {
        return Err(invalid(format!(
            "{what} {id:?} is not valid: 1 to {MAX_ID_LEN} characters of [A-Za-z0-9_.:@-]"
        )));
    }
    Ok(())
}

/// `d:<a>:<b>` with a < b, the two users' ids. User ids may contain ':', so the split is the one
/// that yields two valid ids in order; an id that splits more than one way is rejected.
pub fn parse_direct_id(id: &str) -> TimelineResult<(String, String)> {
    let rest = id
        .strip_prefix(DIRECT_PREFIX)
        .ok_or_else(|| invalid(format!("{id:?} is not a direct conversation id")))?;
    let splits: Vec<(&str, &str)> = rest
        .match_indices(':')
        .map(|(i, _)| (&rest[..i], &rest[i + 1..]))
        .filter(|(a, b)| {
            validate_user_id("user", a).is_ok() && validate_user_id("user", b).is_ok() && a < b
        })
        .collect();
    match splits.as_slice() {
        [(a, b)] => Ok(((*a).to_owned(), (*b).to_owned())),
        _ => Err(invalid(format!(
            "{id:?} is not a direct conversation id: expected d:<smaller user id>:<larger user id>"
        ))),
    }
}

pub fn direct_id(a: &str, b: &str) -> TimelineResult<String> {
    if a == b {
        return Err(invalid("a direct conversation needs two different users"));
    }
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let id = format!("{DIRECT_PREFIX}{lo}:{hi}");
    // Reject pairs whose id would be ambiguous to parse back.
    parse_direct_id(&id)?;
    Ok(id)
}

/// `g:` followed by 1 to 64 characters of `[A-Za-z0-9_.:@-]`.
pub fn validate_group_id(id: &str) -> TimelineResult<()> {
    match id.strip_prefix(GROUP_PREFIX) {
        Some(rest)
            if !rest.is_empty() && rest.len() <= MAX_ID_LEN && rest.chars().all(is_id_char) =>
        {
            Ok(())
        }
        _ => Err(invalid(format!(
            "{id:?} is not a group id: g: followed by 1 to {MAX_ID_LEN} characters of [A-Za-z0-9_.:@-]"
        ))),
    }
}

pub fn validate_conversation_id(id: &str) -> TimelineResult<()> {
    if id.starts_with(DIRECT_PREFIX) {
        parse_direct_id(id).map(drop)
    } else if id.starts_with(GROUP_PREFIX) {
        validate_group_id(id)
    } else {
        Err(invalid(format!(
            "conversation_id {id:?} must start with d: (direct) or g: (group)"
        )))
    }
}

/// Printable ASCII without spaces: safe in keys and logs.
pub fn validate_token(what: &str, value: &str, max: usize) -> TimelineResult<()> {
    if value.len() > max || !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(invalid(format!(
            "{what} must be at most {max} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// message_id: milliseconds since 2024-01-01 (41 bits), node id (10 bits), counter (12 bits).
/// Strictly increasing per node even if the wall clock steps back: the generator then keeps
/// counting from the last millisecond it used.
pub struct Snowflake {
    node_id: u64,
    last: Mutex<(i64, u64)>,
}

impl Snowflake {
    pub fn new(node_id: u16) -> Self {
        Self {
            node_id: u64::from(node_id.min(MAX_NODE_ID)),
            last: Mutex::new((0, 0)),
        }
    }

    pub fn next(&self, now_ms: i64) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = (now_ms - SNOWFLAKE_EPOCH_MS).max(0);
        let (ms, counter) = if now > last.0 {
            (now, 0)
        } else if last.1 + 1 < (1 << COUNTER_BITS) {
            (last.0, last.1 + 1)
        } else {
            // 4096 ids in one millisecond: borrow the next millisecond.
            (last.0 + 1, 0)
        };
        *last = (ms, counter);
        ((ms as u64) << (NODE_BITS + COUNTER_BITS)) | (self.node_id << COUNTER_BITS) | counter
    }
}

/// The smallest message_id of a millisecond: orders events without a message among messages.
pub fn snowflake_floor(ms: i64) -> u64 {
    ((ms - SNOWFLAKE_EPOCH_MS).max(0) as u64) << (NODE_BITS + COUNTER_BITS)
}

pub fn snowflake_time_ms(id: u64) -> i64 {
    (id >> (NODE_BITS + COUNTER_BITS)) as i64 + SNOWFLAKE_EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_the_charset() {
        assert!(validate_user_id("user", "alice.b-1@x:y_z").is_ok());
        assert!(validate_user_id("user", "").is_err());
        assert!(validate_user_id("user", "a b").is_err());
        assert!(validate_user_id("user", &"a".repeat(65)).is_err());
        assert!(validate_user_id("user", "é").is_err());
    }

    #[test]
    fn direct_ids_are_derived_in_order_and_parse_back() {
        assert_eq!(direct_id("bob", "alice").unwrap(), "d:alice:bob");
        assert_eq!(
            parse_direct_id("d:alice:bob").unwrap(),
            ("alice".into(), "bob".into())
        );
        assert!(parse_direct_id("d:bob:alice").is_err());
        assert!(direct_id("a", "a").is_err());
        assert!(validate_conversation_id("x:1").is_err());
        assert!(validate_conversation_id("g:").is_err());
        assert!(validate_conversation_id("g:team-1").is_ok());
    }

    #[test]
    fn snowflakes_increase_and_encode_time() {
        let ids_gen = Snowflake::new(3);
        let t = SNOWFLAKE_EPOCH_MS + 1000;
        let a = ids_gen.next(t);
        let b = ids_gen.next(t);
        let c = ids_gen.next(t - 500); // clock stepped back
        assert!(a < b && b < c);
        assert_eq!(snowflake_time_ms(a), t);
        assert_eq!((a >> COUNTER_BITS) & u64::from(MAX_NODE_ID), 3);
        assert!(snowflake_floor(t) <= a && snowflake_floor(t + 1) > c);
    }

    #[test]
    fn counter_overflow_borrows_the_next_millisecond() {
        let ids_gen = Snowflake::new(0);
        let t = SNOWFLAKE_EPOCH_MS + 5;
        let ids: Vec<u64> = (0..5000).map(|_| ids_gen.next(t)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
