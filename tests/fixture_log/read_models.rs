//! The read models of a database as normalised JSON, so that a fixture's stored read
//! models can be compared with what a later build makes of the same log; and loading a
//! fixture into a fresh database.
//!
//! Every value is normalised alike on both engines: times as RFC 3339 UTC text with
//! microseconds (the form SQLite stores), dates as `YYYY-MM-DD`, booleans as JSON
//! booleans, JSON columns as JSON values, integers as numbers. Rows are sorted by their
//! serialised form, so the order the database returns them in does not matter.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use mana_core_auth::db::Db;
use serde_json::Value;
use sqlx::{Column, Connection, Row, TypeInfo, ValueRef};

/// One row: column name to normalised value.
pub type RowMap = BTreeMap<String, Value>;
/// Every read-model table: table name to its sorted rows.
pub type ReadModels = BTreeMap<String, Vec<RowMap>>;

/// SQLite stores these booleans as 0 or 1 (PostgreSQL: `boolean`).
const BOOLEAN_COLUMNS: [&str; 3] = ["sessions.remember_me", "users.disabled", "users.email_verified"];
/// SQLite stores these as JSON text (PostgreSQL: `jsonb`).
const JSON_COLUMNS: [&str; 2] = ["credit_transactions.metadata", "security_events.metadata"];

/// The checkpoint table: every projection's position in the log.
pub const CHECKPOINTS: &str = "projection_checkpoints";

/// Every table the projections of this build own, and the checkpoints.
pub fn tables() -> Vec<&'static str> {
    let mut tables: Vec<&'static str> =
        mana_core_auth::projections::all().iter().flat_map(|p| p.tables().iter().copied()).collect();
    tables.push(CHECKPOINTS);
    tables.sort_unstable();
    tables
}

/// The rows of `tables`, normalised and sorted.
pub async fn export(db: &Db, tables: &[&str]) -> ReadModels {
    let mut models = ReadModels::new();
    for table in tables {
        let sql = format!("SELECT * FROM {table}");
        let mut rows: Vec<RowMap> = match db {
            Db::Postgres(pool) => {
                let rows = sqlx::query(&sql).fetch_all(pool).await.expect("read a read-model table");
                rows.iter().map(|row| pg_row(table, row)).collect()
            }
            Db::Sqlite { reader, .. } => {
                let rows = sqlx::query(&sql).fetch_all(reader).await.expect("read a read-model table");
                rows.iter().map(|row| sqlite_row(table, row)).collect()
            }
        };
        sort(&mut rows);
        models.insert((*table).to_owned(), rows);
    }
    models
}

fn sort(rows: &mut [RowMap]) {
    rows.sort_by_cached_key(|row| serde_json::to_string(row).expect("a row serialises"));
}

fn time(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

fn pg_row(table: &str, row: &sqlx::postgres::PgRow) -> RowMap {
    let mut map = RowMap::new();
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let kind = column.type_info().name().to_owned();
        let value = match kind.as_str() {
            "BOOL" => row.try_get::<Option<bool>, _>(i).map(|v| v.map_or(Value::Null, Value::Bool)),
            "INT2" | "INT4" | "INT8" => {
                row.try_get::<Option<i64>, _>(i).map(|v| v.map_or(Value::Null, Value::from))
            }
            "TEXT" | "VARCHAR" => {
                row.try_get::<Option<String>, _>(i).map(|v| v.map_or(Value::Null, Value::from))
            }
            "TIMESTAMPTZ" => row.try_get::<Option<DateTime<Utc>>, _>(i).map(|v| v.map_or(Value::Null, time)),
            "DATE" => row
                .try_get::<Option<NaiveDate>, _>(i)
                .map(|v| v.map_or(Value::Null, |d| Value::from(d.format("%Y-%m-%d").to_string()))),
            "JSON" | "JSONB" => row.try_get::<Option<Value>, _>(i).map(|v| v.unwrap_or(Value::Null)),
            other => panic!("{table}.{name}: no normal form for PostgreSQL type {other}"),
        };
        map.insert(name.to_owned(), value.unwrap_or_else(|e| panic!("{table}.{name}: {e}")));
    }
    map
}

fn sqlite_row(table: &str, row: &sqlx::sqlite::SqliteRow) -> RowMap {
    let mut map = RowMap::new();
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let qualified = format!("{table}.{name}");
        let raw = row.try_get_raw(i).unwrap_or_else(|e| panic!("{qualified}: {e}"));
        let value = if raw.is_null() {
            Value::Null
        } else if let Ok(number) = row.try_get::<i64, _>(i) {
            if BOOLEAN_COLUMNS.contains(&qualified.as_str()) {
                assert!(number == 0 || number == 1, "{qualified}: {number} is not a boolean");
                Value::Bool(number == 1)
            } else {
                Value::from(number)
            }
        } else if let Ok(text) = row.try_get::<String, _>(i) {
            if JSON_COLUMNS.contains(&qualified.as_str()) {
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{qualified}: not JSON: {e}"))
            } else {
                Value::String(text)
            }
        } else {
            panic!("{qualified}: no normal form for SQLite type {}", raw.type_info().name());
        };
        map.insert(name.to_owned(), value);
    }
    map
}

/// Asserts that the columns SQLite's side normalises as booleans and JSON are exactly
/// PostgreSQL's `boolean` and `json`/`jsonb` columns of `tables` (so both engines' JSON
/// compare).
pub async fn assert_normal_forms_match(pool: &sqlx::PgPool, tables: &[&str]) {
    let columns = |types: &'static [&'static str]| {
        let tables: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
        async move {
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT table_name || '.' || column_name FROM information_schema.columns \
                  WHERE table_schema = 'public' AND table_name = ANY($1) AND data_type = ANY($2)",
            )
            .bind(tables)
            .bind(types)
            .fetch_all(pool)
            .await
            .expect("column types");
            found.into_iter().collect::<BTreeSet<_>>()
        }
    };
    let expected = |list: &[&str]| list.iter().map(|c| (*c).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(columns(&["boolean"]).await, expected(&BOOLEAN_COLUMNS), "boolean columns");
    assert_eq!(columns(&["json", "jsonb"]).await, expected(&JSON_COLUMNS), "JSON columns");
}

/// Asserts that `current` holds the read models in `stored`: the same rows in every
/// stored table, compared on the stored columns (later migrations may add tables and
/// columns; PROJECTIONS.md promises not to rename or repurpose existing ones), and the
/// stored projections' checkpoints (a projection added later has its own).
/// Streams a later release opens at start-up on any log (issue 11: the audit keyring and
/// the seal stream; issue 16: the published credit packages). Their rows are new facts,
/// not a different reading of the old log.
const OPENED_BY_LATER_RELEASES: &[(&str, &str)] =
    &[("keyring", "audit-keys"), ("audit_log", "seals"), ("credit_catalogue", "credit_packages")];

/// The read models without the rows of streams later releases open at start-up.
pub fn without_later_streams(mut models: ReadModels) -> ReadModels {
    // Those streams' events also move every checkpoint past the fixture's end: what stays
    // comparable is which projections exist.
    if let Some(checkpoints) = models.get_mut("projection_checkpoints") {
        for row in checkpoints.iter_mut() {
            row.retain(|column, _| column == "name");
        }
    }
    for rows in models.values_mut() {
        rows.retain(|row| {
            let of = |name: &str| row.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
            !OPENED_BY_LATER_RELEASES
                .iter()
                .any(|(t, id)| of("aggregate_type") == *t && of("aggregate_id") == *id)
        });
    }
    models
}

/// [`without_later_streams`] applied to both sides.
pub fn assert_same_but_later_streams(stored: &ReadModels, current: ReadModels, context: &str) {
    assert_same(&without_later_streams(stored.clone()), &without_later_streams(current), context);
}

pub fn assert_same(stored: &ReadModels, current: &ReadModels, context: &str) {
    for (table, expected) in stored {
        let rows = current.get(table).unwrap_or_else(|| panic!("{context}: table {table} is gone"));
        let columns: BTreeSet<&String> = expected.iter().flat_map(|row| row.keys()).collect();
        let names: Vec<&Value> = expected.iter().filter_map(|row| row.get("name")).collect();
        let mut actual: Vec<RowMap> = rows
            .iter()
            .filter(|row| table != CHECKPOINTS || row.get("name").is_some_and(|n| names.contains(&n)))
            .map(|row| {
                row.iter().filter(|(k, _)| columns.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
            })
            .collect();
        sort(&mut actual);
        if &actual == expected {
            continue;
        }
        let missing: Vec<&RowMap> = expected.iter().filter(|row| !actual.contains(row)).take(3).collect();
        let unexpected: Vec<&RowMap> = actual.iter().filter(|row| !expected.contains(row)).take(3).collect();
        panic!(
            "{context}: table {table} differs ({} rows stored, {} now).\nstored, not found now (first 3): \
             {}\nfound now, not stored (first 3): {}",
            expected.len(),
            actual.len(),
            serde_json::to_string_pretty(&missing).unwrap_or_default(),
            serde_json::to_string_pretty(&unexpected).unwrap_or_default(),
        );
    }
}

/// Loads a `pg_dump --inserts` file into an empty database (on its own connection: the
/// dump empties `search_path` for the session).
pub async fn load_postgres_dump(url: &str, dump: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect to the fixture database");
    sqlx::raw_sql(dump).execute(&mut conn).await.expect("the dump loads");
    conn.close().await.expect("close");
    advance_xids_past_the_log(url).await;
}

/// The log's reader only reads events whose writing transaction id (`events.txid`) is
/// below the oldest running transaction, and new events must sort after old ones. The
/// ids in a dump are those of the cluster that wrote it: on a younger cluster (a fresh
/// CI server) every restored event would stay unreadable and new ones would sort before
/// them. So transactions are used up here until the cluster's counter has passed the
/// log's, as it has on the cluster that wrote it.
async fn advance_xids_past_the_log(url: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect to the fixture database");
    let newest: i64 = sqlx::query_scalar("SELECT coalesce(max(txid), 0) FROM events")
        .fetch_one(&mut conn)
        .await
        .expect("max txid");
    loop {
        let current: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(&mut conn)
            .await
            .expect("current xid");
        if current > newest {
            break;
        }
        let batch = usize::try_from(newest - current).unwrap_or(0).clamp(1, 10_000);
        let burn = "BEGIN; SELECT pg_current_xact_id(); COMMIT;\n".repeat(batch);
        sqlx::raw_sql(&burn).execute(&mut conn).await.expect("use up transaction ids");
    }
    conn.close().await.expect("close");
}
