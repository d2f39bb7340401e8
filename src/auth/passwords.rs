//! Password change and reset, e-mail verification.

use cqrs_es::AggregateError;
use uuid::Uuid;

use super::guard::Guarded;
use super::input::{Email, Password};
use super::links::LinkBase;
use super::{AuthError, AuthService, ClientInfo, infra, uuid_at};
use crate::commands::CommandContext;
use crate::commands::login_attempts::{AttemptPolicy, LoginAttemptCommand};
use crate::commands::user::{UserCommand, UserError};
use crate::commands::{UnitOfWork, commit_error, with_retries};
use crate::events::auth::SessionPersonal;
use crate::events::{LogCursor, OutgoingMail};
use crate::mail;
use crate::security::refresh::OpaqueToken;
use crate::security::tokens::AccessClaims;

/// How long a password-reset link works.
pub const RESET_TTL: chrono::Duration = chrono::Duration::hours(1);

impl AuthService {
    /// Changes the caller's password after checking the current one (under the same
    /// brute-force guard as login). Every other session of the user is revoked.
    pub async fn change_password(
        &self,
        claims: &AccessClaims,
        current: Password,
        new: Password,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        let (user, _) = self.aggregates.users.load(&claims.sub).await.map_err(infra)?;
        if !user.exists() {
            return Err(AuthError::NotFound);
        }
        // Judged on the session alone: a lock that others caused on the address does not
        // block the signed-in owner.
        let stream = format!("session:{}", claims.sid);
        let guarded = Guarded {
            stream: &stream,
            policy: AttemptPolicy::change_password(),
            personal: SessionPersonal::of(client),
        };
        if self.guarded_check(guarded, Some(user), current, client).await?.is_none() {
            return Err(AuthError::InvalidCurrentPassword);
        }
        let password_hash = self.passwords.hash(new.into_inner()).await?;
        let now = self.now();
        let command =
            UserCommand::ChangePassword { password_hash, keep_session: claims.sid.clone(), at: now };
        let committed = self
            .aggregates
            .users
            .execute(&claims.sub, command, &CommandContext::for_client(client, &claims.sub, now))
            .await
            .map_err(infra)?;
        self.revocations.revoke_user_sessions(&claims.sub, now, Some(&claims.sid));
        self.settle(committed.cursor).await;
        Ok(())
    }

    /// Starts a password reset: for a registered address a single-use token is mailed;
    /// for any other nothing is sent. The caller cannot tell which (same answer, one
    /// append either way).
    pub async fn forgot_password(
        &self,
        email: Email,
        redirect_to: Option<&str>,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        let base = self.link_base(redirect_to)?;
        let (claim, holder) = self.claim_of(email.as_str()).await?;
        let now = self.now();
        let cursor = match holder.user_id {
            None => {
                let record = LoginAttemptCommand::RecordUnknownReset {
                    personal: SessionPersonal::of(client),
                    at: now,
                };
                let ctx = CommandContext::for_client(client, crate::events::SYSTEM_ACTOR, now);
                self.aggregates.attempts.execute(&claim, record, &ctx).await.map_err(infra)?.cursor
            }
            Some(user_id) => {
                let owner = Uuid::parse_str(&user_id).map_err(|e| AuthError::Internal(e.into()))?;
                let token = OpaqueToken::generate(owner);
                let expires_at = now + RESET_TTL;
                let link = base.link("reset-password", &token.encode());
                let message =
                    mail::password_reset(uuid_at(now).to_string(), email.as_str(), &link, now, expires_at);
                let command = UserCommand::RequestPasswordReset { token: token.hash(), expires_at, at: now };
                self.with_mail(&user_id, command, message, client).await?
            }
        };
        self.settle(cursor).await;
        Ok(())
    }

    /// Sets a new password with a reset token; every session of the user is revoked.
    pub async fn reset_password(
        &self,
        token: &str,
        new: Password,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        let token = OpaqueToken::parse(token).ok_or(AuthError::InvalidResetToken)?;
        let user_id = token.owner().to_string();
        let now = self.now();
        // Check before paying for a hash; the command checks again, atomically.
        let (user, _) = self.aggregates.users.load(&user_id).await.map_err(infra)?;
        let usable =
            user.reset.as_ref().is_some_and(|r| r.hash.matches(&token.hash()) && now <= r.expires_at);
        if !usable {
            return Err(AuthError::InvalidResetToken);
        }
        let password_hash = self.passwords.hash(new.into_inner()).await?;
        let (claim, _) = self.claim_of(user.email()).await?;
        let ctx = CommandContext::for_client(client, &user_id, now);
        // The reset and the unlock of the address (every client class) are one append.
        let cursor = with_retries(self.store.metrics(), "password-reset", || async {
            let mut unit = UnitOfWork::new(self.store.clone(), ctx.clone());
            let command = UserCommand::ResetPassword {
                token: token.hash(),
                password_hash: password_hash.clone(),
                at: now,
            };
            unit.execute(&self.aggregates.users, &user_id, command).await.map_err(|e| match e {
                AggregateError::UserError(UserError::InvalidResetToken | UserError::NotFound) => {
                    AuthError::InvalidResetToken
                }
                other => infra(other),
            })?;
            let unlock = LoginAttemptCommand::Unlock { user_id: Some(user_id.clone()), at: now };
            unit.execute(&self.aggregates.attempts, &claim, unlock).await.map_err(infra)?;
            unit.commit().await.map_err(|e| infra(commit_error::<UserError>(e)))
        })
        .await?;
        self.revocations.revoke_user_sessions(&user_id, now, None);
        self.settle(cursor).await;
        Ok(())
    }

    /// Marks the address verified with a verification token.
    pub async fn verify_email(&self, token: &str, client: &ClientInfo) -> Result<(), AuthError> {
        let token = OpaqueToken::parse(token).ok_or(AuthError::InvalidVerificationToken)?;
        let user_id = token.owner().to_string();
        let now = self.now();
        let command = UserCommand::VerifyEmail { token: token.hash(), at: now };
        match self
            .aggregates
            .users
            .execute(&user_id, command, &CommandContext::for_client(client, &user_id, now))
            .await
        {
            Ok(committed) => {
                self.settle(committed.cursor).await;
                Ok(())
            }
            Err(AggregateError::UserError(UserError::InvalidVerificationToken | UserError::NotFound)) => {
                Err(AuthError::InvalidVerificationToken)
            }
            Err(other) => Err(infra(other)),
        }
    }

    /// Mails a new verification token (the previous one stops working). Nothing happens
    /// when the address is already verified.
    pub async fn resend_verification(
        &self,
        claims: &AccessClaims,
        client: &ClientInfo,
    ) -> Result<bool, AuthError> {
        let (user, _) = self.aggregates.users.load(&claims.sub).await.map_err(infra)?;
        if user.email_verified {
            return Ok(false);
        }
        let owner = Uuid::parse_str(&claims.sub).map_err(|e| AuthError::Internal(e.into()))?;
        let now = self.now();
        let token = OpaqueToken::generate(owner);
        let expires_at = now + super::flows::VERIFICATION_TTL;
        let message = self.verification_mail(user.email(), &token, now, expires_at);
        let command = UserCommand::RequestEmailVerification { token: token.hash(), expires_at, at: now };
        let cursor = self.with_mail(&claims.sub, command, message, client).await?;
        self.settle(cursor).await;
        Ok(true)
    }

    /// The verification message for a token.
    pub(super) fn verification_mail(
        &self,
        email: &str,
        token: &OpaqueToken,
        now: chrono::DateTime<chrono::Utc>,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> OutgoingMail {
        let link = self.settings.frontend.link("verify-email", &token.encode());
        mail::email_verification(uuid_at(now).to_string(), email, &link, now, expires_at)
    }

    /// Runs one user command and queues its message in the same append.
    async fn with_mail(
        &self,
        user_id: &str,
        command: UserCommand,
        message: OutgoingMail,
        client: &ClientInfo,
    ) -> Result<Option<LogCursor>, AuthError> {
        let ctx = CommandContext::for_client(client, user_id, message.created_at);
        with_retries(self.store.metrics(), "user-mail", || async {
            let mut unit = UnitOfWork::new(self.store.clone(), ctx.clone());
            unit.execute(&self.aggregates.users, user_id, command.clone()).await.map_err(infra)?;
            unit.queue_mail(message.clone());
            unit.commit().await.map_err(|e| infra(commit_error::<UserError>(e)))
        })
        .await
    }

    /// Where reset links point: an allowed `redirectTo`, or the frontend.
    fn link_base(&self, redirect_to: Option<&str>) -> Result<LinkBase, AuthError> {
        match redirect_to {
            None => Ok(self.settings.frontend.clone()),
            Some(raw) => LinkBase::parse(raw, &self.settings.redirect_origins)
                .map_err(|problem| AuthError::Validation(vec![problem])),
        }
    }
}
