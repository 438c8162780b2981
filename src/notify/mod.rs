//! Offline notifications (README "Offline notifications"): when a message reaches a member none
//! (or only some) of whose devices has an open stream, the offline devices' push targets go to
//! the app's webhook, which hands them on to APNs, FCM or Web Push (the app holds those
//! credentials, not us).
//!
//! - `rules.rs`: who is told of what: the listener of deliveries, presence, the coalescing
//!   windows (a Cache claim per recipient and conversation, or per hot conversation, so that
//!   nodes never notify twice), and the trailing notification that sums up a window.
//! - `options.rs`: the `[notify]` section.
//! - `payload.rs`: the JSON body and its HMAC-SHA256 signature.
//! - `webhook.rs`: the bounded queue and its sender: batches, retries with backoff and jitter,
//!   tokens the receiver refuses.

mod options;
mod payload;
mod rules;
mod webhook;

pub use options::{MIN_SECRET_LEN, NotifyOptions};
pub use payload::{
    Answer, Batch, DELIVERY_HEADER, Device, Notification, SIGNATURE_HEADER, sign, verify,
};
pub use rules::Notifier;
