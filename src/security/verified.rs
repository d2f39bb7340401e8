//! A bounded cache of access tokens whose signature and time-independent claims were
//! already checked, keyed by the SHA-256 of the token. Verifying an Ed25519 signature is
//! most of what checking a token costs; a client presents the same token on every request
//! of its 15 minutes. What still runs on every request for a cached token: that its key
//! is still published (a retired or withdrawn key ends its tokens at once), its times
//! against the clock service (expiry, not-before), and, in the caller, the revocation
//! check of its session and user. Only tokens that passed every check are cached, so
//! invalid tokens cannot fill it.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::tokens::{ACCESS_TOKEN_TTL_SECS, AccessClaims};

/// How many verified tokens are kept (about 0.5 KiB each).
pub const CAPACITY: u64 = 100_000;

/// A token whose signature, issuer, audience, lifetime and session id were checked.
#[derive(Clone, Debug)]
pub struct Verified {
    pub kid: String,
    pub claims: AccessClaims,
    pub nbf: Option<i64>,
}

/// The cache; cheap to clone (shared).
#[derive(Clone)]
pub struct VerifiedTokens {
    cache: moka::sync::Cache<[u8; 32], Arc<Verified>>,
}

impl VerifiedTokens {
    /// An empty cache whose entries live at most a token's lifetime plus `leeway_secs`
    /// (the clock check on each hit is what ends a token; this only frees memory).
    pub fn new(leeway_secs: i64) -> Self {
        let life = u64::try_from(ACCESS_TOKEN_TTL_SECS + leeway_secs.max(0)).unwrap_or(900) + 60;
        let cache = moka::sync::Cache::builder()
            .max_capacity(CAPACITY)
            .time_to_live(Duration::from_secs(life))
            .build();
        Self { cache }
    }

    /// The cache key of a token.
    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The checked token with this digest, if it is cached.
    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<Verified>> {
        self.cache.get(digest)
    }

    /// Remembers a checked token.
    pub fn insert(&self, digest: [u8; 32], verified: Verified) {
        self.cache.insert(digest, Arc::new(verified));
    }

    /// Forgets a token (one that expired).
    pub fn remove(&self, digest: &[u8; 32]) {
        self.cache.invalidate(digest);
    }
}
