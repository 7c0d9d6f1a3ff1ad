//! Verifying Google ID tokens: RS256 signatures against Google's published keys (JWKS), cached for the
//! response's `Cache-Control: max-age`, refetched at once when a token names a key we do not know, but
//! never more than once per `REFETCH_INTERVAL` so a flood of made-up key ids cannot hammer Google.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;

use super::holds_email_address;

const MAX_TOKEN_BYTES: usize = 8 * 1024;
const SKEW_SECONDS: u64 = 60;
const REFETCH_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
const LONGEST_MAX_AGE: Duration = Duration::from_secs(86_400);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct GoogleVerifierConfig {
    pub jwks_url: String,
    pub client_ids: Vec<String>,
    pub issuers: Vec<String>,
}

/// Who the token says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleIdentity {
    pub sub: String,
    /// A name fit to show everyone: never an email address or its local part; `None` when the token
    /// has no such name.
    pub name: Option<String>,
    pub picture: Option<String>,
    /// Only an address Google says it verified: an unverified one may belong to someone else.
    pub email: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GoogleAuthError {
    /// The token is refused (401). The sentence never quotes the token.
    #[error("{0}")]
    Invalid(String),
    #[error("Google's signing keys could not be fetched")]
    KeysUnavailable,
}

fn invalid(reason: &str) -> GoogleAuthError {
    GoogleAuthError::Invalid(reason.to_owned())
}

#[derive(Deserialize)]
struct GoogleClaims {
    sub: String,
    iat: Option<u64>,
    aud: Audience,
    azp: Option<String>,
    name: Option<String>,
    given_name: Option<String>,
    family_name: Option<String>,
    picture: Option<String>,
    email: Option<String>,
    /// A bool in ID tokens; some Google endpoints send the string "true" or "false".
    email_verified: Option<serde_json::Value>,
}

/// `aud` is one client id, or a list of them when the token was issued for several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Several(Vec<String>),
}

impl Audience {
    fn client_ids(&self) -> &[String] {
        match self {
            Audience::One(id) => std::slice::from_ref(id),
            Audience::Several(ids) => ids,
        }
    }
}

impl GoogleClaims {
    fn verified_email(&self) -> Option<String> {
        let verified = match &self.email_verified {
            Some(serde_json::Value::Bool(verified)) => *verified,
            Some(serde_json::Value::String(verified)) => verified.eq_ignore_ascii_case("true"),
            _ => false,
        };
        self.email.clone().filter(|_| verified)
    }

    /// `name`, else `given_name` and `family_name`; whichever is blank, an email address or the
    /// local part of the token's email counts as no name, since public names are searchable by all.
    fn public_name(&self) -> Option<String> {
        let local_part = self
            .email
            .as_deref()
            .and_then(|email| email.split_once('@'))
            .map(|(local, _)| local.trim().to_lowercase())
            .filter(|local| !local.is_empty());
        let usable = |name: &str| {
            let name = name.trim();
            let is_local_part = local_part
                .as_deref()
                .is_some_and(|local| name.to_lowercase() == local);
            (!name.is_empty() && !is_local_part && !holds_email_address(name))
                .then(|| name.to_owned())
        };
        let parts = [self.given_name.as_deref(), self.family_name.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        self.name
            .as_deref()
            .and_then(usable)
            .or_else(|| usable(&parts))
    }
}

#[derive(Default)]
struct Keys {
    by_id: HashMap<String, DecodingKey>,
    fresh_until: Option<Instant>,
}

pub struct GoogleVerifier {
    http: reqwest::Client,
    config: GoogleVerifierConfig,
    keys: RwLock<Arc<Keys>>,
    /// One fetch at a time; the others wait and use its result.
    fetching: tokio::sync::Mutex<()>,
    last_fetch: Mutex<Option<Instant>>,
}

impl GoogleVerifier {
    pub fn new(http: reqwest::Client, config: GoogleVerifierConfig) -> Self {
        Self {
            http,
            config,
            keys: RwLock::new(Arc::new(Keys::default())),
            fetching: tokio::sync::Mutex::new(()),
            last_fetch: Mutex::new(None),
        }
    }

    pub async fn verify(&self, id_token: &str) -> Result<GoogleIdentity, GoogleAuthError> {
        if id_token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the ID token is too long"));
        }
        let header = jsonwebtoken::decode_header(id_token)
            .map_err(|_| invalid("the ID token is malformed"))?;
        if header.alg != Algorithm::RS256 {
            return Err(invalid("the ID token must be signed with RS256"));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the ID token does not name its signing key"))?;
        let key = self.key(&kid).await?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = SKEW_SECONDS;
        validation.validate_nbf = true;
        validation.set_audience(&self.config.client_ids);
        validation.set_issuer(&self.config.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<GoogleClaims>(id_token, &key, &validation)
            .map_err(|error| GoogleAuthError::Invalid(explain(error.kind()).into()))?
            .claims;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let iat = claims
            .iat
            .ok_or_else(|| invalid("the ID token does not say when it was issued"))?;
        if iat > now + SKEW_SECONDS {
            return Err(invalid("the ID token is not valid yet"));
        }
        // A token issued for several audiences was meant for whoever `azp` names; only that one of
        // them may present it (OpenID Connect Core §3.1.3.7).
        if claims.aud.client_ids().len() > 1
            && !claims
                .azp
                .as_ref()
                .is_some_and(|azp| self.config.client_ids.contains(azp))
        {
            return Err(invalid(
                "the ID token names several audiences and was not issued to this client",
            ));
        }
        if claims.sub.trim().is_empty() {
            return Err(invalid("the ID token has no subject"));
        }
        Ok(GoogleIdentity {
            name: claims.public_name(),
            email: claims.verified_email(),
            sub: claims.sub,
            picture: claims.picture,
        })
    }

    fn cached(&self) -> Arc<Keys> {
        Arc::clone(
            &self
                .keys
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, GoogleAuthError> {
        let keys = self.cached();
        let fresh = keys.fresh_until.is_some_and(|until| Instant::now() < until);
        if fresh && let Some(key) = keys.by_id.get(kid) {
            return Ok(key.clone());
        }
        let refetched = self.refetch(fresh).await;
        let keys = self.cached();
        match (keys.by_id.get(kid), refetched) {
            (Some(key), _) => Ok(key.clone()),
            (None, Err(error)) if keys.by_id.is_empty() => Err(error),
            (None, _) => Err(invalid("the ID token was signed with an unknown key")),
        }
    }

    /// Fetches the key set again, unless another task just did, or (for an unknown key id while the
    /// cache is fresh) the last fetch was less than `REFETCH_INTERVAL` ago.
    async fn refetch(&self, cache_is_fresh: bool) -> Result<(), GoogleAuthError> {
        let _one_at_a_time = self.fetching.lock().await;
        let last = *self
            .last_fetch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            // Fetched a moment ago (maybe while we waited for the lock): that answer stands.
            return if cache_is_fresh || !self.cached().by_id.is_empty() {
                Ok(())
            } else {
                Err(GoogleAuthError::KeysUnavailable)
            };
        }
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                *self
                    .keys
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(url = %self.config.jwks_url, %reason, "fetching Google's signing keys failed");
                Err(GoogleAuthError::KeysUnavailable)
            }
        }
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let response = self
            .http
            .get(&self.config.jwks_url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(max_age)
            .unwrap_or(DEFAULT_MAX_AGE)
            .min(LONGEST_MAX_AGE);
        let set: JwkSet = response.json().await.map_err(|error| error.to_string())?;
        let by_id: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
            .filter(|jwk| {
                matches!(
                    jwk.common.public_key_use,
                    None | Some(PublicKeyUse::Signature)
                )
            })
            .filter(|jwk| matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256)))
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
            .collect();
        if by_id.is_empty() {
            return Err("the key set holds no usable RS256 key".into());
        }
        Ok(Keys {
            by_id,
            fresh_until: Some(Instant::now() + max_age),
        })
    }
}

/// `max-age=N` from a Cache-Control header.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

fn explain(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the ID token has expired",
        ErrorKind::ImmatureSignature => "the ID token is not valid yet",
        ErrorKind::InvalidAudience => "the ID token was issued for another client",
        ErrorKind::InvalidIssuer => "the ID token was not issued by Google",
        ErrorKind::InvalidSignature => "the ID token's signature is not valid",
        ErrorKind::MissingRequiredClaim(_) => "the ID token lacks a required claim",
        ErrorKind::InvalidAlgorithm => "the ID token must be signed with RS256",
        _ => "the ID token is malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(value: serde_json::Value) -> GoogleClaims {
        let mut base =
            serde_json::json!({"sub": "1", "aud": "client", "email": "ada.l@example.com"});
        base.as_object_mut()
            .unwrap()
            .extend(value.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn the_public_name_is_never_the_email() {
        let name = |value| claims(value).public_name();
        assert_eq!(
            name(serde_json::json!({"name": " Ada Lovelace "})),
            Some("Ada Lovelace".into())
        );
        assert_eq!(
            name(serde_json::json!({"given_name": "Ada", "family_name": "Lovelace"})),
            Some("Ada Lovelace".into())
        );
        assert_eq!(
            name(serde_json::json!({"given_name": "Ada"})),
            Some("Ada".into())
        );
        assert_eq!(
            name(serde_json::json!({"family_name": "Lovelace"})),
            Some("Lovelace".into())
        );
        assert_eq!(
            name(serde_json::json!({"name": "", "given_name": "Ada"})),
            Some("Ada".into())
        );
        assert_eq!(name(serde_json::json!({})), None);
        assert_eq!(name(serde_json::json!({"name": "  "})), None);
        assert_eq!(name(serde_json::json!({"name": "ada.l@example.com"})), None);
        assert_eq!(
            name(serde_json::json!({"name": "Ada <ada@elsewhere.example>"})),
            None
        );
        assert_eq!(name(serde_json::json!({"name": "ADA.L"})), None);
        assert_eq!(
            name(serde_json::json!({"name": "ada.l", "given_name": "Ada", "family_name": "L"})),
            Some("Ada L".into())
        );
        assert_eq!(name(serde_json::json!({"given_name": "Ada.L"})), None);
        assert_eq!(
            name(serde_json::json!({"name": "Ada @ home"})),
            Some("Ada @ home".into())
        );
    }

    #[test]
    fn an_email_address_is_an_at_between_two_non_spaces() {
        for address in [
            "ada@example.com",
            "bob@localhost",
            "Ada <ada@example.com>",
            "a@b",
        ] {
            assert!(holds_email_address(address), "{address}");
        }
        for name in ["Ada Lovelace", "Ada @ home", "@ada", "ada@", "@", ""] {
            assert!(!holds_email_address(name), "{name}");
        }
    }

    #[test]
    fn only_a_verified_email_is_kept() {
        let email = |value| claims(value).verified_email();
        assert_eq!(email(serde_json::json!({})), None);
        assert_eq!(email(serde_json::json!({"email_verified": false})), None);
        assert_eq!(email(serde_json::json!({"email_verified": "false"})), None);
        assert_eq!(email(serde_json::json!({"email_verified": 1})), None);
        assert_eq!(
            email(serde_json::json!({"email_verified": true})),
            Some("ada.l@example.com".into())
        );
        assert_eq!(
            email(serde_json::json!({"email_verified": "true"})),
            Some("ada.l@example.com".into())
        );
    }

    #[test]
    fn audiences_are_one_or_several() {
        assert_eq!(claims(serde_json::json!({})).aud.client_ids().len(), 1);
        assert_eq!(
            claims(serde_json::json!({"aud": ["a"]}))
                .aud
                .client_ids()
                .len(),
            1
        );
        assert_eq!(
            claims(serde_json::json!({"aud": ["a", "b"]}))
                .aud
                .client_ids()
                .len(),
            2
        );
    }

    #[test]
    fn reads_max_age() {
        assert_eq!(
            max_age("public, max-age=21451, must-revalidate"),
            Some(Duration::from_secs(21451))
        );
        assert_eq!(max_age("MAX-AGE=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
