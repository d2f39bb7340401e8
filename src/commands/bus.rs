//! [`CommandBus`]: per-aggregate queues, the aggregate cache, group commit and retries.
//!
//! Each aggregate id has a slot holding its cached state behind an async mutex and a
//! queue of waiting commands. A caller enqueues its command, then takes the mutex; the
//! first to get it runs every queued command in order against the state and appends
//! all their events in one write, then answers each caller. A cached state may be stale
//! (another process appended): the optimistic append catches that as a conflict, and the
//! batch is re-run on a reloaded state. A batch that writes nothing (every command
//! refused, or a replay) is confirmed against the store before its answers count, so a
//! refusal is never based on a stale cache.
//!
//! A command is decided at its caller's clock reading or at the time of the stream's
//! last event, whichever is later ([`CommandContext::decided_after`]), so the recorded
//! times of an aggregate's events never go backwards; [`CommandBus::execute_at`] lets a
//! command carry that time in its events too.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError};
use moka::sync::Cache;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{CommandContext, StreamHead, replay, store_error, to_new_event};
use crate::events::{AppendError, EventStore, LogCursor, NewEvent};

/// How often one batch is re-run after optimistic conflicts before the caller sees one.
const MAX_ATTEMPTS: u32 = 12;
/// How many aggregates of one type stay cached.
const CACHE_CAPACITY: u64 = 20_000;
/// How long an unused aggregate stays cached.
const CACHE_IDLE: Duration = Duration::from_secs(600);

/// The result of a command that was accepted.
#[derive(Debug)]
pub struct Committed<A: Aggregate, R> {
    /// The events the command produced (empty for a no-op such as a replay).
    pub events: Vec<A::Event>,
    /// Where the batch's events landed; `None` when nothing was written.
    pub cursor: Option<LogCursor>,
    /// What the caller's view function read from the aggregate right after the command.
    pub reply: R,
}

/// Runs commands on aggregates of type `A`. Cheap to clone (shared state).
pub struct CommandBus<A: Aggregate> {
    inner: Arc<Inner<A>>,
}

impl<A: Aggregate> Clone for CommandBus<A> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<A: Aggregate> {
    store: EventStore,
    services: A::Services,
    slots: Cache<String, Arc<Slot<A>>>,
}

struct Slot<A: Aggregate> {
    queue: Mutex<Vec<Box<dyn Job<A>>>>,
    state: tokio::sync::Mutex<Option<Loaded<A>>>,
}

struct Loaded<A> {
    aggregate: A,
    head: StreamHead,
}

/// A queued command, with its reply channel; type-erased over the caller's reply type.
trait Job<A: Aggregate>: Send {
    /// The command, as decided at `at`.
    fn command(&self, at: DateTime<Utc>) -> A::Command;
    fn context(&self) -> &CommandContext;
    /// Records the outcome of running the command (may happen more than once on retry).
    fn record(&mut self, outcome: Result<Vec<A::Event>, A::Error>, aggregate: &A);
    /// Sends the final answer.
    fn finish(self: Box<Self>, written: Result<Option<LogCursor>, AggregateError<A::Error>>);
}

/// What a command answered: its events and the caller's view, or its refusal.
type Outcome<A, R> = Result<(Vec<<A as Aggregate>::Event>, R), <A as Aggregate>::Error>;
/// The channel a caller waits on.
type Reply<A, R> = oneshot::Sender<Result<Committed<A, R>, AggregateError<<A as Aggregate>::Error>>>;

struct TypedJob<A: Aggregate, R, F, M> {
    make: M,
    ctx: CommandContext,
    view: F,
    outcome: Option<Outcome<A, R>>,
    reply: Reply<A, R>,
}

impl<A, R, F, M> Job<A> for TypedJob<A, R, F, M>
where
    A: Aggregate,
    A::Error: Send,
    R: Send,
    F: Fn(&A) -> R + Send,
    M: Fn(DateTime<Utc>) -> A::Command + Send,
{
    fn command(&self, at: DateTime<Utc>) -> A::Command {
        (self.make)(at)
    }

    fn context(&self) -> &CommandContext {
        &self.ctx
    }

    fn record(&mut self, outcome: Result<Vec<A::Event>, A::Error>, aggregate: &A) {
        self.outcome = Some(outcome.map(|events| (events, (self.view)(aggregate))));
    }

    fn finish(self: Box<Self>, written: Result<Option<LogCursor>, AggregateError<A::Error>>) {
        let answer = match (written, self.outcome) {
            (Err(error), _) => Err(error),
            (Ok(_), Some(Err(user))) => Err(AggregateError::UserError(user)),
            (Ok(cursor), Some(Ok((events, reply)))) => {
                let cursor = if events.is_empty() { None } else { cursor };
                Ok(Committed { events, cursor, reply })
            }
            (Ok(_), None) => Err(unexpected("command finished without running")),
        };
        // The caller may have gone away (client disconnected); the write stands.
        let _ = self.reply.send(answer);
    }
}

fn unexpected<E: std::error::Error>(text: &str) -> AggregateError<E> {
    AggregateError::UnexpectedError(text.to_owned().into())
}

/// Copies an error for every command of a failed batch (the originals are not `Clone`).
fn copy_error<E: std::error::Error>(error: &AggregateError<E>) -> AggregateError<E> {
    match error {
        AggregateError::AggregateConflict => AggregateError::AggregateConflict,
        AggregateError::DatabaseConnectionError(e) => {
            AggregateError::DatabaseConnectionError(e.to_string().into())
        }
        AggregateError::DeserializationError(e) => AggregateError::DeserializationError(e.to_string().into()),
        other => AggregateError::UnexpectedError(other.to_string().into()),
    }
}

impl<A> CommandBus<A>
where
    A: Aggregate + 'static,
    A::Command: Clone + Send + 'static,
    A::Error: Send + 'static,
    A::Services: 'static,
{
    /// A bus over the store, with the services the aggregate's `handle` receives.
    pub fn new(store: EventStore, services: A::Services) -> Self {
        let slots = Cache::builder().max_capacity(CACHE_CAPACITY).time_to_idle(CACHE_IDLE).build();
        Self { inner: Arc::new(Inner { store, services, slots }) }
    }

    /// The store this bus appends to.
    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// The services given to `handle`.
    pub fn services(&self) -> &A::Services {
        &self.inner.services
    }

    /// Runs a command; returns the events it produced and where they landed.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Committed<A, ()>, AggregateError<A::Error>> {
        self.execute_with(aggregate_id, command, ctx, |_| ()).await
    }

    /// Runs a command and reads `view` from the aggregate right after it (before any
    /// later command of the same batch), e.g. a resulting balance.
    pub async fn execute_with<R, F>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        ctx: &CommandContext,
        view: F,
    ) -> Result<Committed<A, R>, AggregateError<A::Error>>
    where
        R: Send + 'static,
        F: Fn(&A) -> R + Send + 'static,
    {
        self.execute_at(aggregate_id, move |_| command.clone(), ctx, view).await
    }

    /// Like [`Self::execute_with`], for a command that carries its own time: `make`
    /// builds it from the time it is decided at (`ctx.now`, or the stream's last
    /// recorded time if later; again on each retry), so the times in the aggregate's
    /// events never go backwards either.
    pub async fn execute_at<R, F, M>(
        &self,
        aggregate_id: &str,
        make: M,
        ctx: &CommandContext,
        view: F,
    ) -> Result<Committed<A, R>, AggregateError<A::Error>>
    where
        R: Send + 'static,
        F: Fn(&A) -> R + Send + 'static,
        M: Fn(DateTime<Utc>) -> A::Command + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = TypedJob { make, ctx: ctx.clone(), view, outcome: None, reply };
        let slot = self.inner.slots.get_with_by_ref(aggregate_id, || {
            Arc::new(Slot { queue: Mutex::new(Vec::new()), state: tokio::sync::Mutex::new(None) })
        });
        slot.queue.lock().push(Box::new(job));
        // The batch runs in its own task: a caller that goes away (client disconnect) can
        // neither strand queued commands nor cut an append in half.
        let bus = self.clone();
        let id = aggregate_id.to_owned();
        tokio::spawn(async move {
            let mut state = slot.state.lock().await;
            let batch = std::mem::take(&mut *slot.queue.lock());
            if !batch.is_empty() {
                bus.run_batch(&id, &mut state, batch).await;
            }
        });
        answer.await.unwrap_or_else(|_| Err(unexpected("command was dropped")))
    }

    /// Reads `view` from the aggregate as this process has it (cached, else loaded). The
    /// state may lag other processes' writes: read only what never changes (ids, start
    /// times) this way, or decide through a command.
    pub async fn peek<R>(
        &self,
        aggregate_id: &str,
        view: impl FnOnce(&A) -> R,
    ) -> Result<R, AggregateError<A::Error>> {
        let slot = self.inner.slots.get_with_by_ref(aggregate_id, || {
            Arc::new(Slot { queue: Mutex::new(Vec::new()), state: tokio::sync::Mutex::new(None) })
        });
        let mut state = slot.state.lock().await;
        if state.is_none() {
            let (aggregate, head) = self.load_head(aggregate_id).await?;
            *state = Some(Loaded { aggregate, head });
        }
        match state.as_ref() {
            Some(loaded) => Ok(view(&loaded.aggregate)),
            None => Err(unexpected("aggregate not loaded")),
        }
    }

    /// Reads an aggregate straight from the store (no cache), with its sequence.
    pub async fn load(&self, aggregate_id: &str) -> Result<(A, usize), AggregateError<A::Error>> {
        let (aggregate, head) = self.load_head(aggregate_id).await?;
        Ok((aggregate, head.sequence))
    }

    /// Reads an aggregate straight from the store, with where its stream ends.
    pub(crate) async fn load_head(
        &self,
        aggregate_id: &str,
    ) -> Result<(A, StreamHead), AggregateError<A::Error>> {
        let events = self.store().load::<A>(aggregate_id, 0).await.map_err(store_error)?;
        let mut aggregate = A::default();
        let head = replay(&mut aggregate, StreamHead::default(), events)?;
        Ok((aggregate, head))
    }

    /// Drops the cached state of an aggregate (after another path wrote to it).
    pub fn invalidate(&self, aggregate_id: &str) {
        if let Some(slot) = self.inner.slots.get(aggregate_id) {
            if let Ok(mut state) = slot.state.try_lock() {
                *state = None;
            } else {
                // A batch is running on it; it validates by appending, so dropping the
                // slot is enough for later commands to start from the store.
                self.inner.slots.invalidate(aggregate_id);
            }
        }
    }

    async fn run_batch(
        &self,
        aggregate_id: &str,
        state: &mut Option<Loaded<A>>,
        mut jobs: Vec<Box<dyn Job<A>>>,
    ) {
        let mut attempt = 0;
        let written = loop {
            attempt += 1;
            let fresh = state.is_none();
            if fresh {
                match self.load_head(aggregate_id).await {
                    Ok((aggregate, head)) => *state = Some(Loaded { aggregate, head }),
                    Err(error) => break Err(error),
                }
            }
            let Some(loaded) = state.as_mut() else {
                break Err(unexpected("aggregate not loaded"));
            };
            let events = match self.run_commands(aggregate_id, loaded, &mut jobs).await {
                Ok(events) => events,
                Err(error) => {
                    *state = None;
                    break Err(error);
                }
            };
            if events.is_empty() {
                if fresh {
                    break Ok(None);
                }
                // Nothing to append: confirm the answers against the store.
                match self.catch_up(aggregate_id, loaded).await {
                    Ok(false) => break Ok(None),
                    Ok(true) if attempt < MAX_ATTEMPTS => continue,
                    Ok(true) => break Err(AggregateError::AggregateConflict),
                    Err(error) => {
                        *state = None;
                        break Err(error);
                    }
                }
            }
            match self.store().append(&events).await {
                Ok(cursor) => {
                    loaded.head.sequence += events.len();
                    loaded.head.recorded_at =
                        loaded.head.recorded_at.max(events.last().map(|e| e.recorded_at));
                    break Ok(Some(cursor));
                }
                Err(AppendError::Conflict) => {
                    *state = None;
                    self.store().metrics().command_conflict(A::TYPE);
                    if attempt >= MAX_ATTEMPTS {
                        break Err(AggregateError::AggregateConflict);
                    }
                    let jitter = rand::random_range(0..=u64::from(attempt) * 2);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(AppendError::Store(error)) => {
                    *state = None;
                    break Err(store_error(error));
                }
            }
        };
        for job in jobs {
            job.finish(written.as_ref().map(|c| *c).map_err(copy_error));
        }
    }

    /// Runs each queued command on the state in turn; returns the events to append.
    async fn run_commands(
        &self,
        aggregate_id: &str,
        loaded: &mut Loaded<A>,
        jobs: &mut [Box<dyn Job<A>>],
    ) -> Result<Vec<NewEvent>, AggregateError<A::Error>> {
        let mut staged: Vec<NewEvent> = Vec::new();
        let mut sequence = loaded.head.sequence;
        for job in jobs.iter_mut() {
            let last = staged.last().map(|e| e.recorded_at).max(loaded.head.recorded_at);
            let ctx = job.context().decided_after(last);
            let sink = EventSink::default();
            let result = loaded.aggregate.handle(job.command(ctx.now), self.services(), &sink).await;
            let events = sink.collect().await;
            match result {
                Ok(()) => {
                    for event in &events {
                        sequence += 1;
                        staged.push(to_new_event::<A>(aggregate_id, sequence, event, &ctx)?);
                    }
                    job.record(Ok(events), &loaded.aggregate);
                }
                Err(error) if events.is_empty() => job.record(Err(error), &loaded.aggregate),
                Err(_) => {
                    // `handle` applied events and then failed: the state is no longer the
                    // store's. Aggregates must decide before they write.
                    tracing::error!(aggregate = A::TYPE, "command wrote events and then failed");
                    return Err(unexpected("aggregate rule violated"));
                }
            }
        }
        Ok(staged)
    }

    /// Applies events appended elsewhere since the cached state; true if there were any.
    async fn catch_up(
        &self,
        aggregate_id: &str,
        loaded: &mut Loaded<A>,
    ) -> Result<bool, AggregateError<A::Error>> {
        let newer = self.store().load::<A>(aggregate_id, loaded.head.sequence).await.map_err(store_error)?;
        if newer.is_empty() {
            return Ok(false);
        }
        loaded.head = replay(&mut loaded.aggregate, loaded.head, newer)?;
        Ok(true)
    }
}
