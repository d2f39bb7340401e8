//! The user aggregate: registration, role, enabled or disabled, password changes and
//! resets, e-mail verification.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::domain::TokenHash;
use crate::events::auth::{Role, UserEvent, UserPersonal};

/// A single-use token's hash and expiry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingToken {
    pub hash: TokenHash,
    pub expires_at: DateTime<Utc>,
}

impl PendingToken {
    fn accepts(&self, presented: &TokenHash, at: DateTime<Utc>) -> bool {
        self.hash.matches(presented) && at <= self.expires_at
    }
}

/// A user account as the write model sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Option<String>,
    pub personal: Option<UserPersonal>,
    pub password_hash: String,
    pub role: Role,
    pub registered_at: Option<DateTime<Utc>>,
    pub disabled: bool,
    pub email_verified: bool,
    /// Sessions started at or before this instant are revoked ...
    pub sessions_revoked_before: Option<DateTime<Utc>>,
    /// ... except this one (the session that changed the password).
    pub kept_session: Option<String>,
    pub reset: Option<PendingToken>,
    pub verification: Option<PendingToken>,
    /// The person was erased: nothing about them is kept, no command is accepted.
    #[serde(default)]
    pub erased: bool,
}

impl User {
    /// Whether the account exists.
    pub fn exists(&self) -> bool {
        self.id.is_some()
    }

    /// The e-mail address (empty before registration).
    pub fn email(&self) -> &str {
        self.personal.as_ref().map_or("", |p| p.email.as_str())
    }

    /// The display name, if any.
    pub fn name(&self) -> Option<&str> {
        self.personal.as_ref().and_then(|p| p.name.as_deref())
    }

    /// Whether a session may still be used. Compared in whole milliseconds, as the
    /// access-token check does (a session id is a UUIDv7 carrying its start in
    /// milliseconds): a session from the cutoff's own millisecond is revoked.
    pub fn admits_session(&self, session_id: &str, started_at: DateTime<Utc>) -> bool {
        let kept = self.kept_session.as_deref() == Some(session_id);
        !self.disabled
            && !self.erased
            && (kept
                || self
                    .sessions_revoked_before
                    .is_none_or(|cutoff| started_at.timestamp_millis() > cutoff.timestamp_millis()))
    }
}

/// What can be asked of a user.
#[derive(Clone, Debug)]
pub enum UserCommand {
    /// Registers the user and, when given, issues the first e-mail verification token.
    Register {
        user_id: String,
        personal: UserPersonal,
        password_hash: String,
        verification: Option<(TokenHash, DateTime<Utc>)>,
        at: DateTime<Utc>,
    },
    ChangeRole {
        role: Role,
        at: DateTime<Utc>,
    },
    Disable {
        at: DateTime<Utc>,
    },
    Enable {
        at: DateTime<Utc>,
    },
    /// The caller proved the current password; every other session is revoked.
    ChangePassword {
        password_hash: String,
        keep_session: String,
        at: DateTime<Utc>,
    },
    RequestPasswordReset {
        token: TokenHash,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    ResetPassword {
        token: TokenHash,
        password_hash: String,
        at: DateTime<Utc>,
    },
    RequestEmailVerification {
        token: TokenHash,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    VerifyEmail {
        token: TokenHash,
        at: DateTime<Utc>,
    },
    /// Erases the person: `plaintext_events` of theirs predate sealing and
    /// `legacy_claim` says whether their address still has an unkeyed claim stream.
    Erase {
        plaintext_events: u64,
        legacy_claim: bool,
        at: DateTime<Utc>,
    },
}

/// Refusals.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("the user is already registered")]
    AlreadyRegistered,
    #[error("no such user")]
    NotFound,
    #[error("the user was erased")]
    Erased,
    #[error("the reset token is invalid, expired or used")]
    InvalidResetToken,
    #[error("the verification token is invalid, expired or used")]
    InvalidVerificationToken,
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: UserCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        match event {
            UserEvent::UserRegistered { user_id, personal, password_hash, role, registered_at } => {
                self.id = Some(user_id);
                self.personal = Some(personal);
                self.password_hash = password_hash;
                self.role = role;
                self.registered_at = Some(registered_at);
            }
            UserEvent::UserRoleChanged { role, sessions_revoked_before, .. } => {
                self.role = role;
                self.revoke_sessions(sessions_revoked_before, None);
            }
            UserEvent::UserDisabled { sessions_revoked_before } => {
                self.disabled = true;
                self.revoke_sessions(sessions_revoked_before, None);
            }
            UserEvent::UserErased { sessions_revoked_before, .. } => {
                self.erased = true;
                self.revoke_sessions(sessions_revoked_before, None);
                self.reset = None;
                self.verification = None;
                self.password_hash = String::new();
            }
            UserEvent::UserEnabled { .. } => self.disabled = false,
            UserEvent::PasswordChanged { password_hash, sessions_revoked_before, kept_session } => {
                self.password_hash = password_hash;
                // A link mailed before the change must not undo it.
                self.reset = None;
                self.revoke_sessions(sessions_revoked_before, kept_session);
            }
            UserEvent::PasswordResetRequested { token_hash, expires_at, .. } => {
                self.reset = Some(PendingToken { hash: token_hash, expires_at });
            }
            UserEvent::PasswordResetCompleted { password_hash, sessions_revoked_before } => {
                self.password_hash = password_hash;
                self.reset = None;
                self.revoke_sessions(sessions_revoked_before, None);
            }
            UserEvent::EmailVerificationRequested { token_hash, expires_at, .. } => {
                self.verification = Some(PendingToken { hash: token_hash, expires_at });
            }
            UserEvent::EmailVerified { .. } => {
                self.email_verified = true;
                self.verification = None;
            }
        }
    }
}

impl User {
    fn revoke_sessions(&mut self, before: DateTime<Utc>, kept: Option<String>) {
        self.sessions_revoked_before = Some(before);
        self.kept_session = kept;
    }

    fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        if !matches!(command, UserCommand::Register { .. }) && !self.exists() {
            return Err(UserError::NotFound);
        }
        if self.erased {
            return Err(UserError::Erased);
        }
        Ok(vec![match command {
            UserCommand::Register { .. } if self.exists() => return Err(UserError::AlreadyRegistered),
            UserCommand::Register { user_id, personal, password_hash, verification, at } => {
                let registered = UserEvent::UserRegistered {
                    user_id,
                    personal,
                    password_hash,
                    role: Role::User,
                    registered_at: at,
                };
                return Ok(match verification {
                    Some((token_hash, expires_at)) => vec![
                        registered,
                        UserEvent::EmailVerificationRequested { token_hash, expires_at, requested_at: at },
                    ],
                    None => vec![registered],
                });
            }
            UserCommand::ChangeRole { role, .. } if role == self.role => return Ok(Vec::new()),
            UserCommand::ChangeRole { role, at } => {
                UserEvent::UserRoleChanged { role, previous: self.role, sessions_revoked_before: at }
            }
            UserCommand::Disable { .. } if self.disabled => return Ok(Vec::new()),
            UserCommand::Disable { at } => UserEvent::UserDisabled { sessions_revoked_before: at },
            UserCommand::Enable { .. } if !self.disabled => return Ok(Vec::new()),
            UserCommand::Enable { at } => UserEvent::UserEnabled { enabled_at: at },
            UserCommand::ChangePassword { password_hash, keep_session, at } => UserEvent::PasswordChanged {
                password_hash,
                sessions_revoked_before: at,
                kept_session: Some(keep_session),
            },
            UserCommand::RequestPasswordReset { token, expires_at, at } => {
                UserEvent::PasswordResetRequested { token_hash: token, expires_at, requested_at: at }
            }
            UserCommand::ResetPassword { token, password_hash, at } => {
                if !self.reset.as_ref().is_some_and(|r| r.accepts(&token, at)) {
                    return Err(UserError::InvalidResetToken);
                }
                UserEvent::PasswordResetCompleted { password_hash, sessions_revoked_before: at }
            }
            UserCommand::RequestEmailVerification { .. } if self.email_verified => return Ok(Vec::new()),
            UserCommand::RequestEmailVerification { token, expires_at, at } => {
                UserEvent::EmailVerificationRequested { token_hash: token, expires_at, requested_at: at }
            }
            UserCommand::Erase { plaintext_events, legacy_claim, at } => UserEvent::UserErased {
                sessions_revoked_before: at,
                plaintext_events,
                legacy_claim,
                erased_at: at,
            },
            UserCommand::VerifyEmail { token, at } => {
                if !self.verification.as_ref().is_some_and(|v| v.accepts(&token, at)) {
                    return Err(UserError::InvalidVerificationToken);
                }
                UserEvent::EmailVerified { verified_at: at }
            }
        }])
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00.000100Z").unwrap().with_timezone(&Utc)
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            user_id: "u1".into(),
            personal: UserPersonal { email: "a@example.com".into(), name: None },
            password_hash: "$argon2id$...".into(),
            role: Role::User,
            registered_at: at(),
        }
    }

    fn hash(n: u8) -> TokenHash {
        TokenHash(format!("h{n}"))
    }

    #[test]
    fn a_user_registers_once() {
        TestFramework::<User>::with(())
            .given(vec![registered()])
            .when(UserCommand::Register {
                user_id: "u1".into(),
                personal: UserPersonal { email: "a@example.com".into(), name: None },
                password_hash: String::new(),
                verification: None,
                at: at(),
            })
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn a_role_change_revokes_earlier_sessions_and_repeating_it_changes_nothing() {
        TestFramework::<User>::with(())
            .given(vec![registered()])
            .when(UserCommand::ChangeRole { role: Role::Admin, at: at() })
            .then_expect_events(vec![UserEvent::UserRoleChanged {
                role: Role::Admin,
                previous: Role::User,
                sessions_revoked_before: at(),
            }]);
        TestFramework::<User>::with(())
            .given(vec![registered()])
            .when(UserCommand::ChangeRole { role: Role::User, at: at() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_disabled_user_admits_no_session_and_enabling_admits_only_later_ones() {
        let mut user = User::default();
        user.apply(registered());
        assert!(user.admits_session("s", at()));
        user.apply(UserEvent::UserDisabled { sessions_revoked_before: at() });
        assert!(!user.admits_session("s", at() + Duration::seconds(1)));
        user.apply(UserEvent::UserEnabled { enabled_at: at() });
        assert!(!user.admits_session("s", at()), "sessions from before the disable stay revoked");
        assert!(user.admits_session("s", at() + Duration::milliseconds(1)));
        assert!(!user.admits_session("s", at() + Duration::nanoseconds(10)), "same millisecond");
    }

    #[test]
    fn a_password_change_keeps_only_the_asking_session() {
        let mut user = User::default();
        user.apply(registered());
        user.apply(UserEvent::PasswordChanged {
            password_hash: "new".into(),
            sessions_revoked_before: at(),
            kept_session: Some("mine".into()),
        });
        assert!(user.admits_session("mine", at() - Duration::hours(1)));
        assert!(!user.admits_session("other", at() - Duration::hours(1)));
    }

    #[test]
    fn a_reset_token_works_once_and_not_after_it_expires() {
        let requested = UserEvent::PasswordResetRequested {
            token_hash: hash(1),
            expires_at: at() + Duration::hours(1),
            requested_at: at(),
        };
        let reset = |token, when| UserCommand::ResetPassword { token, password_hash: "new".into(), at: when };
        TestFramework::<User>::with(())
            .given(vec![registered(), requested.clone()])
            .when(reset(hash(2), at()))
            .then_expect_error(UserError::InvalidResetToken);
        TestFramework::<User>::with(())
            .given(vec![registered(), requested.clone()])
            .when(reset(hash(1), at() + Duration::hours(2)))
            .then_expect_error(UserError::InvalidResetToken);
        let completed =
            UserEvent::PasswordResetCompleted { password_hash: "new".into(), sessions_revoked_before: at() };
        TestFramework::<User>::with(())
            .given(vec![registered(), requested.clone()])
            .when(reset(hash(1), at()))
            .then_expect_events(vec![completed.clone()]);
        TestFramework::<User>::with(())
            .given(vec![registered(), requested, completed])
            .when(reset(hash(1), at()))
            .then_expect_error(UserError::InvalidResetToken);
    }

    fn requested(n: u8) -> UserEvent {
        UserEvent::PasswordResetRequested {
            token_hash: hash(n),
            expires_at: at() + Duration::hours(1),
            requested_at: at(),
        }
    }

    fn reset_with(n: u8) -> UserCommand {
        UserCommand::ResetPassword { token: hash(n), password_hash: "reset".into(), at: at() }
    }

    #[test]
    fn a_password_change_voids_a_reset_link_taken_before_it() {
        let changed = UserEvent::PasswordChanged {
            password_hash: "changed".into(),
            sessions_revoked_before: at(),
            kept_session: Some("mine".into()),
        };
        TestFramework::<User>::with(())
            .given(vec![registered(), requested(1), changed])
            .when(reset_with(1))
            .then_expect_error(UserError::InvalidResetToken);
    }

    #[test]
    fn a_newer_reset_request_voids_the_earlier_link_and_its_own_link_works() {
        TestFramework::<User>::with(())
            .given(vec![registered(), requested(1), requested(2)])
            .when(reset_with(1))
            .then_expect_error(UserError::InvalidResetToken);
        TestFramework::<User>::with(())
            .given(vec![registered(), requested(1), requested(2)])
            .when(reset_with(2))
            .then_expect_events(vec![UserEvent::PasswordResetCompleted {
                password_hash: "reset".into(),
                sessions_revoked_before: at(),
            }]);
    }

    #[test]
    fn a_completed_reset_voids_every_earlier_link() {
        let completed = UserEvent::PasswordResetCompleted {
            password_hash: "reset".into(),
            sessions_revoked_before: at(),
        };
        for earlier in [1, 2] {
            TestFramework::<User>::with(())
                .given(vec![registered(), requested(1), requested(2), completed.clone()])
                .when(reset_with(earlier))
                .then_expect_error(UserError::InvalidResetToken);
        }
    }

    #[test]
    fn commands_on_a_missing_user_are_refused() {
        TestFramework::<User>::with(())
            .given_no_previous_events()
            .when(UserCommand::Disable { at: Utc::now() })
            .then_expect_error(UserError::NotFound);
    }
}
