//! The read-model tables a replay compares and swaps, and the two statements it runs on
//! them: the rows that differ between the rebuilt and the live copy (by primary key),
//! and the swap that makes the live copy equal to the rebuilt one.
//!
//! Both are joins the database runs itself (a `FULL JOIN` on the primary key, rows
//! compared column by column with NULLs equal), so a million-row table is compared
//! without moving its rows to this process. (Two `EXCEPT`s over every column were 4 times
//! slower at a million events: they sort both copies whole; docs/BENCHMARKS.md.)

use sqlx::Row;

use crate::db::DbTx;

/// A connection or transaction of either engine, for statements without bind values.
pub(super) enum Exec<'a> {
    Postgres(&'a mut sqlx::PgConnection),
    Sqlite(&'a mut sqlx::SqliteConnection),
}

impl<'a> Exec<'a> {
    pub(super) fn of(tx: &'a mut DbTx) -> Self {
        match tx {
            DbTx::Postgres(tx) => Self::Postgres(tx),
            DbTx::Sqlite(tx) => Self::Sqlite(tx),
        }
    }

    /// The engine's null-safe row inequality.
    fn distinct(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "IS DISTINCT FROM",
            Self::Sqlite(_) => "IS NOT",
        }
    }

    /// Runs one statement; the rows it changed.
    pub(super) async fn execute(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Self::Postgres(c) => sqlx::query(sql).execute(&mut **c).await?.rows_affected(),
            Self::Sqlite(c) => sqlx::query(sql).execute(&mut **c).await?.rows_affected(),
        })
    }

    /// Runs a query whose every column is text (cast in the SQL).
    pub(super) async fn texts(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, sqlx::Error> {
        macro_rules! collect {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|row| (0..row.len()).map(|i| row.try_get::<Option<String>, _>(i)).collect())
                    .collect::<Result<Vec<Vec<Option<String>>>, sqlx::Error>>()
            };
        }
        match self {
            Self::Postgres(c) => collect!(sqlx::query(sql).fetch_all(&mut **c).await?),
            Self::Sqlite(c) => collect!(sqlx::query(sql).fetch_all(&mut **c).await?),
        }
    }
}

/// One read-model table: its columns and primary key, and its two qualified names as
/// the statements that compare or swap it see them.
#[derive(Clone, Debug)]
pub(super) struct Table {
    pub name: &'static str,
    pub columns: Vec<String>,
    pub key: Vec<String>,
    /// The rebuilt copy.
    pub rebuilt: String,
    /// The live copy.
    pub live: String,
}

/// How one row differs, by primary key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowDifference {
    /// Both copies have the key, with different values.
    Differs,
    /// The rebuild has the row; the live table does not.
    MissingFromLive,
    /// The live table has a row the log does not produce.
    OnlyInLive,
}

impl RowDifference {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Differs => "differs",
            Self::MissingFromLive => "missing from the live table",
            Self::OnlyInLive => "only in the live table",
        }
    }
}

/// The rows of one table that differ (at most [`KEYS_REPORTED`] keys are listed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDifferences {
    pub table: &'static str,
    /// Rows that differ in all (each way counted once per key).
    pub count: usize,
    /// `(key, how)`: the key as `column=value` pairs.
    pub rows: Vec<(String, RowDifference)>,
}

/// At most this many keys per table and direction are fetched and listed.
pub const KEYS_REPORTED: usize = 1_000;

impl Table {
    fn column_list(&self, alias: &str) -> String {
        self.columns.iter().map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
    }

    fn key_match(&self) -> String {
        self.key.iter().map(|k| format!("a.{k} = b.{k}")).collect::<Vec<_>>().join(" AND ")
    }

    /// `a` (rebuilt) and `b` (live) joined on the key: every row of either, paired.
    fn joined(&self) -> String {
        format!("{} a FULL JOIN {} b ON {}", self.rebuilt, self.live, self.key_match())
    }

    /// The rows of the join whose two sides differ (one missing, or any column unequal,
    /// NULLs equal). `distinct` is the engine's null-safe row inequality.
    fn differing(&self, distinct: &str) -> String {
        let first = &self.key[0];
        format!(
            "a.{first} IS NULL OR b.{first} IS NULL OR ({}) {distinct} ({})",
            self.column_list("a"),
            self.column_list("b")
        )
    }

    /// The rows that differ between the rebuilt and the live copy: one `FULL JOIN` on
    /// the primary key, run by the database.
    pub(super) async fn differences(&self, exec: &mut Exec<'_>) -> Result<TableDifferences, sqlx::Error> {
        let distinct = exec.distinct();
        let keys = |alias: &str| -> Vec<String> {
            self.key.iter().map(|k| format!("CAST({alias}.{k} AS TEXT)")).collect()
        };
        let (rebuilt_keys, live_keys) = (keys("a"), keys("b"));
        let order: Vec<String> =
            self.key.iter().map(|k| format!("CAST(COALESCE(a.{k}, b.{k}) AS TEXT)")).collect();
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE {} ORDER BY {} LIMIT {}",
            rebuilt_keys.join(", "),
            live_keys.join(", "),
            self.joined(),
            self.differing(distinct),
            order.join(", "),
            KEYS_REPORTED + 1
        );
        let found = exec.texts(&sql).await?;
        let width = self.key.len();
        let render = |values: &[Option<String>]| -> String {
            self.key
                .iter()
                .zip(values)
                .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("NULL")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut rows: Vec<(String, RowDifference)> = found
            .iter()
            .take(KEYS_REPORTED)
            .map(|row| {
                let (rebuilt, live) = row.split_at(width);
                match (rebuilt[0].is_some(), live[0].is_some()) {
                    (true, true) => (render(rebuilt), RowDifference::Differs),
                    (true, false) => (render(rebuilt), RowDifference::MissingFromLive),
                    _ => (render(live), RowDifference::OnlyInLive),
                }
            })
            .collect();
        let count = if found.len() <= KEYS_REPORTED {
            rows.len()
        } else {
            let sql = format!(
                "SELECT CAST(count(*) AS TEXT) FROM {} WHERE {}",
                self.joined(),
                self.differing(distinct)
            );
            let counted = exec.texts(&sql).await?;
            counted
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        rows.sort();
        Ok(TableDifferences { table: self.name, count, rows })
    }

    /// Makes the live copy equal to the rebuilt one, touching only the rows that differ:
    /// deletes the live rows the rebuild does not have as they are, then inserts the
    /// rebuilt rows whose key the live table no longer has. Returns (deleted, inserted).
    /// The table itself stays, with its grants, policies, indexes and dependent views.
    pub(super) async fn swap(&self, exec: &mut Exec<'_>) -> Result<(u64, u64), sqlx::Error> {
        let distinct = exec.distinct();
        let key = self.key.join(", ");
        let live_keys: Vec<String> = self.key.iter().map(|k| format!("b.{k}")).collect();
        let first = &self.key[0];
        let stale = format!(
            "SELECT {} FROM {} WHERE b.{first} IS NOT NULL AND ({})",
            live_keys.join(", "),
            self.joined(),
            self.differing(distinct)
        );
        let deleted = exec.execute(&format!("DELETE FROM {} WHERE ({key}) IN ({stale})", self.live)).await?;
        let inserted = exec
            .execute(&format!(
                "INSERT INTO {} ({}) SELECT {} FROM {} a LEFT JOIN {} b ON {} WHERE b.{first} IS NULL",
                self.live,
                self.columns.join(", "),
                self.column_list("a"),
                self.rebuilt,
                self.live,
                self.key_match()
            ))
            .await?;
        Ok((deleted, inserted))
    }
}

/// The columns (in table order) and primary key of a table, read from the catalogue.
pub(super) async fn shape(
    exec: &mut Exec<'_>,
    schema: &str,
    table: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (columns_sql, key_sql) = match exec {
        Exec::Postgres(_) => (
            format!(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
                 WHERE table_schema = '{schema}' AND table_name = '{table}' ORDER BY ordinal_position"
            ),
            format!(
                "SELECT CAST(a.attname AS TEXT) FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = '\"{schema}\".\"{table}\"'::regclass AND i.indisprimary \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)"
            ),
        ),
        Exec::Sqlite(_) => (
            format!("SELECT name FROM pragma_table_info('{table}', '{schema}') ORDER BY cid"),
            format!("SELECT name FROM pragma_table_info('{table}', '{schema}') WHERE pk > 0 ORDER BY pk"),
        ),
    };
    let names = |rows: Vec<Vec<Option<String>>>| -> Vec<String> {
        rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).map(|n| quote(&n)).collect()
    };
    let columns = names(exec.texts(&columns_sql).await?);
    let key = names(exec.texts(&key_sql).await?);
    anyhow::ensure!(!columns.is_empty(), "table {schema}.{table} not found");
    anyhow::ensure!(!key.is_empty(), "table {schema}.{table} has no primary key to compare rows by");
    Ok((columns, key))
}

/// An identifier quoted for either engine.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
