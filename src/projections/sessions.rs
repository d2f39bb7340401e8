//! Projection `sessions` (table `sessions`): one row per session with its device, client,
//! activity and revocation. `GET /auth/sessions` lists the live ones from it, operators
//! (`GET /admin/users/{userId}/sessions`) every one.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Projection;
use crate::db::{Db, DbTime, DbTx};
use crate::events::RecordedEvent;
use crate::events::auth::{RevokeReason, SessionEvent, UserEvent};
use crate::{exec, insert_rows};

/// The `sessions` read model: one row per session, for `GET /auth/sessions` and the
/// revocation index's start-up.
pub struct Sessions;

#[async_trait]
impl Projection for Sessions {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["sessions", "session_cutoffs"]
    }

    /// New sessions are inserted together and refreshes folded into one update per
    /// session. Refreshes touch only activity columns and revocations only `revoked_*`,
    /// so refreshes may wait for the end of the batch; inserts are flushed before each
    /// revocation or user-wide cutoff, which therefore see exactly the rows they would
    /// have seen one event at a time.
    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let mut batch = Batch::default();
        for event in events {
            let id = &event.aggregate_id;
            match event.aggregate_type.as_str() {
                "session" => match event.decode::<SessionEvent>()? {
                    SessionEvent::SessionStarted {
                        user_id,
                        origin,
                        refresh_expires_at,
                        remember_me,
                        personal,
                        started_at,
                        ..
                    } => batch.started(NewSession {
                        id: id.clone(),
                        user_id,
                        origin: serde_json::to_value(origin)?.as_str().unwrap_or_default().to_owned(),
                        device_id: personal.device_id,
                        device_name: personal.device_name,
                        remember_me,
                        created_at: DbTime(started_at),
                        activity: Activity {
                            at: DbTime(started_at),
                            expires_at: DbTime(refresh_expires_at),
                            ip_address: personal.ip_address,
                            user_agent: personal.user_agent,
                        },
                    }),
                    SessionEvent::SessionRefreshed { refresh_expires_at, personal, refreshed_at, .. } => {
                        batch.refreshed(
                            id,
                            Activity {
                                at: DbTime(refreshed_at),
                                expires_at: DbTime(refresh_expires_at),
                                ip_address: personal.ip_address,
                                user_agent: personal.user_agent,
                            },
                        )
                    }
                    SessionEvent::RefreshTokenReuseDetected { .. } => {}
                    SessionEvent::SessionRevoked { reason, revoked_at, .. } => {
                        batch.insert_started(tx).await?;
                        exec!(
                            tx,
                            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
                             WHERE id = $1 AND revoked_at IS NULL",
                            id,
                            DbTime(revoked_at),
                            reason.as_str()
                        )?;
                    }
                },
                "user" => {
                    let decoded: UserEvent = event.decode()?;
                    let erased = matches!(decoded, UserEvent::UserErased { .. });
                    if let Some((cutoff, kept)) = cutoff_of(decoded) {
                        batch.insert_started(tx).await?;
                        if erased {
                            // Earlier refreshes of this batch must not write their client back.
                            std::mem::take(&mut batch).update_refreshed(tx).await?;
                        }
                        apply_cutoff(tx, id, cutoff, kept).await?;
                    }
                    if erased {
                        exec!(
                            tx,
                            "UPDATE sessions SET device_id = NULL, device_name = NULL, ip_address = NULL, \
                         user_agent = NULL WHERE user_id = $1",
                            id
                        )?;
                    }
                }
                _ => {}
            }
        }
        batch.insert_started(tx).await?;
        batch.update_refreshed(tx).await
    }
}

/// A session's activity columns, as its start or latest refresh left them.
struct Activity {
    at: DbTime,
    expires_at: DbTime,
    ip_address: Option<String>,
    user_agent: Option<String>,
}

impl Activity {
    /// `later` on top of `self`: a refresh without an address keeps the known one.
    fn then(&mut self, later: Activity) {
        self.at = later.at;
        self.expires_at = later.expires_at;
        self.ip_address = later.ip_address.or(self.ip_address.take());
        self.user_agent = later.user_agent.or(self.user_agent.take());
    }
}

struct NewSession {
    id: String,
    user_id: String,
    origin: String,
    device_id: Option<String>,
    device_name: Option<String>,
    remember_me: bool,
    created_at: DbTime,
    activity: Activity,
}

/// What a batch has yet to write.
#[derive(Default)]
struct Batch {
    started: Vec<NewSession>,
    /// Where each pending session sits in `started`.
    started_index: HashMap<String, usize>,
    /// Refreshes of sessions inserted before this batch or already flushed, in first-seen
    /// order, one per session.
    refreshed: Vec<(String, Activity)>,
    refreshed_index: HashMap<String, usize>,
}

impl Batch {
    fn started(&mut self, session: NewSession) {
        self.started_index.insert(session.id.clone(), self.started.len());
        self.started.push(session);
    }

    fn refreshed(&mut self, id: &str, activity: Activity) {
        if let Some(&i) = self.started_index.get(id) {
            return self.started[i].activity.then(activity);
        }
        match self.refreshed_index.get(id) {
            Some(&i) => self.refreshed[i].1.then(activity),
            None => {
                self.refreshed_index.insert(id.to_owned(), self.refreshed.len());
                self.refreshed.push((id.to_owned(), activity));
            }
        }
    }

    /// Inserts the sessions started so far, then revokes those a user-wide cutoff
    /// projected earlier covers already.
    async fn insert_started(&mut self, tx: &mut DbTx) -> anyhow::Result<()> {
        if self.started.is_empty() {
            return Ok(());
        }
        let started = std::mem::take(&mut self.started);
        self.started_index.clear();
        insert_rows!(tx, "sessions", &started, |s| {
            "id": "text" = s.id.clone(),
            "user_id": "text" = s.user_id.clone(),
            "origin": "text" = s.origin.clone(),
            "device_id": "text" = s.device_id.clone(),
            "device_name": "text" = s.device_name.clone(),
            "ip_address": "text" = s.activity.ip_address.clone(),
            "user_agent": "text" = s.activity.user_agent.clone(),
            "remember_me": "boolean" = s.remember_me,
            "created_at": "timestamptz" = s.created_at,
            "last_active_at": "timestamptz" = s.activity.at,
            "refresh_expires_at": "timestamptz" = s.activity.expires_at,
        })?;
        let ids: Vec<String> = started.into_iter().map(|s| s.id).collect();
        let covered = "UPDATE sessions SET \
                 revoked_at = (SELECT revoked_before FROM session_cutoffs c WHERE c.user_id = sessions.user_id), \
                 revoked_reason = $2 \
             WHERE id IN (SELECT * FROM ids) AND EXISTS (SELECT 1 FROM session_cutoffs c \
                 WHERE c.user_id = sessions.user_id AND c.revoked_before >= sessions.created_at \
                   AND (c.kept_session IS NULL OR c.kept_session <> sessions.id))";
        let reason = RevokeReason::UserChanged.as_str();
        match tx {
            DbTx::Postgres(tx) => {
                sqlx::query(&format!("WITH ids AS (SELECT unnest($1::text[])) {covered}"))
                    .bind(ids)
                    .bind(reason)
                    .execute(&mut **tx)
                    .await?;
            }
            DbTx::Sqlite(tx) => {
                sqlx::query(&format!("WITH ids AS (SELECT value FROM json_each($1)) {covered}"))
                    .bind(serde_json::to_string(&ids)?)
                    .bind(reason)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// One update per refreshed session: on PostgreSQL one statement over arrays, on
    /// SQLite (in-process, no round trips) one prepared statement per session.
    async fn update_refreshed(self, tx: &mut DbTx) -> anyhow::Result<()> {
        let set = "last_active_at = v.at, refresh_expires_at = v.expires_at, \
                   ip_address = COALESCE(v.ip_address, sessions.ip_address), \
                   user_agent = COALESCE(v.user_agent, sessions.user_agent)";
        match tx {
            DbTx::Postgres(tx) if !self.refreshed.is_empty() => {
                let column = |f: &dyn Fn(&Activity) -> Option<String>| {
                    self.refreshed.iter().map(|(_, a)| f(a)).collect::<Vec<_>>()
                };
                sqlx::query(&format!(
                    "UPDATE sessions SET {set} \
                     FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::text[]) \
                         AS v(id, at, expires_at, ip_address, user_agent) \
                     WHERE sessions.id = v.id"
                ))
                .bind(self.refreshed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>())
                .bind(self.refreshed.iter().map(|(_, a)| a.at).collect::<Vec<_>>())
                .bind(self.refreshed.iter().map(|(_, a)| a.expires_at).collect::<Vec<_>>())
                .bind(column(&|a| a.ip_address.clone()))
                .bind(column(&|a| a.user_agent.clone()))
                .execute(&mut **tx)
                .await?;
            }
            DbTx::Postgres(_) => {}
            DbTx::Sqlite(tx) => {
                for (id, a) in self.refreshed {
                    sqlx::query(
                        "UPDATE sessions SET last_active_at = $2, refresh_expires_at = $3, \
                             ip_address = COALESCE($4, ip_address), user_agent = COALESCE($5, user_agent) \
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(a.at)
                    .bind(a.expires_at)
                    .bind(a.ip_address)
                    .bind(a.user_agent)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// The user-wide session cutoff a user event sets, with the session it spares.
fn cutoff_of(event: UserEvent) -> Option<(DateTime<Utc>, Option<String>)> {
    match event {
        UserEvent::UserRoleChanged { sessions_revoked_before, .. }
        | UserEvent::UserDisabled { sessions_revoked_before }
        | UserEvent::UserErased { sessions_revoked_before, .. }
        | UserEvent::PasswordResetCompleted { sessions_revoked_before, .. } => {
            Some((sessions_revoked_before, None))
        }
        UserEvent::PasswordChanged { sessions_revoked_before, kept_session, .. } => {
            Some((sessions_revoked_before, kept_session))
        }
        _ => None,
    }
}

async fn apply_cutoff(
    tx: &mut DbTx,
    user_id: &str,
    cutoff: DateTime<Utc>,
    kept: Option<String>,
) -> anyhow::Result<()> {
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

/// A session as operators see it: the listed row plus its end, live or not.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub row: SessionRow,
    pub refresh_expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
}

/// Every session of a user, revoked and expired ones too, newest first (the order of
/// [`live_sessions`]), a page at a time.
pub async fn all_sessions(
    db: &Db,
    user_id: &str,
    limit: i64,
    offset: i64,
) -> anyhow::Result<Vec<SessionRecord>> {
    let sql = "SELECT id, device_id, device_name, ip_address, user_agent, created_at, last_active_at, \
                      refresh_expires_at, revoked_at, revoked_reason \
               FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3";
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(user_id)
                .bind(limit)
                .bind(offset)
                .fetch_all($pool)
                .await?
                .iter()
                .map(|r| {
                    let row = SessionRow {
                        id: r.try_get(0)?,
                        device_id: r.try_get(1)?,
                        device_name: r.try_get(2)?,
                        ip_address: r.try_get(3)?,
                        user_agent: r.try_get(4)?,
                        created_at: r.try_get::<DbTime, _>(5)?.0,
                        last_active_at: r.try_get::<DbTime, _>(6)?.0,
                    };
                    Ok(SessionRecord {
                        row,
                        refresh_expires_at: r.try_get::<DbTime, _>(7)?.0,
                        revoked_at: r.try_get::<Option<DbTime>, _>(8)?.map(|t| t.0),
                        revoked_reason: r.try_get(9)?,
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

/// The sessions revoked after `since`, with when (the revocation index's start-up read).
pub async fn revoked_since(db: &Db, since: DateTime<Utc>) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    let sql = "SELECT id, revoked_at FROM sessions WHERE revoked_at > $1";
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(DbTime(since))
                .fetch_all($pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get::<DbTime, _>(1)?.0)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        };
    }
    Ok(match db {
        Db::Postgres(pool) => fetch!(pool),
        Db::Sqlite { reader, .. } => fetch!(reader),
    })
}
