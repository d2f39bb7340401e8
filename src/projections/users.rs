//! Projection `users` (table `users`): one row per account with its role and status.
//! Analytics jobs may read it; docs/PROJECTIONS.md documents the columns.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Projection;
use crate::db::{Db, DbTime, DbTx};
use crate::events::RecordedEvent;
use crate::events::auth::{Role, UserEvent};
use crate::{exec, insert_rows};

/// The `users` read model: one row per account with its role, status and cutoffs.
pub struct Users;

#[async_trait]
impl Projection for Users {
    fn name(&self) -> &'static str {
        "users"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users"]
    }

    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        // Registrations are inserted together (one statement per run of them, as the other
        // row-writing projections do); any other event first flushes the run before it,
        // so a change always finds its row.
        let mut registered: Vec<NewUser> = Vec::new();
        for event in events.iter().filter(|e| e.aggregate_type == "user") {
            let decoded = event.decode::<UserEvent>().map_err(|e| super::on_event(e.into(), event))?;
            if let UserEvent::UserRegistered { personal, role, registered_at, .. } = decoded {
                registered.push(NewUser {
                    id: event.aggregate_id.clone(),
                    email: personal.email,
                    name: personal.name,
                    role,
                    at: DbTime(registered_at),
                });
                continue;
            }
            insert_registered(tx, &mut registered).await?;
            apply_change(tx, event, decoded).await.map_err(|e| super::on_event(e, event))?;
        }
        insert_registered(tx, &mut registered).await
    }
}

/// A registration waiting to be inserted.
struct NewUser {
    id: String,
    email: String,
    name: Option<String>,
    role: Role,
    at: DbTime,
}

async fn insert_registered(tx: &mut DbTx, registered: &mut Vec<NewUser>) -> anyhow::Result<()> {
    insert_rows!(
        tx,
        "users",
        &registered,
        |u| {
            "id": "text" = u.id.clone(),
            "email": "text" = u.email.clone(),
            "name": "text" = u.name.clone(),
            "role": "text" = u.role.as_str(),
            "email_verified": "boolean" = false,
            "disabled": "boolean" = false,
            "created_at": "timestamptz" = u.at,
            "updated_at": "timestamptz" = u.at,
        }
    )?;
    registered.clear();
    Ok(())
}

/// Applies one user event other than a registration: each changes one row.
async fn apply_change(tx: &mut DbTx, event: &RecordedEvent, decoded: UserEvent) -> anyhow::Result<()> {
    let id = &event.aggregate_id;
    let at = DbTime(event.recorded_at);
    match decoded {
        UserEvent::UserRegistered { .. } => anyhow::bail!("registrations are inserted in runs"),
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
        // The row stays (ids are referenced by the books); nothing personal does.
        UserEvent::UserErased { sessions_revoked_before, erased_at, .. } => {
            exec!(
                tx,
                "UPDATE users SET email = 'erased:' || id, name = NULL, disabled = true, \
                         sessions_revoked_before = $2, kept_session = NULL, erased_at = $3, updated_at = $4 WHERE id = $1",
                id,
                DbTime(sessions_revoked_before),
                DbTime(erased_at),
                at
            )?;
        }
    }
    Ok(())
}

/// A user whose sessions may be refused: disabled, or with a user-wide cutoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedUser {
    pub id: String,
    pub disabled: bool,
    /// Sessions started at or before this are revoked ...
    pub sessions_revoked_before: Option<DateTime<Utc>>,
    /// ... except this one.
    pub kept_session: Option<String>,
}

/// The users that are disabled or whose cutoff is after `since` (the revocation index's
/// start-up read).
pub async fn revoked_since(db: &Db, since: DateTime<Utc>) -> anyhow::Result<Vec<RevokedUser>> {
    let sql = "SELECT id, disabled, sessions_revoked_before, kept_session FROM users \
               WHERE disabled OR sessions_revoked_before > $1";
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(DbTime(since))
                .fetch_all($pool)
                .await?
                .iter()
                .map(|row| {
                    Ok(RevokedUser {
                        id: row.try_get(0)?,
                        disabled: row.try_get(1)?,
                        sessions_revoked_before: row.try_get::<Option<DbTime>, _>(2)?.map(|t| t.0),
                        kept_session: row.try_get(3)?,
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

/// A user as operators see it (`GET /api/v1/admin/users`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub email_verified: bool,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The user with this id, if the read model has one.
pub async fn by_id(db: &Db, id: &str) -> anyhow::Result<Option<UserRecord>> {
    find(db, "SELECT id, email, name, role, email_verified, disabled, created_at, updated_at FROM users WHERE id = $1", id)
        .await
}

/// The user registered under this address (give it normalised, as registration stores it).
pub async fn by_email(db: &Db, normalised_email: &str) -> anyhow::Result<Option<UserRecord>> {
    // Registration's e-mail claim keeps addresses unique; the order only makes the answer
    // deterministic should a hand-edited table hold two.
    find(
        db,
        "SELECT id, email, name, role, email_verified, disabled, created_at, updated_at FROM users \
         WHERE email = $1 ORDER BY created_at, id LIMIT 1",
        normalised_email,
    )
    .await
}

async fn find(db: &Db, sql: &'static str, value: &str) -> anyhow::Result<Option<UserRecord>> {
    macro_rules! fetch {
        ($pool:expr) => {
            match sqlx::query(sql).bind(value).fetch_optional($pool).await? {
                None => None,
                Some(r) => Some(UserRecord {
                    id: r.try_get(0)?,
                    email: r.try_get(1)?,
                    name: r.try_get(2)?,
                    role: r.try_get::<String, _>(3)?.parse().map_err(anyhow::Error::msg)?,
                    email_verified: r.try_get(4)?,
                    disabled: r.try_get(5)?,
                    created_at: r.try_get::<DbTime, _>(6)?.0,
                    updated_at: r.try_get::<DbTime, _>(7)?.0,
                }),
            }
        };
    }
    Ok(match db {
        Db::Postgres(pool) => fetch!(pool),
        Db::Sqlite { reader, .. } => fetch!(reader),
    })
}
