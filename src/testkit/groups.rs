//! A caller and a new group to send into, for tests of the pipeline (beside it and in `tests/`).

use crate::model::{ConversationKind, ConversationRow};
use crate::timeline::{Caller, CreateConversation, Timeline};

/// `user` on device "d".
pub fn caller(user: &str) -> Caller {
    Caller {
        user_id: user.into(),
        device_id: "d".into(),
        admin: false,
    }
}

/// A new group of `owner` and `members`.
pub async fn group(timeline: &Timeline, owner: &str, members: &[&str]) -> ConversationRow {
    let (group, created) = timeline
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
    assert!(created, "a new group");
    group
}
