//! docs/PROJECTIONS.md is a contract: every read-model table and column it documents
//! exists, and every column of every read-model table is documented, on both engines.
//! On PostgreSQL the read models are exactly the tables of the schema `read`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{ENGINES, Engine, TestDb};
use sqlx::Connection;

/// The documented columns per table: a heading names its table (the last `name` in
/// backticks on the line); the first cell of each row of a Markdown table under it whose
/// header is `Column` names columns (every `name` in backticks).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROJECTIONS.md");
    let doc = std::fs::read_to_string(path).expect("docs/PROJECTIONS.md");
    let ticked =
        |text: &str| -> Vec<String> { text.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    // Whether the Markdown table being read is a column table (its header says `Column`);
    // other tables (the chart of accounts, examples) are not.
    let mut columns_table = false;
    let mut in_table = false;
    for line in doc.lines() {
        if line.starts_with('#') {
            current = ticked(line).pop();
            continue;
        }
        let Some(row) = line.strip_prefix('|') else {
            in_table = false;
            continue;
        };
        let first = row.split('|').next().unwrap_or_default();
        if !in_table {
            in_table = true;
            columns_table = first.trim() == "Column";
            continue;
        }
        let Some(table) = &current else { continue };
        if !columns_table || first.contains("---") {
            continue;
        }
        tables.entry(table.clone()).or_default().extend(ticked(first));
    }
    tables.retain(|_, columns| !columns.is_empty());
    tables
}

async fn columns(db: &TestDb, table: &str) -> BTreeSet<String> {
    match db.engine {
        Engine::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url()).await.expect("connect");
            sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'read' AND table_name = $1",
            )
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .expect("columns")
            .into_iter()
            .collect()
        }
        Engine::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url()).await.expect("connect");
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                .bind(table)
                .fetch_all(&mut conn)
                .await
                .expect("columns")
                .into_iter()
                .collect()
        }
    }
}

#[tokio::test]
async fn every_read_model_column_is_documented_and_every_documented_column_exists() {
    let documented = documented();
    let mut models: BTreeSet<String> = mana_core_auth::projections::all()
        .iter()
        .flat_map(|p| p.tables().iter().map(|t| (*t).to_owned()))
        .collect();
    models.insert("projection_checkpoints".to_owned());
    let documented_tables: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(documented_tables, models, "docs/PROJECTIONS.md documents exactly the read-model tables");
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let migrated = mana_core_auth::db::Db::connect(&db.config, 1).await.expect("db");
        migrated.migrate().await.expect("migrate");
        migrated.close().await;
        for (table, expected) in &documented {
            let actual = columns(&db, table).await;
            let missing: Vec<_> = expected.difference(&actual).collect();
            let undocumented: Vec<_> = actual.difference(expected).collect();
            assert!(
                missing.is_empty(),
                "{engine:?}: documented columns of {table} missing from the database: {missing:?}"
            );
            assert!(
                undocumented.is_empty(),
                "{engine:?}: columns of {table} not in docs/PROJECTIONS.md: {undocumented:?}"
            );
        }
        if engine == Engine::Postgres {
            let mut conn = sqlx::PgConnection::connect(&db.url()).await.expect("connect");
            let in_read: BTreeSet<String> =
                sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'read'")
                    .fetch_all(&mut conn)
                    .await
                    .expect("tables")
                    .into_iter()
                    .collect();
            assert_eq!(in_read, models, "the schema `read` holds exactly the read models");
        }
    }
}
