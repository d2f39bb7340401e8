//! Events of the audit log itself: seals. A seal signs the running root of every event
//! up to a committed cursor (docs/AUDIT.md), so a changed, deleted, inserted or reordered
//! event before it is detected even by someone who can rewrite the table.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::chain::{canonical_time, write_jcs};

/// The aggregate type of the seal stream.
pub const SEALS_TYPE: &str = "audit_log";
/// The id of the one seal stream: its sequence lets one writer at a time append a seal.
pub const SEALS_ID: &str = "seals";

/// Events of the seal stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum AuditEvent {
    /// Every event up to and including `through` (in global order) is covered:
    /// `count` of them, whose hashes fold to `root`. Signed with the audit key `kid`
    /// (Ed25519) over [`seal_message`].
    LogSealed {
        /// The cursor of the last event covered (`<txid>:<position>`).
        through: String,
        /// How many events the log holds up to `through`, seals included.
        count: u64,
        /// The running root after `through` (hex SHA-256).
        root: String,
        /// The audit key that signed.
        kid: String,
        /// Ed25519 signature of [`seal_message`], base64url without padding.
        signature: String,
        sealed_at: DateTime<Utc>,
    },
}

impl DomainEvent for AuditEvent {
    fn event_type(&self) -> String {
        match self {
            Self::LogSealed { .. } => "LogSealed",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        super::upcast::current_version(&self.event_type()).to_string()
    }
}

/// The bytes a seal's signature covers: the JCS of
/// `{count, kid, root, sealedAt, through}` (sealedAt in microseconds, as in the
/// canonical form of events).
pub fn seal_message(through: &str, count: u64, root: &str, kid: &str, sealed_at: DateTime<Utc>) -> String {
    let mut out = String::new();
    write_jcs(
        &serde_json::json!({
            "count": count,
            "kid": kid,
            "root": root,
            "sealedAt": canonical_time(sealed_at),
            "through": through,
        }),
        &mut out,
    );
    out
}
