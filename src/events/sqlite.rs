//! The SQLite side of the event store: the same logical table, our own SQL.
//!
//! Appends run in `BEGIN IMMEDIATE` transactions on the single writer connection, so the
//! global position is assigned in commit order and `position > last` never skips.

use cqrs_es::persist::SerializedEvent;
use sqlx::{Executor, Row, Sqlite, SqlitePool};

use super::stamp::Stamp;
use super::{
    AppendError, LogCursor, NewEvent, OutgoingMail, RecordedEvent, StoreError, parse_sqlite_time, sqlite_time,
};
use crate::db::DbTime;

const INSERT: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata, recorded_at, hash, commitments)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING position";

const READ_AFTER: &str = "
SELECT txid, position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload, metadata, recorded_at, hash, commitments
  FROM events WHERE position > $1 ORDER BY position LIMIT $2";

const READ_STREAM: &str = "
SELECT txid, position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload, metadata, recorded_at, hash, commitments
  FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence LIMIT $4";

const AGGREGATE_EVENTS: &str = "
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence";

pub(super) async fn append(
    writer: &SqlitePool,
    events: &[NewEvent],
    stamps: &[Stamp],
    mail: &[OutgoingMail],
) -> Result<LogCursor, AppendError> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(StoreError::from)?;
    let mut last = 0i64;
    for (event, stamp) in events.iter().zip(stamps) {
        let row = sqlx::query(INSERT)
            .bind(&event.aggregate_type)
            .bind(&event.aggregate_id)
            .bind(event.sequence)
            .bind(&event.event_type)
            .bind(&event.event_version)
            .bind(stamp.sealed.as_ref().map_or(&event.payload, |(p, _)| p).to_string())
            .bind(stamp.sealed.as_ref().map_or(&event.metadata, |(_, m)| m).to_string())
            .bind(sqlite_time(event.recorded_at))
            .bind(&stamp.hash)
            .bind(stamp.commitments.as_ref().map(|c| c.to_string()))
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        last = row.try_get("position").map_err(StoreError::from)?;
    }
    for m in mail {
        sqlx::query(
            "INSERT INTO outbox (id, kind, recipient, subject, body, created_at, expires_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $6)",
        )
        .bind(&m.id)
        .bind(&m.kind)
        .bind(&m.recipient)
        .bind(&m.subject)
        .bind(&m.body)
        .bind(DbTime(m.created_at))
        .bind(DbTime(m.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(LogCursor { txid: 0, position: last })
}

/// A taken sequence number is a conflict; every other error is the database's.
fn classify(error: sqlx::Error) -> AppendError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
        && db.message().contains("events.aggregate_type")
    {
        return AppendError::Conflict;
    }
    AppendError::Store(StoreError::Database(error))
}

pub(super) async fn read_after<'c, E>(
    executor: E,
    after: LogCursor,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError>
where
    E: Executor<'c, Database = Sqlite>,
{
    let rows = sqlx::query(READ_AFTER)
        .bind(after.position)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(executor)
        .await?;
    rows.iter().map(decode).collect()
}

/// A stream's events after a sequence, in sequence order, with their place in the log.
pub(super) async fn read_stream(
    reader: &SqlitePool,
    aggregate_type: &str,
    aggregate_id: &str,
    after_sequence: i64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = sqlx::query(READ_STREAM)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after_sequence)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(reader)
        .await?;
    rows.iter().map(decode).collect()
}

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        cursor: LogCursor { txid: row.try_get("txid")?, position: row.try_get("position")? },
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: json_column(row, "payload")?,
        metadata: json_column(row, "metadata")?,
        recorded_at: parse_sqlite_time(&row.try_get::<String, _>("recorded_at")?)
            .map_err(|e| StoreError::Corrupt(format!("recorded_at: {e}")))?,
        hash: row.try_get("hash")?,
        commitments: optional_json_column(row, "commitments")?,
    })
}

pub(super) async fn aggregate_events(
    reader: &SqlitePool,
    aggregate_type: &str,
    aggregate_id: &str,
    after_sequence: i64,
) -> Result<Vec<SerializedEvent>, StoreError> {
    let rows = sqlx::query(AGGREGATE_EVENTS)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after_sequence)
        .fetch_all(reader)
        .await?;
    rows.iter()
        .map(|row| {
            let sequence: i64 = row.try_get("sequence")?;
            Ok(SerializedEvent::new(
                row.try_get("aggregate_id")?,
                usize::try_from(sequence).map_err(|_| StoreError::Corrupt("sequence".into()))?,
                row.try_get("aggregate_type")?,
                row.try_get("event_type")?,
                row.try_get("event_version")?,
                json_column(row, "payload")?,
                json_column(row, "metadata")?,
            ))
        })
        .collect()
}

pub(super) async fn head(reader: &SqlitePool) -> Result<LogCursor, StoreError> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT max(position) FROM events").fetch_one(reader).await?;
    Ok(LogCursor { txid: 0, position: position.unwrap_or(0) })
}

fn optional_json_column(
    row: &sqlx::sqlite::SqliteRow,
    name: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    let text: Option<String> = row.try_get(name)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{name}: {e}"))))
        .transpose()
}

fn json_column(row: &sqlx::sqlite::SqliteRow, name: &str) -> Result<serde_json::Value, StoreError> {
    let text: String = row.try_get(name)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
}
