//! Events of the authentication aggregates: users, e-mail claims, sessions, login
//! attempts and the signing keyring.
//!
//! Personal data (e-mail, name, IP address, user agent, device) sits in fields named
//! `personal`, so it can be encrypted per user and erased later without rewriting the
//! log. Refresh tokens appear only as hashes; private keys never appear.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::domain::{ClientInfo, TokenHash};

/// What a user may do. Which admin routes each role reaches is the table of
/// `security::access` (and docs/API.md). New roles are added, never renamed, so every
/// stored event keeps decoding.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Admin,
    Service,
    /// Reads every admin view and the log; changes nothing.
    Auditor,
}

impl Role {
    /// The role's name as in tokens and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
            Self::Service => "service",
            Self::Auditor => "auditor",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Self::User),
            "admin" => Ok(Self::Admin),
            "service" => Ok(Self::Service),
            "auditor" => Ok(Self::Auditor),
            other => Err(format!("unknown role {other:?}: expected user, admin, service or auditor")),
        }
    }
}

/// A user's personal data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserPersonal {
    pub email: String,
    pub name: Option<String>,
}

/// Events of a user account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum UserEvent {
    UserRegistered {
        user_id: String,
        personal: UserPersonal,
        /// argon2id PHC string (redacted from exports).
        password_hash: String,
        role: Role,
        registered_at: DateTime<Utc>,
    },
    /// The role changed; every session started at or before `sessions_revoked_before`
    /// is revoked (their tokens carry the old role).
    UserRoleChanged {
        role: Role,
        previous: Role,
        sessions_revoked_before: DateTime<Utc>,
    },
    /// The account may no longer sign in; every session is revoked.
    UserDisabled {
        sessions_revoked_before: DateTime<Utc>,
    },
    UserEnabled {
        enabled_at: DateTime<Utc>,
    },
    /// The password changed; every session but `kept_session` (the one that asked) is
    /// revoked.
    PasswordChanged {
        /// argon2id PHC string (redacted from exports).
        password_hash: String,
        sessions_revoked_before: DateTime<Utc>,
        kept_session: Option<String>,
    },
    /// A reset token was issued (its hash only) and mailed.
    PasswordResetRequested {
        token_hash: TokenHash,
        expires_at: DateTime<Utc>,
        requested_at: DateTime<Utc>,
    },
    /// The password was reset with a token; every session is revoked.
    PasswordResetCompleted {
        /// argon2id PHC string (redacted from exports).
        password_hash: String,
        sessions_revoked_before: DateTime<Utc>,
    },
    /// A verification token was issued (its hash only) and mailed.
    EmailVerificationRequested {
        token_hash: TokenHash,
        expires_at: DateTime<Utc>,
        requested_at: DateTime<Utc>,
    },
    EmailVerified {
        verified_at: DateTime<Utc>,
    },
    /// The person was erased (GDPR Art. 17, docs/PRIVACY.md): every session is revoked,
    /// the data key is destroyed, the address released. `plaintext_events` of their
    /// events were written before sealing existed; the erasure scrubs their personal and
    /// secret fields (the hash chain keeps their commitments), and `legacy_claim` says
    /// whether their e-mail claim and login-protection streams still had an unkeyed id,
    /// which the scrub renames.
    UserErased {
        sessions_revoked_before: DateTime<Utc>,
        plaintext_events: u64,
        legacy_claim: bool,
        erased_at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::UserRoleChanged { .. } => "UserRoleChanged",
            Self::UserDisabled { .. } => "UserDisabled",
            Self::UserEnabled { .. } => "UserEnabled",
            Self::PasswordChanged { .. } => "PasswordChanged",
            Self::PasswordResetRequested { .. } => "PasswordResetRequested",
            Self::PasswordResetCompleted { .. } => "PasswordResetCompleted",
            Self::EmailVerificationRequested { .. } => "EmailVerificationRequested",
            Self::EmailVerified { .. } => "EmailVerified",
            Self::UserErased { .. } => "UserErased",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        super::upcast::current_version(&self.event_type()).to_string()
    }
}

/// Events of the claim on one normalised e-mail address (the aggregate id is a hash
/// of the address).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum EmailClaimEvent {
    EmailClaimed {
        user_id: String,
        claimed_at: DateTime<Utc>,
    },
    /// The holder was erased: the address may register again, as a new user.
    EmailReleased {
        user_id: String,
        released_at: DateTime<Utc>,
    },
}

impl DomainEvent for EmailClaimEvent {
    fn event_type(&self) -> String {
        match self {
            Self::EmailClaimed { .. } => "EmailClaimed",
            Self::EmailReleased { .. } => "EmailReleased",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        super::upcast::current_version(&self.event_type()).to_string()
    }
}

/// Where a session came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionOrigin {
    Registration,
    Login,
}

/// The personal data of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionPersonal {
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
}

impl SessionPersonal {
    /// The client of a request as events record it (device fields come from the body).
    pub fn of(client: &ClientInfo) -> Self {
        Self { ip_address: client.ip.clone(), user_agent: client.user_agent.clone(), ..Default::default() }
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// `POST /auth/logout`.
    Logout,
    /// `DELETE /auth/sessions/{id}` or `POST /auth/sessions/revoke-others`.
    RevokedByUser,
    /// A spent refresh token was presented again.
    RefreshTokenReuse,
    /// The user's role changed, the user was disabled, or the password changed.
    UserChanged,
}

impl RevokeReason {
    /// The reason as stored in read models.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::RevokedByUser => "revoked_by_user",
            Self::RefreshTokenReuse => "refresh_token_reuse",
            Self::UserChanged => "user_changed",
        }
    }
}

/// Events of one session: one login and every refresh token descended from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SessionEvent {
    SessionStarted {
        session_id: String,
        user_id: String,
        origin: SessionOrigin,
        refresh_hash: TokenHash,
        refresh_expires_at: DateTime<Utc>,
        remember_me: bool,
        personal: SessionPersonal,
        started_at: DateTime<Utc>,
    },
    SessionRefreshed {
        user_id: String,
        previous_hash: TokenHash,
        refresh_hash: TokenHash,
        refresh_expires_at: DateTime<Utc>,
        personal: SessionPersonal,
        refreshed_at: DateTime<Utc>,
    },
    /// A spent refresh token came back: someone holds a copy. The session is revoked by
    /// the `SessionRevoked` event that follows.
    RefreshTokenReuseDetected {
        user_id: String,
        presented_hash: TokenHash,
        personal: SessionPersonal,
        detected_at: DateTime<Utc>,
    },
    SessionRevoked {
        user_id: String,
        reason: RevokeReason,
        revoked_at: DateTime<Utc>,
    },
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SessionStarted { .. } => "SessionStarted",
            Self::SessionRefreshed { .. } => "SessionRefreshed",
            Self::RefreshTokenReuseDetected { .. } => "RefreshTokenReuseDetected",
            Self::SessionRevoked { .. } => "SessionRevoked",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        super::upcast::current_version(&self.event_type()).to_string()
    }
}

/// Why a login failed (never told to the client, which always hears the same answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    UnknownEmail,
    BadPassword,
    Disabled,
    /// Refused without checking the password: too soon after a failure, or another
    /// attempt on the address is in progress.
    Throttled,
    /// Refused without checking the password: the address is locked.
    Locked,
}

/// Why an attempt was refused without a password check (`LoginThrottled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleReason {
    /// Another attempt of the same client class was still being checked.
    InFlight,
    /// Too soon after a failed check of the same client class.
    Delay,
    /// The address is locked for the client's class.
    Locked,
}

/// Events of the login attempts on one e-mail address, registered or not (the aggregate
/// id is the same hash as the e-mail claim's), or on one session's change-password checks
/// (the id is `session:<session id>`).
///
/// The first five variants (`LoginAttemptStarted` .. `AccountLocked`) were written before
/// client classes existed: they keep their shape and are read as the *unfamiliar* class.
/// New attempts write the `LoginCheck*`, `LoginThrottled` and `LoginLocked` variants,
/// which say the class (`familiar`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum LoginAttemptEvent {
    /// An attempt may check the password (the only one in flight for the address).
    /// Written before client classes; read as the unfamiliar class.
    LoginAttemptStarted { attempt_id: String, started_at: DateTime<Utc> },
    LoginFailed {
        reason: LoginFailure,
        user_id: Option<String>,
        personal: SessionPersonal,
        /// Consecutive failures including this one.
        consecutive_failures: u32,
        failed_at: DateTime<Utc>,
    },
    /// The attempt ended without a verdict (the hashing queue was full, the client left).
    LoginAttemptAbandoned { attempt_id: String, abandoned_at: DateTime<Utc> },
    /// The password was right: the failure count starts again.
    LoginSucceeded { attempt_id: String, user_id: String, succeeded_at: DateTime<Utc> },
    AccountLocked {
        user_id: Option<String>,
        failures: u32,
        locked_until: DateTime<Utc>,
        locked_at: DateTime<Utc>,
    },
    /// Every client class is unlocked and its failure count cleared (written when a
    /// password reset completes; before client classes, also when a lock expired).
    AccountUnlocked { user_id: Option<String>, unlocked_at: DateTime<Utc> },
    /// A password reset was asked for an address without an account (nothing is sent).
    ResetRequestedForUnknownAddress { personal: SessionPersonal, requested_at: DateTime<Utc> },
    /// The address's holder was erased: every client class, familiar client and failure
    /// count is forgotten, so whoever registers the address next inherits nothing.
    AttemptsCleared { cleared_at: DateTime<Utc> },
    /// An attempt may check the password: the only one in flight for its client class.
    /// If its process dies, the attempt stops holding the class at `lease_until`.
    LoginCheckStarted {
        attempt_id: String,
        /// The client signed in to this account from the same IP or device within 30 days.
        familiar: bool,
        lease_until: DateTime<Utc>,
        started_at: DateTime<Utc>,
    },
    /// A password check failed (wrong password, unknown address, disabled account).
    LoginCheckFailed {
        attempt_id: String,
        reason: LoginFailure,
        user_id: Option<String>,
        personal: SessionPersonal,
        familiar: bool,
        /// Consecutive failed checks of this client class, including this one.
        consecutive_failures: u32,
        failed_at: DateTime<Utc>,
    },
    /// A password check succeeded: the client (its IP and device, personal data) is
    /// familiar to the account for 30 days, and its class's failure count starts again.
    LoginCheckSucceeded {
        attempt_id: String,
        user_id: String,
        personal: SessionPersonal,
        familiar: bool,
        succeeded_at: DateTime<Utc>,
    },
    /// Attempts were refused without a password check; recorded at most once per client
    /// and minute (later refusals within the minute are not recorded).
    LoginThrottled {
        reason: ThrottleReason,
        user_id: Option<String>,
        personal: SessionPersonal,
        familiar: bool,
        retry_after_secs: u64,
        throttled_at: DateTime<Utc>,
    },
    /// Too many failed checks: the client class may not check passwords until
    /// `locked_until` (the other class is not affected).
    LoginLocked {
        user_id: Option<String>,
        personal: SessionPersonal,
        familiar: bool,
        failures: u32,
        locked_until: DateTime<Utc>,
        locked_at: DateTime<Utc>,
    },
}

impl DomainEvent for LoginAttemptEvent {
    fn event_type(&self) -> String {
        match self {
            Self::LoginAttemptStarted { .. } => "LoginAttemptStarted",
            Self::LoginFailed { .. } => "LoginFailed",
            Self::LoginSucceeded { .. } => "LoginSucceeded",
            Self::LoginAttemptAbandoned { .. } => "LoginAttemptAbandoned",
            Self::AccountLocked { .. } => "AccountLocked",
            Self::AccountUnlocked { .. } => "AccountUnlocked",
            Self::ResetRequestedForUnknownAddress { .. } => "ResetRequestedForUnknownAddress",
            Self::AttemptsCleared { .. } => "AttemptsCleared",
            Self::LoginCheckStarted { .. } => "LoginCheckStarted",
            Self::LoginCheckFailed { .. } => "LoginCheckFailed",
            Self::LoginCheckSucceeded { .. } => "LoginCheckSucceeded",
            Self::LoginThrottled { .. } => "LoginThrottled",
            Self::LoginLocked { .. } => "LoginLocked",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        super::upcast::current_version(&self.event_type()).to_string()
    }
}

/// Events of the signing keyring: public parts only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum KeyringEvent {
    /// A key was generated and published; it signs from `activates_at` on.
    SigningKeyCreated {
        kid: String,
        public_key: String,
        created_at: DateTime<Utc>,
        activates_at: DateTime<Utc>,
    },
    /// The key signs new tokens from now on.
    SigningKeyActivated { kid: String, previous_kid: Option<String>, activated_at: DateTime<Utc> },
    /// The key signs no more; it stays published until `unpublish_after`.
    SigningKeyRetired { kid: String, retired_at: DateTime<Utc>, unpublish_after: DateTime<Utc> },
    /// Every token the key signed has expired; it is no longer published or accepted.
    SigningKeyRemoved { kid: String, removed_at: DateTime<Utc> },
}

impl DomainEvent for KeyringEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SigningKeyCreated { .. } => "SigningKeyCreated",
            Self::SigningKeyActivated { .. } => "SigningKeyActivated",
            Self::SigningKeyRetired { .. } => "SigningKeyRetired",
            Self::SigningKeyRemoved { .. } => "SigningKeyRemoved",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        super::upcast::current_version(&self.event_type()).to_string()
    }
}

/// Security notices that belong to no other aggregate (each notice is its own stream).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SecurityNoticeEvent {
    /// A client passed a rate limit (recorded once per window, not once per request).
    RateLimitExceeded { rule: String, user_id: Option<String>, personal: SessionPersonal, at: DateTime<Utc> },
}

impl DomainEvent for SecurityNoticeEvent {
    fn event_type(&self) -> String {
        "RateLimitExceeded".to_owned()
    }
    fn event_version(&self) -> String {
        super::upcast::current_version(&self.event_type()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_name_and_its_json_form() {
        for role in [Role::User, Role::Admin, Role::Service, Role::Auditor] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_value(role).expect("json"), serde_json::json!(role.as_str()));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn a_role_change_stored_before_auditors_existed_still_decodes() {
        let stored = serde_json::json!({"UserRoleChanged": {
            "role": "service", "previous": "admin", "sessions_revoked_before": "2026-01-01T00:00:00Z"
        }});
        let event: UserEvent = serde_json::from_value(stored).expect("decodes");
        assert!(matches!(
            event,
            UserEvent::UserRoleChanged { role: Role::Service, previous: Role::Admin, .. }
        ));
        let auditor = serde_json::json!({"UserRoleChanged": {
            "role": "auditor", "previous": "user", "sessions_revoked_before": "2026-01-01T00:00:00Z"
        }});
        let event: UserEvent = serde_json::from_value(auditor).expect("decodes");
        assert!(matches!(
            event,
            UserEvent::UserRoleChanged { role: Role::Auditor, previous: Role::User, .. }
        ));
    }
}
