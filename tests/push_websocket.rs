//! The push stream over WebSocket (`GET /v1/stream`) with a real WebSocket client: JSON text
//! frames and binary protobuf frames, the token in a subprotocol or a query parameter, and the
//! close codes of refusals (4000 + the gRPC code).

mod support;

use std::time::Duration;

use ::timeline::proto::event::Event as Kind;
use ::timeline::proto::*;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SMALL: &str = "g:small";
const WAIT: Duration = Duration::from_secs(5);

fn quiet(config: &mut ::timeline::config::Config) {
    config.push.heartbeat = Duration::from_secs(60);
}

/// Connects to `/v1/stream?<query>` offering `protocols`; returns the socket and the
/// subprotocol the server chose.
async fn connect(server: &TestServer, query: &str, protocols: &[&str]) -> (Socket, Option<String>) {
    let mut request = format!("ws://{}/v1/stream?{query}", server.addr)
        .into_client_request()
        .unwrap();
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (socket, chosen)
}

fn subscribe(cursor: &str) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Subscribe(SubscribeRequest {
            cursor: cursor.into(),
            limit: 0,
        })),
    }
}

/// The next event (JSON or protobuf, by frame type), or the close code and reason.
async fn next(socket: &mut Socket) -> Result<Event, (u16, String)> {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame");
        match frame {
            Frame::Text(text) => {
                return Ok(serde_json::from_str(text.as_str()).expect("canonical JSON"));
            }
            Frame::Binary(bytes) => return Ok(Event::decode(bytes).expect("protobuf")),
            Frame::Close(Some(close)) => {
                return Err((u16::from(close.code), close.reason.to_string()));
            }
            Frame::Close(None) => return Err((1005, String::new())),
            _ => continue,
        }
    }
}

/// The messages of the next batch (skipping heartbeats), and its cursor.
async fn batch(socket: &mut Socket) -> (Vec<u64>, String, bool) {
    loop {
        match next(socket).await {
            Ok(Event {
                event: Some(Kind::Batch(b)),
            }) => {
                return (
                    b.messages.iter().map(|m| m.message_id).collect(),
                    b.next_cursor,
                    b.live,
                );
            }
            Ok(_) => continue,
            Err(close) => panic!("closed: {close:?}"),
        }
    }
}

async fn closed(socket: &mut Socket) -> (u16, String) {
    loop {
        if let Err(close) = next(socket).await {
            return close;
        }
    }
}

async fn setup(server: &TestServer) -> Client {
    let mut alice = server.client("alice", "laptop").await;
    alice
        .create_conversation(CreateConversationRequest {
            kind: ConversationKind::Group as i32,
            conversation_id: SMALL.into(),
            title: "small".into(),
            member_ids: vec!["bob".into()],
        })
        .await
        .unwrap();
    alice
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_binary_streams_carry_the_catch_up_and_live_batches() {
    let server = TestServer::start_with(quiet).await;
    let mut alice = setup(&server).await;
    let first = send(&mut alice, SMALL, "first").await;
    let token = server.token("bob", "browser");

    // JSON, the token in a subprotocol next to the format (what a browser can send).
    let bearer = format!("bearer.{token}");
    let (mut json, chosen) = connect(&server, "", &["timeline.v1.json", &bearer]).await;
    assert_eq!(chosen.as_deref(), Some("timeline.v1.json"));
    json.send(Frame::text(r#"{"subscribe":{"cursor":""}}"#))
        .await
        .unwrap();
    let (ids, cursor, live) = batch(&mut json).await;
    assert_eq!(ids, vec![first.message_id]);
    assert!(!live, "catch-up");

    // Protobuf, the token as a query parameter, resuming at the JSON stream's cursor.
    let (mut binary, chosen) =
        connect(&server, &format!("format=proto&access_token={token}"), &[]).await;
    assert_eq!(chosen, None);
    binary
        .send(Frame::binary(subscribe(&cursor).encode_to_vec()))
        .await
        .unwrap();
    let (ids, _, _) = batch(&mut binary).await;
    assert!(ids.is_empty(), "nothing after the cursor yet: {ids:?}");

    // Live: both get the next message once.
    let second = send(&mut alice, SMALL, "second").await;
    for socket in [&mut json, &mut binary] {
        let (ids, _, live) = batch(socket).await;
        assert_eq!(ids, vec![second.message_id]);
        assert!(live);
    }
    // A refresh in JSON keeps the stream; the client closes it cleanly.
    let refresh = format!(
        r#"{{"refresh":{{"token":"{}"}}}}"#,
        server.token("bob", "browser")
    );
    json.send(Frame::text(refresh)).await.unwrap();
    let third = send(&mut alice, SMALL, "third").await;
    assert_eq!(batch(&mut json).await.0, vec![third.message_id]);
    json.close(None).await.unwrap();
    assert_eq!(batch(&mut binary).await.0, vec![third.message_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_close_with_4000_plus_the_grpc_code_and_never_panic() {
    let server = TestServer::start_with(quiet).await;
    let _alice = setup(&server).await;
    let token = server.token("bob", "browser");

    // No token, a forged one.
    let (mut socket, _) = connect(&server, "", &["timeline.v1.json"]).await;
    assert_eq!(closed(&mut socket).await.0, 4016);
    let (mut socket, _) = connect(&server, "access_token=forged.token.here", &[]).await;
    assert_eq!(closed(&mut socket).await.0, 4016);
    // An unknown format.
    let (mut socket, _) = connect(&server, &format!("format=xml&access_token={token}"), &[]).await;
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, 4003);
    assert!(reason.contains("format"), "{reason}");

    // Malformed opening frames: not JSON, not protobuf, refresh first.
    for frame in [
        Frame::text("{not json"),
        Frame::binary(vec![0xff, 0xff, 0xff]),
        Frame::text(r#"{"refresh":{"token":"x"}}"#),
    ] {
        let (mut socket, _) = connect(&server, &format!("access_token={token}"), &[]).await;
        socket.send(frame).await.unwrap();
        assert_eq!(closed(&mut socket).await.0, 4003);
    }

    // Malformed, or another device's token, mid-stream.
    let (mut socket, _) = connect(&server, &format!("access_token={token}"), &[]).await;
    socket
        .send(Frame::text(r#"{"subscribe":{}}"#))
        .await
        .unwrap();
    batch(&mut socket).await;
    socket.send(Frame::text("[]")).await.unwrap();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, 4003, "{reason}");
    let (mut socket, _) = connect(&server, &format!("access_token={token}"), &[]).await;
    socket
        .send(Frame::text(r#"{"subscribe":{}}"#))
        .await
        .unwrap();
    batch(&mut socket).await;
    let other = server.token("bob", "phone");
    socket
        .send(Frame::text(format!(
            r#"{{"refresh":{{"token":"{other}"}}}}"#
        )))
        .await
        .unwrap();
    assert_eq!(closed(&mut socket).await.0, 4016);

    // A token that expires mid-stream ends it with 4016 at expiry.
    let short = server
        .auth
        .mint("bob", "browser", Duration::from_secs(2), now_s())
        .unwrap();
    let (mut socket, _) = connect(&server, &format!("access_token={short}"), &[]).await;
    socket
        .send(Frame::text(r#"{"subscribe":{}}"#))
        .await
        .unwrap();
    batch(&mut socket).await;
    let started = std::time::Instant::now();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, 4016, "{reason}");
    assert!(started.elapsed() < Duration::from_secs(4));

    // The server still serves after all of that.
    let (mut socket, _) = connect(&server, &format!("access_token={token}"), &[]).await;
    socket
        .send(Frame::text(r#"{"subscribe":{}}"#))
        .await
        .unwrap();
    batch(&mut socket).await;
}
