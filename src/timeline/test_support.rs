//! What the unit tests beside the pipeline share: a caller and a group to send into.

use super::{Caller, CreateConversation, Timeline};
use crate::model::{ConversationKind, ConversationRow};

/// `user` on device "d".
pub(crate) fn caller(user: &str) -> Caller {
    Caller {
        user_id: user.into(),
        device_id: "d".into(),
        admin: false,
    }
}

/// A new group of `owner` and `members`.
pub(crate) async fn group(timeline: &Timeline, owner: &str, members: &[&str]) -> ConversationRow {
    let (group, _) = timeline
        .create_conversation(
            &caller(owner),
            CreateConversation {
                kind: ConversationKind::Group,
                conversation_id: String::new(),
                title: "g".into(),
                member_ids: members.iter().map(|m| m.to_string()).collect(),
            },
        )
        .await
        .expect("group created");
    group
}
