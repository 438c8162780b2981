//! The `[notify]` section of the configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The shortest secret accepted: HMAC with a guessable key proves nothing.
pub const MIN_SECRET_LEN: usize = 16;

/// The `[notify]` section of the configuration. Off unless `webhook_url` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyOptions {
    /// Where notifications are POSTed (`http://host:port/path`); unset: none are sent.
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key of the signature header (at least 16 bytes); required with a URL.
    pub webhook_secret: Option<String>,
    /// Characters of a text body shown in the notification; 0: no preview.
    pub preview_chars: usize,
    /// At most one notification per small conversation and recipient per interval (the first
    /// at once, then one with the newest message and how many came).
    #[serde(with = "crate::units::human")]
    pub interval: Duration,
    /// The same for hot conversations, per conversation and recipient.
    #[serde(with = "crate::units::human")]
    pub hot_interval: Duration,
    /// Notifications waiting for the webhook at most; beyond, the oldest are dropped (counted).
    pub queue: usize,
    /// Notifications per request at most.
    pub batch: usize,
    /// One request's time limit.
    #[serde(with = "crate::units::human")]
    pub timeout: Duration,
    /// Attempts per batch (the first included) while the receiver fails or times out.
    pub max_attempts: u32,
    /// A message older than this when delivered (a late re-drive, a backfill) notifies nobody.
    #[serde(with = "crate::units::human")]
    pub max_age: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: None,
            preview_chars: 0,
            interval: Duration::from_secs(5),
            hot_interval: Duration::from_secs(60),
            queue: 10_000,
            batch: 100,
            timeout: Duration::from_secs(5),
            max_attempts: 8,
            max_age: Duration::from_secs(600),
        }
    }
}

impl NotifyOptions {
    pub fn validate(&self) -> Result<(), String> {
        let Some(url) = &self.webhook_url else {
            return Ok(());
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("notify.webhook_url {url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") if uri.host().is_some() => {}
            Some("https") => {
                return Err(format!(
                    "notify.webhook_url {url:?}: https is not supported yet; use http:// to a \
                     receiver on a trusted network (the body is signed) or a local TLS relay"
                ));
            }
            _ => {
                return Err(format!(
                    "notify.webhook_url {url:?} must be http://host[:port]/path"
                ));
            }
        }
        match &self.webhook_secret {
            Some(s) if s.len() >= MIN_SECRET_LEN => {}
            _ => {
                return Err(format!(
                    "notify.webhook_secret of at least {MIN_SECRET_LEN} bytes is required with notify.webhook_url"
                ));
            }
        }
        if self.batch == 0 || self.queue < self.batch {
            return Err(
                "notify.batch must be positive and notify.queue at least notify.batch".into(),
            );
        }
        if self.interval.is_zero() || self.hot_interval.is_zero() || self.timeout.is_zero() {
            return Err(
                "notify.interval, notify.hot_interval and notify.timeout must be positive".into(),
            );
        }
        if self.max_attempts == 0 {
            return Err("notify.max_attempts must be at least 1".into());
        }
        Ok(())
    }
}
