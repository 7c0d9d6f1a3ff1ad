//! The service's own credentials: short-lived access tokens (HS256 JWT signed with the session secret)
//! and opaque refresh tokens, of which only a SHA-256 hash is stored.

use std::time::Duration;

use aws_lc_rs::{digest, rand::SecureRandom};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::UserId;

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    sub: String,
    iat: u64,
    exp: u64,
    typ: String,
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

    pub fn issue_access(&self, user: UserId) -> String {
        let now = unix_now();
        let claims = AccessClaims {
            sub: user.to_string(),
            iat: now,
            exp: now + self.access_ttl.as_secs(),
            typ: ACCESS.into(),
        };
        // HS256 over a small struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    pub fn verify_access(&self, token: &str) -> Result<UserId, AccessTokenError> {
        if token.len() > 4096 {
            return Err(AccessTokenError::Invalid);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AccessTokenError::Expired,
                _ => AccessTokenError::Invalid,
            })?;
        if data.claims.typ != ACCESS {
            return Err(AccessTokenError::Invalid);
        }
        data.claims
            .sub
            .parse()
            .map_err(|_| AccessTokenError::Invalid)
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

    #[test]
    fn access_tokens_round_trip_and_refuse_tampering() {
        let keys = keys();
        let token = keys.issue_access(42);
        assert_eq!(keys.verify_access(&token), Ok(42));
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
        assert_eq!(keys.verify_access(&sign(now + 60, ACCESS)), Ok(42));
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
