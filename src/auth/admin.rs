//! User administration for operators (the `user` CLI subcommands).

use super::input::Email;
use super::{AuthError, AuthService, infra};
use crate::commands::CommandContext;
use crate::commands::user::{UserCommand, UserError};
use crate::events::auth::Role;

/// What an operator can change about a user.
#[derive(Clone, Copy, Debug)]
pub enum UserChange {
    SetRole(Role),
    Disable,
    Enable,
}

impl AuthService {
    /// Applies a change to the user registered under `email`. A role change or a disable
    /// revokes every session the user has. Returns whether anything changed.
    pub async fn change_user(&self, email: &str, change: UserChange) -> Result<bool, AuthError> {
        let email = Email::parse(email).map_err(|m| AuthError::Validation(vec![m]))?;
        let (_, claim) = self.claim_of(email.as_str()).await?;
        let user_id = claim.user_id.ok_or(AuthError::NotFound)?;
        let now = self.now();
        let command = match change {
            UserChange::SetRole(role) => UserCommand::ChangeRole { role, at: now },
            UserChange::Disable => UserCommand::Disable { at: now },
            UserChange::Enable => UserCommand::Enable { at: now },
        };
        let committed =
            match self.aggregates.users.execute(&user_id, command, &CommandContext::system(now)).await {
                Ok(committed) => committed,
                Err(cqrs_es::AggregateError::UserError(UserError::NotFound)) => {
                    return Err(AuthError::NotFound);
                }
                Err(other) => return Err(infra(other)),
            };
        if !committed.events.is_empty() {
            match change {
                UserChange::SetRole(_) => self.revocations.revoke_user_sessions(&user_id, now, None),
                UserChange::Disable => {
                    self.revocations.revoke_user_sessions(&user_id, now, None);
                    self.revocations.set_disabled(&user_id, true);
                }
                UserChange::Enable => self.revocations.set_disabled(&user_id, false),
            }
        }
        self.settle(committed.cursor).await;
        Ok(!committed.events.is_empty())
    }
}
