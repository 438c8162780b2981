//! Recall, edit and the unread rule end to end: a real server on an ephemeral port, driven
//! through the generated client (and the POST surface). Run on the local cache and, by the
//! test command, on a private Redis.

mod support;

use ::timeline::proto::*;
use support::{
    Client, TestServer, create_group, http_call, http_client, operator, send_text, set_mode,
    sync_all,
};
use tonic::Code;

async fn recall(client: &mut Client, m: &Message) -> Result<RecallMessageResponse, tonic::Status> {
    client
        .recall_message(RecallMessageRequest {
            conversation_id: m.conversation_id.clone(),
            conv_seq: m.conv_seq,
            message_id: m.message_id,
        })
        .await
        .map(|r| r.into_inner())
}

async fn edit(
    client: &mut Client,
    m: &Message,
    client_msg_id: &str,
    body: &str,
) -> Result<EditMessageResponse, tonic::Status> {
    client
        .edit_message(EditMessageRequest {
            conversation_id: m.conversation_id.clone(),
            conv_seq: m.conv_seq,
            message_id: m.message_id,
            client_msg_id: client_msg_id.into(),
            content_type: String::new(),
            body: body.as_bytes().to_vec(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn unread(client: &mut Client, conversation_id: &str) -> u64 {
    client
        .get_conversation(GetConversationRequest {
            conversation_id: conversation_id.into(),
        })
        .await
        .expect("get conversation")
        .into_inner()
        .unread_count
}

async fn history(client: &mut Client, conversation_id: &str) -> Vec<Message> {
    client
        .get_history(GetHistoryRequest {
            conversation_id: conversation_id.into(),
            before_seq: 0,
            limit: 100,
        })
        .await
        .expect("history")
        .into_inner()
        .messages
}

fn kind(m: &Message) -> MessageKind {
    MessageKind::try_from(m.kind).expect("a known kind")
}

/// Recall and edit reach a device that synced the originals, history and the list show the
/// current state, and a fresh device reads the current state too.
async fn changes_reach_every_device(hot: bool) {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let mut carol = server.client("carol", "phone").await;
    let id = if hot { "g:life-hot" } else { "g:life" };
    create_group(&mut alice, id, &["bob", "carol"]).await;
    if hot {
        let mut ops = operator(&server).await;
        set_mode(&mut ops, id, DeliveryMode::Hot).await;
    }
    let typo = send_text(&mut bob, id, "b1", "helo").await;
    let oops = send_text(&mut bob, id, "b2", "wrong chat").await;
    let mut cursor = String::new();
    let first = sync_all(&mut carol, &mut cursor, &[50]).await;
    assert_eq!(first.len(), 2);

    let edited = edit(&mut bob, &typo, "e1", "hello").await.unwrap();
    let edit_entry = edited.edit.unwrap();
    assert_eq!(
        (
            kind(&edit_entry),
            edit_entry.target_message_id,
            edit_entry.conv_seq
        ),
        (MessageKind::Edit, typo.message_id, 3)
    );
    let now = edited.message.unwrap();
    assert_eq!(now.body, b"hello");
    assert!(now.edited_at_ms > 0);
    let recalled = recall(&mut bob, &oops).await.unwrap();
    let recall_entry = recalled.recall.unwrap();
    assert_eq!(
        (kind(&recall_entry), recall_entry.target_message_id),
        (MessageKind::Recall, oops.message_id)
    );
    assert!(recalled.message.unwrap().recalled_at_ms > 0);

    // The device that holds the originals learns both changes through its cursor.
    let later = sync_all(&mut carol, &mut cursor, &[50]).await;
    let got: Vec<(MessageKind, u64)> = later
        .iter()
        .map(|m| (kind(m), m.target_message_id))
        .collect();
    assert_eq!(
        got,
        [
            (MessageKind::Edit, typo.message_id),
            (MessageKind::Recall, oops.message_id)
        ]
    );
    assert_eq!(later[0].body, b"hello");

    // History shows the current state of each message, and the change entries.
    let h = history(&mut carol, id).await;
    let by_id = |mid: u64| h.iter().find(|m| m.message_id == mid).unwrap().clone();
    let t = by_id(typo.message_id);
    assert_eq!(
        (t.body.as_slice(), t.edited_at_ms > 0),
        (&b"hello"[..], true)
    );
    let o = by_id(oops.message_id);
    assert!(o.body.is_empty() && o.recalled_at_ms > 0, "{o:?}");
    assert_eq!(h.len(), 4);

    // A device reading from scratch never sees the recalled body or the old text.
    let mut fresh_cursor = String::new();
    let mut fresh = server.client("carol", "tablet").await;
    let all = sync_all(&mut fresh, &mut fresh_cursor, &[50]).await;
    for m in &all {
        assert_ne!(
            m.body, b"wrong chat",
            "a recalled body reached a fresh device"
        );
        assert_ne!(
            m.body, b"helo",
            "an edited-away body reached a fresh device"
        );
    }

    // The list's last message is the newest entry: the recall.
    let list = carol
        .list_conversations(ListConversationsRequest {
            page_token: String::new(),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let last = list.conversations[0].last_message.clone().unwrap();
    assert_eq!(
        (kind(&last), last.target_message_id),
        (MessageKind::Recall, oops.message_id)
    );
    server.stop().await;
}

#[tokio::test]
async fn changes_reach_every_device_in_a_small_group() {
    changes_reach_every_device(false).await;
}

#[tokio::test]
async fn changes_reach_every_device_in_a_hot_group() {
    changes_reach_every_device(true).await;
}

/// Unread counts other members' user messages only: not one's own, not recall or edit entries,
/// and a recall does not lower it (the recall entry stands where the message was).
async fn unread_counts_what_users_see(hot: bool) {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let id = if hot { "g:unread-hot" } else { "g:unread" };
    create_group(&mut alice, id, &["bob"]).await;
    if hot {
        let mut ops = operator(&server).await;
        set_mode(&mut ops, id, DeliveryMode::Hot).await;
    }
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(send_text(&mut bob, id, &format!("b{i}"), "hi").await);
    }
    assert_eq!(unread(&mut alice, id).await, 3);
    assert_eq!(unread(&mut bob, id).await, 0, "one's own messages are read");
    edit(&mut bob, &sent[0], "e0", "hello").await.unwrap();
    recall(&mut bob, &sent[1]).await.unwrap();
    assert_eq!(
        unread(&mut alice, id).await,
        3,
        "edits and recalls are not counted, and a recall does not lower the count"
    );
    // Reading up to the second message leaves the third.
    let r = alice
        .mark_read(MarkReadRequest {
            conversation_id: id.into(),
            seq: sent[1].conv_seq,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.read_seq, r.unread_count), (sent[1].conv_seq, 1));
    assert_eq!(unread(&mut alice, id).await, 1);
    // Reading up to a change entry (seq 5, after the third message) reads everything.
    let r = alice
        .mark_read(MarkReadRequest {
            conversation_id: id.into(),
            seq: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.read_seq, r.unread_count), (5, 0));
    // alice's reply marks bob's read too; bob sees it as one unread.
    send_text(&mut alice, id, "a1", "ok").await;
    assert_eq!(unread(&mut bob, id).await, 1);
    assert_eq!(unread(&mut alice, id).await, 0);
    let list = alice
        .list_conversations(ListConversationsRequest {
            page_token: String::new(),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.conversations[0].unread_count, 0);
    // A member who joins later counts only what came after the join.
    alice
        .add_members(AddMembersRequest {
            conversation_id: id.into(),
            user_ids: vec!["carol".into()],
        })
        .await
        .unwrap();
    let mut carol = server.client("carol", "phone").await;
    assert_eq!(unread(&mut carol, id).await, 0);
    send_text(&mut bob, id, "b9", "welcome").await;
    assert_eq!(unread(&mut carol, id).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn unread_counts_what_users_see_in_a_small_group() {
    unread_counts_what_users_see(false).await;
}

#[tokio::test]
async fn unread_counts_what_users_see_in_a_hot_group() {
    unread_counts_what_users_see(true).await;
}

#[tokio::test]
async fn bad_changes_are_refused_with_clear_codes() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let mut carol = server.client("carol", "phone").await;
    let mut mallory = server.client("mallory", "phone").await;
    create_group(&mut alice, "g:rules", &["bob", "carol"]).await;
    let m = send_text(&mut bob, "g:rules", "b1", "hi").await;

    let code =
        |r: Result<_, tonic::Status>| r.map(|_: RecallMessageResponse| ()).unwrap_err().code();
    // Not the sender, not a moderator.
    assert_eq!(code(recall(&mut carol, &m).await), Code::PermissionDenied);
    assert_eq!(
        edit(&mut carol, &m, "c1", "x").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Not a member: the conversation is not there for them.
    assert_eq!(code(recall(&mut mallory, &m).await), Code::NotFound);
    // Unknown message, a wrong id at a real seq, seq 0.
    let mut unknown = m.clone();
    unknown.message_id += 1;
    assert_eq!(code(recall(&mut bob, &unknown).await), Code::NotFound);
    unknown.conv_seq = 99;
    assert_eq!(code(recall(&mut bob, &unknown).await), Code::NotFound);
    unknown.conv_seq = 0;
    assert_eq!(code(recall(&mut bob, &unknown).await), Code::NotFound);
    // A change entry is not a message to change.
    let e = edit(&mut bob, &m, "e1", "hello")
        .await
        .unwrap()
        .edit
        .unwrap();
    assert_eq!(code(recall(&mut bob, &e).await), Code::NotFound);
    // The same client_msg_id for another message; an oversized body.
    let other = send_text(&mut bob, "g:rules", "b2", "two").await;
    assert_eq!(
        edit(&mut bob, &other, "e1", "x").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let huge = "x".repeat(70 * 1024);
    assert_eq!(
        edit(&mut bob, &other, "e2", &huge)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // An edit retried with its client_msg_id returns the first result, once.
    let again = edit(&mut bob, &m, "e1", "hello").await.unwrap();
    assert_eq!(again.edit.unwrap().message_id, e.message_id);
    // Recalled: no edit, no second recall by someone else.
    recall(&mut bob, &m).await.unwrap();
    assert_eq!(
        edit(&mut bob, &m, "e3", "back").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(code(recall(&mut alice, &m).await), Code::FailedPrecondition);
    let h = history(&mut alice, "g:rules").await;
    let edits = h.iter().filter(|m| kind(m) == MessageKind::Edit).count();
    let recalls = h.iter().filter(|m| kind(m) == MessageKind::Recall).count();
    assert_eq!((edits, recalls), (1, 1));
    server.stop().await;
}

#[tokio::test]
async fn the_post_surface_recalls_and_edits() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let m = send_text(&mut alice, "d:alice:bob", "a1", "hi").await;
    let http = http_client();
    let auth = [(
        "authorization",
        format!("Bearer {}", server.token("alice", "web")),
    )];
    let body = format!(
        r#"{{"conversationId":"d:alice:bob","convSeq":"{}","messageId":"{}","clientMsgId":"w1","body":"aGVsbG8="}}"#,
        m.conv_seq, m.message_id
    );
    let (status, _, reply) = http_call(
        &http,
        "POST",
        format!("{}/v1/EditMessage", server.url()),
        &[&auth[..], &[("content-type", "application/json".into())]].concat(),
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("MESSAGE_KIND_EDIT"), "{text}");
    let body = format!(
        r#"{{"conversationId":"d:alice:bob","convSeq":"{}","messageId":"{}"}}"#,
        m.conv_seq, m.message_id
    );
    let (status, _, reply) = http_call(
        &http,
        "POST",
        format!("{}/v1/RecallMessage", server.url()),
        &[&auth[..], &[("content-type", "application/json".into())]].concat(),
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    assert!(String::from_utf8_lossy(&reply).contains("MESSAGE_KIND_RECALL"));
    server.stop().await;
}

async fn delete_for_me(
    client: &mut Client,
    conversation_id: &str,
    messages: &[&Message],
) -> Result<u32, tonic::Status> {
    client
        .delete_messages_for_me(DeleteMessagesForMeRequest {
            conversation_id: conversation_id.into(),
            messages: messages
                .iter()
                .map(|m| MessageRef {
                    conv_seq: m.conv_seq,
                    message_id: m.message_id,
                })
                .collect(),
        })
        .await
        .map(|r| r.into_inner().hidden)
}

/// Delete-for-me hides messages from the caller's history and Sync on every device (as holes,
/// pages keeping their exact counts), and from nobody else.
async fn delete_for_me_hides_from_the_caller_only(hot: bool) {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let id = if hot { "g:hide-hot" } else { "g:hide" };
    create_group(&mut alice, id, &["bob"]).await;
    if hot {
        let mut ops = operator(&server).await;
        set_mode(&mut ops, id, DeliveryMode::Hot).await;
    }
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send_text(&mut bob, id, &format!("b{i}"), &format!("secret {i}")).await);
    }
    assert_eq!(
        delete_for_me(&mut alice, id, &[&sent[1], &sent[3], &sent[1]])
            .await
            .unwrap(),
        2
    );
    // Again: no error.
    delete_for_me(&mut alice, id, &[&sent[3]]).await.unwrap();
    let shows = |ms: &[Message]| -> Vec<String> {
        ms.iter()
            .filter(|m| m.kind == MessageKind::User as i32)
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect()
    };
    let h = history(&mut alice, id).await;
    assert_eq!(shows(&h), ["secret 4", "secret 2", "secret 0"]);
    assert_eq!(
        h.len(),
        5,
        "hidden messages stay as holes: the history is contiguous"
    );
    // A page of 2 from the top is exactly 2.
    let page = alice
        .get_history(GetHistoryRequest {
            conversation_id: id.into(),
            before_seq: 0,
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.messages.len(), page.has_more), (2, true));
    // Another device of alice syncing from scratch never gets them; bob sees everything.
    let mut tablet = server.client("alice", "tablet").await;
    let mut cursor = String::new();
    let synced = sync_all(&mut tablet, &mut cursor, &[2]).await;
    assert_eq!(shows(&synced), ["secret 0", "secret 2", "secret 4"]);
    assert_eq!(synced.len(), 5);
    assert_eq!(history(&mut bob, id).await.len(), 5);
    assert_eq!(shows(&history(&mut bob, id).await).len(), 5);

    // Bad input: none, too many, a message alice cannot read, not a member.
    assert_eq!(
        delete_for_me(&mut alice, id, &[]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let many: Vec<&Message> = std::iter::repeat_n(&sent[0], 101).collect();
    assert_eq!(
        delete_for_me(&mut alice, id, &many)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut unknown = sent[0].clone();
    unknown.message_id += 1;
    assert_eq!(
        delete_for_me(&mut alice, id, &[&unknown])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let mut mallory = server.client("mallory", "phone").await;
    assert_eq!(
        delete_for_me(&mut mallory, id, &[&sent[0]])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    server.stop().await;
}

#[tokio::test]
async fn delete_for_me_hides_from_the_caller_only_in_a_small_group() {
    delete_for_me_hides_from_the_caller_only(false).await;
}

#[tokio::test]
async fn delete_for_me_hides_from_the_caller_only_in_a_hot_group() {
    delete_for_me_hides_from_the_caller_only(true).await;
}
