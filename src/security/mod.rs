//! Security building blocks: the role table of admin routes, the password hashing pool, the server secret and sealed
//! storage, signing keys, access tokens, refresh tokens and the revocation index.

pub mod access;
pub mod keys;
pub mod passwords;
pub mod rate_limit;
pub mod refresh;
pub mod revocations;
pub mod secrets;
pub mod tokens;
