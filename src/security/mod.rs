//! Security building blocks: the role table of admin routes, the password hashing pool,
//! the server secret and sealed storage, signing keys, access tokens, refresh tokens, the
//! revocation index and the audit keys that sign the log's seals.

pub mod access;
pub mod analytics_roles;
pub mod audit_keys;
pub mod keys;
pub mod passwords;
pub mod rate_limit;
pub mod refresh;
pub mod revocations;
pub mod secrets;
pub mod tokens;
pub mod verified;
