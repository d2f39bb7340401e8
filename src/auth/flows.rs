//! Registration, login, refresh and logout.

use cqrs_es::AggregateError;

use super::guard::Guarded;
use super::input::{LoginInput, Registration};
use super::{AuthError, AuthService, ClientInfo, SignedIn, UserView, infra, uuid_at};
use crate::commands::CommandContext;
use crate::commands::credit_account::CreditCommand;
use crate::commands::email_claim::{EmailClaimCommand, EmailClaimError};
use crate::commands::login_attempts::{AttemptPolicy, LoginAttemptCommand};
use crate::commands::session::{SessionCommand, SessionError};
use crate::commands::user::{User, UserCommand};
use crate::commands::{UnitOfWork, commit_error, with_retries};
use crate::events::auth::{RevokeReason, SessionEvent, SessionOrigin, SessionPersonal, UserPersonal};
use crate::security::refresh::{OpaqueToken, RefreshToken};
use crate::security::tokens::{ACCESS_TOKEN_TTL_SECS, AccessClaims};

/// What a registration produced.
#[derive(Debug)]
pub enum Registered {
    /// The user is signed in at once.
    SignedIn(SignedIn),
    /// `REQUIRE_VERIFIED_EMAIL`: the user must verify the address before signing in.
    VerificationRequired(UserView),
}

/// How long an e-mail verification link works.
pub const VERIFICATION_TTL: chrono::Duration = chrono::Duration::hours(48);

impl AuthService {
    /// Registers a user and signs them in: claims the e-mail, creates the user, its
    /// first session and its credit account in one atomic append.
    pub async fn register(&self, input: Registration, client: &ClientInfo) -> Result<Registered, AuthError> {
        let Registration { email, password, name } = input;
        // A cheap early answer for a taken address; the unit of work below decides.
        let (claim, existing) = self.claim_of(email.as_str()).await?;
        if existing.user_id.is_some() {
            return Err(AuthError::EmailTaken);
        }
        let password_hash = self.passwords.hash(password.into_inner()).await?;
        let now = self.now();
        let user_uuid = uuid_at(now);
        let user_id = user_uuid.to_string();
        let session_id = uuid_at(now);
        let refresh = RefreshToken::generate(session_id);
        let session_id = session_id.to_string();
        let signs_in = !self.settings.require_verified_email;
        let verification = OpaqueToken::generate(user_uuid);
        let verification_expires = now + VERIFICATION_TTL;
        let mail = self.verification_mail(email.as_str(), &verification, now, verification_expires);
        let ctx = CommandContext::for_client(client, &user_id, now);
        let day = now.with_timezone(&self.settings.daily_timezone).date_naive();
        let personal = UserPersonal { email: email.as_str().to_owned(), name };
        let cursor = with_retries(self.store.metrics(), "registration", || async {
            let mut unit = UnitOfWork::new(self.store.clone(), ctx.clone());
            let claim_cmd = EmailClaimCommand::Claim { user_id: user_id.clone(), at: now };
            unit.execute(&self.aggregates.claims, &claim, claim_cmd).await.map_err(|e| match e {
                AggregateError::UserError(EmailClaimError::Taken) => AuthError::EmailTaken,
                other => infra(other),
            })?;
            let register = UserCommand::Register {
                user_id: user_id.clone(),
                personal: personal.clone(),
                password_hash: password_hash.clone(),
                verification: Some((verification.hash(), verification_expires)),
                at: now,
            };
            unit.execute(&self.aggregates.users, &user_id, register).await.map_err(infra)?;
            unit.queue_mail(mail.clone());
            if signs_in {
                let start = SessionCommand::Start {
                    session_id: session_id.clone(),
                    user_id: user_id.clone(),
                    origin: SessionOrigin::Registration,
                    refresh_hash: refresh.hash(),
                    remember_me: false,
                    personal: SessionPersonal::of(client),
                    at: now,
                };
                unit.execute(&self.aggregates.sessions, &session_id, start).await.map_err(infra)?;
                // The registering client signed in: it is familiar to the account.
                let signed_in = LoginAttemptCommand::RecordSignIn {
                    attempt_id: session_id.clone(),
                    user_id: user_id.clone(),
                    personal: SessionPersonal::of(client),
                    at: now,
                };
                unit.execute(&self.aggregates.attempts, &claim, signed_in).await.map_err(infra)?;
            }
            let open = CreditCommand::Open {
                user_id: user_id.clone(),
                signup_bonus: self.settings.signup_bonus,
                bonus_transaction_id: uuid_at(now).to_string(),
                day,
                at: now,
            };
            unit.execute(&self.aggregates.credits, &user_id, open).await.map_err(infra)?;
            unit.commit().await.map_err(|e| infra(commit_error::<EmailClaimError>(e)))
        })
        .await?;
        self.settle(cursor).await;
        let (user, _) = self.aggregates.users.load(&user_id).await.map_err(infra)?;
        if !signs_in {
            return Ok(Registered::VerificationRequired(UserView::of(&user)));
        }
        Ok(Registered::SignedIn(self.signed_in(&user, &session_id, refresh)?))
    }

    /// Signs a user in with e-mail and password. Unknown e-mail, wrong password and a
    /// disabled account answer alike and cost the same (one argon2 verification).
    pub async fn login(&self, input: LoginInput, client: &ClientInfo) -> Result<SignedIn, AuthError> {
        let (claim, holder) = self.claim_of(input.email.as_str()).await?;
        let user = match &holder.user_id {
            Some(id) => Some(self.aggregates.users.load(id).await.map_err(infra)?.0),
            None => None,
        };
        let personal = SessionPersonal {
            device_id: input.device_id,
            device_name: input.device_name,
            ..SessionPersonal::of(client)
        };
        let guarded = Guarded {
            stream: &claim,
            policy: AttemptPolicy::login(self.settings.lockout),
            personal: personal.clone(),
        };
        let Some((user, attempt)) = self.guarded_verify(guarded, user, input.password, client).await? else {
            return Err(AuthError::InvalidCredentials);
        };
        let user_id = user.id.clone().unwrap_or_default();
        if self.settings.require_verified_email && !user.email_verified {
            attempt.finish(Some(Ok(user_id)), self.now()).await?;
            return Err(AuthError::EmailNotVerified);
        }
        let now = self.now();
        let session_id = uuid_at(now);
        let refresh = RefreshToken::generate(session_id);
        let session_id = session_id.to_string();
        let start = SessionCommand::Start {
            session_id: session_id.clone(),
            user_id: user_id.clone(),
            origin: SessionOrigin::Login,
            refresh_hash: refresh.hash(),
            remember_me: input.remember_me,
            personal,
            at: now,
        };
        let ctx = CommandContext::for_client(client, &user_id, now);
        // The check's success and the session it starts: one append. The attempt's start
        // was committed before the password check (the queue and the lease need it).
        let cursor = with_retries(self.store.metrics(), "login", || async {
            let mut unit = UnitOfWork::new(self.store.clone(), ctx.clone());
            let finish = |at| attempt.command(Some(Ok(user_id.clone())), at);
            unit.execute_at(&self.aggregates.attempts, attempt.stream(), finish, |_| ())
                .await
                .map_err(infra)?;
            unit.execute(&self.aggregates.sessions, &session_id, start.clone()).await.map_err(infra)?;
            unit.commit().await.map_err(|e| infra(commit_error::<SessionError>(e)))
        })
        .await?;
        attempt.close();
        self.settle(cursor).await;
        self.signed_in(&user, &session_id, refresh)
    }

    /// Spends a refresh token for a new one (and a new access token). A spent token
    /// presented again revokes the whole session.
    pub async fn refresh(&self, token: &str, client: &ClientInfo) -> Result<SignedIn, AuthError> {
        let presented = RefreshToken::parse(token).ok_or(AuthError::InvalidRefreshToken)?;
        let session_id = presented.session_id().to_string();
        // The session's owner and start never change: the cached session is good enough.
        let (user_id, started_at) = self
            .aggregates
            .sessions
            .peek(&session_id, |s| (s.user_id.clone(), s.started_at))
            .await
            .map_err(infra)?;
        let Some(started_at) = started_at else { return Err(AuthError::InvalidRefreshToken) };
        let (user, _) = self.aggregates.users.load(&user_id).await.map_err(infra)?;
        let successor = presented.successor(&self.successor_key);
        let now = self.now();
        let command = SessionCommand::Refresh {
            presented: presented.hash(),
            successor: successor.hash(),
            grace: self.settings.refresh_grace,
            user_admits: user.admits_session(&session_id, started_at),
            personal: SessionPersonal::of(client),
            at: now,
        };
        let ctx = CommandContext::for_client(client, &user_id, now);
        let committed = match self.aggregates.sessions.execute(&session_id, command, &ctx).await {
            Ok(committed) => committed,
            Err(AggregateError::UserError(
                SessionError::NotFound
                | SessionError::Revoked
                | SessionError::Expired
                | SessionError::InvalidToken,
            )) => return Err(AuthError::InvalidRefreshToken),
            Err(other) => return Err(infra(other)),
        };
        let revoked = committed.events.iter().find_map(|e| match e {
            SessionEvent::SessionRevoked { revoked_at, .. } => Some(*revoked_at),
            _ => None,
        });
        if let Some(at) = revoked {
            self.revocations.revoke_session(&session_id, at);
            self.settle(committed.cursor).await;
            return Err(AuthError::InvalidRefreshToken);
        }
        self.settle(committed.cursor).await;
        self.signed_in(&user, &session_id, successor)
    }

    /// Revokes the session of a verified access token.
    pub async fn logout(&self, claims: &AccessClaims, client: &ClientInfo) -> Result<(), AuthError> {
        self.revoke(&claims.sid, &claims.sub, RevokeReason::Logout, client).await
    }

    /// Revokes one session (already checked to be the caller's).
    pub(super) async fn revoke(
        &self,
        session_id: &str,
        actor: &str,
        reason: RevokeReason,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        let now = self.now();
        let command = SessionCommand::Revoke { reason, at: now };
        let committed = match self
            .aggregates
            .sessions
            .execute(session_id, command, &CommandContext::for_client(client, actor, now))
            .await
        {
            Ok(committed) => committed,
            Err(AggregateError::UserError(SessionError::NotFound)) => return Err(AuthError::NotFound),
            Err(other) => return Err(infra(other)),
        };
        self.revocations.revoke_session(session_id, now);
        self.settle(committed.cursor).await;
        Ok(())
    }

    fn signed_in(&self, user: &User, session_id: &str, refresh: RefreshToken) -> Result<SignedIn, AuthError> {
        let view = UserView::of(user);
        let (access_token, _) = self
            .tokens
            .issue(&view.id, session_id, &view.email, view.role, view.email_verified, self.now())
            .map_err(|e| AuthError::Internal(anyhow::anyhow!("{e}")))?;
        Ok(SignedIn {
            user: view,
            access_token,
            refresh_token: refresh.encode(),
            expires_in: ACCESS_TOKEN_TTL_SECS,
        })
    }
}
