//! The `TimelineService` implementation: authenticate, translate, call the pipeline, record.
//! The HTTP POST surface calls these same methods, so each RPC exists once.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::auth::Authenticator;
use super::status::code_name;
use super::{convert, stream};
use crate::metrics::record_request;
use crate::model::{ConversationKind, DeliveryMode};
use crate::protect::{Protection, RequestClass};
use crate::proto::{self, timeline_service_server::TimelineService};
use crate::push::{Hub, TypingOutcome};
use crate::timeline::{
    Caller, CreateConversation, EditMessage, PushPlatform, PushTarget, SendMessage, Timeline,
};

#[derive(Clone)]
pub struct TimelineApi {
    pub timeline: Arc<Timeline>,
    pub auth: Arc<Authenticator>,
    pub push: Arc<Hub>,
    pub protect: Arc<Protection>,
}

/// A caller the HTTP surface authenticated before decoding the body: the gRPC methods it then
/// calls take it from the request's extensions (which a client cannot set) instead of
/// verifying the token again.
#[derive(Clone)]
pub(super) struct Authenticated {
    pub caller: Caller,
    pub expires_at_s: u64,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

/// The client's address, when the connection was accepted with it (always, by `api::serve`).
pub(super) fn source_of(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

impl TimelineApi {
    /// The caller named by an `authorization` header value. A failure is charged to the
    /// source address, and answered RESOURCE_EXHAUSTED once the address is over its quota.
    pub(super) fn authenticate(
        &self,
        header: Option<&str>,
        source: Option<IpAddr>,
        class: RequestClass,
    ) -> Result<(Caller, u64), Status> {
        self.auth
            .verify_header(header)
            .map_err(|status| self.failed_authentication(status, source, class))
    }

    fn failed_authentication(
        &self,
        status: Status,
        source: Option<IpAddr>,
        class: RequestClass,
    ) -> Status {
        match self.protect.auth_failed(class, source) {
            Ok(()) => status,
            Err(refusal) => refusal.into(),
        }
    }

    fn caller_and_expiry<T>(
        &self,
        request: &Request<T>,
        class: RequestClass,
    ) -> Result<(Caller, u64), Status> {
        if let Some(done) = request.extensions().get::<Authenticated>() {
            return Ok((done.caller.clone(), done.expires_at_s));
        }
        let source = source_of(request.extensions());
        match request.metadata().get("authorization").map(|v| v.to_str()) {
            Some(Err(_)) => Err(self.failed_authentication(
                Status::unauthenticated("authorization is not ASCII"),
                source,
                class,
            )),
            Some(Ok(header)) => self.authenticate(Some(header), source, class),
            None => self.authenticate(None, source, class),
        }
    }

    /// Authenticates, reads the opening frame, opens the stream, and forwards the client's
    /// later frames to it.
    async fn open_stream(
        &self,
        request: Request<Streaming<proto::ClientFrame>>,
    ) -> Result<EventStream, Status> {
        let (caller, expires_at_s) = self.caller_and_expiry(&request, RequestClass::Read)?;
        let mut frames = request.into_inner();
        let first = frames.message().await?;
        let open = stream::open_request(
            caller.clone(),
            expires_at_s,
            first,
            crate::push::Transport::Grpc,
        )?;
        let (events, control) = self.push.open(open).await.map_err(stream::limit_status)?;
        let auth = self.auth.clone();
        tokio::spawn(async move {
            loop {
                let next = match frames.message().await {
                    Ok(Some(frame)) => stream::control(&auth, &caller, frame),
                    // Half-closed: the stream goes on without client frames.
                    Ok(None) => return,
                    Err(status) => stream::malformed(status.message()),
                };
                if control.send(next).await.is_err() {
                    return;
                }
            }
        });
        let events = tokio_stream_of(events).map(|item| match item {
            Ok(event) => Ok(stream::event(event)),
            Err(end) => Err(stream::end_status(end)),
        });
        Ok(Box::pin(events))
    }

    /// Admits the request among those in flight, authenticates, charges the caller's rate,
    /// runs `body`, and records the RPC's latency and status code. A refused request never
    /// reaches the pipeline.
    async fn handle<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        body: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Caller, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Status>>,
    {
        let started = Instant::now();
        let class = RequestClass::of_rpc(rpc);
        let result = async {
            let _in_flight = self.protect.admit(class)?;
            let (caller, _) = self.caller_and_expiry(&request, class)?;
            self.protect.check_user(class, &caller.user_id)?;
            body(caller, request.into_inner()).await
        }
        .await;
        let code = match &result {
            Ok(_) => "OK",
            Err(status) => code_name(status.code()),
        };
        record_request(rpc, code, started.elapsed());
        result.map(Response::new)
    }
}

fn kind(raw: i32) -> Result<ConversationKind, Status> {
    match proto::ConversationKind::try_from(raw) {
        Ok(proto::ConversationKind::Direct) => Ok(ConversationKind::Direct),
        Ok(proto::ConversationKind::Group) => Ok(ConversationKind::Group),
        _ => Err(Status::invalid_argument(
            "kind must be CONVERSATION_KIND_DIRECT or CONVERSATION_KIND_GROUP",
        )),
    }
}

/// `None` for DELIVERY_MODE_UNSPECIFIED: automatic.
fn delivery_mode(raw: i32) -> Result<Option<DeliveryMode>, Status> {
    match proto::DeliveryMode::try_from(raw) {
        Ok(proto::DeliveryMode::Unspecified) => Ok(None),
        Ok(proto::DeliveryMode::Fanout) => Ok(Some(DeliveryMode::Fanout)),
        Ok(proto::DeliveryMode::Hot) => Ok(Some(DeliveryMode::Hot)),
        Err(_) => Err(Status::invalid_argument(format!(
            "mode {raw} is not a delivery mode"
        ))),
    }
}

fn push_platform(raw: i32) -> Result<PushPlatform, Status> {
    match proto::PushPlatform::try_from(raw) {
        Ok(proto::PushPlatform::Apns) => Ok(PushPlatform::Apns),
        Ok(proto::PushPlatform::Fcm) => Ok(PushPlatform::Fcm),
        Ok(proto::PushPlatform::WebPush) => Ok(PushPlatform::WebPush),
        Ok(proto::PushPlatform::Other) => Ok(PushPlatform::Other),
        _ => Err(Status::invalid_argument(
            "platform must be PUSH_PLATFORM_APNS, _FCM, _WEB_PUSH or _OTHER",
        )),
    }
}

/// A receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(
        receiver,
        |mut r| async move { r.recv().await.map(|x| (x, r)) },
    )
}

#[tonic::async_trait]
impl TimelineService for TimelineApi {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<proto::ClientFrame>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let started = Instant::now();
        let opened = self.open_stream(request).await;
        let code = match &opened {
            Ok(_) => "OK",
            Err(status) => code_name(status.code()),
        };
        // The latency of opening it; how it ends is counted by the push metrics.
        record_request("Subscribe", code, started.elapsed());
        opened.map(Response::new)
    }

    async fn send_typing(
        &self,
        request: Request<proto::SendTypingRequest>,
    ) -> Result<Response<proto::SendTypingResponse>, Status> {
        self.handle("SendTyping", request, |caller, req| async move {
            let outcome = self.push.send_typing(&caller, &req.conversation_id).await?;
            Ok(proto::SendTypingResponse {
                sent: outcome == TypingOutcome::Sent,
            })
        })
        .await
    }

    async fn get_presence(
        &self,
        request: Request<proto::GetPresenceRequest>,
    ) -> Result<Response<proto::GetPresenceResponse>, Status> {
        self.handle("GetPresence", request, |caller, req| async move {
            let users = self.push.presence(&caller, &req.user_ids).await?;
            Ok(proto::GetPresenceResponse {
                users: users
                    .into_iter()
                    .map(|p| proto::UserPresence {
                        online: !p.devices.is_empty(),
                        user_id: p.user_id,
                        device_ids: p.devices,
                        last_seen_ms: p.last_seen_ms,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn register_push_target(
        &self,
        request: Request<proto::RegisterPushTargetRequest>,
    ) -> Result<Response<proto::RegisterPushTargetResponse>, Status> {
        self.handle("RegisterPushTarget", request, |caller, req| async move {
            let row = self
                .timeline
                .register_push_target(
                    &caller,
                    PushTarget {
                        device_id: req.device_id,
                        platform: push_platform(req.platform)?,
                        token: req.token,
                        app_id: req.app_id,
                        locale: req.locale,
                    },
                )
                .await?;
            Ok(proto::RegisterPushTargetResponse {
                device_id: row.device_id,
                registered_at_ms: row.registered_at_ms,
            })
        })
        .await
    }

    async fn unregister_push_target(
        &self,
        request: Request<proto::UnregisterPushTargetRequest>,
    ) -> Result<Response<proto::UnregisterPushTargetResponse>, Status> {
        self.handle("UnregisterPushTarget", request, |caller, req| async move {
            self.timeline
                .unregister_push_target(&caller, &req.device_id)
                .await?;
            Ok(proto::UnregisterPushTargetResponse {})
        })
        .await
    }

    async fn create_conversation(
        &self,
        request: Request<proto::CreateConversationRequest>,
    ) -> Result<Response<proto::CreateConversationResponse>, Status> {
        self.handle("CreateConversation", request, |caller, req| async move {
            let (conversation, created) = self
                .timeline
                .create_conversation(
                    &caller,
                    CreateConversation {
                        kind: kind(req.kind)?,
                        conversation_id: req.conversation_id,
                        title: req.title,
                        member_ids: req.member_ids,
                    },
                )
                .await?;
            Ok(proto::CreateConversationResponse {
                conversation: Some(convert::conversation(conversation)),
                created,
            })
        })
        .await
    }

    async fn get_conversation(
        &self,
        request: Request<proto::GetConversationRequest>,
    ) -> Result<Response<proto::GetConversationResponse>, Status> {
        self.handle("GetConversation", request, |caller, req| async move {
            let view = self
                .timeline
                .get_conversation(&caller, &req.conversation_id)
                .await?;
            Ok(proto::GetConversationResponse {
                conversation: Some(convert::conversation(view.conversation)),
                membership: Some(convert::membership(view.membership, view.read_seq)),
                last_seq: view.last_seq,
                unread_count: view.unread,
            })
        })
        .await
    }

    async fn add_members(
        &self,
        request: Request<proto::AddMembersRequest>,
    ) -> Result<Response<proto::AddMembersResponse>, Status> {
        self.handle("AddMembers", request, |caller, req| async move {
            let (conversation, added) = self
                .timeline
                .add_members(&caller, &req.conversation_id, &req.user_ids)
                .await?;
            Ok(proto::AddMembersResponse {
                conversation: Some(convert::conversation(conversation)),
                added: added
                    .into_iter()
                    .map(|m| {
                        let read_seq = m.joined_seq - 1;
                        convert::membership(m, read_seq)
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn remove_members(
        &self,
        request: Request<proto::RemoveMembersRequest>,
    ) -> Result<Response<proto::RemoveMembersResponse>, Status> {
        self.handle("RemoveMembers", request, |caller, req| async move {
            let (conversation, removed) = self
                .timeline
                .remove_members(&caller, &req.conversation_id, &req.user_ids)
                .await?;
            Ok(proto::RemoveMembersResponse {
                conversation: Some(convert::conversation(conversation)),
                removed,
            })
        })
        .await
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<proto::SendMessageResponse>, Status> {
        self.handle("SendMessage", request, |caller, req| async move {
            let message = self
                .timeline
                .send(
                    &caller,
                    SendMessage {
                        conversation_id: req.conversation_id,
                        client_msg_id: req.client_msg_id,
                        content_type: req.content_type,
                        body: Bytes::from(req.body),
                    },
                )
                .await?;
            Ok(proto::SendMessageResponse {
                message: Some(convert::message(message)),
            })
        })
        .await
    }

    async fn sync(
        &self,
        request: Request<proto::SyncRequest>,
    ) -> Result<Response<proto::SyncResponse>, Status> {
        self.handle("Sync", request, |caller, req| async move {
            let page = self.timeline.sync(&caller, &req.cursor, req.limit).await?;
            Ok(proto::SyncResponse {
                messages: page.messages.into_iter().map(convert::message).collect(),
                next_cursor: page.next_cursor,
                has_more: page.has_more,
                pending: page.pending,
                cursor_expired: page.cursor_expired,
            })
        })
        .await
    }

    async fn get_history(
        &self,
        request: Request<proto::GetHistoryRequest>,
    ) -> Result<Response<proto::GetHistoryResponse>, Status> {
        self.handle("GetHistory", request, |caller, req| async move {
            let page = self
                .timeline
                .history(&caller, &req.conversation_id, req.before_seq, req.limit)
                .await?;
            Ok(proto::GetHistoryResponse {
                messages: page.messages.into_iter().map(convert::message).collect(),
                has_more: page.has_more,
                next_before_seq: page.next_before_seq,
            })
        })
        .await
    }

    async fn list_conversations(
        &self,
        request: Request<proto::ListConversationsRequest>,
    ) -> Result<Response<proto::ListConversationsResponse>, Status> {
        self.handle("ListConversations", request, |caller, req| async move {
            let page = self
                .timeline
                .list_conversations(&caller, &req.page_token, req.limit)
                .await?;
            Ok(proto::ListConversationsResponse {
                conversations: page
                    .conversations
                    .into_iter()
                    .map(|s| proto::ConversationSummary {
                        conversation: Some(convert::conversation(s.conversation)),
                        last_message: s.last_message.map(convert::message),
                        last_seq: s.last_seq,
                        read_seq: s.read_seq,
                        unread_count: s.unread,
                    })
                    .collect(),
                next_page_token: page.next_page_token,
            })
        })
        .await
    }

    async fn mark_read(
        &self,
        request: Request<proto::MarkReadRequest>,
    ) -> Result<Response<proto::MarkReadResponse>, Status> {
        self.handle("MarkRead", request, |caller, req| async move {
            let (read_seq, unread_count) = self
                .timeline
                .mark_read(&caller, &req.conversation_id, req.seq)
                .await?;
            Ok(proto::MarkReadResponse {
                read_seq,
                unread_count,
            })
        })
        .await
    }

    async fn set_conversation_mode(
        &self,
        request: Request<proto::SetConversationModeRequest>,
    ) -> Result<Response<proto::SetConversationModeResponse>, Status> {
        self.handle("SetConversationMode", request, |caller, req| async move {
            let conversation = self
                .timeline
                .set_conversation_mode(&caller, &req.conversation_id, delivery_mode(req.mode)?)
                .await?;
            Ok(proto::SetConversationModeResponse {
                conversation: Some(convert::conversation(conversation)),
            })
        })
        .await
    }

    async fn set_slowmode(
        &self,
        request: Request<proto::SetSlowmodeRequest>,
    ) -> Result<Response<proto::SetSlowmodeResponse>, Status> {
        self.handle("SetSlowmode", request, |caller, req| async move {
            let conversation = self
                .timeline
                .set_slowmode(&caller, &req.conversation_id, req.slowmode_seconds)
                .await?;
            Ok(proto::SetSlowmodeResponse {
                conversation: Some(convert::conversation(conversation)),
            })
        })
        .await
    }

    async fn recall_message(
        &self,
        request: Request<proto::RecallMessageRequest>,
    ) -> Result<Response<proto::RecallMessageResponse>, Status> {
        self.handle("RecallMessage", request, |caller, req| async move {
            let changed = self
                .timeline
                .recall(&caller, &req.conversation_id, req.conv_seq, req.message_id)
                .await?;
            Ok(proto::RecallMessageResponse {
                recall: Some(convert::message(changed.entry)),
                message: Some(convert::message(changed.message)),
            })
        })
        .await
    }

    async fn edit_message(
        &self,
        request: Request<proto::EditMessageRequest>,
    ) -> Result<Response<proto::EditMessageResponse>, Status> {
        self.handle("EditMessage", request, |caller, req| async move {
            let changed = self
                .timeline
                .edit(
                    &caller,
                    EditMessage {
                        conversation_id: req.conversation_id,
                        conv_seq: req.conv_seq,
                        message_id: req.message_id,
                        client_msg_id: req.client_msg_id,
                        content_type: req.content_type,
                        body: Bytes::from(req.body),
                    },
                )
                .await?;
            Ok(proto::EditMessageResponse {
                edit: Some(convert::message(changed.entry)),
                message: Some(convert::message(changed.message)),
            })
        })
        .await
    }

    async fn delete_messages_for_me(
        &self,
        request: Request<proto::DeleteMessagesForMeRequest>,
    ) -> Result<Response<proto::DeleteMessagesForMeResponse>, Status> {
        self.handle("DeleteMessagesForMe", request, |caller, req| async move {
            let pairs: Vec<(u64, u64)> = req
                .messages
                .iter()
                .map(|m| (m.conv_seq, m.message_id))
                .collect();
            let hidden = self
                .timeline
                .delete_for_me(&caller, &req.conversation_id, &pairs)
                .await?;
            Ok(proto::DeleteMessagesForMeResponse {
                hidden: hidden as u32,
            })
        })
        .await
    }

    async fn ping(
        &self,
        request: Request<proto::PingRequest>,
    ) -> Result<Response<proto::PingResponse>, Status> {
        self.handle("Ping", request, |_, _| async move {
            Ok(proto::PingResponse {
                server_time_ms: self.timeline.now_ms(),
            })
        })
        .await
    }
}
