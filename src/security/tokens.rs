//! Access tokens: EdDSA (Ed25519) JWTs, 15 minutes, signed with the active key.
//!
//! New tokens carry the header `typ: at+jwt` (RFC 9068). Verification accepts only
//! `alg: EdDSA` with a known `kid` and an access-token `typ` (RFC 8725 explicit typing;
//! `JWT`, the type written before this rule, is still accepted: see
//! [`LEGACY_TYP`]), checks the signature, `iss` and `aud`, checks `exp`, `iat` and `nbf`
//! against the clock service (with a small leeway), not against the system clock, and
//! refuses a token that claims a longer life than this service gives (`exp − iat` over
//! the lifetime plus leeway) or a `sid` that is not a UUID. Whether the session is still
//! alive is the caller's next check (`security::revocations`). A token that passed is
//! remembered (`security::verified`): its signature is not checked again, its key and
//! times are, on every request.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys::KeyService;
use super::verified::{Verified, VerifiedTokens};
use crate::clock::SharedClock;
use crate::events::auth::Role;

/// Access-token lifetime, as `expiresIn` tells clients.
pub const ACCESS_TOKEN_TTL_SECS: i64 = 900;

/// The header `typ` of new access tokens (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The header `typ` that releases before RFC 9068 typing wrote. Still accepted: the
/// signing keys sign nothing but access tokens, so such a token can only be an access
/// token issued before the upgrade, and the lifetime bound makes it expire within
/// `ACCESS_TOKEN_TTL_SECS` plus leeway of its issue, as every token does.
pub const LEGACY_TYP: &str = "JWT";

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
    #[error("invalid token type")]
    InvalidType,
    #[error("token lifetime too long")]
    LifetimeTooLong,
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

/// Whether a header `typ` names an access token: `at+jwt` (or its full media type,
/// compared case-insensitively as RFC 7515 says), or the legacy `JWT`.
fn access_token_typ(typ: Option<&str>) -> bool {
    typ.is_some_and(|typ| {
        typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
            || typ.eq_ignore_ascii_case("application/at+jwt")
            || typ == LEGACY_TYP
    })
}

/// The header checks: form, algorithm, type; returns the `kid` to look up.
fn checked_header(token: &str) -> Result<String, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    if !access_token_typ(header.typ.as_deref()) {
        return Err(TokenError::InvalidType);
    }
    header.kid.ok_or(TokenError::UnknownKey)
}

/// The claims as presented: an access token's, plus the optional `nbf`.
#[derive(Deserialize)]
struct Presented {
    #[serde(flatten)]
    claims: AccessClaims,
    nbf: Option<i64>,
}

/// The checks after the key is found: signature, issuer, audience, times, lifetime and
/// the session id's form. Pure (the time comes in), so unit tests run it directly.
struct ClaimRules {
    validation: Validation,
    leeway_secs: i64,
}

impl ClaimRules {
    fn new(issuer: &str, audience: &str, leeway_secs: i64) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        Self { validation, leeway_secs }
    }

    /// Every check at once (what the unit tests run; the service splits them around its
    /// cache of verified tokens).
    #[cfg(test)]
    fn check(&self, token: &str, key: &DecodingKey, now: i64) -> Result<AccessClaims, TokenError> {
        let (claims, nbf) = self.check_signed(token, key)?;
        self.check_times(&claims, nbf, now)?;
        Ok(claims)
    }

    /// Everything that does not depend on the time: signature, issuer, audience,
    /// lifetime and session id. Returns the claims and the optional `nbf`.
    fn check_signed(
        &self,
        token: &str,
        key: &DecodingKey,
    ) -> Result<(AccessClaims, Option<i64>), TokenError> {
        let data =
            jsonwebtoken::decode::<Presented>(token, key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::InvalidSignature,
                ErrorKind::InvalidIssuer => TokenError::InvalidIssuer,
                ErrorKind::InvalidAudience => TokenError::InvalidAudience,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::UnsupportedAlgorithm
                }
                _ => TokenError::Malformed,
            })?;
        let Presented { claims, nbf } = data.claims;
        if !canonical_uuid(&claims.sid) {
            return Err(TokenError::Malformed);
        }
        if claims.exp.saturating_sub(claims.iat) > ACCESS_TOKEN_TTL_SECS + self.leeway_secs {
            return Err(TokenError::LifetimeTooLong);
        }
        Ok((claims, nbf))
    }

    /// Expiry and not-before against `now`, with the leeway.
    fn check_times(&self, claims: &AccessClaims, nbf: Option<i64>, now: i64) -> Result<(), TokenError> {
        let leeway = self.leeway_secs;
        if now > claims.exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        let not_before = nbf.map_or(claims.iat, |nbf| nbf.max(claims.iat));
        if not_before > now.saturating_add(leeway) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

/// A UUID in the hyphenated lower-case form this service writes session ids in.
fn canonical_uuid(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok_and(|id| id.hyphenated().to_string() == text)
}

/// Issues and verifies access tokens.
pub struct TokenService {
    keys: Arc<KeyService>,
    clock: SharedClock,
    issuer: String,
    audience: String,
    rules: ClaimRules,
    verified: VerifiedTokens,
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
        let rules = ClaimRules::new(&issuer, &audience, leeway_secs);
        let verified = VerifiedTokens::new(leeway_secs);
        Self { keys, clock, issuer, audience, rules, verified }
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
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key).map_err(|_| TokenError::NoSigningKey)?;
        Ok((token, claims))
    }

    /// Checks a token's form, algorithm, type, key, signature, issuer, audience, times,
    /// lifetime and session id. A token checked before skips the header and signature
    /// checks (the same bytes, by SHA-256); its key and times are checked again.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let digest = VerifiedTokens::digest(token);
        let now = self.clock.now().timestamp();
        if let Some(hit) = self.verified.get(&digest)
            && self.keys.keys().verifying.contains_key(&hit.kid)
        {
            return match self.rules.check_times(&hit.claims, hit.nbf, now) {
                Ok(()) => Ok(hit.claims.clone()),
                Err(error) => {
                    self.verified.remove(&digest);
                    Err(error)
                }
            };
        }
        let kid = checked_header(token)?;
        let mut keys = self.keys.keys();
        if !keys.verifying.contains_key(&kid) {
            self.keys.refresh_for_unknown_kid().await;
            keys = self.keys.keys();
        }
        let key = keys.verifying.get(&kid).ok_or(TokenError::UnknownKey)?;
        let (claims, nbf) = self.rules.check_signed(token, key)?;
        self.rules.check_times(&claims, nbf, now)?;
        self.verified.insert(digest, Verified { kid, claims: claims.clone(), nbf });
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
    use jsonwebtoken::EncodingKey;
    use serde_json::{Value, json};

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const LEEWAY: i64 = 5;

    /// A real Ed25519 key pair, as the key service makes them.
    fn keys() -> (EncodingKey, DecodingKey) {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let der =
            KeypairBytes { secret_key: signing.to_bytes(), public_key: None }.to_pkcs8_der().expect("pkcs8");
        let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        (EncodingKey::from_ed_der(der.as_bytes()), DecodingKey::from_ed_components(&x).expect("x"))
    }

    /// The claims `issue` writes.
    fn claims() -> Value {
        json!({"sub": "0190c6d2-6f1e-7000-8000-000000000001", "sid": "0190c6d2-6f1e-7000-8000-000000000002",
            "email": "a@example.com", "role": "user", "iss": "manacore", "aud": "manacore",
            "iat": NOW, "exp": NOW + ACCESS_TOKEN_TTL_SECS, "jti": "j", "emailVerified": true})
    }

    fn sign(typ: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &keys().0).expect("sign")
    }

    /// What `TokenService::verify` does once the key is found.
    fn verify(token: &str, now: i64) -> Result<AccessClaims, TokenError> {
        assert_eq!(checked_header(token)?, "k1");
        ClaimRules::new("manacore", "manacore", LEEWAY).check(token, &keys().1, now)
    }

    fn with(field: &str, value: Value) -> Value {
        let mut claims = claims();
        claims[field] = value;
        claims
    }

    #[test]
    fn a_token_as_issued_is_accepted_with_the_at_jwt_type() {
        let accepted = verify(&sign(Some(ACCESS_TOKEN_TYP), &claims()), NOW).expect("valid");
        assert_eq!(accepted.sid, "0190c6d2-6f1e-7000-8000-000000000002");
        assert!(verify(&sign(Some("application/AT+JWT"), &claims()), NOW).is_ok(), "media type form");
    }

    #[test]
    fn a_legacy_jwt_type_is_accepted_until_the_token_expires() {
        let legacy = sign(Some(LEGACY_TYP), &claims());
        assert!(verify(&legacy, NOW + ACCESS_TOKEN_TTL_SECS).is_ok());
        assert_eq!(verify(&legacy, NOW + ACCESS_TOKEN_TTL_SECS + LEEWAY + 1), Err(TokenError::Expired));
    }

    #[test]
    fn any_other_or_a_missing_type_is_refused() {
        for typ in [Some("JWT+x"), Some("jwt"), Some("id+jwt"), Some("at+jwt "), Some(""), None] {
            assert_eq!(verify(&sign(typ, &claims()), NOW), Err(TokenError::InvalidType), "{typ:?}");
        }
    }

    #[test]
    fn a_not_before_in_the_future_is_refused_within_the_leeway_only() {
        let early = sign(Some(ACCESS_TOKEN_TYP), &with("nbf", json!(NOW + 60)));
        assert_eq!(verify(&early, NOW), Err(TokenError::NotYetValid));
        assert_eq!(verify(&early, NOW + 60 - LEEWAY - 1), Err(TokenError::NotYetValid));
        assert!(verify(&early, NOW + 60 - LEEWAY).is_ok(), "within the leeway");
        let past = sign(Some(ACCESS_TOKEN_TYP), &with("nbf", json!(NOW - 60)));
        assert!(verify(&past, NOW).is_ok());
        let text = sign(Some(ACCESS_TOKEN_TYP), &with("nbf", json!("soon")));
        assert_eq!(verify(&text, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn a_token_claiming_a_longer_life_than_issued_is_refused() {
        let bound = NOW + ACCESS_TOKEN_TTL_SECS + LEEWAY;
        assert!(verify(&sign(Some(ACCESS_TOKEN_TYP), &with("exp", json!(bound))), NOW).is_ok());
        for exp in [bound + 1, NOW + 86_400, i64::MAX] {
            let long = sign(Some(ACCESS_TOKEN_TYP), &with("exp", json!(exp)));
            assert_eq!(verify(&long, NOW), Err(TokenError::LifetimeTooLong), "{exp}");
        }
        let legacy = sign(Some(LEGACY_TYP), &with("exp", json!(bound + 1)));
        assert_eq!(verify(&legacy, NOW), Err(TokenError::LifetimeTooLong), "legacy tokens too");
        let ancient = sign(Some(ACCESS_TOKEN_TYP), &with("iat", json!(i64::MIN)));
        assert_eq!(verify(&ancient, NOW), Err(TokenError::LifetimeTooLong));
    }

    #[test]
    fn a_session_id_that_is_not_a_uuid_is_refused() {
        for sid in [
            json!("s1"),
            json!(""),
            json!("0190C6D2-6F1E-7000-8000-000000000002"),
            json!("0190c6d26f1e70008000000000000002"),
            json!("{0190c6d2-6f1e-7000-8000-000000000002}"),
            json!(42),
        ] {
            let token = sign(Some(ACCESS_TOKEN_TYP), &with("sid", sid.clone()));
            assert_eq!(verify(&token, NOW), Err(TokenError::Malformed), "{sid}");
        }
    }

    #[test]
    fn the_existing_refusals_still_hold() {
        let token = sign(Some(ACCESS_TOKEN_TYP), &claims());
        assert_eq!(verify(&token, NOW + ACCESS_TOKEN_TTL_SECS + LEEWAY + 1), Err(TokenError::Expired));
        assert_eq!(verify(&token, NOW - LEEWAY - 1), Err(TokenError::NotYetValid), "iat in the future");
        let foreign = sign(Some(ACCESS_TOKEN_TYP), &with("aud", json!("other")));
        assert_eq!(verify(&foreign, NOW), Err(TokenError::InvalidAudience));
        let (head, _) = token.rsplit_once('.').expect("signature");
        let other = sign(Some(ACCESS_TOKEN_TYP), &with("role", json!("admin")));
        let spliced = format!("{head}.{}", other.rsplit('.').next().expect("signature"));
        assert_eq!(verify(&spliced, NOW), Err(TokenError::InvalidSignature));
    }
}
