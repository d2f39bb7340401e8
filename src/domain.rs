//! Value types every layer shares, at the bottom of the module graph: they depend on
//! nothing else of this crate (docs/ARCHITECTURE.md, "Layers").

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The stored form of an opaque token (refresh, reset, verification): its SHA-256, never
/// the token itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TokenHash(pub String);

impl TokenHash {
    /// Constant-time equality.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

/// A UUIDv7 stamped with the clock service's time: a session id carries its start.
/// (No monotonic context: it would move a timestamp forward after a clock step back,
/// and a session's start must be exact for user-wide revocation.)
pub fn uuid_at(at: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(at.timestamp()).unwrap_or(0);
    Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, at.timestamp_subsec_nanos()))
}
