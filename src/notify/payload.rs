//! What the webhook receives: a JSON batch of notifications, signed like the common webhook
//! conventions: `timeline-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
//! The receiver recomputes it with the shared secret and rejects an old `t` (a replay).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "timeline-signature";
/// The batch's id, the same on every retry of it: a receiver can drop a repeat.
pub const DELIVERY_HEADER: &str = "timeline-delivery";

/// One device to notify: where the app's push provider reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub device_id: String,
    /// `apns`, `fcm`, `webpush` or `other`.
    pub platform: String,
    pub token: String,
    pub app_id: String,
    pub locale: String,
}

/// One recipient told of a conversation's newest message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub recipient: String,
    /// The recipient's devices without an open stream that have a push target.
    pub devices: Vec<Device>,
    pub conversation_id: String,
    /// `direct` or `group`.
    pub conversation_kind: String,
    pub sender_id: String,
    /// A decimal string: JSON numbers lose precision past 2^53.
    pub message_id: String,
    pub conv_seq: u64,
    pub created_at_ms: i64,
    pub content_type: String,
    /// The first `preview_chars` characters of a text body; absent when previews are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// Messages this notification stands for: 1, or more when a window coalesced a burst.
    pub new_messages: u64,
    /// The recipient's unread messages in the conversation.
    pub unread: u64,
}

/// The body of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub delivery_id: String,
    pub notifications: Vec<Notification>,
}

/// What a receiver may answer (any 2xx; the body is optional): tokens its push provider
/// refused, whose registrations are then removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default)]
    pub invalid_tokens: Vec<String>,
}

fn mac(secret: &[u8], timestamp_s: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value for `body` sent at `timestamp_s`.
pub fn sign(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp_s, body).finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp_s},v1={hex}")
}

/// Whether `header` signs `body` with `secret`, made within `tolerance_s` of `now_s` (what a
/// receiver checks; the comparison takes constant time).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_s: i64, tolerance_s: i64) -> bool {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signature = decode_hex(v),
            _ => {}
        }
    }
    let (Some(t), Some(signature)) = (timestamp, signature) else {
        return false;
    };
    (now_s - t).abs() <= tolerance_s && mac(secret, t, body).verify_slice(&signature).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_time() {
        let secret = b"0123456789abcdef";
        let body = br#"{"delivery_id":"1","notifications":[]}"#;
        let header = sign(secret, 1_800_000_000, body);
        assert!(header.starts_with("t=1800000000,v1="));
        assert!(verify(secret, &header, body, 1_800_000_100, 300));
        assert!(
            !verify(secret, &header, b"{}", 1_800_000_100, 300),
            "another body"
        );
        assert!(!verify(
            b"another secret!!",
            &header,
            body,
            1_800_000_100,
            300
        ));
        assert!(
            !verify(secret, &header, body, 1_800_000_400, 300),
            "a replay, too late"
        );
        assert!(!verify(secret, "t=x,v1=zz", body, 1_800_000_000, 300));
        assert!(!verify(secret, "", body, 1_800_000_000, 300));
    }
}
