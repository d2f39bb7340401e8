//! The event log: event envelopes and metadata, the store for each engine behind one
//! type ([`EventStore`]), the global log reader, and the commit signal that wakes
//! projectors in this process and in others.
//!
//! Every state change of the service is an event appended here. Events are never
//! updated or deleted (both engines refuse it with a trigger).

pub mod audit;
pub mod auth;
mod backfill;
pub mod catalogue;
pub mod chain;
pub mod credits;
pub mod erasure;
pub mod mix;
pub mod personal;
mod postgres;
pub mod purchases;
mod repository;
pub mod schemas;
pub mod sealing;
pub mod signal;
mod sqlite;
mod stamp;
mod store;
pub mod upcast;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use signal::LogSignal;
pub use store::{AppendError, EventStore, StoreError};

/// A place in the global order of the log.
///
/// On PostgreSQL the order is `(txid, position)`: the id of the writing transaction,
/// then the position the row got at insert. Readers only read rows whose transaction is
/// older than every transaction still running, so a transaction that commits late is
/// never skipped. On SQLite the single writer makes `position` order the commit order and
/// `txid` is always 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogCursor {
    pub txid: i64,
    pub position: i64,
}

impl LogCursor {
    /// The start of the log: every event comes after it.
    pub const START: Self = Self { txid: 0, position: 0 };

    /// Before every row, even one with a position or transaction id no writer assigns
    /// (zero or negative, written by hand): auditors' readers (export, verify) start here
    /// so that whatever is stored is seen.
    pub const ORIGIN: Self = Self { txid: i64::MIN, position: i64::MIN };
}

impl std::fmt::Display for LogCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.txid, self.position)
    }
}

/// Parses the text [`LogCursor`]'s `Display` writes (`<txid>:<position>`), as exports
/// and `?after=` carry it.
impl std::str::FromStr for LogCursor {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || "a cursor is the `cursor` field of an exported event".to_owned();
        let (txid, position) = text.split_once(':').ok_or_else(bad)?;
        let number = |t: &str| {
            let digits = t.strip_prefix('-').unwrap_or(t);
            if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<i64>().map_err(|_| bad())
        };
        Ok(Self { txid: number(txid)?, position: number(position)? })
    }
}

/// A moment in the log as operators write one: a place in the global order, or a time.
/// `mana-core-auth export --until` and `GET /admin/users/{userId}/balance?at=` take one;
/// each reads it as the longest prefix of what it walks (the global order, an account's
/// stream) whose events are all at or before the moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    /// Through the event with this cursor.
    Cursor(LogCursor),
    /// Through the last event recorded at or before this time. `recordedAt` is the time of
    /// the command: it never goes back along a stream, but rises with the global order
    /// only up to clock skew between processes.
    Time(DateTime<Utc>),
}

/// A cursor (`<txid>:<position>`) or an RFC 3339 time with an offset. A text that parses
/// as a cursor is one; times contain colons too but never parse as cursors.
impl std::str::FromStr for Moment {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(cursor) = text.parse::<LogCursor>() {
            return Ok(Self::Cursor(cursor));
        }
        DateTime::parse_from_rfc3339(text).map(|t| Self::Time(t.to_utc())).map_err(|_| {
            "expected a cursor (the `cursor` field of an exported event) or an RFC 3339 time \
             such as 2026-11-29T10:00:00Z"
                .to_owned()
        })
    }
}

/// Who caused an event: a user id, or `system` for jobs and the CLI.
pub const SYSTEM_ACTOR: &str = "system";

/// The metadata every event carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub struct EventMetadata {
    /// When the command that produced the event ran (from the clock service).
    pub recorded_at: DateTime<Utc>,
    /// The request that caused it, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A user id, or `system`.
    pub actor: String,
    /// The client's address, when there was one (personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
}

impl EventMetadata {
    /// Metadata for an event caused by the service itself.
    pub fn system(recorded_at: DateTime<Utc>) -> Self {
        Self { recorded_at, request_id: None, actor: SYSTEM_ACTOR.to_owned(), client_ip: None }
    }

    /// The JSON form stored in the `metadata` column.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// An event ready to be appended.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's sequence number for this event (1 for the first); a sequence that
    /// is already taken makes the whole append fail with [`AppendError::Conflict`].
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// A message to deliver after the events that cause it commit (the transactional
/// outbox). The body may hold a single-use token: it is erased once delivered.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    pub id: String,
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    /// After this the message is useless (its token expired): it is dropped unsent.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingMail").field("id", &self.id).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// An event as read back from the global log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordedEvent {
    pub cursor: LogCursor,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    /// The event's hash in its stream's chain (`None` only for a row the audit backfill
    /// has not reached).
    pub hash: Option<String>,
    /// The commitments of its personal fields ([`chain::Commitments`] as JSON).
    pub commitments: Option<Value>,
}

/// The parts the hash chain covers, from any event type with the stored fields.
macro_rules! parts_of {
    ($event:expr) => {
        chain::EventParts {
            aggregate_type: &$event.aggregate_type,
            aggregate_id: &$event.aggregate_id,
            sequence: $event.sequence,
            event_type: &$event.event_type,
            event_version: &$event.event_version,
            recorded_at: $event.recorded_at,
            payload: &$event.payload,
            metadata: &$event.metadata,
        }
    };
}

impl NewEvent {
    /// The parts of the event the hash chain covers.
    pub fn parts(&self) -> chain::EventParts<'_> {
        parts_of!(self)
    }
}

impl RecordedEvent {
    /// The parts of the event the hash chain covers.
    pub fn parts(&self) -> chain::EventParts<'_> {
        parts_of!(self)
    }

    /// The event's global position.
    pub fn position(&self) -> i64 {
        self.cursor.position
    }

    /// Decodes the payload into an event type, in its current shape: an event stored at
    /// an older `event_version` goes through its upcasters ([`upcast`]), one newer than
    /// the code knows is an error. The stored payload is left as written.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        let payload = upcast::upcast(&self.event_type, &self.event_version, &self.payload)
            .map_err(<serde_json::Error as serde::de::Error>::custom)?;
        T::deserialize(payload.as_ref())
    }

    /// The metadata, decoded (events written by other tools may lack some fields).
    pub fn event_metadata(&self) -> Option<EventMetadata> {
        EventMetadata::deserialize(&self.metadata).ok()
    }
}

pub(crate) use crate::db::{parse_sqlite_time, sqlite_time};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moment_is_a_cursor_when_it_parses_as_one_and_else_an_rfc_3339_time() {
        assert_eq!("12:345".parse(), Ok(Moment::Cursor(LogCursor { txid: 12, position: 345 })));
        assert_eq!("-3:0".parse(), Ok(Moment::Cursor(LogCursor { txid: -3, position: 0 })));
        let at = DateTime::parse_from_rfc3339("2026-11-20T12:00:00.5Z").unwrap().to_utc();
        assert_eq!("2026-11-20T12:00:00.5Z".parse(), Ok(Moment::Time(at)));
        assert_eq!("2026-11-20T13:00:00.5+01:00".parse(), Ok(Moment::Time(at)));
    }

    #[test]
    fn a_moment_is_neither_a_bare_number_nor_a_date_nor_a_half_cursor_nor_a_time_without_offset() {
        for bad in ["", "12", "2026-11-20", "2026-11-20T12:00:00", "12:", ":5", "a:b", "yesterday", "1:2:3"] {
            assert!(bad.parse::<Moment>().is_err(), "{bad:?} was accepted");
        }
    }
}
