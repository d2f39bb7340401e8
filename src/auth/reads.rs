//! Operators' reads of another user (the admin reads route family): a user by e-mail,
//! and that user's sessions (revoked and expired ones too) and security events. Each
//! answers from the read models; an unknown user is [`AuthError::NotFound`].

use super::input::Email;
use super::{AuthError, AuthService};
use crate::projections::security_events::{self, SecurityEventRow};
use crate::projections::sessions::{self as session_rows, SessionRecord};
use crate::projections::users::{self, UserRecord};

impl AuthService {
    /// The user registered under `email`, normalised as registration and login normalise
    /// it; `None` if there is none. A malformed address is a validation failure.
    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, AuthError> {
        let email = Email::parse(email).map_err(|message| AuthError::Validation(vec![message]))?;
        Ok(users::by_email(self.store.db(), email.as_str()).await?)
    }

    /// A page of every session of a user, newest first.
    pub async fn sessions_of(
        &self,
        user_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<SessionRecord>, AuthError> {
        self.require_user(user_id).await?;
        Ok(session_rows::all_sessions(self.store.db(), user_id, limit, offset).await?)
    }

    /// A page of a user's security events, newest first (what the user's own
    /// `GET /auth/security-events` shows).
    pub async fn security_events_of(
        &self,
        user_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<SecurityEventRow>, AuthError> {
        self.require_user(user_id).await?;
        Ok(security_events::for_user(self.store.db(), user_id, limit, offset).await?)
    }

    async fn require_user(&self, user_id: &str) -> Result<UserRecord, AuthError> {
        users::by_id(self.store.db(), user_id).await?.ok_or(AuthError::NotFound)
    }
}
