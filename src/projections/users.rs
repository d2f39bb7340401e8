//! Projection `users` (table `users`): one row per account with its role and status.
//! Analytics jobs may read it; docs/PROJECTIONS.md documents the columns.

use async_trait::async_trait;

use super::Projection;
use crate::db::{DbTime, DbTx};
use crate::events::RecordedEvent;
use crate::events::auth::UserEvent;
use crate::exec;

/// See the module documentation.
pub struct Users;

#[async_trait]
impl Projection for Users {
    fn name(&self) -> &'static str {
        "users"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users"]
    }

    async fn apply(&self, tx: &mut DbTx, event: &RecordedEvent) -> anyhow::Result<()> {
        if event.aggregate_type != "user" {
            return Ok(());
        }
        let id = &event.aggregate_id;
        let at = DbTime(event.recorded_at);
        match event.decode::<UserEvent>()? {
            UserEvent::UserRegistered { personal, role, registered_at, .. } => {
                exec!(
                    tx,
                    "INSERT INTO users (id, email, name, role, email_verified, disabled, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, false, false, $5, $5)",
                    id,
                    personal.email,
                    personal.name,
                    role.as_str(),
                    DbTime(registered_at)
                )?;
            }
            UserEvent::UserRoleChanged { role, sessions_revoked_before, .. } => {
                exec!(
                    tx,
                    "UPDATE users SET role = $2, sessions_revoked_before = $3, kept_session = NULL, updated_at = $4 \
                     WHERE id = $1",
                    id,
                    role.as_str(),
                    DbTime(sessions_revoked_before),
                    at
                )?;
            }
            UserEvent::UserDisabled { sessions_revoked_before } => {
                exec!(
                    tx,
                    "UPDATE users SET disabled = true, sessions_revoked_before = $2, kept_session = NULL, \
                     updated_at = $3 WHERE id = $1",
                    id,
                    DbTime(sessions_revoked_before),
                    at
                )?;
            }
            UserEvent::UserEnabled { .. } => {
                exec!(tx, "UPDATE users SET disabled = false, updated_at = $2 WHERE id = $1", id, at)?;
            }
            UserEvent::PasswordChanged { sessions_revoked_before, kept_session, .. } => {
                exec!(
                    tx,
                    "UPDATE users SET sessions_revoked_before = $2, kept_session = $3, updated_at = $4 WHERE id = $1",
                    id,
                    DbTime(sessions_revoked_before),
                    kept_session,
                    at
                )?;
            }
            UserEvent::PasswordResetCompleted { sessions_revoked_before, .. } => {
                exec!(
                    tx,
                    "UPDATE users SET sessions_revoked_before = $2, kept_session = NULL, updated_at = $3 WHERE id = $1",
                    id,
                    DbTime(sessions_revoked_before),
                    at
                )?;
            }
            UserEvent::EmailVerified { .. } => {
                exec!(tx, "UPDATE users SET email_verified = true, updated_at = $2 WHERE id = $1", id, at)?;
            }
            UserEvent::PasswordResetRequested { .. } | UserEvent::EmailVerificationRequested { .. } => {}
        }
        Ok(())
    }
}
