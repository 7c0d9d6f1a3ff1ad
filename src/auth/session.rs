//! The service's own credentials: short-lived access tokens (HS256 JWT signed with the session secret)
//! and opaque refresh tokens, of which only a SHA-256 hash is stored.

use std::time::Duration;

use aws_lc_rs::{digest, rand::SecureRandom};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{SessionId, UserId};

/// An access token's claims. `sid` names the session (refresh-token family) it was issued for, so
/// that a revoked session's tokens and sockets can be told apart from the user's other sessions.
/// A token without `sid` (signed before sessions were carried) is refused as invalid: access tokens
/// live `auth.access_token_ttl` (15 min) and a dev server's secret is new at every start, so the
/// only cost is one refresh, which needs no access token and answers one with `sid`.
#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    sub: String,
    sid: String,
    iat: u64,
    exp: u64,
    typ: String,
}

/// Who a valid access token speaks for: the user, and the session it was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub session: SessionId,
}

const ACCESS: &str = "access";

pub struct SessionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

/// Why an access token was refused; the caller answers 401 either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessTokenError {
    #[error("the access token has expired; refresh it")]
    Expired,
    #[error("the access token is not valid")]
    Invalid,
}

impl SessionKeys {
    pub fn new(secret: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            access_ttl,
            refresh_ttl,
        }
    }

    /// A secret for a process that has none configured (dev login): sessions end with the process.
    pub fn random_secret() -> Vec<u8> {
        random_bytes::<32>().to_vec()
    }

    pub fn issue_access(&self, user: UserId, session: &SessionId) -> String {
        let now = unix_now();
        let claims = AccessClaims {
            sub: user.to_string(),
            sid: session.as_str().to_owned(),
            iat: now,
            exp: now + self.access_ttl.as_secs(),
            typ: ACCESS.into(),
        };
        // HS256 over a small struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    pub fn verify_access(&self, token: &str) -> Result<Caller, AccessTokenError> {
        if token.len() > 4096 {
            return Err(AccessTokenError::Invalid);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token without `sid` fails to decode here, and is `Invalid` (see `AccessClaims`).
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AccessTokenError::Expired,
                _ => AccessTokenError::Invalid,
            })?;
        let claims = data.claims;
        if claims.typ != ACCESS || claims.sid.is_empty() {
            return Err(AccessTokenError::Invalid);
        }
        let user = claims.sub.parse().map_err(|_| AccessTokenError::Invalid)?;
        Ok(Caller {
            user,
            session: SessionId::from(claims.sid),
        })
    }
}

/// A new opaque refresh token and the hash to store for it.
pub fn new_refresh_token() -> (String, String) {
    let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let hash = hash_refresh_token(&token);
    (token, hash)
}

pub fn new_family_id() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<16>())
}

pub fn hash_refresh_token(token: &str) -> String {
    let digest = digest::digest(&digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system RNG only fails when the OS cannot provide randomness at all; nothing safe remains then.
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys::new(
            &[7u8; 32],
            Duration::from_secs(900),
            Duration::from_secs(86_400),
        )
    }

    fn caller(user: UserId) -> Caller {
        Caller {
            user,
            session: SessionId::from("family-1"),
        }
    }

    #[test]
    fn access_tokens_round_trip_and_refuse_tampering() {
        let keys = keys();
        let token = keys.issue_access(42, &SessionId::from("family-1"));
        assert_eq!(keys.verify_access(&token), Ok(caller(42)));
        let other = SessionKeys::new(&[8u8; 32], Duration::from_secs(900), Duration::from_secs(1));
        assert_eq!(other.verify_access(&token), Err(AccessTokenError::Invalid));
        assert_eq!(
            keys.verify_access("not.a.token"),
            Err(AccessTokenError::Invalid)
        );
        assert_eq!(
            keys.verify_access(&token[..token.len() - 10]),
            Err(AccessTokenError::Invalid)
        );
    }

    #[test]
    fn expired_and_wrong_kind_tokens_are_refused() {
        let keys = keys();
        let sign = |exp: u64, typ: &str| {
            let claims = AccessClaims {
                sub: "42".into(),
                sid: "family-1".into(),
                iat: exp.saturating_sub(900),
                exp,
                typ: typ.into(),
            };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap()
        };
        let now = unix_now();
        assert_eq!(
            keys.verify_access(&sign(now - 60, ACCESS)),
            Err(AccessTokenError::Expired)
        );
        assert_eq!(
            keys.verify_access(&sign(now + 60, "refresh")),
            Err(AccessTokenError::Invalid)
        );
        assert_eq!(keys.verify_access(&sign(now + 60, ACCESS)), Ok(caller(42)));
    }

    #[test]
    fn a_token_without_a_session_is_refused() {
        let keys = keys();
        let now = unix_now();
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap()
        };
        let before_sessions =
            sign(serde_json::json!({"sub": "42", "iat": now, "exp": now + 60, "typ": ACCESS}));
        assert_eq!(
            keys.verify_access(&before_sessions),
            Err(AccessTokenError::Invalid)
        );
        let empty = sign(
            serde_json::json!({"sub": "42", "sid": "", "iat": now, "exp": now + 60, "typ": ACCESS}),
        );
        assert_eq!(keys.verify_access(&empty), Err(AccessTokenError::Invalid));
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, hash_a) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(hash_a, hash_refresh_token(&a));
        assert_eq!(hash_a.len(), 64);
        assert!(!hash_a.contains(&a));
    }
}
