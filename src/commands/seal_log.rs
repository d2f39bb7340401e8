//! The seal stream (`audit_log`/`seals`): one aggregate whose sequence lets one writer
//! at a time append a seal. The sealer (`audit::seal`) folds the log outside it and
//! offers the signed result; the aggregate only accepts a seal that extends the seal it
//! was folded from, so a process that lost a race appends nothing.

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::events::audit::AuditEvent;

/// What a seal covers: every event up to `through`, `count` of them, folding to `root`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealPoint {
    /// The cursor (Display form) of the last event covered.
    pub through: String,
    pub count: u64,
    /// The running root after `through` (hex).
    pub root: String,
}

/// The seal stream: its last seal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SealLog {
    pub last: Option<SealPoint>,
}

/// A signed seal offered to the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal {
    /// The seal this one was folded from (`None`: folded from the start of the log).
    pub extends: Option<SealPoint>,
    pub point: SealPoint,
    pub kid: String,
    pub signature: String,
    pub sealed_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Clone, Debug)]
pub enum SealCommand {
    /// Append the seal if the stream still ends with the seal it extends; else nothing
    /// (another process sealed first: its seal covers the same events or more).
    Append(Seal),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealLogError {
    /// A seal must cover more events than the one it extends.
    #[error("a seal of {count} events does not extend one of {previous}")]
    NotAhead { count: u64, previous: u64 },
}

impl Aggregate for SealLog {
    const TYPE: &'static str = crate::events::audit::SEALS_TYPE;
    type Command = SealCommand;
    type Event = AuditEvent;
    type Error = SealLogError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SealCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SealLogError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: AuditEvent) {
        match event {
            AuditEvent::LogSealed { through, count, root, .. } => {
                self.last = Some(SealPoint { through, count, root });
            }
        }
    }
}

impl SealLog {
    /// The events a command produces on this state.
    pub fn decide(&self, command: SealCommand) -> Result<Vec<AuditEvent>, SealLogError> {
        let SealCommand::Append(seal) = command;
        if seal.extends != self.last {
            return Ok(Vec::new());
        }
        let previous = self.last.as_ref().map_or(0, |p| p.count);
        if seal.point.count <= previous {
            return Err(SealLogError::NotAhead { count: seal.point.count, previous });
        }
        Ok(vec![AuditEvent::LogSealed {
            through: seal.point.through,
            count: seal.point.count,
            root: seal.point.root,
            kid: seal.kid,
            signature: seal.signature,
            sealed_at: seal.sealed_at,
        }])
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn point(through: &str, count: u64) -> SealPoint {
        SealPoint { through: through.into(), count, root: format!("root-{count}") }
    }

    fn seal(extends: Option<SealPoint>, point: SealPoint) -> Seal {
        Seal {
            extends,
            point,
            kid: "k".into(),
            signature: "sig".into(),
            sealed_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn sealed(point: SealPoint) -> AuditEvent {
        AuditEvent::LogSealed {
            through: point.through,
            count: point.count,
            root: point.root,
            kid: "k".into(),
            signature: "sig".into(),
            sealed_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_first_seal_of_an_empty_stream_is_appended() {
        TestFramework::<SealLog>::with(())
            .given_no_previous_events()
            .when(SealCommand::Append(seal(None, point("0:5", 5))))
            .then_expect_events(vec![sealed(point("0:5", 5))]);
    }

    #[test]
    fn a_seal_extending_the_last_seal_is_appended() {
        TestFramework::<SealLog>::with(())
            .given(vec![sealed(point("0:5", 5))])
            .when(SealCommand::Append(seal(Some(point("0:5", 5)), point("0:9", 9))))
            .then_expect_events(vec![sealed(point("0:9", 9))]);
    }

    #[test]
    fn a_seal_folded_from_an_older_seal_appends_nothing() {
        TestFramework::<SealLog>::with(())
            .given(vec![sealed(point("0:5", 5)), sealed(point("0:7", 7))])
            .when(SealCommand::Append(seal(Some(point("0:5", 5)), point("0:9", 9))))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_seal_covering_no_more_events_than_the_last_is_refused() {
        TestFramework::<SealLog>::with(())
            .given(vec![sealed(point("0:5", 5))])
            .when(SealCommand::Append(seal(Some(point("0:5", 5)), point("0:5", 5))))
            .then_expect_error(SealLogError::NotAhead { count: 5, previous: 5 });
    }
}
