//! Erasing a person (GDPR Art. 17) by crypto-shredding (docs/PRIVACY.md): one append
//! (`UserErased`, the address released, its login protection cleared), then the storage
//! side ([`crate::events::erasure`]): the data key destroyed, old plaintext scrubbed,
//! messages to the address deleted. The projections blank their personal columns when
//! they apply `UserErased`; the credit history keeps its amounts and the log its hashes.

use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;

use super::input::{Email, Password};
use super::{AuthError, AuthService, ClientInfo, infra};
use crate::commands::email_claim::{EmailClaimCommand, legacy_claim_id};
use crate::commands::login_attempts::{AttemptPolicy, LoginAttemptCommand};
use crate::commands::user::{UserCommand, UserError};
use crate::commands::{CommandContext, UnitOfWork, commit_error, with_retries};
use crate::events::auth::SessionPersonal;
use crate::events::erasure::{Erasure, Scrubbed};
use crate::security::tokens::AccessClaims;

use super::guard::Guarded;

/// What an erasure did.
#[derive(Clone, Debug)]
pub struct Erased {
    pub user_id: String,
    pub erased_at: DateTime<Utc>,
    /// Events written before sealing that held the person's data in plaintext.
    pub plaintext_events: u64,
    pub scrubbed: Scrubbed,
}

/// Whom an operator erases.
#[derive(Clone, Copy, Debug)]
pub enum EraseTarget<'a> {
    Id(&'a str),
    Email(&'a str),
}

impl AuthService {
    /// The caller erases their own account, proving the password under the same guard as
    /// a password change (a wrong one is `InvalidCurrentPassword` and changes nothing).
    pub async fn erase_own_account(
        &self,
        claims: &AccessClaims,
        password: Password,
        client: &ClientInfo,
    ) -> Result<Erased, AuthError> {
        let (user, _) = self.aggregates.users.load(&claims.sub).await.map_err(infra)?;
        if !user.exists() || user.erased {
            return Err(AuthError::NotFound);
        }
        let stream = format!("session:{}", claims.sid);
        let guarded = Guarded {
            stream: &stream,
            policy: AttemptPolicy::change_password(),
            personal: SessionPersonal::of(client),
        };
        if self.guarded_check(guarded, Some(user), password, client).await?.is_none() {
            return Err(AuthError::InvalidCurrentPassword);
        }
        self.erase(&claims.sub, client, &claims.sub).await
    }

    /// An operator erases a user by id or address. An erasure that was interrupted after
    /// its append (the process died) is completed; a finished one is `AlreadyErased`.
    pub async fn erase_user(
        &self,
        target: EraseTarget<'_>,
        client: &ClientInfo,
        actor: &str,
    ) -> Result<Erased, AuthError> {
        let user_id = match target {
            EraseTarget::Id(id) => id.to_owned(),
            EraseTarget::Email(address) => {
                let email = Email::parse(address).map_err(|m| AuthError::Validation(vec![m]))?;
                let (_, claim) = self.claim_of(email.as_str()).await?;
                claim.user_id.ok_or(AuthError::NotFound)?
            }
        };
        self.erase(&user_id, client, actor).await
    }

    async fn erase(&self, user_id: &str, client: &ClientInfo, actor: &str) -> Result<Erased, AuthError> {
        let (user, _) = self.aggregates.users.load(user_id).await.map_err(infra)?;
        if !user.exists() {
            return Err(AuthError::NotFound);
        }
        if user.erased {
            return self.complete_erasure(user_id).await;
        }
        let email = user.email().to_owned();
        let (claim, holder) = self.claim_of(&email).await?;
        let legacy = (claim == legacy_claim_id(&email)).then(|| claim.clone());
        let plaintext_events =
            self.store.plaintext_events(user_id, legacy.as_deref()).await.map_err(store)?;
        let now = self.now();
        let ctx = CommandContext::for_client(client, actor, now);
        let cursor = with_retries(self.store.metrics(), "erasure", || async {
            let mut unit = UnitOfWork::new(self.store.clone(), ctx.clone());
            let erase = UserCommand::Erase { plaintext_events, legacy_claim: legacy.is_some(), at: now };
            unit.execute(&self.aggregates.users, user_id, erase).await.map_err(|e| match e {
                AggregateError::UserError(UserError::Erased) => AuthError::AlreadyErased,
                AggregateError::UserError(UserError::NotFound) => AuthError::NotFound,
                other => infra(other),
            })?;
            if holder.user_id.as_deref() == Some(user_id) {
                let release = EmailClaimCommand::Release { user_id: user_id.to_owned(), at: now };
                unit.execute(&self.aggregates.claims, &claim, release).await.map_err(infra)?;
            }
            unit.execute(&self.aggregates.attempts, &claim, LoginAttemptCommand::Clear { at: now })
                .await
                .map_err(infra)?;
            unit.commit().await.map_err(|e| infra(commit_error::<UserError>(e)))
        })
        .await?;
        self.revocations.revoke_user_sessions(user_id, now, None);
        self.revocations.set_disabled(user_id, true);
        let erasure = Erasure {
            user_id: user_id.to_owned(),
            erased_at: now,
            legacy_claim_id: legacy,
            email: Some(email),
        };
        let scrubbed = self.scrub(&erasure).await?;
        tracing::info!(user_id, plaintext_events, scrubbed = scrubbed.events, "user erased");
        // Once the projections blanked the person, their old column values go from the
        // SQLite file's write-ahead log too.
        self.settle(cursor).await;
        self.store.checkpoint().await.map_err(store)?;
        Ok(Erased { user_id: user_id.to_owned(), erased_at: now, plaintext_events, scrubbed })
    }

    /// The storage side, then the stream list's rows of renamed legacy streams.
    async fn scrub(&self, erasure: &Erasure) -> Result<Scrubbed, AuthError> {
        let scrubbed = self.store.scrub(erasure).await.map_err(store)?;
        if let Some(legacy) = &erasure.legacy_claim_id {
            let renamed = format!("erased:{}", erasure.user_id);
            crate::projections::streams::rename_erased(self.store.db(), legacy, &renamed)
                .await
                .map_err(|e| AuthError::Internal(e.context("renaming the erased person's legacy streams")))?;
        }
        Ok(scrubbed)
    }

    /// Finishes the storage side of an erasure whose append is recorded.
    async fn complete_erasure(&self, user_id: &str) -> Result<Erased, AuthError> {
        if self.store.erasure_complete(user_id).await.map_err(store)? {
            return Err(AuthError::AlreadyErased);
        }
        // This process may already have read the erasure and stopped using the key; it
        // still exists until the step below, which needs the person's address.
        self.store.personal_keys().recover(&format!("user:{user_id}"));
        let registered = self.store.read_stream("user", user_id, 0, 1).await.map_err(store)?;
        let email = match registered.first().map(|e| e.decode::<crate::events::auth::UserEvent>()) {
            Some(Ok(crate::events::auth::UserEvent::UserRegistered { personal, .. })) => personal.email,
            _ => return Err(AuthError::NotFound),
        };
        let email = email.as_str();
        // The append may have been the user's alone (a command outside this flow): the
        // address must still be released and its protection state cleared.
        let (claim, holder) = self.claim_of(email).await?;
        if holder.user_id.as_deref() == Some(user_id) {
            let now = self.now();
            let ctx = CommandContext::system(now);
            let mut unit = UnitOfWork::new(self.store.clone(), ctx);
            let release = EmailClaimCommand::Release { user_id: user_id.to_owned(), at: now };
            unit.execute(&self.aggregates.claims, &claim, release).await.map_err(infra)?;
            unit.execute(&self.aggregates.attempts, &claim, LoginAttemptCommand::Clear { at: now })
                .await
                .map_err(infra)?;
            let cursor = unit.commit().await.map_err(|e| infra(commit_error::<UserError>(e)))?;
            self.settle(cursor).await;
        }
        let legacy = legacy_claim_id(email);
        let legacy_used =
            !self.store.read_stream("email_claim", &legacy, 0, 1).await.map_err(store)?.is_empty();
        let now = self.now();
        let erasure = Erasure {
            user_id: user_id.to_owned(),
            erased_at: now,
            legacy_claim_id: legacy_used.then_some(legacy),
            email: Some(email.to_owned()),
        };
        let scrubbed = self.scrub(&erasure).await?;
        tracing::info!(user_id, scrubbed = scrubbed.events, "interrupted erasure completed");
        Ok(Erased {
            user_id: user_id.to_owned(),
            erased_at: now,
            plaintext_events: scrubbed.events,
            scrubbed,
        })
    }
}

/// A store failure while erasing (the cause is logged once by the API's error mapping).
fn store(error: crate::events::StoreError) -> AuthError {
    AuthError::Internal(anyhow::Error::from(error).context("erasing a user"))
}
