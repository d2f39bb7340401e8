//! Login attempts on one e-mail address, registered or not (the id is the address's
//! claim id). Failed logins are recorded here, so an attempt on an unknown address leaves
//! a trace without revealing anything to the client.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::events::auth::{LoginAttemptEvent, LoginFailure, SessionPersonal};

/// The attempts on one address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginAttempts {
    pub failures: u64,
    pub last_failure_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug)]
pub enum LoginAttemptCommand {
    RecordFailure {
        reason: LoginFailure,
        user_id: Option<String>,
        personal: SessionPersonal,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginAttemptError {}

impl Aggregate for LoginAttempts {
    const TYPE: &'static str = "login_attempts";
    type Command = LoginAttemptCommand;
    type Event = LoginAttemptEvent;
    type Error = LoginAttemptError;
    type Services = ();

    async fn handle(
        &mut self,
        command: LoginAttemptCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), LoginAttemptError> {
        let LoginAttemptCommand::RecordFailure { reason, user_id, personal, at } = command;
        sink.write(LoginAttemptEvent::LoginFailed { reason, user_id, personal, failed_at: at }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: LoginAttemptEvent) {
        let LoginAttemptEvent::LoginFailed { failed_at, .. } = event;
        self.failures += 1;
        self.last_failure_at = Some(failed_at);
    }
}
