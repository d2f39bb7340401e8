//! The user aggregate: registration, role, enabled or disabled.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::events::auth::{Role, UserEvent, UserPersonal};

/// A user account as the write model sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Option<String>,
    pub personal: Option<UserPersonal>,
    pub password_hash: String,
    pub role: Role,
    pub registered_at: Option<DateTime<Utc>>,
    pub disabled: bool,
    /// Sessions started at or before this instant are revoked.
    pub sessions_revoked_before: Option<DateTime<Utc>>,
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

    /// Whether a session started at `started_at` may still be used. Compared in whole
    /// milliseconds, as the access-token check does (a session id is a UUIDv7 carrying
    /// its start in milliseconds): a session from the cutoff's own millisecond is revoked.
    pub fn admits_session(&self, started_at: DateTime<Utc>) -> bool {
        !self.disabled
            && self
                .sessions_revoked_before
                .is_none_or(|cutoff| started_at.timestamp_millis() > cutoff.timestamp_millis())
    }
}

/// What can be asked of a user.
#[derive(Clone, Debug)]
pub enum UserCommand {
    Register { user_id: String, personal: UserPersonal, password_hash: String, at: DateTime<Utc> },
    ChangeRole { role: Role, at: DateTime<Utc> },
    Disable { at: DateTime<Utc> },
    Enable { at: DateTime<Utc> },
}

/// Refusals.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("the user is already registered")]
    AlreadyRegistered,
    #[error("no such user")]
    NotFound,
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
        if !matches!(command, UserCommand::Register { .. }) && !self.exists() {
            return Err(UserError::NotFound);
        }
        let event = match command {
            UserCommand::Register { .. } if self.exists() => return Err(UserError::AlreadyRegistered),
            UserCommand::Register { user_id, personal, password_hash, at } => UserEvent::UserRegistered {
                user_id,
                personal,
                password_hash,
                role: Role::User,
                registered_at: at,
            },
            UserCommand::ChangeRole { role, .. } if role == self.role => return Ok(()),
            UserCommand::ChangeRole { role, at } => {
                UserEvent::UserRoleChanged { role, previous: self.role, sessions_revoked_before: at }
            }
            UserCommand::Disable { .. } if self.disabled => return Ok(()),
            UserCommand::Disable { at } => UserEvent::UserDisabled { sessions_revoked_before: at },
            UserCommand::Enable { .. } if !self.disabled => return Ok(()),
            UserCommand::Enable { at } => UserEvent::UserEnabled { enabled_at: at },
        };
        sink.write(event, self).await;
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
                self.sessions_revoked_before = Some(sessions_revoked_before);
            }
            UserEvent::UserDisabled { sessions_revoked_before } => {
                self.disabled = true;
                self.sessions_revoked_before = Some(sessions_revoked_before);
            }
            UserEvent::UserEnabled { .. } => self.disabled = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn registered(at: DateTime<Utc>) -> UserEvent {
        UserEvent::UserRegistered {
            user_id: "u1".into(),
            personal: UserPersonal { email: "a@example.com".into(), name: None },
            password_hash: "$argon2id$...".into(),
            role: Role::User,
            registered_at: at,
        }
    }

    #[test]
    fn a_user_registers_once() {
        let at = Utc::now();
        TestFramework::<User>::with(())
            .given(vec![registered(at)])
            .when(UserCommand::Register {
                user_id: "u1".into(),
                personal: UserPersonal { email: "a@example.com".into(), name: None },
                password_hash: String::new(),
                at,
            })
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn a_role_change_revokes_earlier_sessions_and_repeating_it_changes_nothing() {
        let at = Utc::now();
        TestFramework::<User>::with(())
            .given(vec![registered(at)])
            .when(UserCommand::ChangeRole { role: Role::Admin, at })
            .then_expect_events(vec![UserEvent::UserRoleChanged {
                role: Role::Admin,
                previous: Role::User,
                sessions_revoked_before: at,
            }]);
        TestFramework::<User>::with(())
            .given(vec![registered(at)])
            .when(UserCommand::ChangeRole { role: Role::User, at })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_disabled_user_admits_no_session_and_enabling_admits_only_later_ones() {
        let at = Utc::now();
        let mut user = User::default();
        user.apply(registered(at));
        assert!(user.admits_session(at));
        user.apply(UserEvent::UserDisabled { sessions_revoked_before: at });
        assert!(!user.admits_session(at + chrono::Duration::seconds(1)));
        user.apply(UserEvent::UserEnabled { enabled_at: at });
        assert!(!user.admits_session(at), "sessions from before the disable stay revoked");
        assert!(user.admits_session(at + chrono::Duration::milliseconds(1)));
        assert!(!user.admits_session(at + chrono::Duration::nanoseconds(10)), "same millisecond");
    }

    #[test]
    fn commands_on_a_missing_user_are_refused() {
        TestFramework::<User>::with(())
            .given_no_previous_events()
            .when(UserCommand::Disable { at: Utc::now() })
            .then_expect_error(UserError::NotFound);
    }
}
