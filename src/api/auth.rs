//! `authorization: Bearer <JWT HS256>` with `sub` = user id, `did` = device id, `exp`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
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

#[derive(Clone)]
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
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

    /// A bare token (no `Bearer `): the caller and the expiry (Unix seconds).
    pub fn verify_token(&self, token: &str) -> Result<(Caller, u64), Status> {
        let data = decode::<Claims>(token.trim(), &self.decoding, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Status::unauthenticated("token has expired")
                }
                _ => Status::unauthenticated(format!("token is not valid: {e}")),
            },
        )?;
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
