//! Tokens signed by an app's auth server: RS256 and EdDSA with public keys from configuration
//! (PEM files or a JWKS file) chosen by `kid`, issuer and audience checks, clock-skew leeway,
//! key rotation without a restart; HS256 from `timeline token` alongside, or refused.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::timeline::api::{AuthOptions, PublicKeyFile};
use ::timeline::proto::PingRequest;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tonic::Code;

use support::{TestServer, client_with_header, now_s};

const ISSUER: &str = "https://auth.example.com";
const AUDIENCE: &str = "timeline";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokens")
        .join(name)
}

fn private_key(name: &str, algorithm: Algorithm) -> EncodingKey {
    let pem = std::fs::read(fixture(&format!("{name}.key.pem"))).unwrap();
    match algorithm {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

/// A token as an auth server signs it; `claims` overrides the usual ones.
fn sign(key: &str, algorithm: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut all = json!({
        "sub": "alice", "did": "phone", "iss": ISSUER, "aud": AUDIENCE,
        "iat": now_s(), "exp": now_s() + 300,
    });
    for (k, v) in claims.as_object().unwrap() {
        if v.is_null() {
            all.as_object_mut().unwrap().remove(k);
        } else {
            all[k] = v.clone();
        }
    }
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, &all, &private_key(key, algorithm)).unwrap()
}

fn pem_keys() -> AuthOptions {
    AuthOptions {
        public_keys: vec![
            PublicKeyFile {
                kid: "2026a".into(),
                algorithm: "RS256".into(),
                file: fixture("rsa-2026a.pub.pem"),
            },
            PublicKeyFile {
                kid: "ed".into(),
                algorithm: "EdDSA".into(),
                file: fixture("ed-2026.pub.pem"),
            },
        ],
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        leeway: Duration::from_secs(30),
        ..AuthOptions::default()
    }
}

async fn ping(server: &TestServer, token: &str) -> Result<(), tonic::Status> {
    let mut client = client_with_header(&server.url(), Some(format!("Bearer {token}"))).await;
    client.ping(PingRequest::default()).await.map(drop)
}

#[tokio::test]
async fn rs256_and_eddsa_tokens_are_verified_with_the_key_their_kid_names() {
    let server = TestServer::start_with(|c| c.auth = pem_keys()).await;
    let rsa = sign("rsa-2026a", Algorithm::RS256, Some("2026a"), json!({}));
    let ed = sign("ed-2026", Algorithm::EdDSA, Some("ed"), json!({}));
    ping(&server, &rsa).await.expect("RS256");
    ping(&server, &ed).await.expect("EdDSA");
    // `timeline token` keeps working alongside.
    ping(&server, &server.token("alice", "phone"))
        .await
        .expect("HS256");
    // Within the leeway an expired token still passes (clocks differ).
    let skewed = sign(
        "rsa-2026a",
        Algorithm::RS256,
        Some("2026a"),
        json!({"exp": now_s() - 10}),
    );
    ping(&server, &skewed).await.expect("within the leeway");

    let refused = [
        (
            "unknown kid",
            sign("rsa-2026a", Algorithm::RS256, Some("2025"), json!({})),
            "unknown key id",
        ),
        (
            "another key under a known kid",
            sign("rsa-2026b", Algorithm::RS256, Some("2026a"), json!({})),
            "InvalidSignature",
        ),
        (
            "no kid with two keys",
            sign("rsa-2026a", Algorithm::RS256, None, json!({})),
            "kid",
        ),
        (
            "an RSA token under the EdDSA key's kid",
            sign("rsa-2026a", Algorithm::RS256, Some("ed"), json!({})),
            "not its key's",
        ),
        (
            "wrong audience",
            sign(
                "rsa-2026a",
                Algorithm::RS256,
                Some("2026a"),
                json!({"aud": "someone-else"}),
            ),
            "InvalidAudience",
        ),
        (
            "no audience",
            sign(
                "rsa-2026a",
                Algorithm::RS256,
                Some("2026a"),
                json!({"aud": null}),
            ),
            "aud",
        ),
        (
            "wrong issuer",
            sign(
                "ed-2026",
                Algorithm::EdDSA,
                Some("ed"),
                json!({"iss": "https://evil.example.com"}),
            ),
            "InvalidIssuer",
        ),
        (
            "expired beyond the leeway",
            sign(
                "ed-2026",
                Algorithm::EdDSA,
                Some("ed"),
                json!({"exp": now_s() - 120}),
            ),
            "expired",
        ),
        (
            "no device",
            sign(
                "ed-2026",
                Algorithm::EdDSA,
                Some("ed"),
                json!({"did": null}),
            ),
            "did",
        ),
    ];
    for (case, token, expected) in refused {
        let status = ping(&server, &token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{case}: {:?}",
            status.message()
        );
        assert!(
            !status.message().contains(&token) && !status.message().contains("eyJ"),
            "{case}: the token is echoed"
        );
    }
}

#[tokio::test]
async fn hs256_can_be_refused_when_an_auth_server_signs_every_token() {
    let server = TestServer::start_with(|c| {
        c.auth = AuthOptions {
            accept_hs256: false,
            ..pem_keys()
        }
    })
    .await;
    let status = ping(&server, &server.token("alice", "phone"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("HS256"), "{status:?}");
    let ed = sign("ed-2026", Algorithm::EdDSA, Some("ed"), json!({}));
    ping(&server, &ed).await.expect("EdDSA");
}

fn write_jwks(path: &Path, keys: &[(&str, &str)]) {
    let keys = keys
        .iter()
        .map(|(name, kid)| {
            let mut jwk =
                Jwk::from_encoding_key(&private_key(name, Algorithm::RS256), Algorithm::RS256)
                    .unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    let partial = path.with_extension("new");
    std::fs::write(&partial, serde_json::to_vec(&JwkSet { keys }).unwrap()).unwrap();
    std::fs::rename(partial, path).unwrap();
}

#[tokio::test]
async fn a_rotated_jwks_is_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, &[("rsa-2026a", "2026a")]);
    let options = AuthOptions {
        jwks_file: Some(jwks.clone()),
        reload_interval: Duration::from_millis(100),
        ..AuthOptions::default()
    };
    let server = TestServer::start_with(move |c| c.auth = options).await;
    let old = sign("rsa-2026a", Algorithm::RS256, Some("2026a"), json!({}));
    let new = sign("rsa-2026b", Algorithm::RS256, Some("2026b"), json!({}));
    ping(&server, &old).await.expect("the published key");
    assert_eq!(
        ping(&server, &new).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // The auth server publishes the next key beside the current one, then retires the old.
    write_jwks(&jwks, &[("rsa-2026a", "2026a"), ("rsa-2026b", "2026b")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ping(&server, &new).await.is_err() {
        assert!(Instant::now() < deadline, "the new key was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ping(&server, &old).await.expect("both during the rotation");
    write_jwks(&jwks, &[("rsa-2026b", "2026b")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ping(&server, &old).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the retired key is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ping(&server, &new).await.expect("the new key");

    // A broken publication keeps the keys in use.
    std::fs::write(&jwks, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    ping(&server, &new).await.expect("kept after a bad reload");
}

#[tokio::test]
async fn unusable_key_configuration_stops_the_start_with_the_reason() {
    let cases = [
        (
            vec![PublicKeyFile {
                kid: "x".into(),
                algorithm: "RS256".into(),
                file: fixture("missing.pem"),
            }],
            "missing.pem",
        ),
        (
            vec![PublicKeyFile {
                kid: "x".into(),
                algorithm: "HS256".into(),
                file: fixture("rsa-2026a.pub.pem"),
            }],
            "symmetric",
        ),
        (
            vec![PublicKeyFile {
                kid: "x".into(),
                algorithm: "RS999".into(),
                file: fixture("rsa-2026a.pub.pem"),
            }],
            "unknown algorithm",
        ),
        (
            vec![PublicKeyFile {
                kid: "x".into(),
                algorithm: "EdDSA".into(),
                file: fixture("rsa-2026a.pub.pem"),
            }],
            "not a usable public key",
        ),
    ];
    for (public_keys, expected) in cases {
        let options = AuthOptions {
            public_keys,
            ..AuthOptions::default()
        };
        let error = ::timeline::api::Authenticator::with_options(
            "a-secret-of-at-least-32-characters!!",
            &options,
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(error.contains(expected), "{error}");
    }
}
