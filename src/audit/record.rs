//! One exported event: the line format of `mana-core-auth export` and
//! `GET /api/v1/admin/events` (docs/AUDIT.md). Secrets appear only as their commitment;
//! personal values as stored, with their commitments beside them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::RecordedEvent;
use crate::events::chain::{self, Commitments, EventParts};

/// An exported event (one NDJSON line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportRecord {
    /// Opaque; `--after`/`?after=` take it to continue after this event.
    pub cursor: String,
    pub position: i64,
    /// RFC 3339, UTC, microseconds: exactly what the canonical form covers.
    pub recorded_at: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload with every secret field replaced by its `sha256:` commitment.
    pub payload: Value,
    pub metadata: Value,
    /// The event's hash in its stream's chain (hex); `null` if the row has none.
    pub hash: Option<String>,
    /// The key and `hmac-sha256:` commitments of its personal fields.
    pub commitments: Option<Commitments>,
}

impl ExportRecord {
    /// The export form of a stored event. Exports whatever is stored: an unreadable
    /// commitments column is exported as `null` (verify reports it).
    pub fn of(event: &RecordedEvent) -> Self {
        let commitments: Option<Commitments> =
            event.commitments.clone().and_then(|c| serde_json::from_value(c).ok());
        Self {
            cursor: event.cursor.to_string(),
            position: event.cursor.position,
            recorded_at: chain::canonical_time(event.recorded_at),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: chain::export_payload(&event.event_type, &event.payload, commitments.as_ref()),
            metadata: event.metadata.clone(),
            hash: event.hash.clone(),
            commitments,
        }
    }

    /// The record with every personal value replaced by its commitment as well (the change
    /// feed's form: a broker keeps messages beyond the reach of erasure, so it never gets
    /// personal data). It verifies like any export: the canonical form covers commitments.
    pub fn without_personal(mut self) -> Self {
        let Some(commitments) = &self.commitments else { return self };
        let mut record = serde_json::json!({ "payload": self.payload, "metadata": self.metadata });
        for (pointer, commitment) in &commitments.fields {
            if let Some(slot) = record.pointer_mut(pointer)
                && !slot.is_null()
            {
                *slot = Value::String(commitment.clone());
            }
        }
        if let Value::Object(mut map) = record {
            self.payload = map.remove("payload").unwrap_or(Value::Null);
            self.metadata = map.remove("metadata").unwrap_or(Value::Null);
        }
        self
    }

    /// The parts the canonical form covers (secrets already committed).
    pub fn parts(&self) -> Result<EventParts<'_>, String> {
        let recorded_at = chrono::DateTime::parse_from_rfc3339(&self.recorded_at)
            .map_err(|e| format!("recordedAt: {e}"))?
            .to_utc();
        Ok(EventParts {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            recorded_at,
            payload: &self.payload,
            metadata: &self.metadata,
        })
    }
}
