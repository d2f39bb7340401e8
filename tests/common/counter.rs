//! A small aggregate for testing the store and the command layer: a counter that
//! refuses to pass a ceiling.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The ceiling a counter may not pass.
pub const CEILING: i64 = 1_000_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub total: i64,
    pub events: u64,
}

#[derive(Clone, Debug)]
pub enum CounterCommand {
    /// Adds `n` (refused past the ceiling).
    Add(i64),
    /// Adds `n` twice, as two events.
    AddTwice(i64),
    /// Changes nothing.
    Nothing,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CounterEvent {
    Added { by: i64, total: i64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        "CounterAdded".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CounterError {
    #[error("the counter would pass its ceiling")]
    PastCeiling,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            CounterCommand::Add(n) => {
                if self.total + n > CEILING {
                    return Err(CounterError::PastCeiling);
                }
                sink.write(CounterEvent::Added { by: n, total: self.total + n }, self).await;
            }
            CounterCommand::AddTwice(n) => {
                if self.total + 2 * n > CEILING {
                    return Err(CounterError::PastCeiling);
                }
                sink.write(CounterEvent::Added { by: n, total: self.total + n }, self).await;
                sink.write(CounterEvent::Added { by: n, total: self.total + n }, self).await;
            }
            CounterCommand::Nothing => {}
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CounterEvent::Added { total, .. } => {
                self.total = total;
                self.events += 1;
            }
        }
    }
}

/// A second aggregate type, for multi-aggregate appends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally(pub Counter);

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if let CounterCommand::Add(n) = command {
            sink.write(CounterEvent::Added { by: n, total: self.0.total + n }, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.0.apply(event);
    }
}
