//! Store rows to API messages.

use crate::model::*;
use crate::proto;

pub fn message(m: MessageRow) -> proto::Message {
    proto::Message {
        message_id: m.message_id,
        conversation_id: m.conversation_id,
        conv_seq: m.conv_seq,
        sender_id: m.sender_id,
        sender_device_id: m.sender_device_id,
        client_msg_id: m.client_msg_id,
        content_type: m.content_type,
        body: m.body.to_vec(),
        created_at_ms: m.created_at_ms,
        kind: match m.kind {
            MessageKind::User => proto::MessageKind::User,
            MessageKind::Hole => proto::MessageKind::Hole,
            MessageKind::Recall => proto::MessageKind::Recall,
            MessageKind::Edit => proto::MessageKind::Edit,
        } as i32,
        target_message_id: m.target_message_id,
        edited_at_ms: m.edited_at_ms,
        recalled_at_ms: m.recalled_at_ms,
    }
}

pub fn conversation(c: ConversationRow) -> proto::Conversation {
    let (current_mode, mode_since_seq) = (c.mode(), c.mode_since_seq());
    proto::Conversation {
        conversation_id: c.conversation_id,
        kind: match c.kind {
            ConversationKind::Direct => proto::ConversationKind::Direct,
            ConversationKind::Group => proto::ConversationKind::Group,
        } as i32,
        title: c.title,
        created_at_ms: c.created_at_ms,
        created_by: c.created_by,
        member_count: c.member_count,
        mode: mode(current_mode) as i32,
        mode_since_seq,
        mode_forced: c.mode_forced,
        slowmode_seconds: c.slowmode_seconds,
    }
}

pub fn mode(m: DeliveryMode) -> proto::DeliveryMode {
    match m {
        DeliveryMode::Fanout => proto::DeliveryMode::Fanout,
        DeliveryMode::Hot => proto::DeliveryMode::Hot,
    }
}

pub fn membership(m: MemberRow, read_seq: u64) -> proto::Membership {
    proto::Membership {
        user_id: m.user_id,
        role: match m.role {
            Role::Member => proto::MemberRole::Member,
            Role::Admin => proto::MemberRole::Admin,
            Role::Owner => proto::MemberRole::Owner,
        } as i32,
        joined_seq: m.joined_seq,
        joined_at_ms: m.joined_at_ms,
        read_seq,
    }
}
