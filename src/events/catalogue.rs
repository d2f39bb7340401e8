//! The registry of which stored fields are secret and which are personal, per event type.
//!
//! It is the one place that says so: the hash chain ([`super::chain`]) commits to these
//! fields instead of their values, exports replace secrets by their commitment, the event
//! catalogue (docs/EVENTS.md) shows the classes, and erasure follows them.
//!
//! Paths are JSON pointers (RFC 6901) into the event's body: the object under the
//! variant's name in the stored payload (`{"UserRegistered": {...}}`), or into the
//! metadata for [`METADATA_FIELDS`]. A field that is absent or `null` has nothing to hide.

/// How a field is treated by the hash chain and exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldClass {
    /// Never leaves the service: enters hashes and exports only as its SHA-256 commitment
    /// (password hashes, token hashes, key material).
    Secret,
    /// Data about a person (e-mail, name, IP address, user agent, device, free text a
    /// user sends): enters hashes only as an HMAC-SHA-256 commitment under the person's
    /// key, so it can be erased by destroying the key without breaking any hash.
    Personal,
}

impl FieldClass {
    /// The class as written in the catalogue.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Personal => "personal",
        }
    }
}

/// A classified field of an event body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassifiedField {
    /// JSON pointer into the event body (or the metadata).
    pub pointer: &'static str,
    pub class: FieldClass,
}

const fn secret(pointer: &'static str) -> ClassifiedField {
    ClassifiedField { pointer, class: FieldClass::Secret }
}

const fn personal(pointer: &'static str) -> ClassifiedField {
    ClassifiedField { pointer, class: FieldClass::Personal }
}

/// The client of a session, a login attempt or a notice (`SessionPersonal`).
macro_rules! client_fields {
    () => {
        [
            personal("/personal/device_id"),
            personal("/personal/device_name"),
            personal("/personal/ip_address"),
            personal("/personal/user_agent"),
        ]
    };
}

const CLIENT: [ClassifiedField; 4] = client_fields!();

/// Fields of the metadata every event carries.
pub const METADATA_FIELDS: &[ClassifiedField] = &[personal("/client_ip")];

const USER_REGISTERED: &[ClassifiedField] =
    &[personal("/personal/email"), personal("/personal/name"), secret("/password_hash")];
const PASSWORD_HASH: &[ClassifiedField] = &[secret("/password_hash")];
const TOKEN_HASH: &[ClassifiedField] = &[secret("/token_hash")];
const SESSION_STARTED: &[ClassifiedField] =
    &[secret("/refresh_hash"), CLIENT[0], CLIENT[1], CLIENT[2], CLIENT[3]];
const SESSION_REFRESHED: &[ClassifiedField] =
    &[secret("/previous_hash"), secret("/refresh_hash"), CLIENT[0], CLIENT[1], CLIENT[2], CLIENT[3]];
const REUSE_DETECTED: &[ClassifiedField] =
    &[secret("/presented_hash"), CLIENT[0], CLIENT[1], CLIENT[2], CLIENT[3]];
const CLIENT_ONLY: &[ClassifiedField] = &CLIENT;
const CREDITS_SPENT: &[ClassifiedField] =
    &[personal("/description"), personal("/metadata"), personal("/key/key")];

/// The classified fields of an event type's body (empty when it holds nothing to hide).
pub fn classified_fields(event_type: &str) -> &'static [ClassifiedField] {
    match event_type {
        "UserRegistered" => USER_REGISTERED,
        "PasswordChanged" | "PasswordResetCompleted" => PASSWORD_HASH,
        "PasswordResetRequested" | "EmailVerificationRequested" => TOKEN_HASH,
        "SessionStarted" => SESSION_STARTED,
        "SessionRefreshed" => SESSION_REFRESHED,
        "RefreshTokenReuseDetected" => REUSE_DETECTED,
        "LoginFailed"
        | "LoginCheckFailed"
        | "LoginCheckSucceeded"
        | "LoginThrottled"
        | "LoginLocked"
        | "ResetRequestedForUnknownAddress"
        | "RateLimitExceeded" => CLIENT_ONLY,
        "CreditsSpent" => CREDITS_SPENT,
        _ => &[],
    }
}

/// Whose key commits an event's personal data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user's own key: erased with the user.
    User(String),
    /// The key of one day (UTC), for personal data that belongs to no account (attempts
    /// on unknown addresses, notices without a user).
    Day(chrono::NaiveDate),
}

impl Subject {
    /// The key's name in the `personal_keys` table and in exports (`user:<id>`, `day:<date>`).
    pub fn key_name(&self) -> String {
        match self {
            Self::User(id) => format!("user:{id}"),
            Self::Day(day) => format!("day:{day}"),
        }
    }

    /// The subject of an event: the user it names (`user_id` in its body, or the stream
    /// of a user or credit account), else the user it was recorded for (the metadata's
    /// `actor`, when not `system`: an attempt on a known user's address or session, an
    /// operator's own action), else the day it was recorded.
    pub fn of(
        aggregate_type: &str,
        aggregate_id: &str,
        body: Option<&serde_json::Value>,
        metadata: &serde_json::Value,
        recorded_at: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        if let Some(user) = body.and_then(|b| b.get("user_id")).and_then(serde_json::Value::as_str) {
            return Self::User(user.to_owned());
        }
        if matches!(aggregate_type, "user" | "credit_account") {
            return Self::User(aggregate_id.to_owned());
        }
        match metadata.get("actor").and_then(serde_json::Value::as_str) {
            Some(actor) if !actor.is_empty() && actor != crate::events::SYSTEM_ACTOR => {
                Self::User(actor.to_owned())
            }
            _ => Self::Day(recorded_at.date_naive()),
        }
    }
}

/// The body of a stored payload: the object under the variant's name.
pub fn body_of(payload: &serde_json::Value) -> Option<&serde_json::Value> {
    match payload {
        serde_json::Value::Object(map) if map.len() == 1 => map.values().next(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_the_log_holds_is_registered() {
        for (event, field) in [
            ("UserRegistered", "/password_hash"),
            ("PasswordChanged", "/password_hash"),
            ("PasswordResetCompleted", "/password_hash"),
            ("PasswordResetRequested", "/token_hash"),
            ("EmailVerificationRequested", "/token_hash"),
            ("SessionStarted", "/refresh_hash"),
            ("SessionRefreshed", "/refresh_hash"),
            ("SessionRefreshed", "/previous_hash"),
            ("RefreshTokenReuseDetected", "/presented_hash"),
        ] {
            assert!(
                classified_fields(event).contains(&secret(field)),
                "{event}{field} must be registered as secret"
            );
        }
    }

    #[test]
    fn the_subject_is_the_named_user_else_the_acting_user_else_the_day() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z").unwrap().to_utc();
        let body = serde_json::json!({"user_id": "u1"});
        let system = serde_json::json!({"actor": "system"});
        assert_eq!(Subject::of("session", "s1", Some(&body), &system, at).key_name(), "user:u1");
        assert_eq!(Subject::of("user", "u2", None, &system, at).key_name(), "user:u2");
        let anonymous = serde_json::json!({"user_id": null});
        assert_eq!(
            Subject::of("login_attempts", "x", Some(&anonymous), &system, at).key_name(),
            "day:2026-11-29"
        );
        let for_u3 = serde_json::json!({"actor": "u3"});
        assert_eq!(Subject::of("login_attempts", "x", Some(&anonymous), &for_u3, at).key_name(), "user:u3");
    }
}
