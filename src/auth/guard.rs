//! Password checks under the brute-force guard of the e-mail address
//! (`commands::login_attempts`): begin an attempt, verify, finish it.

use super::input::Password;
use super::{AuthError, AuthService, ClientInfo, infra, uuid_at};
use crate::commands::login_attempts::{LockoutPolicy, LoginAttemptCommand, LoginAttempts};
use crate::commands::user::User;
use crate::commands::{CommandBus, CommandContext};
use crate::events::SYSTEM_ACTOR;
use crate::events::auth::{LoginFailure, SessionPersonal};

impl AuthService {
    /// Checks `password` for the address with claim id `claim` (whose user, if any, is
    /// `user`). `Ok(Some(user))` when it may sign in; `Ok(None)` for every refusal
    /// (unknown address, wrong password, disabled, throttled, locked), all alike. Unknown
    /// addresses are verified against a dummy hash, so every checked attempt costs one
    /// argon2 verification; refused attempts cost none and count as failures.
    pub(super) async fn guarded_check(
        &self,
        claim: &str,
        user: Option<User>,
        password: Password,
        client: &ClientInfo,
    ) -> Result<Option<User>, AuthError> {
        let now = self.now();
        let user_id = user.as_ref().and_then(|u| u.id.clone());
        let ctx = client.context(user_id.as_deref().unwrap_or(SYSTEM_ACTOR), now);
        let attempt_id = uuid_at(now).to_string();
        let policy = self.settings.lockout;
        let begin = LoginAttemptCommand::Begin {
            attempt_id: attempt_id.clone(),
            user_id: user_id.clone(),
            personal: client.personal(),
            policy,
            at: now,
        };
        let begun = self.aggregates.attempts.execute(claim, begin, &ctx).await.map_err(infra)?;
        if !LoginAttempts::began(&begun.events) {
            self.settle(begun.cursor).await;
            return Ok(None);
        }
        let guard = Attempt {
            attempts: self.aggregates.attempts.clone(),
            claim: claim.to_owned(),
            attempt_id,
            user_id: user_id.clone(),
            personal: client.personal(),
            policy,
            ctx,
            open: true,
        };
        let password = password.into_inner();
        let verified = match &user {
            Some(user) => self.passwords.verify(password, &user.password_hash).await,
            None => self.passwords.verify_dummy(password).await,
        };
        let verified = match verified {
            Ok(verified) => verified,
            Err(error) => {
                guard.finish(None, self.now()).await?;
                return Err(error.into());
            }
        };
        let outcome = match &user {
            None => Err(LoginFailure::UnknownEmail),
            Some(_) if !verified => Err(LoginFailure::BadPassword),
            Some(user) if user.disabled => Err(LoginFailure::Disabled),
            Some(_) => Ok(user_id.clone().unwrap_or_default()),
        };
        let failed = outcome.is_err();
        let cursor = guard.finish(Some(outcome), self.now()).await?;
        if failed {
            self.settle(cursor).await;
            return Ok(None);
        }
        Ok(user)
    }
}

/// An attempt in flight. If it is dropped unfinished (the client went away while the
/// password was being checked), it is finished as abandoned in the background, so the
/// address is not held busy.
struct Attempt {
    attempts: CommandBus<LoginAttempts>,
    claim: String,
    attempt_id: String,
    user_id: Option<String>,
    personal: SessionPersonal,
    policy: LockoutPolicy,
    ctx: CommandContext,
    open: bool,
}

impl Attempt {
    fn command(
        &self,
        outcome: Option<Result<String, LoginFailure>>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> LoginAttemptCommand {
        LoginAttemptCommand::Finish {
            attempt_id: self.attempt_id.clone(),
            outcome,
            user_id: self.user_id.clone(),
            personal: self.personal.clone(),
            policy: self.policy,
            at,
        }
    }

    async fn finish(
        mut self,
        outcome: Option<Result<String, LoginFailure>>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<crate::events::LogCursor>, AuthError> {
        self.open = false;
        let command = self.command(outcome, at);
        let ctx = CommandContext { now: at, ..self.ctx.clone() };
        let committed = self.attempts.execute(&self.claim, command, &ctx).await.map_err(infra)?;
        Ok(committed.cursor)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let command = self.command(None, self.ctx.now);
        let (attempts, claim, ctx) = (self.attempts.clone(), self.claim.clone(), self.ctx.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = attempts.execute(&claim, command, &ctx).await;
            });
        }
    }
}
