//! Authentication use cases: registration, login, refresh, logout, sessions, token
//! checks, user administration and operators' reads of a user. This layer composes the
//! aggregates (through the command layer), the password pool, the token service and the
//! revocation index; the HTTP handlers only translate to and from it.

mod admin;
pub mod erasure;
mod flows;
mod guard;
pub mod input;
pub mod links;
mod passwords;
mod reads;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;

use crate::clock::SharedClock;
pub use crate::commands::ClientInfo;
use crate::commands::CommandContext;
use crate::commands::credit_account::CreditAccount;
use crate::commands::email_claim::{EmailClaim, claim_id, legacy_claim_id};
use crate::commands::login_attempts::{LockoutPolicy, LoginAttempts};
use crate::commands::security_notice::{SecurityNotice, SecurityNoticeCommand};
use crate::commands::session::Session;
use crate::commands::user::User;
use crate::commands::{Aggregates, CommandBus, Retryable};
use crate::domain::{Credits, uuid_at};
use crate::events::auth::Role;
use crate::events::auth::SessionPersonal;
use crate::events::{EventStore, LogCursor};
use crate::projections::Projector;
use crate::security::passwords::{PasswordPool, PoolError};
use crate::security::revocations::Revocations;
use crate::security::tokens::{AccessClaims, TokenError, TokenService};

pub use admin::UserChange;
pub use flows::Registered;
pub use input::{LoginInput, Registration};
pub use sessions::{CurrentSession, SessionSummary};

/// Why an authentication use case failed. The API maps each to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("validation failed")]
    Validation(Vec<String>),
    #[error("the e-mail address is already registered")]
    EmailTaken,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("unauthorized: {0}")]
    Unauthorized(TokenError),
    #[error("not found")]
    NotFound,
    #[error("the password hashing queue is full")]
    Busy,
    #[error("the e-mail address is not verified")]
    EmailNotVerified,
    #[error("invalid, expired or used reset token")]
    InvalidResetToken,
    #[error("invalid, expired or used verification token")]
    InvalidVerificationToken,
    #[error("the current password is wrong")]
    InvalidCurrentPassword,
    #[error("the user was already erased")]
    AlreadyErased,
    /// Refused without a password check: another attempt is in flight, the delay after a
    /// failed check has not passed, or the client's class is locked.
    #[error("too many attempts; retry after {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    #[error("a concurrent change could not be resolved")]
    Conflict,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Retryable for AuthError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict)
    }
}

impl From<PoolError> for AuthError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Busy => Self::Busy,
            PoolError::Failed(text) => Self::Internal(anyhow::anyhow!(text)),
        }
    }
}

/// Maps a command-layer failure whose user errors were already handled.
pub(crate) fn infra<E: std::error::Error>(error: AggregateError<E>) -> AuthError {
    match error {
        AggregateError::AggregateConflict => AuthError::Conflict,
        other => AuthError::Internal(anyhow::anyhow!("{other}")),
    }
}

/// The user part of sign-in answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub email_verified: bool,
    pub created_at: Option<DateTime<Utc>>,
}

impl UserView {
    fn of(user: &User) -> Self {
        Self {
            id: user.id.clone().unwrap_or_default(),
            email: user.email().to_owned(),
            name: user.name().map(str::to_owned),
            role: user.role,
            email_verified: user.email_verified,
            created_at: user.registered_at,
        }
    }
}

/// A successful registration, login or refresh.
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub user: UserView,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

/// Tunables of the use cases.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub refresh_grace: chrono::Duration,
    pub signup_bonus: Credits,
    pub daily_timezone: chrono_tz::Tz,
    pub read_your_writes: Duration,
    pub lockout: LockoutPolicy,
    /// How long an attempt waits for another one in flight on its address and class.
    pub login_queue_wait: Duration,
    pub require_verified_email: bool,
    /// Links in e-mails point here unless an allowed `redirectTo` is given.
    pub frontend: links::LinkBase,
    /// Origins a `redirectTo` may point to.
    pub redirect_origins: links::RedirectOrigins,
}

/// The aggregates the use cases command.
#[derive(Clone)]
pub struct AuthAggregates {
    pub users: CommandBus<User>,
    pub claims: CommandBus<EmailClaim>,
    pub sessions: CommandBus<Session>,
    pub attempts: CommandBus<LoginAttempts>,
    pub credits: CommandBus<CreditAccount>,
    pub notices: CommandBus<SecurityNotice>,
}

impl AuthAggregates {
    /// The buses authentication uses, from the process's set.
    pub fn of(all: &Aggregates) -> Self {
        Self {
            users: all.users.clone(),
            claims: all.claims.clone(),
            sessions: all.sessions.clone(),
            attempts: all.attempts.clone(),
            credits: all.credits.clone(),
            notices: all.notices.clone(),
        }
    }
}

/// The authentication service of one process.
pub struct AuthService {
    store: EventStore,
    projector: Arc<Projector>,
    clock: SharedClock,
    aggregates: AuthAggregates,
    passwords: PasswordPool,
    tokens: TokenService,
    revocations: Arc<Revocations>,
    successor_key: [u8; 32],
    /// Keys the e-mail claim ids (`commands::email_claim::claim_id`).
    email_id_key: [u8; 32],
    settings: AuthSettings,
    /// Local attempts on one address and client class take turns here.
    turns: guard::TurnQueue,
}

impl AuthService {
    /// Wires the service.
    #[expect(clippy::too_many_arguments, reason = "one constructor wiring every collaborator")]
    pub fn new(
        store: EventStore,
        projector: Arc<Projector>,
        clock: SharedClock,
        aggregates: AuthAggregates,
        passwords: PasswordPool,
        tokens: TokenService,
        revocations: Arc<Revocations>,
        successor_key: [u8; 32],
        email_id_key: [u8; 32],
        settings: AuthSettings,
    ) -> Self {
        Self {
            store,
            projector,
            clock,
            aggregates,
            passwords,
            tokens,
            revocations,
            successor_key,
            email_id_key,
            settings,
            turns: guard::TurnQueue::default(),
        }
    }

    /// The claim of a normalised address and its stream id: the keyed stream, or the
    /// unkeyed one of a release before erasure existed while that still holds the address
    /// (docs/PRIVACY.md). The address's login protection lives under the same id.
    pub(crate) async fn claim_of(&self, email: &str) -> Result<(String, EmailClaim), AuthError> {
        let keyed = claim_id(&self.email_id_key, email);
        let (claim, _) = self.aggregates.claims.load(&keyed).await.map_err(infra)?;
        if claim.user_id.is_some() {
            return Ok((keyed, claim));
        }
        let legacy = legacy_claim_id(email);
        let (held, _) = self.aggregates.claims.load(&legacy).await.map_err(infra)?;
        if held.user_id.is_some() {
            return Ok((legacy, held));
        }
        Ok((keyed, claim))
    }

    /// The token service (JWKS, issuing).
    pub fn tokens(&self) -> &TokenService {
        &self.tokens
    }

    /// The password hashing pool.
    pub fn passwords(&self) -> &PasswordPool {
        &self.passwords
    }

    /// The revocation index.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Checks an access token completely: signature, claims, and that its session and
    /// user still admit it. Never calls the service's own HTTP endpoints.
    pub async fn authenticate(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let claims = self.tokens.verify(token).await?;
        self.revocations.check(&claims)?;
        Ok(claims)
    }

    /// Waits (bounded) until the read models show the write at `cursor`.
    async fn settle(&self, cursor: Option<LogCursor>) {
        if let Some(cursor) = cursor {
            self.projector.wait_for(cursor, self.settings.read_your_writes).await;
        }
    }

    /// Waits (bounded) until the read models show everything committed so far.
    async fn settle_all(&self) -> anyhow::Result<()> {
        let head = self.store.committed_head().await?;
        self.projector.wait_for(head, self.settings.read_your_writes).await;
        Ok(())
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Records that a client passed a rate limit (a `rate_limited` security event).
    pub async fn record_rate_limited(&self, rule: &str, user_id: Option<&str>, client: &ClientInfo) {
        let now = self.now();
        let event = crate::events::auth::SecurityNoticeEvent::RateLimitExceeded {
            rule: rule.to_owned(),
            user_id: user_id.map(str::to_owned),
            personal: SessionPersonal::of(client),
            at: now,
        };
        let ctx = CommandContext::for_client(client, user_id.unwrap_or(crate::events::SYSTEM_ACTOR), now);
        let id = uuid_at(now).to_string();
        if let Err(error) =
            self.aggregates.notices.execute(&id, SecurityNoticeCommand::Record(event), &ctx).await
        {
            tracing::warn!(%error, "could not record a rate_limited security event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::revocations::session_started_ms;

    #[test]
    fn session_ids_carry_their_start_in_milliseconds() {
        let at = DateTime::parse_from_rfc3339("2026-11-26T12:00:00.123456Z").unwrap().with_timezone(&Utc);
        let id = uuid_at(at).to_string();
        assert_eq!(session_started_ms(&id), Some(at.timestamp_millis()));
    }
}
