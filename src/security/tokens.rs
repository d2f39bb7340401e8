//! Access tokens: EdDSA (Ed25519) JWTs, 15 minutes, signed with the active key.
//!
//! Verification accepts only `alg: EdDSA` with a known `kid`, checks the signature, `iss`
//! and `aud`, and checks `exp` and `iat` against the clock service (with a small leeway),
//! not against the system clock. Whether the session is still alive is the caller's next
//! check (`security::revocations`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys::KeyService;
use crate::clock::SharedClock;
use crate::events::auth::Role;

/// Access-token lifetime, as `expiresIn` tells clients.
pub const ACCESS_TOKEN_TTL_SECS: i64 = 900;

/// The claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessClaims {
    pub sub: String,
    pub sid: String,
    pub email: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// Whether the user's e-mail address is verified.
    #[serde(rename = "emailVerified", default)]
    pub email_verified: bool,
}

/// Why a token was refused; `reason()` is what `/auth/validate` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("invalid issuer")]
    InvalidIssuer,
    #[error("invalid audience")]
    InvalidAudience,
    #[error("session revoked")]
    SessionRevoked,
    #[error("user disabled")]
    UserDisabled,
    #[error("no signing key available")]
    NoSigningKey,
}

/// Why a header did not parse: an algorithm jsonwebtoken does not even know (`none`)
/// is an unsupported algorithm; anything else is malformed.
fn header_error(token: &str) -> TokenError {
    use base64::Engine;
    let alg = token
        .split('.')
        .next()
        .and_then(|h| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|header| header.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
    match alg {
        Some(alg) if alg != "EdDSA" => TokenError::UnsupportedAlgorithm,
        _ => TokenError::Malformed,
    }
}

/// Issues and verifies access tokens.
pub struct TokenService {
    keys: Arc<KeyService>,
    clock: SharedClock,
    issuer: String,
    audience: String,
    leeway_secs: i64,
    validation: Validation,
}

impl TokenService {
    /// A token service for one issuer and audience.
    pub fn new(
        keys: Arc<KeyService>,
        clock: SharedClock,
        issuer: String,
        audience: String,
        leeway_secs: i64,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        Self { keys, clock, issuer, audience, leeway_secs, validation }
    }

    /// The key service behind this token service.
    pub fn keys(&self) -> &Arc<KeyService> {
        &self.keys
    }

    /// Signs an access token for a session; returns it with its claims.
    pub fn issue(
        &self,
        user_id: &str,
        session_id: &str,
        email: &str,
        role: Role,
        email_verified: bool,
        now: DateTime<Utc>,
    ) -> Result<(String, AccessClaims), TokenError> {
        let keys = self.keys.keys();
        let (kid, key) = keys.signing.as_ref().ok_or(TokenError::NoSigningKey)?;
        let iat = now.timestamp();
        let claims = AccessClaims {
            sub: user_id.to_owned(),
            sid: session_id.to_owned(),
            email: email.to_owned(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat,
            exp: iat + ACCESS_TOKEN_TTL_SECS,
            jti: uuid::Uuid::new_v4().to_string(),
            email_verified,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        header.typ = Some("JWT".to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key).map_err(|_| TokenError::NoSigningKey)?;
        Ok((token, claims))
    }

    /// Checks a token's form, algorithm, key, signature, issuer, audience and times.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let mut keys = self.keys.keys();
        if !keys.verifying.contains_key(&kid) {
            self.keys.refresh_for_unknown_kid().await;
            keys = self.keys.keys();
        }
        let key = keys.verifying.get(&kid).ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::InvalidSignature => TokenError::InvalidSignature,
            ErrorKind::InvalidIssuer => TokenError::InvalidIssuer,
            ErrorKind::InvalidAudience => TokenError::InvalidAudience,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::UnsupportedAlgorithm,
            _ => TokenError::Malformed,
        })?;
        let claims = data.claims;
        let now = self.clock.now().timestamp();
        if now > claims.exp + self.leeway_secs {
            return Err(TokenError::Expired);
        }
        if claims.iat > now + self.leeway_secs {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}
