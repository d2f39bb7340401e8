//! The feed's row in `event_feed`: its checkpoint (the last event JetStream acknowledged)
//! and the lease that lets one process at a time publish.
//!
//! Lease times come from the database's clock, not the processes' clocks, so that
//! processes whose clocks differ agree on when a lease has run out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::db::{Db, parse_sqlite_time};
use crate::events::LogCursor;

/// Where the feed stands: the last event in the stream, and its stream sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedPoint {
    pub cursor: LogCursor,
    pub stream_sequence: u64,
}

/// The feed's row of one stream.
#[derive(Clone, Debug)]
pub struct FeedRow {
    db: Db,
    stream: String,
}

/// The database's clock in Unix milliseconds, in each engine's SQL.
fn now_ms(db: &Db) -> &'static str {
    match db {
        Db::Postgres(_) => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint",
        Db::Sqlite { .. } => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

impl FeedRow {
    pub fn new(db: Db, stream: &str) -> Self {
        Self { db, stream: stream.to_owned() }
    }

    /// Creates the row if it is missing.
    pub async fn init(&self) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO event_feed (stream) VALUES ($1) ON CONFLICT (stream) DO NOTHING";
        self.execute(sql, &[Arg::Text(&self.stream)]).await.map(drop)
    }

    /// Takes or renews the lease for `holder`: true when `holder` leads now (it held the
    /// lease, or the lease had run out).
    pub async fn claim(&self, holder: &str, lease: Duration) -> Result<bool, sqlx::Error> {
        let now = now_ms(&self.db);
        let sql = format!(
            "UPDATE event_feed SET leader = $2, lease_until_ms = {now} + $3 \
             WHERE stream = $1 AND (leader = $2 OR leader IS NULL OR lease_until_ms < {now})"
        );
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let args = [Arg::Text(&self.stream), Arg::Text(holder), Arg::Int(lease_ms)];
        Ok(self.execute(&sql, &args).await? == 1)
    }

    /// Gives the lease up (a process that stops), so another takes over at once.
    pub async fn release(&self, holder: &str) -> Result<(), sqlx::Error> {
        let sql = "UPDATE event_feed SET leader = NULL, lease_until_ms = 0 WHERE stream = $1 AND leader = $2";
        self.execute(sql, &[Arg::Text(&self.stream), Arg::Text(holder)]).await.map(drop)
    }

    /// Moves the checkpoint to `point` and renews the lease, if `holder` still leads.
    /// False when another process has taken over (nothing is written then).
    pub async fn advance(
        &self,
        holder: &str,
        point: FeedPoint,
        lease: Duration,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms(&self.db);
        let stamp = match self.db {
            Db::Postgres(_) => "now()",
            Db::Sqlite { .. } => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        };
        let sql = format!(
            "UPDATE event_feed SET txid = $3, position = $4, stream_sequence = $5, \
             lease_until_ms = {now} + $6, updated_at = {stamp} WHERE stream = $1 AND leader = $2"
        );
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let sequence = i64::try_from(point.stream_sequence).unwrap_or(i64::MAX);
        let args = [
            Arg::Text(&self.stream),
            Arg::Text(holder),
            Arg::Int(point.cursor.txid),
            Arg::Int(point.cursor.position),
            Arg::Int(sequence),
            Arg::Int(lease_ms),
        ];
        Ok(self.execute(&sql, &args).await? == 1)
    }

    /// The stored checkpoint ([`FeedPoint::default`] before the first publish).
    pub async fn point(&self) -> Result<FeedPoint, sqlx::Error> {
        let sql = "SELECT txid, position, stream_sequence FROM event_feed WHERE stream = $1";
        let row = match &self.db {
            Db::Postgres(pool) => sqlx::query(sql)
                .bind(&self.stream)
                .fetch_optional(pool)
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get::<i64, _>(2)?))),
            Db::Sqlite { reader, .. } => sqlx::query(sql)
                .bind(&self.stream)
                .fetch_optional(reader)
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get::<i64, _>(2)?))),
        };
        Ok(row.transpose()?.map_or_else(FeedPoint::default, |(txid, position, sequence)| FeedPoint {
            cursor: LogCursor { txid, position },
            stream_sequence: u64::try_from(sequence).unwrap_or(0),
        }))
    }

    async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, sqlx::Error> {
        macro_rules! bound {
            ($query:expr) => {{
                let mut query = $query;
                for arg in args {
                    query = match *arg {
                        Arg::Text(text) => query.bind(text),
                        Arg::Int(number) => query.bind(number),
                    };
                }
                query
            }};
        }
        match &self.db {
            Db::Postgres(pool) => Ok(bound!(sqlx::query(sql)).execute(pool).await?.rows_affected()),
            Db::Sqlite { writer, .. } => Ok(bound!(sqlx::query(sql)).execute(writer).await?.rows_affected()),
        }
    }
}

/// A bind value of the feed's statements.
#[derive(Clone, Copy)]
enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// Readable events after `after` (counted up to `cap`) and the time of the oldest.
pub async fn pending(
    db: &Db,
    after: LogCursor,
    cap: i64,
) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    let sql = "SELECT count(*) AS n, min(recorded_at) AS oldest FROM ( \
               SELECT recorded_at FROM events WHERE (txid, position) > ($1, $2) \
               ORDER BY txid, position LIMIT $3) pending";
    Ok(match db {
        Db::Postgres(pool) => {
            let row =
                sqlx::query(sql).bind(after.txid).bind(after.position).bind(cap).fetch_one(pool).await?;
            (row.try_get("n")?, row.try_get("oldest")?)
        }
        Db::Sqlite { reader, .. } => {
            let row =
                sqlx::query(sql).bind(after.txid).bind(after.position).bind(cap).fetch_one(reader).await?;
            let oldest: Option<String> = row.try_get("oldest")?;
            (row.try_get("n")?, oldest.and_then(|t| parse_sqlite_time(&t).ok()))
        }
    })
}
