//! Projection `streams` (table `event_streams`): one row per aggregate with its version,
//! event count and first and last event times. Auditors use it to list streams and to
//! check each stream's version against the log.

use async_trait::async_trait;

use super::Projection;
use crate::db::{DbTime, DbTx};
use crate::events::RecordedEvent;
use crate::insert_rows;

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
