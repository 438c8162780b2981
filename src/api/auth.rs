//! `authorization: Bearer <JWT>` with `sub` = user id, `did` = device id, `exp`. Tokens are
//! HS256 with the node's secret (what `timeline token` mints), or signed by the app's own auth
//! server with a private key whose public half is configured (`[auth]`: PEM files or a JWKS
//! file; RS256/384/512, PS256/384/512, ES256/384, EdDSA), chosen by the token's `kid`, several
//! at once for rotation, read again on SIGHUP or when a file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::timeline::Caller;
use crate::timeline::ids::validate_user_id;
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    did: String,
    exp: u64,
    iat: u64,
    /// Operator token: may force delivery modes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    adm: bool,
}

/// One public key of the `[auth]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    /// The `kid` tokens signed with it carry.
    pub kid: String,
    /// `RS256`, `PS256`, `ES256`, `EdDSA`, ...
    pub algorithm: String,
    /// The public key, PEM (SubjectPublicKeyInfo; PKCS#1 for RSA too).
    pub file: PathBuf,
}

/// The `[auth]` section: which tokens besides HS256 are accepted, and what they must say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthOptions {
    pub public_keys: Vec<PublicKeyFile>,
    /// A JWKS document (as an auth server publishes at `/.well-known/jwks.json`): each key
    /// with its `kid`, and `alg` (inferred from the key type when absent).
    pub jwks_file: Option<PathBuf>,
    /// Tokens must carry this `iss`, when set.
    pub issuer: Option<String>,
    /// Tokens must name this in `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "crate::units::human")]
    pub leeway: Duration,
    /// Accept HS256 tokens signed with `jwt_secret` (what `timeline token` mints). Turn it
    /// off when an auth server signs every token.
    pub accept_hs256: bool,
    /// How often the key files are checked for a change.
    #[serde(with = "crate::units::human")]
    pub reload_interval: Duration,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            public_keys: Vec::new(),
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            accept_hs256: true,
            reload_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth: reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("auth: {0}")]
    Invalid(String),
}

impl AuthOptions {
    pub fn validate(&self) -> Result<(), String> {
        if !self.accept_hs256 && self.public_keys.is_empty() && self.jwks_file.is_none() {
            return Err(
                "auth: with accept_hs256 = false, configure public_keys or jwks_file".into(),
            );
        }
        if self.reload_interval.is_zero() {
            return Err("auth.reload_interval must be positive".into());
        }
        Ok(())
    }

    fn files(&self) -> Vec<PathBuf> {
        self.public_keys
            .iter()
            .map(|k| k.file.clone())
            .chain(self.jwks_file.clone())
            .collect()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn invalid_key(path: &Path, e: impl std::fmt::Display) -> AuthError {
    AuthError::Read {
        path: path.to_owned(),
        message: format!("not a usable public key: {e}"),
    }
}

/// The public keys by `kid`, each with its one algorithm.
#[derive(Default)]
struct KeyRing {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
}

impl KeyRing {
    fn load(options: &AuthOptions) -> Result<Self, AuthError> {
        let mut ring = Self::default();
        for key in &options.public_keys {
            let algorithm = Algorithm::from_str(&key.algorithm).map_err(|_| {
                AuthError::Invalid(format!(
                    "key {:?}: unknown algorithm {:?}",
                    key.kid, key.algorithm
                ))
            })?;
            let pem = read(&key.file)?;
            let decoding = match algorithm {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                    return Err(AuthError::Invalid(format!(
                        "key {:?}: {algorithm:?} is symmetric: use jwt_secret",
                        key.kid
                    )));
                }
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512 => DecodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                other => {
                    return Err(AuthError::Invalid(format!(
                        "key {:?}: {other:?} is not supported",
                        key.kid
                    )));
                }
            }
            .map_err(|e| invalid_key(&key.file, e))?;
            ring.insert(key.kid.clone(), decoding, algorithm)?;
        }
        if let Some(path) = &options.jwks_file {
            let set: JwkSet = serde_json::from_slice(&read(path)?)
                .map_err(|e| invalid_key(path, format!("not a JWKS document: {e}")))?;
            for jwk in &set.keys {
                let kid =
                    jwk.common.key_id.clone().ok_or_else(|| {
                        invalid_key(path, "a key without a kid cannot be selected")
                    })?;
                let algorithm = match jwk.common.key_algorithm {
                    Some(alg) => Algorithm::try_from(alg).map_err(|e| invalid_key(path, e))?,
                    None => inferred_algorithm(&jwk.algorithm)
                        .ok_or_else(|| invalid_key(path, format!("key {kid:?} names no alg")))?,
                };
                if matches!(
                    algorithm,
                    Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
                ) {
                    return Err(invalid_key(path, format!("key {kid:?} is symmetric")));
                }
                let decoding = DecodingKey::from_jwk(jwk).map_err(|e| invalid_key(path, e))?;
                ring.insert(kid, decoding, algorithm)?;
            }
        }
        Ok(ring)
    }

    fn insert(
        &mut self,
        kid: String,
        key: DecodingKey,
        algorithm: Algorithm,
    ) -> Result<(), AuthError> {
        if self.by_kid.insert(kid.clone(), (key, algorithm)).is_some() {
            return Err(AuthError::Invalid(format!("two keys have kid {kid:?}")));
        }
        Ok(())
    }
}

/// What a JWK without `alg` is used with: the usual algorithm of its key type.
fn inferred_algorithm(params: &jsonwebtoken::jwk::AlgorithmParameters) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match params {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Clone)]
pub struct Authenticator {
    encoding: EncodingKey,
    /// The HS256 secret's key, unless HS256 tokens are refused.
    secret: Option<DecodingKey>,
    keys: Arc<RwLock<Arc<KeyRing>>>,
    options: Arc<AuthOptions>,
}

impl Authenticator {
    /// HS256 tokens with `secret` only.
    pub fn new(secret: &str) -> Self {
        Self::build(secret, AuthOptions::default(), KeyRing::default())
    }

    /// HS256 (unless turned off) and the public keys `options` names; a key that cannot be
    /// read or parsed stops the start with an error naming its file.
    pub fn with_options(secret: &str, options: &AuthOptions) -> Result<Self, AuthError> {
        options.validate().map_err(AuthError::Invalid)?;
        let keys = KeyRing::load(options)?;
        Ok(Self::build(secret, options.clone(), keys))
    }

    fn build(secret: &str, options: AuthOptions, keys: KeyRing) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            secret: options
                .accept_hs256
                .then(|| DecodingKey::from_secret(secret.as_bytes())),
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            options: Arc::new(options),
        }
    }

    /// Reads the key files again on SIGHUP and when one changes (a rotation adds the new key
    /// before tokens use it); `None` without key files.
    pub fn watch_keys(&self) -> Option<tokio::task::JoinHandle<()>> {
        let files = self.options.files();
        if files.is_empty() {
            return None;
        }
        let keys = self.keys.clone();
        let options = self.options.clone();
        Some(super::reload::watch(
            "token keys",
            files,
            options.reload_interval,
            move || {
                let ring = KeyRing::load(&options).map_err(|e| e.to_string())?;
                *keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
                Ok(())
            },
        ))
    }

    /// What a token must satisfy. `iss` and `aud` are asked of tokens an auth server signed
    /// (public keys); HS256 tokens are the node's own (`timeline token`) and carry neither.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.options.leeway.as_secs();
        let mut required = vec!["exp", "sub"];
        if algorithm == Algorithm::HS256 {
            validation.validate_aud = false;
            validation.set_required_spec_claims(&required);
            return validation;
        }
        match &self.options.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without an audience configured, a token's `aud` is not checked.
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.options.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
    /// A token for `user_id` on `device_id`, valid for `ttl` from `now_s` (Unix seconds).
    pub fn mint(
        &self,
        user_id: &str,
        device_id: &str,
        ttl: Duration,
        now_s: u64,
    ) -> Result<String, String> {
        self.mint_with(user_id, device_id, ttl, now_s, false)
    }

    /// Like [`Authenticator::mint`]; `admin` marks an operator token.
    pub fn mint_with(
        &self,
        user_id: &str,
        device_id: &str,
        ttl: Duration,
        now_s: u64,
        admin: bool,
    ) -> Result<String, String> {
        validate_user_id("user", user_id).map_err(|e| e.to_string())?;
        validate_user_id("device", device_id).map_err(|e| e.to_string())?;
        let claims = Claims {
            sub: user_id.to_owned(),
            did: device_id.to_owned(),
            exp: now_s + ttl.as_secs(),
            iat: now_s,
            adm: admin,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// The caller named by a valid `authorization` header value; UNAUTHENTICATED otherwise.
    pub fn verify(&self, header: Option<&str>) -> Result<Caller, Status> {
        self.verify_header(header).map(|(caller, _)| caller)
    }

    /// Like [`Authenticator::verify`], with the token's expiry (Unix seconds): a stream ends
    /// then unless refreshed.
    pub fn verify_header(&self, header: Option<&str>) -> Result<(Caller, u64), Status> {
        let header =
            header.ok_or_else(|| Status::unauthenticated("missing authorization header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
        self.verify_token(token)
    }

    /// A bare token (no `Bearer `): the caller and the expiry (Unix seconds). The key is the
    /// secret for HS256, else the public key the token's `kid` names, and the token's `alg`
    /// must be that key's: a token cannot choose how it is checked.
    pub fn verify_token(&self, token: &str) -> Result<(Caller, u64), Status> {
        let token = token.trim();
        let header = decode_header(token)
            .map_err(|e| Status::unauthenticated(format!("token is not valid: {e}")))?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (key, algorithm) = match (header.alg, header.kid.as_deref()) {
            (Algorithm::HS256, _) => match &self.secret {
                Some(secret) => (secret, Algorithm::HS256),
                None => return Err(Status::unauthenticated("HS256 tokens are not accepted")),
            },
            (_, Some(kid)) => match keys.by_kid.get(kid) {
                Some((key, algorithm)) => (key, *algorithm),
                None => {
                    return Err(Status::unauthenticated(format!(
                        "token is signed with unknown key id {kid:?}"
                    )));
                }
            },
            (_, None) if keys.by_kid.len() == 1 => {
                let (key, algorithm) = keys.by_kid.values().next().expect("one key");
                (key, *algorithm)
            }
            (_, None) => {
                return Err(Status::unauthenticated(
                    "token names no key id (kid) and several keys are configured",
                ));
            }
        };
        if header.alg != algorithm {
            return Err(Status::unauthenticated(format!(
                "token algorithm {:?} is not its key's ({algorithm:?})",
                header.alg
            )));
        }
        let data =
            decode::<Claims>(token, key, &self.validation(algorithm)).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        Status::unauthenticated("token has expired")
                    }
                    _ => Status::unauthenticated(format!("token is not valid: {e}")),
                }
            })?;
        let claims = data.claims;
        validate_user_id("token sub", &claims.sub)
            .and_then(|()| validate_user_id("token did", &claims.did))
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok((
            Caller {
                user_id: claims.sub,
                device_id: claims.did,
                admin: claims.adm,
            },
            claims.exp,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let auth = Authenticator::new("a-secret-of-at-least-32-characters!!");
        let token = auth
            .mint("alice", "phone", Duration::from_secs(60), now())
            .unwrap();
        let caller = auth.verify(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(
            (caller.user_id.as_str(), caller.device_id.as_str()),
            ("alice", "phone")
        );
        assert!(!caller.admin);
        let op = auth
            .mint_with("ops", "cli", Duration::from_secs(60), now(), true)
            .unwrap();
        assert!(auth.verify(Some(&format!("Bearer {op}"))).unwrap().admin);

        let other = Authenticator::new("another-secret-of-at-least-32-chars!!");
        let forged = other
            .mint("alice", "phone", Duration::from_secs(60), now())
            .unwrap();
        let expired = auth
            .mint("alice", "phone", Duration::from_secs(0), now() - 3600)
            .unwrap();
        for bad in [
            None,
            Some("Basic abc".to_owned()),
            Some("Bearer not.a.jwt".to_owned()),
            Some(format!("Bearer {forged}")),
            Some(format!("Bearer {expired}")),
        ] {
            let err = auth.verify(bad.as_deref()).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert!(
            auth.mint("bad user", "d", Duration::from_secs(1), now())
                .is_err()
        );
    }
}
