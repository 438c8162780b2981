//! Push targets: where each device of a user is notified while it has no open stream (the app's
//! APNs/FCM/Web Push token, opaque to us). Registered by the device, removed by it or when the
//! notification receiver says the token is no longer valid.

use super::error::{TimelineResult, invalid};
use super::ids::{validate_token, validate_user_id};
use super::{Caller, Timeline};
use crate::store::PushTargetRow;

/// A token longer than this is refused (APNs tokens are 64 hex characters; FCM's ~160; a
/// Web Push subscription as JSON stays well within).
pub const MAX_PUSH_TOKEN_LEN: usize = 4096;
pub const MAX_APP_ID_LEN: usize = 256;
pub const MAX_LOCALE_LEN: usize = 35;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushPlatform {
    Apns,
    Fcm,
    WebPush,
    Other,
}

impl PushPlatform {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apns => "apns",
            Self::Fcm => "fcm",
            Self::WebPush => "webpush",
            Self::Other => "other",
        }
    }
}

/// One device's registration as the device sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// Empty: the calling device.
    pub device_id: String,
    pub platform: PushPlatform,
    pub token: String,
    pub app_id: String,
    pub locale: String,
}

/// Shows a token in logs without giving it away.
pub fn token_fingerprint(token: &str) -> String {
    let head: String = token.chars().take(6).collect();
    format!("{head}…({} chars)", token.chars().count())
}

impl Timeline {
    /// Registers (or replaces) a push target for one of the caller's devices.
    pub async fn register_push_target(
        &self,
        caller: &Caller,
        target: PushTarget,
    ) -> TimelineResult<PushTargetRow> {
        let device_id = if target.device_id.is_empty() {
            caller.device_id.clone()
        } else {
            target.device_id
        };
        validate_user_id("device_id", &device_id)?;
        if target.token.is_empty() {
            return Err(invalid("token is required"));
        }
        validate_token("token", &target.token, MAX_PUSH_TOKEN_LEN)?;
        validate_token("app_id", &target.app_id, MAX_APP_ID_LEN)?;
        validate_token("locale", &target.locale, MAX_LOCALE_LEN)?;
        let row = PushTargetRow {
            user_id: caller.user_id.clone(),
            device_id,
            platform: target.platform.as_str().to_owned(),
            token: target.token,
            app_id: target.app_id,
            locale: target.locale,
            registered_at_ms: self.clock.now_ms(),
        };
        self.store.put_push_target(&row).await?;
        tracing::debug!(
            user = %row.user_id,
            device = %row.device_id,
            token = %token_fingerprint(&row.token),
            "push target registered"
        );
        Ok(row)
    }

    /// Removes the push target of one of the caller's devices (empty: the calling device).
    pub async fn unregister_push_target(
        &self,
        caller: &Caller,
        device_id: &str,
    ) -> TimelineResult<()> {
        let device_id = if device_id.is_empty() {
            caller.device_id.as_str()
        } else {
            device_id
        };
        validate_user_id("device_id", device_id)?;
        self.store
            .delete_push_target(&caller.user_id, device_id, self.clock.now_ms())
            .await?;
        Ok(())
    }

    /// The user's registered targets.
    pub async fn push_targets(&self, user_id: &str) -> TimelineResult<Vec<PushTargetRow>> {
        Ok(self.store.list_push_targets(user_id).await?)
    }

    /// Removes a registration whose token the receiver refused, unless the device registered
    /// again since.
    pub async fn drop_refused_push_target(&self, target: &PushTargetRow) -> TimelineResult<()> {
        self.store
            .delete_push_target(&target.user_id, &target.device_id, target.registered_at_ms)
            .await?;
        tracing::info!(
            user = %target.user_id,
            device = %target.device_id,
            token = %token_fingerprint(&target.token),
            "push target removed: the receiver refused its token"
        );
        Ok(())
    }
}
