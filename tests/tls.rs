//! TLS on the one port: a self-signed certificate from configuration, verified by gRPC and
//! HTTP clients; reloaded on SIGHUP and when its files change.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::timeline::api::TlsOptions;
use ::timeline::proto::PingRequest;
use ::timeline::proto::timeline_service_client::TimelineServiceClient;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use support::TestServer;

/// A new self-signed certificate for localhost and 127.0.0.1, written over the two files;
/// its PEM.
fn write_certificate(dir: &Path) -> String {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
    let pem = generated.cert.pem();
    // Written whole and renamed, as a certificate manager does: never half a file.
    for (name, contents) in [
        ("cert.pem", pem.clone()),
        ("key.pem", generated.signing_key.serialize_pem()),
    ] {
        let partial = dir.join(format!("{name}.new"));
        std::fs::write(&partial, contents).unwrap();
        std::fs::rename(partial, dir.join(name)).unwrap();
    }
    pem
}

async fn start(dir: &Path, reload_interval: Duration) -> TestServer {
    let options = TlsOptions {
        cert_file: Some(dir.join("cert.pem")),
        key_file: Some(dir.join("key.pem")),
        reload_interval,
    };
    TestServer::start_with(move |config| config.tls = options).await
}

/// `POST /v1/Ping` over HTTP/1.1 on TLS, trusting only `ca_pem`: the HTTP status, or why the
/// connection failed.
async fn https_ping(server: &TestServer, ca_pem: &str) -> Result<u16, String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = ::http::Request::post("/v1/Ping")
        .header("host", "localhost")
        .header(
            "authorization",
            format!("Bearer {}", server.token("alice", "a")),
        )
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

async fn grpc_ping(server: &TestServer, ca_pem: &str) -> Result<(), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {}", server.token("alice", "a"))
        .parse()
        .unwrap();
    let mut client =
        TimelineServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", token.clone());
            Ok(r)
        });
    client
        .ping(PingRequest::default())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Waits until a client trusting only `ca_pem` gets through (the server reloaded).
async fn until_served_with(server: &TestServer, ca_pem: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match https_ping(server, ca_pem).await {
            Ok(200) => return,
            outcome => assert!(
                Instant::now() < deadline,
                "the new certificate is not served: {outcome:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn grpc_and_post_are_served_over_tls_and_a_changed_certificate_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_certificate(dir.path());
    let server = start(dir.path(), Duration::from_millis(100)).await;

    grpc_ping(&server, &first).await.expect("gRPC over TLS");
    assert_eq!(https_ping(&server, &first).await, Ok(200));

    // A client that does not trust the certificate gets no answer, nor does a cleartext one.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap()
        .cert
        .pem();
    let refused = https_ping(&server, &stranger).await.unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
    let mut cleartext = server.client("alice", "a").await;
    assert!(cleartext.ping(PingRequest::default()).await.is_err());

    // Renewed on disk: served from the next connection on, without a restart.
    let second = write_certificate(dir.path());
    until_served_with(&server, &second, Duration::from_secs(5)).await;
    grpc_ping(&server, &second).await.expect("gRPC, renewed");
    assert!(
        https_ping(&server, &first).await.is_err(),
        "the old one is gone"
    );
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_broken_renewal_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_certificate(dir.path());
    // Files are not polled within the test: only the signal reloads.
    let server = start(dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(https_ping(&server, &first).await, Ok(200));

    // A renewal that left a broken key: the reload fails and the old certificate stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    hangup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(https_ping(&server, &first).await, Ok(200));

    let second = write_certificate(dir.path());
    assert_eq!(
        https_ping(&server, &first).await,
        Ok(200),
        "not reloaded before the signal"
    );
    hangup();
    until_served_with(&server, &second, Duration::from_secs(5)).await;
}

fn hangup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn a_missing_or_mismatched_key_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path());
    let other = tempfile::tempdir().unwrap();
    write_certificate(other.path());
    for (key_file, expected) in [
        (dir.path().join("missing.pem"), "missing.pem"),
        (other.path().join("key.pem"), "do not match"),
    ] {
        let options = TlsOptions {
            cert_file: Some(dir.path().join("cert.pem")),
            key_file: Some(key_file),
            ..TlsOptions::default()
        };
        let error = ::timeline::api::TlsAcceptors::start(&options)
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
    let half = TlsOptions {
        cert_file: Some(dir.path().join("cert.pem")),
        ..TlsOptions::default()
    };
    assert!(half.validate().is_err());
}
