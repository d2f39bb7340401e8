//! The PostgreSQL side of the event store.
//!
//! Loading an aggregate goes through postgres-es's `PostgresEventRepository` (the table is
//! its schema plus three columns). Appending is ours: postgres-es binds the aggregate type
//! of the calling aggregate to every event and issues one INSERT per event, so it cannot
//! write several aggregates atomically (a registration writes four) nor report the
//! positions a command needs for read-your-writes. Our append is one statement, hence one
//! round trip and atomic without an explicit transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Executor, PgPool, Postgres, Row};

use super::stamp::Stamp;
use super::{AppendError, LogCursor, NewEvent, OutgoingMail, RecordedEvent, StoreError};

const APPEND: &str = "
WITH appended AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                        payload, metadata, recorded_at, hash, commitments)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                         $6::jsonb[], $7::jsonb[], $8::timestamptz[], $9::text[], $10::jsonb[])
    RETURNING txid, position
)
SELECT max(txid) AS txid, max(position) AS position FROM appended";

/// The same append, plus outbox messages in the same statement (hence the same
/// transaction).
const APPEND_WITH_MAIL: &str = "
WITH appended AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                        payload, metadata, recorded_at, hash, commitments)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                         $6::jsonb[], $7::jsonb[], $8::timestamptz[], $9::text[], $10::jsonb[])
    RETURNING txid, position
), queued AS (
    INSERT INTO outbox (id, kind, recipient, subject, body, created_at, expires_at, next_attempt_at)
    SELECT id, kind, recipient, subject, body, created_at, expires_at, created_at
      FROM UNNEST($11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                  $16::timestamptz[], $17::timestamptz[])
           AS m(id, kind, recipient, subject, body, created_at, expires_at)
)
SELECT max(txid) AS txid, max(position) AS position FROM appended";

const READ_AFTER: &str = "
SELECT txid, position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload, metadata, recorded_at, hash, commitments
  FROM events
 WHERE (txid, position) > ($1, $2)
   AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
 ORDER BY txid, position
 LIMIT $3";

const HEAD: &str = "
SELECT txid, position FROM events
 WHERE txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
 ORDER BY txid DESC, position DESC LIMIT 1";

/// The newest committed event, even if an older transaction still keeps it unreadable.
const COMMITTED_HEAD: &str = "SELECT txid, position FROM events ORDER BY txid DESC, position DESC LIMIT 1";

pub(super) async fn append(
    pool: &PgPool,
    events: &[NewEvent],
    stamps: &[Stamp],
    mail: &[OutgoingMail],
) -> Result<LogCursor, AppendError> {
    let column = |f: fn(&NewEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
    let types = column(|e| e.aggregate_type.clone());
    let ids = column(|e| e.aggregate_id.clone());
    let event_types = column(|e| e.event_type.clone());
    let versions = column(|e| e.event_version.clone());
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    // Sealed forms when stamped (the unchained benchmark store passes no stamps).
    let stored = |i: usize, e: &NewEvent| {
        stamps
            .get(i)
            .and_then(|s| s.sealed.as_ref())
            .map_or((e.payload.clone(), e.metadata.clone()), |(p, m)| (p.clone(), m.clone()))
    };
    let (payloads, metadata): (Vec<Value>, Vec<Value>) =
        events.iter().enumerate().map(|(i, e)| stored(i, e)).unzip();
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded_at).collect();
    let query = sqlx::query(if mail.is_empty() { APPEND } else { APPEND_WITH_MAIL })
        .bind(types)
        .bind(ids)
        .bind(sequences)
        .bind(event_types)
        .bind(versions)
        .bind(payloads)
        .bind(metadata)
        .bind(times)
        .bind(stamps.iter().map(|s| s.hash.clone()).collect::<Vec<_>>())
        .bind(stamps.iter().map(|s| s.commitments.clone()).collect::<Vec<Option<Value>>>());
    let query = if mail.is_empty() {
        query
    } else {
        let text = |f: fn(&OutgoingMail) -> &str| mail.iter().map(|m| f(m).to_owned()).collect::<Vec<_>>();
        query
            .bind(text(|m| &m.id))
            .bind(text(|m| &m.kind))
            .bind(text(|m| &m.recipient))
            .bind(text(|m| &m.subject))
            .bind(text(|m| &m.body))
            .bind(mail.iter().map(|m| m.created_at).collect::<Vec<_>>())
            .bind(mail.iter().map(|m| m.expires_at).collect::<Vec<_>>())
    };
    let row = query.fetch_one(pool).await.map_err(classify)?;
    let txid = row.try_get("txid").map_err(StoreError::from)?;
    let position = row.try_get("position").map_err(StoreError::from)?;
    Ok(LogCursor { txid, position })
}

/// A taken sequence number is a conflict; every other error is the database's.
fn classify(error: sqlx::Error) -> AppendError {
    if let sqlx::Error::Database(db) = &error
        && db.code().as_deref() == Some("23505")
        && db.constraint() == Some("events_pkey")
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
    E: Executor<'c, Database = Postgres>,
{
    let rows = sqlx::query(READ_AFTER)
        .bind(after.txid)
        .bind(after.position)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(executor)
        .await?;
    rows.iter().map(decode).collect()
}

pub(super) async fn head(pool: &PgPool) -> Result<LogCursor, StoreError> {
    cursor_of(pool, HEAD).await
}

pub(super) async fn committed_head(pool: &PgPool) -> Result<LogCursor, StoreError> {
    cursor_of(pool, COMMITTED_HEAD).await
}

async fn cursor_of(pool: &PgPool, sql: &str) -> Result<LogCursor, StoreError> {
    let row = sqlx::query(sql).fetch_optional(pool).await?;
    Ok(match row {
        Some(row) => LogCursor { txid: row.try_get("txid")?, position: row.try_get("position")? },
        None => LogCursor::START,
    })
}

fn decode(row: &sqlx::postgres::PgRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        cursor: LogCursor { txid: row.try_get("txid")?, position: row.try_get("position")? },
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
        hash: row.try_get("hash")?,
        commitments: row.try_get("commitments")?,
    })
}

const READ_STREAM: &str = "
SELECT txid, position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload, metadata, recorded_at, hash, commitments
  FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence LIMIT $4";

/// A stream's events after a sequence, in sequence order, with their place in the log.
pub(super) async fn read_stream(
    pool: &PgPool,
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
        .fetch_all(pool)
        .await?;
    rows.iter().map(decode).collect()
}

const AGGREGATE_EVENTS: &str = "
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence";

/// An aggregate's events after a sequence (cache catch-ups).
pub(super) async fn aggregate_events(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    after_sequence: i64,
) -> Result<Vec<cqrs_es::persist::SerializedEvent>, StoreError> {
    let rows = sqlx::query(AGGREGATE_EVENTS)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after_sequence)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let sequence: i64 = row.try_get("sequence")?;
            Ok(cqrs_es::persist::SerializedEvent::new(
                row.try_get("aggregate_id")?,
                usize::try_from(sequence).map_err(|_| StoreError::Corrupt("sequence".into()))?,
                row.try_get("aggregate_type")?,
                row.try_get("event_type")?,
                row.try_get("event_version")?,
                row.try_get("payload")?,
                row.try_get("metadata")?,
            ))
        })
        .collect()
}
