//! Projection `streams` (table `event_streams`): one row per aggregate with its version,
//! event count and first and last event times. Auditors use it to list streams and to
//! check each stream's version against the log.

use async_trait::async_trait;

use super::Projection;
use crate::db::{DbTime, DbTx};
use crate::events::RecordedEvent;
use crate::exec;

/// See the module documentation.
pub struct Streams;

#[async_trait]
impl Projection for Streams {
    fn name(&self) -> &'static str {
        "streams"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["event_streams"]
    }

    async fn apply(&self, tx: &mut DbTx, event: &RecordedEvent) -> anyhow::Result<()> {
        exec!(
            tx,
            "INSERT INTO event_streams (aggregate_type, aggregate_id, version, events, \
                                        first_recorded_at, last_recorded_at) \
             VALUES ($1, $2, $3, 1, $4, $4) \
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
                 version = excluded.version, \
                 events = event_streams.events + 1, \
                 last_recorded_at = excluded.last_recorded_at",
            &event.aggregate_type,
            &event.aggregate_id,
            event.sequence,
            DbTime(event.recorded_at)
        )?;
        Ok(())
    }
}
