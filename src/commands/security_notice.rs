//! Security notices: one-event streams for security-relevant facts that belong to no
//! other aggregate (a rate limit passed).

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::events::auth::SecurityNoticeEvent;

/// A notice; recorded once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityNotice {
    pub recorded: bool,
}

#[derive(Clone, Debug)]
pub enum SecurityNoticeCommand {
    Record(SecurityNoticeEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityNoticeError {
    #[error("the notice was already recorded")]
    AlreadyRecorded,
}

impl Aggregate for SecurityNotice {
    const TYPE: &'static str = "security_notice";
    type Command = SecurityNoticeCommand;
    type Event = SecurityNoticeEvent;
    type Error = SecurityNoticeError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SecurityNoticeCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SecurityNoticeError> {
        let SecurityNoticeCommand::Record(event) = command;
        if self.recorded {
            return Err(SecurityNoticeError::AlreadyRecorded);
        }
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, _: SecurityNoticeEvent) {
        self.recorded = true;
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::events::auth::SessionPersonal;

    fn rate_limit_exceeded() -> SecurityNoticeEvent {
        SecurityNoticeEvent::RateLimitExceeded {
            rule: "login".into(),
            user_id: Some("u".into()),
            personal: SessionPersonal { ip_address: Some("10.0.0.9".into()), ..Default::default() },
            at: DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z").expect("time").with_timezone(&Utc),
        }
    }

    #[test]
    fn a_new_notice_records_the_event_it_is_given() {
        TestFramework::<SecurityNotice>::with(())
            .given_no_previous_events()
            .when(SecurityNoticeCommand::Record(rate_limit_exceeded()))
            .then_expect_events(vec![rate_limit_exceeded()]);
    }

    #[test]
    fn a_notice_that_was_already_recorded_refuses_a_second_record() {
        TestFramework::<SecurityNotice>::with(())
            .given(vec![rate_limit_exceeded()])
            .when(SecurityNoticeCommand::Record(rate_limit_exceeded()))
            .then_expect_error(SecurityNoticeError::AlreadyRecorded);
    }
}
