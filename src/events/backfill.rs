//! The audit backfill: events written before the hash chain existed (migration 0006) get
//! their commitments and hash once, stream by stream in sequence order, exactly as if
//! they had been stamped at append. The table's trigger allows only this update: filling
//! a missing hash, changing nothing else.

use serde_json::Value;
use sqlx::Row;

use super::stamp::{Mode, Stamper};
use super::{AppendError, EventStore, NewEvent, StoreError, parse_sqlite_time};
use crate::db::Db;

const BATCH: i64 = 2_000;

const PG_UNHASHED: &str = "
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events WHERE hash IS NULL
 ORDER BY aggregate_type, aggregate_id, sequence LIMIT $1";

const PG_FILL: &str = "
UPDATE events e SET hash = u.h, commitments = u.c
  FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[]) AS u(t, i, s, h, c)
 WHERE e.aggregate_type = u.t AND e.aggregate_id = u.i AND e.sequence = u.s AND e.hash IS NULL";

/// Serialises backfills across processes (PostgreSQL session advisory lock).
const LOCK_KEY: i64 = 0x6d63_615f_6175_6469; // "mca_audi"

impl EventStore {
    /// Gives every event without a hash its commitments and hash. Returns how many it
    /// filled. Safe to run from several processes at once, and cheap when there is
    /// nothing to do (an index covers the rows without a hash).
    pub async fn backfill_chain(&self) -> Result<u64, StoreError> {
        let stamper = Stamper::new(self.personal_keys().clone());
        match self.db() {
            Db::Postgres(pool) => {
                let mut lock = pool.acquire().await?;
                sqlx::query("SELECT pg_advisory_lock($1)").bind(LOCK_KEY).execute(&mut *lock).await?;
                let result = self.fill_all(&stamper).await;
                sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut *lock).await?;
                result
            }
            Db::Sqlite { .. } => self.fill_all(&stamper).await,
        }
    }

    async fn fill_all(&self, stamper: &Stamper) -> Result<u64, StoreError> {
        let mut filled = 0u64;
        loop {
            let batch = self.unhashed().await?;
            if batch.is_empty() {
                return Ok(filled);
            }
            let stamps = stamper.stamp(self.db(), &batch, Mode::AsStored).await.map_err(|e| match e {
                AppendError::Conflict => {
                    StoreError::Corrupt("an event's stream has a gap: its previous event is missing".into())
                }
                AppendError::Store(e) => e,
            })?;
            let hashes: Vec<String> = stamps.iter().map(|s| s.hash.clone()).collect();
            let commitments: Vec<Option<Value>> = stamps.iter().map(|s| s.commitments.clone()).collect();
            match self.db() {
                Db::Postgres(pool) => {
                    sqlx::query(PG_FILL)
                        .bind(batch.iter().map(|e| e.aggregate_type.clone()).collect::<Vec<_>>())
                        .bind(batch.iter().map(|e| e.aggregate_id.clone()).collect::<Vec<_>>())
                        .bind(batch.iter().map(|e| e.sequence).collect::<Vec<_>>())
                        .bind(&hashes)
                        .bind(&commitments)
                        .execute(pool)
                        .await?;
                }
                Db::Sqlite { writer, .. } => {
                    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
                    for ((event, hash), commitments) in batch.iter().zip(&hashes).zip(&commitments) {
                        sqlx::query(
                            "UPDATE events SET hash = $1, commitments = $2 \
                             WHERE aggregate_type = $3 AND aggregate_id = $4 AND sequence = $5 AND hash IS NULL",
                        )
                        .bind(hash)
                        .bind(commitments.as_ref().map(Value::to_string))
                        .bind(&event.aggregate_type)
                        .bind(&event.aggregate_id)
                        .bind(event.sequence)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                }
            }
            stamper.written(&batch, &stamps);
            filled += batch.len() as u64;
        }
    }

    /// The next rows without a hash, in stream order.
    async fn unhashed(&self) -> Result<Vec<NewEvent>, StoreError> {
        match self.db() {
            Db::Postgres(pool) => {
                let rows = sqlx::query(PG_UNHASHED).bind(BATCH).fetch_all(pool).await?;
                rows.iter()
                    .map(|row| {
                        Ok(NewEvent {
                            aggregate_type: row.try_get("aggregate_type")?,
                            aggregate_id: row.try_get("aggregate_id")?,
                            sequence: row.try_get("sequence")?,
                            event_type: row.try_get("event_type")?,
                            event_version: row.try_get("event_version")?,
                            payload: row.try_get("payload")?,
                            metadata: row.try_get("metadata")?,
                            recorded_at: row.try_get("recorded_at")?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(StoreError::from)
            }
            Db::Sqlite { writer, .. } => {
                let rows = sqlx::query(
                    "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
                            recorded_at FROM events WHERE hash IS NULL \
                      ORDER BY aggregate_type, aggregate_id, sequence LIMIT $1",
                )
                .bind(BATCH)
                .fetch_all(writer)
                .await?;
                rows.iter()
                    .map(|row| {
                        let json = |name: &str| -> Result<Value, StoreError> {
                            let text: String = row.try_get(name)?;
                            serde_json::from_str(&text)
                                .map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
                        };
                        let at: String = row.try_get("recorded_at")?;
                        Ok(NewEvent {
                            aggregate_type: row.try_get("aggregate_type")?,
                            aggregate_id: row.try_get("aggregate_id")?,
                            sequence: row.try_get("sequence")?,
                            event_type: row.try_get("event_type")?,
                            event_version: row.try_get("event_version")?,
                            payload: json("payload")?,
                            metadata: json("metadata")?,
                            recorded_at: parse_sqlite_time(&at)
                                .map_err(|e| StoreError::Corrupt(format!("recorded_at: {e}")))?,
                        })
                    })
                    .collect()
            }
        }
    }
}
