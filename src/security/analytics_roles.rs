//! Read-only login roles for analytics jobs (PostgreSQL): `mana-core-auth analytics-role
//! create|drop`.
//!
//! Such a role may read the read models and nothing else: `USAGE` on the schema
//! [`READ_SCHEMA`] and `SELECT` on its tables (the projection positions included, so a job
//! can read consistently), present and future; nothing in `public` (the log, the outbox,
//! key material), no write anywhere, no role attributes. A role limited to one app sees
//! only that app's rows of [`APP_TABLES`] and no row of [`UNSCOPED_TABLES`] (purchases
//! belong to no app), through row-level security; RLS is enabled on those tables without
//! `FORCE`, so the service (their owner) is never subject to it, and every other role reads
//! them only through a policy of its own.
//!
//! Roles made here carry a comment naming them as such; the commands refuse to change or
//! drop any other role.

use sqlx::{PgConnection, Row};

use crate::config::Secret;
use crate::db::Db;

/// The schema of the read models.
pub const READ_SCHEMA: &str = "read";

/// The read-model tables with an `app_id` column, which an app-limited role reads only
/// its own app's rows of.
pub const APP_TABLES: [&str; 3] = ["usage_stats", "credit_transactions", "ledger_postings"];

/// The read-model tables that belong to no app (paid purchases and Stripe's events): an
/// app-limited role reads none of their rows, an unrestricted role all of them.
pub const UNSCOPED_TABLES: [&str; 2] = ["purchases", "stripe_events"];

/// Every table under a row-level policy, with the rows an app-limited role may read.
fn policed_tables(app: Option<&str>) -> impl Iterator<Item = (&'static str, String)> + '_ {
    let app_rows = move || app.map_or_else(|| "true".to_owned(), |app| format!("app_id = '{app}'"));
    let unscoped_rows = move || if app.is_some() { "false" } else { "true" }.to_owned();
    APP_TABLES
        .into_iter()
        .map(move |table| (table, app_rows()))
        .chain(UNSCOPED_TABLES.into_iter().map(move |table| (table, unscoped_rows())))
}

/// The comment that marks a role as an analytics role of this service.
const MARK: &str = "mana-core-auth analytics role";

/// A role to create or update.
#[derive(Debug)]
pub struct AnalyticsRole {
    pub name: String,
    /// Limits the role to this app's rows; every app's when `None`.
    pub app: Option<String>,
    /// Sets the login password; a second run without one keeps the current password.
    pub password: Option<Secret>,
}

/// Why a role could not be created, changed or dropped.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsRoleError {
    #[error("analytics roles need PostgreSQL (SQLite has no roles)")]
    NotPostgres,
    #[error(
        "invalid role name {0:?}: 1 to 63 characters, lowercase letters, digits and underscores, \
         starting with a letter or underscore, not pg_…"
    )]
    InvalidName(String),
    #[error("invalid app id {0:?}: 1 to 100 characters, letters, digits, '.', '_' or '-'")]
    InvalidApp(String),
    #[error("role {0} exists and is not an analytics role of this service; it is left alone")]
    NotOurs(String),
    #[error("no analytics role named {0}")]
    NotFound(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// What `create` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    Updated,
}

fn check_name(name: &str) -> Result<(), AnalyticsRoleError> {
    let valid = (1..=63).contains(&name.len())
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_");
    if valid { Ok(()) } else { Err(AnalyticsRoleError::InvalidName(name.to_owned())) }
}

fn check_app(app: &str) -> Result<(), AnalyticsRoleError> {
    let valid = (1..=100).contains(&app.len())
        && app.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid { Ok(()) } else { Err(AnalyticsRoleError::InvalidApp(app.to_owned())) }
}

fn policy(name: &str) -> String {
    format!("\"analytics_{name}\"")
}

/// The comment on `name`, or `None` when the role does not exist.
async fn comment(conn: &mut PgConnection, name: &str) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT COALESCE(shobj_description(oid, 'pg_authid'), '') AS comment FROM pg_roles WHERE rolname = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| r.try_get::<String, _>("comment")).transpose()
}

async fn run(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut *conn).await.map(drop)
}

/// Creates the role, or brings an existing analytics role to what `role` says.
pub async fn create(db: &Db, role: &AnalyticsRole) -> Result<Created, AnalyticsRoleError> {
    let Db::Postgres(pool) = db else { return Err(AnalyticsRoleError::NotPostgres) };
    check_name(&role.name)?;
    if let Some(app) = &role.app {
        check_app(app)?;
    }
    let name = role.name.as_str();
    let mut tx = pool.begin().await?;
    // One administration at a time (roles are cluster-wide, so is the lock's effect).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mana-core-auth/analytics-roles'))")
        .execute(&mut *tx)
        .await?;
    let outcome = match comment(&mut tx, name).await? {
        None => {
            run(&mut tx, &format!("CREATE ROLE \"{name}\" LOGIN")).await?;
            Created::Created
        }
        Some(text) if text.starts_with(MARK) => Created::Updated,
        Some(_) => return Err(AnalyticsRoleError::NotOurs(name.to_owned())),
    };
    run(
        &mut tx,
        &format!(
            "ALTER ROLE \"{name}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
        ),
    )
    .await?;
    let scope = role.app.as_deref().map_or_else(|| "every app".to_owned(), |app| format!("app {app}"));
    run(&mut tx, &format!("COMMENT ON ROLE \"{name}\" IS '{MARK}; {scope}'")).await?;
    if let Some(password) = &role.password {
        // Utility statements take no bind values: the literal is quoted by the server.
        let sql: String =
            sqlx::query_scalar("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)")
                .bind(name)
                .bind(password.expose())
                .fetch_one(&mut *tx)
                .await?;
        run(&mut tx, &sql).await?;
    }
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut *tx).await?;
    let read = READ_SCHEMA;
    for sql in [
        format!("GRANT CONNECT ON DATABASE \"{database}\" TO \"{name}\""),
        format!("GRANT USAGE ON SCHEMA {read} TO \"{name}\""),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA {read} TO \"{name}\""),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA {read} GRANT SELECT ON TABLES TO \"{name}\""),
    ] {
        run(&mut tx, &sql).await?;
    }
    for (table, rows) in policed_tables(role.app.as_deref()) {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{read}.{table}"))
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            continue;
        }
        let policy = policy(name);
        for sql in [
            format!("ALTER TABLE {read}.{table} ENABLE ROW LEVEL SECURITY"),
            format!("DROP POLICY IF EXISTS {policy} ON {read}.{table}"),
            format!("CREATE POLICY {policy} ON {read}.{table} FOR SELECT TO \"{name}\" USING ({rows})"),
        ] {
            run(&mut tx, &sql).await?;
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Drops an analytics role: its policies, its privileges in this database, the role.
pub async fn drop_role(db: &Db, name: &str) -> Result<(), AnalyticsRoleError> {
    let Db::Postgres(pool) = db else { return Err(AnalyticsRoleError::NotPostgres) };
    check_name(name)?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mana-core-auth/analytics-roles'))")
        .execute(&mut *tx)
        .await?;
    match comment(&mut tx, name).await? {
        None => return Err(AnalyticsRoleError::NotFound(name.to_owned())),
        Some(text) if !text.starts_with(MARK) => return Err(AnalyticsRoleError::NotOurs(name.to_owned())),
        Some(_) => {}
    }
    for (table, _) in policed_tables(None) {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{READ_SCHEMA}.{table}"))
            .fetch_one(&mut *tx)
            .await?;
        if exists {
            run(&mut tx, &format!("DROP POLICY IF EXISTS {} ON {READ_SCHEMA}.{table}", policy(name))).await?;
        }
    }
    run(&mut tx, &format!("DROP OWNED BY \"{name}\"")).await?;
    run(&mut tx, &format!("DROP ROLE \"{name}\"")).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_and_app_ids_that_could_escape_their_quotes_are_refused() {
        for bad in ["", "Analytics", "a-b", "a\"b", "pg_reader", "1abc", "a b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["analytics", "_jobs", "bi_reader_2"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        for bad in ["", "chat'; DROP TABLE x; --", "a b", &"a".repeat(101)] {
            assert!(check_app(bad).is_err(), "{bad:?}");
        }
        for good in ["chat", "picture-gen", "app.v2_b"] {
            assert!(check_app(good).is_ok(), "{good:?}");
        }
    }
}
