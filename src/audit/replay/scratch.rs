//! Where a replay builds the read models aside: a scratch schema in the same PostgreSQL
//! database, or a scratch SQLite file beside the live one.
//!
//! The scratch tables have the live tables' names, so the projections' own SQL writes
//! them unchanged: on PostgreSQL the scratch connections put the scratch schema first on
//! their `search_path`; on SQLite the scratch file is the connection's main database and
//! the live one is attached read-only as `live`, so the unqualified `events` (which only
//! the live file has) is the live log. Nothing of the live database is written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::Executor;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use super::tables::{Exec, Table, quote, shape};
use crate::db::Db;

/// The checkpoint table, copied with the read models (the scratch projector keeps its
/// own checkpoints).
pub(super) const CHECKPOINTS: &str = "projection_checkpoints";

/// A scratch copy of the read-model tables, empty when created.
pub(super) struct Scratch {
    /// Connections that see the scratch tables under the live names and the live log.
    pub db: Db,
    /// Unique per replay; also the namespace of the scratch projector's locks.
    pub name: String,
    engine: Engine,
}

enum Engine {
    Postgres { live: PgPool, live_schemas: Vec<(&'static str, String)> },
    Sqlite { path: PathBuf },
}

/// From where a statement that names both copies runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// On the scratch connections (SQLite: the live file is `live`).
    Scratch,
    /// On a live connection (SQLite: the scratch file attached as `scratch`).
    Live,
}

impl Scratch {
    /// Creates the scratch copy of `tables` (and the checkpoint table) for `live`.
    pub(super) async fn create(live: &Db, tables: &[&'static str]) -> anyhow::Result<Self> {
        let name =
            format!("replay_{}_{:08x}", chrono::Utc::now().format("%Y%m%d%H%M%S"), rand::random::<u32>());
        let all: Vec<&'static str> = tables.iter().copied().chain([CHECKPOINTS]).collect();
        match live {
            Db::Postgres(pool) => create_postgres(pool, name, &all).await,
            Db::Sqlite { writer, .. } => {
                create_sqlite(writer.connect_options().get_filename(), name, &all).await
            }
        }
    }

    /// The qualified names of `table`'s two copies, with its columns and key, for
    /// statements run from `side`.
    pub(super) async fn table(&self, table: &'static str, side: Side) -> anyhow::Result<Table> {
        let (rebuilt, live, schema) = match (&self.engine, side) {
            (Engine::Postgres { live_schemas, .. }, _) => {
                let schema = live_schemas
                    .iter()
                    .find(|(t, _)| *t == table)
                    .map(|(_, s)| s.clone())
                    .with_context(|| format!("no live table {table}"))?;
                (
                    format!("{}.{}", quote(&self.name), quote(table)),
                    format!("{}.{}", quote(&schema), quote(table)),
                    self.name.clone(),
                )
            }
            (Engine::Sqlite { .. }, Side::Scratch) => {
                (format!("main.{}", quote(table)), format!("live.{}", quote(table)), "main".to_owned())
            }
            (Engine::Sqlite { .. }, Side::Live) => {
                (format!("scratch.{}", quote(table)), format!("main.{}", quote(table)), "main".to_owned())
            }
        };
        let mut tx = self.db.begin_write().await?;
        let (columns, key) = shape(&mut Exec::of(&mut tx), &schema, table).await?;
        drop(tx);
        Ok(Table { name: table, columns, key, rebuilt, live })
    }

    /// On SQLite, the URI that attaches the scratch file read-only to a live connection.
    pub(super) fn sqlite_attach_uri(&self) -> Option<String> {
        match &self.engine {
            Engine::Sqlite { path } => Some(read_only_uri(path)),
            Engine::Postgres { .. } => None,
        }
    }

    /// Removes the scratch copy.
    pub(super) async fn remove(self) -> anyhow::Result<()> {
        self.db.close().await;
        match self.engine {
            Engine::Postgres { live, .. } => {
                sqlx::query(&format!("DROP SCHEMA {} CASCADE", quote(&self.name))).execute(&live).await?;
            }
            Engine::Sqlite { path } => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    match std::fs::remove_file(&file) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

async fn create_postgres(live: &PgPool, name: String, tables: &[&'static str]) -> anyhow::Result<Scratch> {
    let mut live_schemas = Vec::new();
    for table in tables {
        let schema: Option<String> = sqlx::query_scalar(
            "SELECT CAST(n.nspname AS TEXT) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
        )
        .bind(*table)
        .fetch_optional(live)
        .await?;
        live_schemas.push((*table, schema.with_context(|| format!("no table {table} in the database"))?));
    }
    let path: String = sqlx::query_scalar(
        "SELECT COALESCE(string_agg(quote_ident(s), ', '), 'public') FROM unnest(current_schemas(false)) s",
    )
    .fetch_one(live)
    .await?;
    let search_path = format!("{}, {path}", quote(&name));
    let mut tx = live.begin().await?;
    sqlx::query(&format!("CREATE SCHEMA {}", quote(&name))).execute(&mut *tx).await?;
    for (table, schema) in &live_schemas {
        let sql = format!(
            "CREATE TABLE {}.{} (LIKE {}.{} INCLUDING ALL)",
            quote(&name),
            quote(table),
            quote(schema),
            quote(table)
        );
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let set_path = Arc::new(format!("SET search_path TO {search_path}"));
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _| {
            let sql = Arc::clone(&set_path);
            Box::pin(async move {
                conn.execute(sql.as_str()).await?;
                Ok(())
            })
        })
        .connect_with((*live.connect_options()).clone())
        .await?;
    Ok(Scratch {
        db: Db::Postgres(pool),
        name,
        engine: Engine::Postgres { live: live.clone(), live_schemas },
    })
}

async fn create_sqlite(live: &Path, name: String, tables: &[&'static str]) -> anyhow::Result<Scratch> {
    let file_name = live.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "db".into());
    let path = live.with_file_name(format!("{file_name}.{name}"));
    let attach = Arc::new(format!("ATTACH DATABASE '{}' AS live", read_only_uri(live).replace('\'', "''")));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    let pool = |max: u32| {
        let attach = Arc::clone(&attach);
        SqlitePoolOptions::new().max_connections(max).after_connect(move |conn, _| {
            let sql = Arc::clone(&attach);
            Box::pin(async move {
                conn.execute(sql.as_str()).await?;
                Ok(())
            })
        })
    };
    let writer = pool(1).connect_with(options.clone()).await?;
    let reader = pool(2).connect_with(options).await?;
    let db = Db::Sqlite { writer, reader };
    let mut tx = db.begin_write().await?;
    for table in tables {
        let quoted = (*table).replace('\'', "''");
        let sql = format!(
            "SELECT sql FROM live.sqlite_master WHERE tbl_name = '{quoted}' AND sql IS NOT NULL \
             ORDER BY type = 'index'"
        );
        let statements = Exec::of(&mut tx).texts(&sql).await?;
        anyhow::ensure!(!statements.is_empty(), "no table {table} in the database");
        for statement in statements.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
            Exec::of(&mut tx).execute(&statement).await?;
        }
    }
    tx.commit().await?;
    Ok(Scratch { db, name, engine: Engine::Sqlite { path } })
}

/// A `file:` URI that opens `path` read-only (SQLite).
fn read_only_uri(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file:");
    for c in absolute.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    uri
}
