//! Opaque tokens (refresh, password reset, e-mail verification): 256 bits of randomness
//! bound to an owner id, stored only as hashes.
//!
//! A token is `base64url(owner id (16 bytes) ‖ secret (32 bytes))`: the owner (a session
//! for refresh tokens, a user for reset and verification tokens) lets the server load the
//! aggregate that holds the hash directly. A refresh token's successor is derived
//! deterministically, `HMAC-SHA256(server key, presented token)`, so two concurrent
//! refreshes with the same token get the same successor without any process storing a
//! token in clear.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use crate::domain::TokenHash;

/// An opaque token as presented or issued.
#[derive(Clone, PartialEq, Eq)]
pub struct OpaqueToken {
    session_id: Uuid,
    secret: [u8; 32],
}

/// A refresh token: an opaque token owned by a session.
pub type RefreshToken = OpaqueToken;

impl std::fmt::Debug for OpaqueToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpaqueToken({}, [redacted])", self.session_id)
    }
}

impl OpaqueToken {
    /// A new random token for a session.
    pub fn generate(session_id: Uuid) -> Self {
        Self { session_id, secret: rand::random() }
    }

    /// Parses a presented token; `None` for anything malformed.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let (id, secret) = bytes.split_at_checked(16)?;
        Some(Self { session_id: Uuid::from_slice(id).ok()?, secret: secret.try_into().ok()? })
    }

    /// The session (token family) this token belongs to.
    pub fn session_id(&self) -> Uuid {
        self.session_id
    }

    /// The owner this token belongs to (a session or a user).
    pub fn owner(&self) -> Uuid {
        self.session_id
    }

    /// The text given to the client.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode([self.session_id.as_bytes().as_slice(), &self.secret].concat())
    }

    /// The hash stored in the log (SHA-256; the token has 256 bits of entropy, so a fast
    /// hash is enough).
    pub fn hash(&self) -> TokenHash {
        let digest =
            Sha256::new().chain_update(self.session_id.as_bytes()).chain_update(self.secret).finalize();
        TokenHash(URL_SAFE_NO_PAD.encode(digest))
    }

    /// The deterministic successor of this token under `key`.
    pub fn successor(&self, key: &[u8; 32]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(self.session_id.as_bytes());
        mac.update(&self.secret);
        Self { session_id: self.session_id, secret: mac.finalize().into_bytes().into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = RefreshToken::generate(Uuid::now_v7());
        let text = token.encode();
        assert_eq!(text.len(), 64);
        assert_eq!(RefreshToken::parse(&text), Some(token));
        assert_eq!(RefreshToken::parse("short"), None);
        assert_eq!(RefreshToken::parse(&"!".repeat(64)), None);
    }

    #[test]
    fn successors_are_deterministic_and_keyed() {
        let token = RefreshToken::generate(Uuid::now_v7());
        let key = [7u8; 32];
        assert_eq!(token.successor(&key), token.successor(&key));
        assert_ne!(token.successor(&key), token.successor(&[8u8; 32]));
        assert_eq!(token.successor(&key).session_id(), token.session_id());
        assert_ne!(token.successor(&key).hash(), token.hash());
    }

    #[test]
    fn hashes_compare_in_constant_time_but_correctly() {
        let a = RefreshToken::generate(Uuid::now_v7());
        assert!(a.hash().matches(&a.hash()));
        assert!(!a.hash().matches(&RefreshToken::generate(a.session_id()).hash()));
    }
}
