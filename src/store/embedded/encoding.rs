//! Row values (postcard, versioned) and keys (`partition \0 clustering`, integers
//! big-endian) so that every CQL read is a prefix or range scan in clustering order.

use fjall::Keyspace;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;

pub(super) fn io(e: std::io::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

pub(super) fn fj(e: fjall::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

pub(super) fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    let mut out = vec![VALUE_FORMAT];
    out.extend(postcard::to_stdvec(value).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    Ok(out)
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    match bytes.split_first() {
        Some((&VALUE_FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        // Written before fields were appended to messages and user_conversations rows.
        Some((&FIRST_VALUE_FORMAT, rest)) => crate::model::decode_with_appended_fields(rest)
            .map_err(|e| StoreError::Corrupt(e.to_string())),
        _ => Err(StoreError::Corrupt("unknown value format".into())),
    }
}

/// `partition \0 clustering...`: ids never contain NUL, so a partition's keys form one prefix.
pub(super) fn key(partition: &[&str], clustering: &[u64]) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    for p in partition {
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    for c in clustering {
        k.extend_from_slice(&c.to_be_bytes());
    }
    k
}

pub(super) fn key_with_suffix(partition: &str, suffix: &str) -> Vec<u8> {
    let mut k = key(&[partition], &[]);
    k.extend_from_slice(suffix.as_bytes());
    k
}

pub(super) fn tail_u64(k: &[u8], from_end: usize) -> u64 {
    let end = k.len() - 8 * (from_end - 1);
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[end - 8..end]);
    u64::from_be_bytes(b)
}

pub(super) fn scan_values<T: DeserializeOwned>(
    iter: impl Iterator<Item = fjall::Guard>,
    limit: usize,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    for guard in iter.take(limit) {
        let (_, v) = guard.into_inner().map_err(fj)?;
        out.push(decode(&v)?);
    }
    Ok(out)
}

pub(super) fn get<T: DeserializeOwned>(ks: &Keyspace, k: &[u8]) -> StoreResult<Option<T>> {
    ks.get(k).map_err(fj)?.map(|v| decode(&v)).transpose()
}

pub(super) fn message_key(m: &MessageRow, bucket_size: u64) -> Vec<u8> {
    key(
        &[&m.conversation_id],
        &[m.conv_seq / bucket_size, m.conv_seq, m.message_id],
    )
}

/// The embedded layout keeps the bucket in every bucketed key; it is read back from the meta
/// keyspace so that writes need not carry it.
pub(super) fn bucket_size_of(tables: &Tables) -> StoreResult<u64> {
    get(&tables.meta, b"bucket_size")?
        .ok_or_else(|| StoreError::Corrupt("bucket_size missing from meta".into()))
}

pub(super) fn inbox_key(user_id: &str, bucket: u64, inbox_seq: u64, message_id: u64) -> Vec<u8> {
    key(&[user_id], &[bucket, inbox_seq, message_id])
}

pub(super) fn user_conversation_key(user_id: &str, conversation_id: &str) -> Vec<u8> {
    key_with_suffix(user_id, conversation_id)
}

pub(super) fn floor_key(user_id: &str) -> Vec<u8> {
    key_with_suffix("inbox_floor", user_id)
}

/// The partition `(bucket, shard)` of the outbox.
pub(super) fn outbox_partition(bucket: u64, shard: u32) -> Vec<u8> {
    let mut k = bucket.to_be_bytes().to_vec();
    k.extend_from_slice(&shard.to_be_bytes());
    k
}

pub(super) fn outbox_key(key: OutboxKey) -> Vec<u8> {
    let mut k = outbox_partition(key.bucket, key.shard);
    k.extend_from_slice(&key.message_id.to_be_bytes());
    k
}

/// Keys of a partition strictly after the key `after` (or the whole partition).
pub(super) fn after_bounds(
    prefix: &[u8],
    after: Option<Vec<u8>>,
) -> (std::ops::Bound<Vec<u8>>, Vec<u8>) {
    use std::ops::Bound;
    let start = match after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Included(prefix.to_vec()),
    };
    (start, prefix_end(prefix))
}

/// The smallest key greater than every key starting with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}
