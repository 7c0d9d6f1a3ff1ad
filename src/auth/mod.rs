//! Signing in (Google, dev login), refreshing and signing out, and checking access tokens.

pub mod google;
pub mod session;

use std::{sync::Arc, time::Duration};

use sqlx::types::time::OffsetDateTime;

use crate::{
    config::Config,
    domain::{SessionId, User, UserId, now},
    hub::{CloseCode, Hub},
    store::{Identity, Rotation, SessionState, Store, StoreError, tokens::NewRefreshToken},
};
use google::{GoogleAuthError, GoogleVerifier, GoogleVerifierConfig};
pub use session::Caller;
use session::{
    AccessTokenError, SessionKeys, hash_refresh_token, new_family_id, new_refresh_token,
};

/// What a successful sign-in or refresh answers.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("sign in first: send `Authorization: Bearer <access token>`")]
    MissingToken,
    #[error(transparent)]
    Access(#[from] AccessTokenError),
    #[error("{0}")]
    Google(String),
    #[error("Google's signing keys could not be fetched; try again shortly")]
    KeysUnavailable,
    #[error("Google sign-in is not configured on this server")]
    GoogleDisabled,
    #[error("dev login is turned off on this server")]
    DevLoginDisabled,
    #[error("the refresh token is not valid")]
    UnknownRefreshToken,
    #[error("the refresh token has expired; sign in again")]
    RefreshExpired,
    #[error("the refresh token was already used; every session of this sign-in is now revoked")]
    RefreshReused,
    #[error("the user of this token no longer exists")]
    UnknownUser,
    #[error("this session has ended (signed out or revoked); sign in again")]
    SessionEnded,
    #[error("the server could not complete this; try again")]
    Store(#[from] StoreError),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "not_authenticated",
            AuthError::Access(AccessTokenError::Expired) => "token_expired",
            AuthError::Access(AccessTokenError::Invalid) => "invalid_token",
            AuthError::Google(_) => "invalid_token",
            AuthError::KeysUnavailable => "auth_unavailable",
            AuthError::GoogleDisabled | AuthError::DevLoginDisabled => "not_found",
            AuthError::UnknownRefreshToken => "invalid_token",
            AuthError::RefreshExpired => "token_expired",
            AuthError::RefreshReused => "token_reused",
            AuthError::UnknownUser | AuthError::SessionEnded => "invalid_token",
            AuthError::Store(_) => "internal",
        }
    }
}

impl From<GoogleAuthError> for AuthError {
    fn from(error: GoogleAuthError) -> Self {
        match error {
            GoogleAuthError::Invalid(reason) => AuthError::Google(reason),
            GoogleAuthError::KeysUnavailable => AuthError::KeysUnavailable,
        }
    }
}

/// Signing in and out. Every way a session ends (logout, a detected refresh-token reuse,
/// `admin kick --revoke`) goes through here, revokes its refresh-token family and then closes its
/// sockets through the hub, in that order: an upgrade that reads the database after the revocation
/// is refused there, and one that read it before is caught by the hub (`Hub::close_session`).
pub struct Auth {
    store: Store,
    hub: Arc<Hub>,
    keys: SessionKeys,
    /// How long a just-spent refresh token still answers a pair of its family.
    refresh_reuse_grace: Duration,
    google: Option<GoogleVerifier>,
    dev_login: bool,
}

impl Auth {
    pub fn new(
        config: &Config,
        store: Store,
        hub: Arc<Hub>,
    ) -> Result<Self, crate::config::ConfigError> {
        let modes = config.login_modes()?;
        let secret = match &config.auth.session_secret {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "no auth.session_secret is set: using a random one, so sessions end when teachlyd stops"
                );
                SessionKeys::random_secret()
            }
        };
        if modes.dev_login {
            tracing::warn!(
                "dev login is on: anyone who can reach {} can sign in as any name",
                config.server.listen
            );
        }
        let google = modes.google.then(|| {
            GoogleVerifier::new(
                reqwest::Client::new(),
                GoogleVerifierConfig {
                    jwks_url: config.auth.google_jwks_url.clone(),
                    client_ids: config.auth.google_client_ids.clone(),
                    issuers: config.auth.google_issuers.clone(),
                },
            )
        });
        Ok(Self {
            store,
            hub,
            keys: SessionKeys::new(
                &secret,
                config.auth.access_token_ttl.0,
                config.auth.refresh_token_ttl.0,
            ),
            refresh_reuse_grace: config.auth.refresh_reuse_grace.0,
            google,
            dev_login: modes.dev_login,
        })
    }

    pub fn dev_login_enabled(&self) -> bool {
        self.dev_login
    }

    /// The user and session of a valid access token whose user still exists and whose session was
    /// not revoked: a token outlives a deleted user (or a database restored under the same secret)
    /// and its own session's logout, and must not let either in. Asked of the database every time,
    /// in one query (`Store::session_state`): a socket authenticates once, so this is off the
    /// message path.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Caller, AuthError> {
        let token = token.ok_or(AuthError::MissingToken)?;
        let caller = self.keys.verify_access(token)?;
        match self
            .store
            .session_state(caller.user, &caller.session)
            .await?
        {
            SessionState::Live => Ok(caller),
            SessionState::UnknownUser => Err(AuthError::UnknownUser),
            SessionState::Ended => Err(AuthError::SessionEnded),
        }
    }

    /// The user an access token names if its signature and lifetime hold, without asking the
    /// database: enough to count a request against its user's rate limit, never to let it in.
    pub fn user_of_token(&self, token: &str) -> Option<UserId> {
        self.keys
            .verify_access(token)
            .ok()
            .map(|caller| caller.user)
    }

    pub async fn login_google(&self, id_token: &str) -> Result<Session, AuthError> {
        let verifier = self.google.as_ref().ok_or(AuthError::GoogleDisabled)?;
        let identity = verifier.verify(id_token).await?;
        let user = self
            .store
            .upsert_user(&Identity {
                google_id: &identity.sub,
                // Without a usable name the stored one stays, and a new user is named by their id.
                name: identity.name.as_deref(),
                avatar_url: identity.picture.as_deref(),
                email: identity.email.as_deref(),
            })
            .await?;
        self.start_session(user).await
    }

    /// Signs in as `name` without any check: only where dev login is on.
    pub async fn login_dev(&self, name: &str) -> Result<Session, AuthError> {
        if !self.dev_login {
            return Err(AuthError::DevLoginDisabled);
        }
        let google_id = format!("dev:{name}");
        let user = self
            .store
            .upsert_user(&Identity {
                google_id: &google_id,
                name: Some(name),
                avatar_url: None,
                email: None,
            })
            .await?;
        self.start_session(user).await
    }

    async fn start_session(&self, user: User) -> Result<Session, AuthError> {
        let (refresh_token, hash) = new_refresh_token();
        let family = new_family_id();
        self.store
            .insert_refresh_token(&NewRefreshToken {
                hash: &hash,
                family_id: &family,
                user_id: user.id,
                expires_at: self.refresh_expiry(now()),
            })
            .await?;
        Ok(self.session(user, refresh_token, &SessionId::from(family)))
    }

    fn session(&self, user: User, refresh_token: String, family: &SessionId) -> Session {
        Session {
            access_token: self.keys.issue_access(user.id, family),
            expires_in: self.keys.access_ttl.as_secs(),
            refresh_token,
            user,
        }
    }

    fn refresh_expiry(&self, from: OffsetDateTime) -> OffsetDateTime {
        from + self.keys.refresh_ttl
    }

    /// Spends `refresh_token` for a new pair. A token presented a second time revokes its family,
    /// unless it was spent less than `auth.refresh_reuse_grace` ago: then it answers another pair of
    /// the same family, so that two tabs refreshing at once both stay signed in.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, AuthError> {
        let (successor, successor_hash) = new_refresh_token();
        let at = now();
        let rotation = self
            .store
            .rotate_refresh_token(
                &hash_refresh_token(refresh_token),
                &successor_hash,
                self.refresh_expiry(at),
                at,
                self.refresh_reuse_grace,
            )
            .await?;
        let family = match rotation {
            Rotation::Rotated(family) => family,
            Rotation::WithinGrace(family) => {
                tracing::debug!(
                    user_id = family.user_id,
                    "a refresh token spent moments ago was presented again; answering another pair of its session"
                );
                family
            }
            Rotation::Unknown => return Err(AuthError::UnknownRefreshToken),
            Rotation::Expired => return Err(AuthError::RefreshExpired),
            Rotation::Reused(family) => {
                tracing::warn!(
                    user_id = family.user_id,
                    "a spent refresh token was presented again; its session is revoked"
                );
                self.hub
                    .close_session(family.user_id, &family.family_id, CloseCode::SessionEnded);
                return Err(AuthError::RefreshReused);
            }
        };
        let user = self
            .store
            .user(family.user_id)
            .await?
            .ok_or(AuthError::UnknownUser)?;
        Ok(self.session(user, successor, &family.family_id))
    }

    /// Ends the session `refresh_token` belongs to: its whole family is revoked, not only this token.
    /// Revoking the token alone would leave its spent predecessors able to mint a new pair within
    /// the reuse grace, and an older tab's token would not sign the session out.
    /// Its sockets close with 4001, whether this call or an earlier one revoked it.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), AuthError> {
        let family = self
            .store
            .revoke_refresh_family(&hash_refresh_token(refresh_token), now())
            .await?;
        if let Some(family) = family {
            self.hub
                .close_session(family.user_id, &family.family_id, CloseCode::SessionEnded);
        }
        Ok(())
    }

    /// Ends every session of `user` (`teachlyd admin kick --revoke`): revokes all their refresh
    /// tokens, then closes each session's sockets with 4001 and refuses its access tokens from now
    /// on. Answers how many refresh tokens it revoked.
    pub async fn end_sessions_of(&self, user: UserId) -> Result<u64, StoreError> {
        let revoked = self.store.revoke_user_refresh_tokens(user, now()).await?;
        for family in &revoked.families {
            self.hub.close_session(user, family, CloseCode::Kicked);
        }
        Ok(revoked.tokens)
    }
}

/// Whether `text` holds an email address: an `@` with a non-space character on each side. A public
/// name never does (SPEC §4), since every signed-in user can search names.
pub fn holds_email_address(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    chars
        .windows(3)
        .any(|around| around[1] == '@' && !around[0].is_whitespace() && !around[2].is_whitespace())
}
