//! Projection `streams` (table `event_streams`): one row per aggregate with its version,
//! event count and first and last event times. Auditors use it to list streams and to
//! check each stream's version against the log.

use async_trait::async_trait;

use super::Projection;
use crate::db::{Db, DbTime, DbTx};
use crate::events::RecordedEvent;
use crate::{exec, insert_rows};

/// The `event_streams` read model: one row per aggregate stream, for auditors.
pub struct Streams;

const UPSERT: &str = " ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
    version = excluded.version, \
    events = event_streams.events + excluded.events, \
    last_recorded_at = excluded.last_recorded_at";

#[async_trait]
impl Projection for Streams {
    fn name(&self) -> &'static str {
        "streams"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["event_streams"]
    }

    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        // One row per stream touched by the batch, then one multi-row upsert.
        let mut touched: Vec<StreamRow> = Vec::new();
        for event in events {
            let existing = touched
                .iter_mut()
                .find(|r| r.aggregate_type == event.aggregate_type && r.aggregate_id == event.aggregate_id);
            match existing {
                Some(row) => {
                    row.version = event.sequence;
                    row.events += 1;
                    row.last = DbTime(event.recorded_at);
                }
                None => touched.push(StreamRow {
                    aggregate_type: event.aggregate_type.clone(),
                    aggregate_id: event.aggregate_id.clone(),
                    version: event.sequence,
                    events: 1,
                    first: DbTime(event.recorded_at),
                    last: DbTime(event.recorded_at),
                }),
            }
        }
        insert_rows!(
            tx,
            "event_streams",
            &touched,
            |r| {
                "aggregate_type": "text" = r.aggregate_type.clone(),
                "aggregate_id": "text" = r.aggregate_id.clone(),
                "version": "bigint" = r.version,
                "events": "bigint" = r.events,
                "first_recorded_at": "timestamptz" = r.first,
                "last_recorded_at": "timestamptz" = r.last,
            },
            UPSERT
        )?;
        Ok(())
    }
}

struct StreamRow {
    aggregate_type: String,
    aggregate_id: String,
    version: i64,
    events: i64,
    first: DbTime,
    last: DbTime,
}

/// Follows an erasure that renamed a person's legacy e-mail claim and sign-in protection
/// streams (`events::erasure`) from `from` to `to`: their rows are merged under the new
/// name, as a rebuild from the renamed log would make them. Runs under the projection's
/// lock, so that no batch that read the old name can write it back afterwards.
pub async fn rename_erased(db: &Db, from: &str, to: &str) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    if let DbTx::Postgres(pg) = &mut tx {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(super::lock_key("", "streams"))
            .execute(&mut **pg)
            .await?;
    }
    exec!(
        &mut tx,
        "INSERT INTO event_streams (aggregate_type, aggregate_id, version, events, first_recorded_at, last_recorded_at) \
         SELECT aggregate_type, $2, version, events, first_recorded_at, last_recorded_at FROM event_streams \
          WHERE aggregate_type IN ('email_claim', 'login_attempts') AND aggregate_id = $1 \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
            version = CASE WHEN excluded.version > event_streams.version \
                           THEN excluded.version ELSE event_streams.version END, \
            events = event_streams.events + excluded.events, \
            first_recorded_at = CASE WHEN excluded.first_recorded_at < event_streams.first_recorded_at \
                                     THEN excluded.first_recorded_at ELSE event_streams.first_recorded_at END, \
            last_recorded_at = CASE WHEN excluded.last_recorded_at > event_streams.last_recorded_at \
                                    THEN excluded.last_recorded_at ELSE event_streams.last_recorded_at END",
        from,
        to
    )?;
    exec!(
        &mut tx,
        "DELETE FROM event_streams WHERE aggregate_type IN ('email_claim', 'login_attempts') AND aggregate_id = $1",
        from
    )?;
    tx.commit().await?;
    Ok(())
}
