//! Projection `sessions` (table `sessions`): one row per session with its device, client,
//! activity and revocation. `GET /auth/sessions` lists from it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Projection;
use crate::db::{Db, DbTime, DbTx};
use crate::events::RecordedEvent;
use crate::events::auth::{RevokeReason, SessionEvent, UserEvent};
use crate::exec;

/// See the module documentation.
pub struct Sessions;

#[async_trait]
impl Projection for Sessions {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["sessions", "session_cutoffs"]
    }

    async fn apply(&self, tx: &mut DbTx, event: &RecordedEvent) -> anyhow::Result<()> {
        match event.aggregate_type.as_str() {
            "session" => apply_session(tx, &event.aggregate_id, event.decode()?).await,
            "user" => apply_user(tx, &event.aggregate_id, event.decode()?).await,
            _ => Ok(()),
        }
    }
}

async fn apply_session(tx: &mut DbTx, id: &str, event: SessionEvent) -> anyhow::Result<()> {
    match event {
        SessionEvent::SessionStarted {
            user_id,
            origin,
            refresh_expires_at,
            remember_me,
            personal,
            started_at,
            ..
        } => {
            let origin = serde_json::to_value(origin)?.as_str().unwrap_or_default().to_owned();
            exec!(
                tx,
                "INSERT INTO sessions (id, user_id, origin, device_id, device_name, ip_address, user_agent, \
                                       remember_me, created_at, last_active_at, refresh_expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
                id,
                &user_id,
                origin,
                personal.device_id,
                personal.device_name,
                personal.ip_address,
                personal.user_agent,
                remember_me,
                DbTime(started_at),
                DbTime(refresh_expires_at)
            )?;
            // A user-wide cutoff projected earlier may cover this session already.
            exec!(
                tx,
                "UPDATE sessions SET \
                     revoked_at = (SELECT revoked_before FROM session_cutoffs WHERE user_id = $2), \
                     revoked_reason = $3 \
                 WHERE id = $1 AND EXISTS (SELECT 1 FROM session_cutoffs c \
                     WHERE c.user_id = $2 AND c.revoked_before >= sessions.created_at \
                       AND (c.kept_session IS NULL OR c.kept_session <> sessions.id))",
                id,
                &user_id,
                RevokeReason::UserChanged.as_str()
            )?;
        }
        SessionEvent::SessionRefreshed { refresh_expires_at, personal, refreshed_at, .. } => {
            exec!(
                tx,
                "UPDATE sessions SET last_active_at = $2, refresh_expires_at = $3, \
                     ip_address = COALESCE($4, ip_address), user_agent = COALESCE($5, user_agent) \
                 WHERE id = $1",
                id,
                DbTime(refreshed_at),
                DbTime(refresh_expires_at),
                personal.ip_address,
                personal.user_agent
            )?;
        }
        SessionEvent::RefreshTokenReuseDetected { .. } => {}
        SessionEvent::SessionRevoked { reason, revoked_at, .. } => {
            exec!(
                tx,
                "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
                id,
                DbTime(revoked_at),
                reason.as_str()
            )?;
        }
    }
    Ok(())
}

async fn apply_user(tx: &mut DbTx, user_id: &str, event: UserEvent) -> anyhow::Result<()> {
    let (cutoff, kept) = match event {
        UserEvent::UserRoleChanged { sessions_revoked_before, .. }
        | UserEvent::UserDisabled { sessions_revoked_before }
        | UserEvent::PasswordResetCompleted { sessions_revoked_before, .. } => {
            (sessions_revoked_before, None)
        }
        UserEvent::PasswordChanged { sessions_revoked_before, kept_session, .. } => {
            (sessions_revoked_before, kept_session)
        }
        _ => return Ok(()),
    };
    // Sessions are compared in whole milliseconds (see `User::admits_session`): the
    // cutoff covers the rest of its own millisecond.
    let cutoff_end = DbTime(
        DateTime::from_timestamp_millis(cutoff.timestamp_millis()).unwrap_or(cutoff)
            + chrono::Duration::microseconds(999),
    );
    exec!(
        tx,
        "INSERT INTO session_cutoffs (user_id, revoked_before, kept_session) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET revoked_before = excluded.revoked_before, \
             kept_session = excluded.kept_session",
        user_id,
        cutoff_end,
        &kept
    )?;
    exec!(
        tx,
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
         WHERE user_id = $1 AND created_at <= $2 AND revoked_at IS NULL AND ($4 IS NULL OR id <> $4)",
        user_id,
        cutoff_end,
        RevokeReason::UserChanged.as_str(),
        &kept
    )?;
    Ok(())
}

/// A session as `GET /auth/sessions` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRow {
    pub id: String,
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_active_at: DateTime<Utc>,
}

/// A user's live sessions (not revoked, refresh token not expired), newest first.
pub async fn live_sessions(db: &Db, user_id: &str, now: DateTime<Utc>) -> anyhow::Result<Vec<SessionRow>> {
    let sql = "SELECT id, device_id, device_name, ip_address, user_agent, created_at, last_active_at \
               FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND refresh_expires_at >= $2 \
               ORDER BY created_at DESC, id DESC";
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(user_id)
                .bind(DbTime(now))
                .fetch_all($pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(SessionRow {
                        id: r.try_get(0)?,
                        device_id: r.try_get(1)?,
                        device_name: r.try_get(2)?,
                        ip_address: r.try_get(3)?,
                        user_agent: r.try_get(4)?,
                        created_at: r.try_get::<DbTime, _>(5)?.0,
                        last_active_at: r.try_get::<DbTime, _>(6)?.0,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        };
    }
    Ok(match db {
        Db::Postgres(pool) => fetch!(pool),
        Db::Sqlite { reader, .. } => fetch!(reader),
    })
}
