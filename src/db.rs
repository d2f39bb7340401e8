//! Connection pools for the two engines, migrations, and the transaction type that
//! projections write through.
//!
//! PostgreSQL gets one pool. SQLite gets a single-connection writer pool (SQLite has one
//! writer at a time; queueing in-process is cheaper than `SQLITE_BUSY` retries) and a
//! reader pool, in WAL mode with a busy timeout and foreign keys on, at the default
//! durability (`synchronous=FULL`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::config::DatabaseConfig;

static PG_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The `search_path` of the service's PostgreSQL database (set on the database by
/// migration 0009): internals in `public`, read models in `read`, unqualified names for both.
pub const SEARCH_PATH: &str = "\"$user\", public, read";

/// The database of one deployment: PostgreSQL, or the embedded SQLite file.
#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite { writer: SqlitePool, reader: SqlitePool },
}

/// Why the database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("cannot create the folder for the SQLite file {path}")]
    CreateFolder { path: String, source: std::io::Error },
    #[error(
        "the database carries migration {0}, which this build of mana-core-auth does not know; \
         it was written by a newer version: run that version, or restore a matching backup"
    )]
    UnknownMigration(i64),
    #[error("migration failed")]
    Migrate(#[source] MigrateError),
}

/// A write transaction on either engine. Projections receive one per batch.
pub enum DbTx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl DbTx {
    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Sqlite(tx) => tx.commit().await,
        }
    }

    /// Rolls the transaction back now. A dropped transaction is rolled back only when its
    /// connection is next used; until then it keeps its locks (a projection's advisory
    /// lock: the next batch would find itself not the leader).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.rollback().await,
            Self::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// Runs one statement with its bind values on whichever engine a [`DbTx`] (or any
/// `&mut` executor pair) holds; evaluates to `Result<u64, sqlx::Error>` (rows affected).
/// SQL uses `$1`-style parameters, which both engines accept.
#[macro_export]
macro_rules! exec {
    ($tx:expr, $sql:expr $(, $bind:expr)* $(,)?) => {
        match $tx {
            $crate::db::DbTx::Postgres(tx) => sqlx::query($sql)$(.bind($bind))*
                .execute(&mut **tx).await.map(|r| r.rows_affected()),
            $crate::db::DbTx::Sqlite(tx) => sqlx::query($sql)$(.bind($bind))*
                .execute(&mut **tx).await.map(|r| r.rows_affected()),
        }
    };
}

/// The most values SQLite binds in one statement (`SQLITE_MAX_VARIABLE_NUMBER`).
pub const SQLITE_MAX_BINDS: usize = 32_766;

/// Inserts many rows in one statement on either engine; evaluates to
/// `Result<u64, sqlx::Error>` (rows affected). Each column is named with its PostgreSQL
/// type and the row's value for it:
///
/// ```ignore
/// insert_rows!(tx, "usage_stats", &rows, |r| {
///     "user_id": "text" = r.user.clone(),
///     "spends": "bigint" = r.spends,
/// }, " ON CONFLICT (user_id) DO UPDATE SET spends = usage_stats.spends + excluded.spends")?;
/// ```
///
/// PostgreSQL receives one array per column (`INSERT ... SELECT * FROM UNNEST($1::text[],
/// ...)`): one prepared statement whatever the row count, so a batch is not parsed and
/// planned afresh (a 500-row `VALUES` list costs more to plan than to insert). SQLite,
/// which prepares in-process, receives multi-row `VALUES`, split into as many statements as
/// its bind limit ([`SQLITE_MAX_BINDS`]) needs. The optional tail follows the rows (e.g.
/// `ON CONFLICT`); rows that conflict across a split resolve as they would in one
/// statement, since SQLite applies a multi-row insert row by row.
#[macro_export]
macro_rules! insert_rows {
    ($tx:expr, $table:literal, $rows:expr,
     |$row:ident| { $($column:literal : $pg_type:literal = $value:expr),+ $(,)? } $(, $tail:expr)?) => {{
        let rows = $rows;
        let tail: &str = [$($tail,)? ""][0];
        let columns = [$($column),+].join(", ");
        if rows.is_empty() {
            Ok::<u64, sqlx::Error>(0)
        } else {
            match $tx {
                $crate::db::DbTx::Postgres(tx) => {
                    let arrays: Vec<String> = [$($pg_type),+]
                        .iter()
                        .enumerate()
                        .map(|(i, t)| format!("${}::{t}[]", i + 1))
                        .collect();
                    let sql = format!(
                        "INSERT INTO {} ({columns}) SELECT * FROM UNNEST({}){tail}",
                        $table,
                        arrays.join(", ")
                    );
                    let query = sqlx::query(&sql);
                    // `let _` keeps a constant column from tripping the unused-variable lint.
                    $( let query = query.bind(rows.iter().map(|$row| { let _ = $row; $value }).collect::<Vec<_>>()); )+
                    query.execute(&mut **tx).await.map(|r| r.rows_affected())
                }
                $crate::db::DbTx::Sqlite(tx) => {
                    // SQLite binds at most 32,766 values per statement: split the rows.
                    let per_statement = ($crate::db::SQLITE_MAX_BINDS / [$($column),+].len()).max(1);
                    let mut affected = Ok(0u64);
                    for chunk in rows.chunks(per_statement) {
                        let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                            "INSERT INTO {} ({columns}) ",
                            $table
                        ));
                        builder.push_values(chunk, |mut b, $row| { $( b.push_bind($value); )+ });
                        builder.push(tail);
                        match builder.build().persistent(false).execute(&mut **tx).await {
                            Ok(done) => {
                                if let Ok(total) = affected.as_mut() {
                                    *total += done.rows_affected();
                                }
                            }
                            Err(error) => {
                                affected = Err(error);
                                break;
                            }
                        }
                    }
                    affected
                }
            }
        }
    }};
}

impl Db {
    /// Opens the configured database (creating the SQLite file and its folder).
    pub async fn connect(config: &DatabaseConfig, max_connections: u32) -> Result<Self, DbError> {
        match config {
            DatabaseConfig::Postgres { url } => {
                let options = PgConnectOptions::from_str(url.expose())
                    .map_err(DbError::Connect)?
                    .application_name("mana-core-auth");
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options.clone())
                    .await;
                match pool {
                    Ok(pool) => Ok(Self::Postgres(pool)),
                    // The pool only says it timed out; one direct attempt tells why.
                    Err(sqlx::Error::PoolTimedOut) => {
                        let direct = sqlx::PgConnection::connect_with(&options).await;
                        Err(DbError::Connect(direct.err().unwrap_or(sqlx::Error::PoolTimedOut)))
                    }
                    Err(error) => Err(DbError::Connect(error)),
                }
            }
            DatabaseConfig::Sqlite { path } => Self::open_sqlite(path, max_connections).await,
        }
    }

    async fn open_sqlite(path: &Path, max_connections: u32) -> Result<Self, DbError> {
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .map_err(|source| DbError::CreateFolder { path: folder.display().to_string(), source })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Deleted content is overwritten, not left in free pages: after an erasure the
            // file holds no plaintext of the person (docs/PRIVACY.md).
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(DbError::Connect)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2))
            .connect_with(options.read_only(false))
            .await
            .map_err(DbError::Connect)?;
        Ok(Self::Sqlite { writer, reader })
    }

    /// Applies the migrations this build carries; refuses a database that has one it
    /// does not know. Safe to run from several processes at once on PostgreSQL (sqlx
    /// takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), DbError> {
        let result = match self {
            Self::Postgres(pool) => PG_MIGRATIONS.run(pool).await,
            Self::Sqlite { writer, .. } => SQLITE_MIGRATIONS.run(writer).await,
        };
        result.map_err(|e| match e {
            MigrateError::VersionMissing(v) => DbError::UnknownMigration(v),
            other => DbError::Migrate(other),
        })?;
        if let Self::Sqlite { writer, .. } = self {
            vacuum_once(writer).await.map_err(|e| DbError::Migrate(MigrateError::Execute(e)))?;
        }
        if let Self::Postgres(pool) = self {
            // Migration 0009 set the database's search_path (read models in `read`) for
            // every new connection; the one connection this pool opened before it (or
            // before another process ran it) gets it here.
            sqlx::query(&format!("SET search_path TO {SEARCH_PATH}"))
                .execute(pool)
                .await
                .map_err(|e| DbError::Migrate(MigrateError::Execute(e)))?;
        }
        Ok(())
    }

    /// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`, so the write lock is
    /// taken up front and a reader-turned-writer never deadlocks.
    pub async fn begin_write(&self) -> Result<DbTx, sqlx::Error> {
        match self {
            Self::Postgres(pool) => Ok(DbTx::Postgres(pool.begin().await?)),
            Self::Sqlite { writer, .. } => Ok(DbTx::Sqlite(writer.begin_with("BEGIN IMMEDIATE").await?)),
        }
    }

    /// Answers whether the database responds.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Self::Sqlite { reader, .. } => sqlx::query("SELECT 1").execute(reader).await.map(drop),
        }
    }

    /// Which engine this is, for logs and metrics.
    pub fn engine(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite { .. } => "sqlite",
        }
    }

    /// Closes every pool (graceful shutdown).
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite { writer, reader } => {
                writer.close().await;
                reader.close().await;
            }
        }
    }
}

/// A UTC time bound to and read from either engine: `timestamptz` on PostgreSQL, a fixed
/// RFC 3339 text (microseconds, `Z`) on SQLite so that text order is time order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DbTime(pub chrono::DateTime<chrono::Utc>);

/// The fixed text form of a time in SQLite columns: sortable as text, microseconds, UTC.
pub(crate) fn sqlite_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Parses a time written by [`sqlite_time`] (or any RFC 3339 text).
pub(crate) fn parse_sqlite_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, chrono::ParseError> {
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&chrono::Utc))
}

mod db_time {
    use chrono::{DateTime, Utc};
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
    use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
    use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

    use super::DbTime;
    use super::{parse_sqlite_time, sqlite_time};

    impl Type<Postgres> for DbTime {
        fn type_info() -> PgTypeInfo {
            <DateTime<Utc> as Type<Postgres>>::type_info()
        }
    }

    impl Encode<'_, Postgres> for DbTime {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
            <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
        }
    }

    impl PgHasArrayType for DbTime {
        fn array_type_info() -> PgTypeInfo {
            <DateTime<Utc> as PgHasArrayType>::array_type_info()
        }
    }

    impl Decode<'_, Postgres> for DbTime {
        fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
            Ok(Self(<DateTime<Utc> as Decode<Postgres>>::decode(value)?))
        }
    }

    impl Type<Sqlite> for DbTime {
        fn type_info() -> SqliteTypeInfo {
            <String as Type<Sqlite>>::type_info()
        }
    }

    impl<'q> Encode<'q, Sqlite> for DbTime {
        fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
            <String as Encode<Sqlite>>::encode(sqlite_time(self.0), buf)
        }
    }

    impl Decode<'_, Sqlite> for DbTime {
        fn decode(value: SqliteValueRef<'_>) -> Result<Self, BoxDynError> {
            let text = <String as Decode<Sqlite>>::decode(value)?;
            Ok(Self(parse_sqlite_time(&text)?))
        }
    }
}

/// Rewrites a SQLite file once after migration 0010 turned `secure_delete` on: pages freed
/// by earlier releases may still hold deleted content (delivered mail, old rows); a VACUUM
/// leaves none, and from then on deleted content is overwritten as it is deleted.
async fn vacuum_once(writer: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    const STEP: &str = "vacuum-secure-delete";
    let done: Option<String> = sqlx::query_scalar("SELECT done_at FROM maintenance WHERE step = $1")
        .bind(STEP)
        .fetch_optional(writer)
        .await?;
    if done.is_some() {
        return Ok(());
    }
    sqlx::query("VACUUM").execute(writer).await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(writer).await?;
    sqlx::query("INSERT OR IGNORE INTO maintenance (step, done_at) VALUES ($1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
        .bind(STEP)
        .execute(writer)
        .await?;
    Ok(())
}
