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
