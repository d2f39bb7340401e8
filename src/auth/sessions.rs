//! The caller's sessions and security events.

use chrono::{DateTime, Utc};

use super::{AuthError, AuthService, ClientInfo, UserView, infra};
use crate::commands::CommandContext;
use crate::commands::session::SessionCommand;
use crate::commands::{UnitOfWork, commit_error, with_retries};
use crate::events::auth::{RevokeReason, SessionPersonal};
use crate::projections::security_events::{self, SecurityEventRow};
use crate::projections::sessions::{self as session_rows, SessionRow};
use crate::security::tokens::AccessClaims;

/// The session of the presented token, with its user.
#[derive(Clone, Debug)]
pub struct CurrentSession {
    pub user: UserView,
    pub session_id: String,
    pub personal: SessionPersonal,
    pub created_at: Option<DateTime<Utc>>,
    pub last_active_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub remember_me: bool,
}

/// One of the caller's live sessions.
#[derive(Clone, Debug)]
pub struct SessionSummary {
    pub row: SessionRow,
    pub current: bool,
}

impl AuthService {
    /// The caller's user and session, from the write model (always current).
    pub async fn current_session(&self, claims: &AccessClaims) -> Result<CurrentSession, AuthError> {
        let (user, _) = self.aggregates.users.load(&claims.sub).await.map_err(infra)?;
        let (session, _) = self.aggregates.sessions.load(&claims.sid).await.map_err(infra)?;
        if !user.exists() || !session.exists() {
            return Err(AuthError::NotFound);
        }
        Ok(CurrentSession {
            user: UserView::of(&user),
            session_id: claims.sid.clone(),
            personal: session.personal.clone(),
            created_at: session.started_at,
            last_active_at: session.last_active_at,
            expires_at: session.refresh_expires_at,
            remember_me: session.remember_me,
        })
    }

    /// The caller's live sessions, newest first, the current one marked.
    pub async fn list_sessions(&self, claims: &AccessClaims) -> Result<Vec<SessionSummary>, AuthError> {
        let rows = session_rows::live_sessions(self.store.db(), &claims.sub, self.now()).await?;
        Ok(rows.into_iter().map(|row| SessionSummary { current: row.id == claims.sid, row }).collect())
    }

    /// Revokes one of the caller's sessions; another user's (or no) session is not found.
    pub async fn revoke_own_session(
        &self,
        claims: &AccessClaims,
        session_id: &str,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        if uuid::Uuid::parse_str(session_id).is_err() {
            return Err(AuthError::NotFound);
        }
        let owner =
            self.aggregates.sessions.peek(session_id, |s| s.exists().then(|| s.user_id.clone())).await;
        if owner.map_err(infra)?.as_deref() != Some(claims.sub.as_str()) {
            return Err(AuthError::NotFound);
        }
        self.revoke(session_id, &claims.sub, RevokeReason::RevokedByUser, client).await
    }

    /// Revokes every live session of the caller but the current one; returns how many.
    pub async fn revoke_other_sessions(
        &self,
        claims: &AccessClaims,
        client: &ClientInfo,
    ) -> Result<usize, AuthError> {
        // Everything committed before this request is in the read model after this.
        self.settle_all().await?;
        let others: Vec<String> = session_rows::live_sessions(self.store.db(), &claims.sub, self.now())
            .await?
            .into_iter()
            .map(|row| row.id)
            .filter(|id| *id != claims.sid)
            .collect();
        if others.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let ctx = CommandContext::for_client(client, &claims.sub, now);
        let cursor = with_retries(self.store.metrics(), "revoke-others", || async {
            let mut unit = UnitOfWork::new(self.store.clone(), ctx.clone());
            for id in &others {
                let revoke = SessionCommand::Revoke { reason: RevokeReason::RevokedByUser, at: now };
                unit.execute(&self.aggregates.sessions, id, revoke).await.map_err(infra)?;
            }
            unit.commit().await.map_err(|e| infra(commit_error::<crate::commands::session::SessionError>(e)))
        })
        .await?;
        for id in &others {
            self.revocations.revoke_session(id, now);
        }
        self.settle(cursor).await;
        Ok(others.len())
    }

    /// The caller's security events, newest first.
    pub async fn security_events(
        &self,
        claims: &AccessClaims,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<SecurityEventRow>, AuthError> {
        Ok(security_events::for_user(self.store.db(), &claims.sub, limit, offset).await?)
    }
}
