//! cqrs-es's `PersistedEventRepository` over [`EventStore`], for either engine.
//!
//! The command layer (`crate::commands`) uses the store directly, but implementing the
//! framework's trait keeps the log usable by `cqrs_es::persist::PersistedEventStore` and
//! `CqrsFramework` (the conformance tests drive both engines through it). Snapshots are
//! not supported: cqrs-es 0.5's snapshot store applies events twice.

use chrono::Utc;
use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use serde_json::Value;

use super::{AppendError, EventStore, NewEvent, StoreError, parse_sqlite_time};

impl From<StoreError> for PersistenceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(e) if matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => {
                Self::ConnectionError(Box::new(e))
            }
            StoreError::Corrupt(text) => Self::DeserializationError(text.into()),
            other => Self::UnknownError(Box::new(other)),
        }
    }
}

impl From<AppendError> for PersistenceError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Conflict => Self::OptimisticLockError,
            AppendError::Store(e) => e.into(),
        }
    }
}

/// Converts a framework event into one the store appends. The recorded time is taken
/// from the metadata when it carries one.
pub fn to_new_event(event: &SerializedEvent) -> Result<NewEvent, PersistenceError> {
    let recorded_at = event
        .metadata
        .get("recorded_at")
        .and_then(Value::as_str)
        .and_then(|t| parse_sqlite_time(t).ok())
        .unwrap_or_else(Utc::now);
    Ok(NewEvent {
        aggregate_type: event.aggregate_type.clone(),
        aggregate_id: event.aggregate_id.clone(),
        sequence: i64::try_from(event.sequence).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?,
        event_type: event.event_type.clone(),
        event_version: event.event_version.clone(),
        payload: event.payload.clone(),
        metadata: event.metadata.clone(),
        recorded_at,
    })
}

impl PersistedEventRepository for EventStore {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        upcast_all(self.load::<A>(aggregate_id, 0).await?)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        upcast_all(self.load::<A>(aggregate_id, last_sequence).await?)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if snapshot_update.is_some() {
            return Err(PersistenceError::UnknownError("snapshots are not supported by this store".into()));
        }
        if events.is_empty() {
            return Ok(());
        }
        let events = events.iter().map(to_new_event).collect::<Result<Vec<_>, _>>()?;
        self.append(&events).await?;
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let events = upcast_all(self.load::<A>(aggregate_id, 0).await?)?;
        Ok(replay(events).await)
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let mut all = Vec::new();
        let mut cursor = super::LogCursor::START;
        loop {
            let page = self.read_after(cursor, 1000).await?;
            let Some(last) = page.last() else { break };
            cursor = last.cursor;
            all.extend(page.into_iter().filter(|e| e.aggregate_type == A::TYPE).map(|e| {
                SerializedEvent::new(
                    e.aggregate_id,
                    usize::try_from(e.sequence).unwrap_or_default(),
                    e.aggregate_type,
                    e.event_type,
                    e.event_version,
                    e.payload,
                    e.metadata,
                )
            }));
        }
        Ok(replay(upcast_all(all)?).await)
    }
}

/// Stored events in the current shape of their type ([`super::upcast`]): an older
/// version is upcast (and then says the current version), a newer one is refused.
fn upcast_all(events: Vec<SerializedEvent>) -> Result<Vec<SerializedEvent>, PersistenceError> {
    events
        .into_iter()
        .map(|mut event| {
            let current = super::upcast::current_version(&event.event_type).to_string();
            if event.event_version != current {
                event.payload =
                    super::upcast::upcast_owned(&event.event_type, &event.event_version, event.payload)
                        .map_err(|e| PersistenceError::DeserializationError(Box::new(e)))?;
                event.event_version = current;
            }
            Ok(event)
        })
        .collect()
}

async fn replay(events: Vec<SerializedEvent>) -> ReplayStream {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    for event in events {
        // The channel holds every event, so pushing never waits.
        let _ = feed.push(Ok(event)).await;
    }
    stream
}
