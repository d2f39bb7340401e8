//! [`UnitOfWork`]: commands on several aggregates, committed as one atomic append.
//!
//! This is the design chosen for requests that change several aggregates (a
//! registration creates a user, claims its e-mail, opens its first session and its
//! credit account): every aggregate is loaded from the store, every command is decided,
//! and all events are appended in one statement (PostgreSQL) or one transaction
//! (SQLite). A crash before the append leaves nothing; after it, everything. If any
//! aggregate moved meanwhile, the append conflicts as a whole and [`with_retries`] runs
//! the whole unit again on fresh state. Each aggregate's command is decided at the
//! unit's time or at the time of that aggregate's last event, whichever is later
//! ([`CommandContext::decided_after`]).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError};

use super::{CommandBus, CommandContext, StreamHead, to_new_event};
use crate::events::{AppendError, EventStore, LogCursor, NewEvent, OutgoingMail};
use crate::telemetry::Metrics;

/// How often a unit of work is re-run after conflicts before the caller sees one.
const MAX_ATTEMPTS: u32 = 12;

/// Commands on several aggregates, appended together.
pub struct UnitOfWork {
    store: EventStore,
    ctx: CommandContext,
    staged: Vec<NewEvent>,
    touched: Vec<(&'static str, String)>,
    invalidations: Vec<Box<dyn FnOnce() + Send>>,
    mail: Vec<OutgoingMail>,
}

impl UnitOfWork {
    /// An empty unit writing to `store`, stamping events with `ctx`.
    pub fn new(store: EventStore, ctx: CommandContext) -> Self {
        Self {
            store,
            ctx,
            staged: Vec::new(),
            touched: Vec::new(),
            invalidations: Vec::new(),
            mail: Vec::new(),
        }
    }

    /// Loads an aggregate from the store, runs one command on it and stages its events.
    /// Each aggregate may take part once per unit.
    pub async fn execute<A>(
        &mut self,
        bus: &CommandBus<A>,
        aggregate_id: &str,
        command: A::Command,
    ) -> Result<Vec<A::Event>, AggregateError<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone + Send + 'static,
        A::Error: Send + 'static,
        A::Services: 'static,
    {
        Ok(self.execute_at(bus, aggregate_id, |_| command, |_| ()).await?.0)
    }

    /// Like [`Self::execute`], for a command that carries its own time: `make` builds it
    /// from the time it is decided at. Answers the events and `view` read from the
    /// aggregate right after the command.
    pub async fn execute_at<A, R>(
        &mut self,
        bus: &CommandBus<A>,
        aggregate_id: &str,
        make: impl FnOnce(DateTime<Utc>) -> A::Command,
        view: impl FnOnce(&A) -> R,
    ) -> Result<(Vec<A::Event>, R), AggregateError<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone + Send + 'static,
        A::Error: Send + 'static,
        A::Services: 'static,
    {
        let loaded = bus.load_head(aggregate_id).await?;
        self.execute_loaded(bus, aggregate_id, loaded, make, view).await
    }

    /// Like [`Self::execute_at`], on a state the caller has just loaded with
    /// [`CommandBus::load_head`] (to decide something on it first without loading it
    /// twice). The append still checks that the stream has not moved since.
    pub(crate) async fn execute_loaded<A, R>(
        &mut self,
        bus: &CommandBus<A>,
        aggregate_id: &str,
        (mut aggregate, head): (A, StreamHead),
        make: impl FnOnce(DateTime<Utc>) -> A::Command,
        view: impl FnOnce(&A) -> R,
    ) -> Result<(Vec<A::Event>, R), AggregateError<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone + Send + 'static,
        A::Error: Send + 'static,
        A::Services: 'static,
    {
        let key = (A::TYPE, aggregate_id.to_owned());
        if self.touched.contains(&key) {
            return Err(AggregateError::UnexpectedError(
                format!("{} {aggregate_id} used twice in one unit of work", A::TYPE).into(),
            ));
        }
        let ctx = self.ctx.decided_after(head.recorded_at);
        let sink = EventSink::default();
        aggregate.handle(make(ctx.now), bus.services(), &sink).await.map_err(AggregateError::UserError)?;
        let events = sink.collect().await;
        let mut sequence = head.sequence;
        for event in &events {
            sequence += 1;
            self.staged.push(to_new_event::<A>(aggregate_id, sequence, event, &ctx)?);
        }
        self.touched.push(key);
        let bus = bus.clone();
        let id = aggregate_id.to_owned();
        self.invalidations.push(Box::new(move || bus.invalidate(&id)));
        Ok((events, view(&aggregate)))
    }

    /// Queues a message to send once (and only if) the unit commits.
    pub fn queue_mail(&mut self, mail: OutgoingMail) {
        self.mail.push(mail);
    }

    /// Appends every staged event atomically. `None` when nothing was staged.
    pub async fn commit(self) -> Result<Option<LogCursor>, AppendError> {
        if self.staged.is_empty() {
            return Ok(None);
        }
        let cursor = self.store.append_with_mail(&self.staged, &self.mail).await?;
        for invalidate in self.invalidations {
            invalidate();
        }
        Ok(Some(cursor))
    }
}

/// Converts a failed commit into the framework's error type.
pub fn commit_error<E: std::error::Error>(error: AppendError) -> AggregateError<E> {
    match error {
        AppendError::Conflict => AggregateError::AggregateConflict,
        AppendError::Store(e) => super::store_error(e),
    }
}

/// An error that may be an optimistic conflict worth retrying.
pub trait Retryable {
    /// Whether running the same work again on fresh state may succeed.
    fn is_conflict(&self) -> bool;
}

impl<E: std::error::Error> Retryable for AggregateError<E> {
    fn is_conflict(&self) -> bool {
        matches!(self, AggregateError::AggregateConflict)
    }
}

/// Runs `attempt` until it succeeds or fails with something other than a conflict, at
/// most a bounded number of times, with a little jitter between attempts.
pub async fn with_retries<T, E, F, Fut>(metrics: &Metrics, label: &str, mut attempt: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(error) if error.is_conflict() && tries < MAX_ATTEMPTS => {
                metrics.command_conflict(label);
                let jitter = rand::random_range(0..=u64::from(tries) * 2);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            other => return other,
        }
    }
}
