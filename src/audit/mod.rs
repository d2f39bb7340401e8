//! What auditors use: the export of the log (NDJSON), its verification (live or offline),
//! and the seals that make it tamper-evident. docs/AUDIT.md is the auditor's guide.

pub mod export;
pub mod record;
pub mod replay;
pub mod seal;
pub mod verify;

use crate::events::EventStore;

/// The audit keys the service publishes, read from its own log (live verification).
/// An auditor who wants independence passes the JWKS they fetched earlier instead.
pub async fn published_keys(store: &EventStore) -> anyhow::Result<verify::AuditKeys> {
    let aggregates = crate::commands::Aggregates::new(store);
    let jwks = crate::security::audit_keys::published_jwks(&aggregates.keyring).await?;
    verify::AuditKeys::from_jwks(&jwks).map_err(|e| anyhow::anyhow!("the published audit keys: {e}"))
}
