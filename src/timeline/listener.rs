//! What the pipeline tells a listener after each delivery step, so that live streams (see
//! `crate::push`) learn that something is new. Calls are hints made after the durable write:
//! they must return at once (queue, never block), and losing one loses no data, since a stream
//! re-syncs from its cursor.

use crate::model::MessageRow;

pub trait DeliveryListener: Send + Sync + 'static {
    /// `message` was written to the inboxes of `users` (a fan-out, a re-drive, a backfill).
    fn fanned_out(&self, message: &MessageRow, users: &[&str]);
    /// `message` was appended to its hot conversation's window.
    fn appended_hot(&self, message: &MessageRow);
    /// `users` joined or left `conversation_id`, or it turned hot for them: the hot
    /// conversations their devices read may have changed.
    fn memberships_changed(&self, conversation_id: &str, users: &[String]);
}
