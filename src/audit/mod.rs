//! What auditors use: the export of the log (NDJSON), its verification (live or offline),
//! and the seals that make it tamper-evident. docs/AUDIT.md is the auditor's guide.

pub mod export;
pub mod record;
