//! The write side: aggregates, their commands, and the command layer that runs them.
//!
//! * [`CommandBus`] runs commands on one aggregate type: commands on one aggregate are
//!   queued and run one batch at a time inside a process (group commit: a batch of
//!   queued commands is appended in one round trip), recent aggregates stay in memory
//!   and are validated by the optimistic append, conflicts with other processes are
//!   retried (bounded).
//! * [`UnitOfWork`] runs commands on several aggregates and appends all their events in
//!   one atomic write (registration: user, e-mail claim, session, credit account).
//!
//! User errors reach the caller as `AggregateError::UserError(E)` with the aggregate's own
//! error enum, which the HTTP layer maps to a status and a machine code.

mod bus;
mod client;
pub mod credit_account;
pub mod email_claim;
pub mod keyring;
pub mod login_attempts;
pub mod operator_key;
pub mod payment_records;
pub mod purchase;
pub mod seal_log;
pub mod security_notice;
pub mod session;
mod unit_of_work;
pub mod user;

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, AggregateError, DomainEvent};

pub use bus::{CommandBus, Committed};
pub use client::ClientInfo;
pub use unit_of_work::{Retryable, UnitOfWork, commit_error, with_retries};

use crate::events::{EventMetadata, EventStore, NewEvent, SYSTEM_ACTOR};

/// Every command bus of a process, one per aggregate type, built once (in `app.rs`) and
/// handed to each use-case service by the buses it needs.
#[derive(Clone)]
pub struct Aggregates {
    pub users: CommandBus<user::User>,
    pub claims: CommandBus<email_claim::EmailClaim>,
    pub sessions: CommandBus<session::Session>,
    pub attempts: CommandBus<login_attempts::LoginAttempts>,
    pub credits: CommandBus<credit_account::CreditAccount>,
    pub operator_keys: CommandBus<operator_key::OperatorKey>,
    pub notices: CommandBus<security_notice::SecurityNotice>,
    pub keyring: CommandBus<keyring::Keyring>,
    pub purchases: CommandBus<purchase::Purchase>,
    pub catalogue: CommandBus<payment_records::Catalogue>,
    pub stripe_receipts: CommandBus<payment_records::StripeReceipt>,
    pub intent_links: CommandBus<payment_records::IntentLink>,
}

impl Aggregates {
    /// A bus per aggregate type over one store.
    pub fn new(store: &EventStore) -> Self {
        Self {
            users: CommandBus::new(store.clone(), ()),
            claims: CommandBus::new(store.clone(), ()),
            sessions: CommandBus::new(store.clone(), ()),
            attempts: CommandBus::new(store.clone(), ()),
            credits: CommandBus::new(store.clone(), ()),
            operator_keys: CommandBus::new(store.clone(), ()),
            notices: CommandBus::new(store.clone(), ()),
            keyring: CommandBus::new(store.clone(), ()),
            purchases: CommandBus::new(store.clone(), ()),
            catalogue: CommandBus::new(store.clone(), ()),
            stripe_receipts: CommandBus::new(store.clone(), ()),
            intent_links: CommandBus::new(store.clone(), ()),
        }
    }
}

/// Everything a command needs from outside the aggregate: the time (from the clock
/// service) and who asked, recorded in every event's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandContext {
    pub now: DateTime<Utc>,
    pub request_id: Option<String>,
    pub actor: String,
    pub client_ip: Option<String>,
}

impl CommandContext {
    /// A command issued by the service itself (jobs, the CLI).
    pub fn system(now: DateTime<Utc>) -> Self {
        Self { now, request_id: None, actor: SYSTEM_ACTOR.to_owned(), client_ip: None }
    }

    /// The same context acting for a user.
    pub fn acting_for(mut self, user_id: impl Into<String>) -> Self {
        self.actor = user_id.into();
        self
    }

    /// The same context at the time its command is decided: `now`, or the time of the
    /// stream's last event if that is later. Requests read the clock before they queue
    /// and other processes' clocks differ, so without this an aggregate's recorded times
    /// could go backwards along its own sequence.
    pub fn decided_after(&self, last: Option<DateTime<Utc>>) -> Self {
        let mut ctx = self.clone();
        if let Some(last) = last {
            ctx.now = ctx.now.max(last);
        }
        ctx
    }

    /// The metadata stamped on every event of this command.
    pub fn metadata(&self) -> EventMetadata {
        EventMetadata {
            recorded_at: self.now,
            request_id: self.request_id.clone(),
            actor: self.actor.clone(),
            client_ip: self.client_ip.clone(),
        }
    }
}

/// Serialises one domain event for the store.
pub(crate) fn to_new_event<A: Aggregate>(
    aggregate_id: &str,
    sequence: usize,
    event: &A::Event,
    ctx: &CommandContext,
) -> Result<NewEvent, AggregateError<A::Error>> {
    Ok(NewEvent {
        aggregate_type: A::TYPE.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        sequence: i64::try_from(sequence).map_err(|e| AggregateError::UnexpectedError(Box::new(e)))?,
        event_type: event.event_type(),
        event_version: event.event_version(),
        payload: serde_json::to_value(event).map_err(|e| AggregateError::UnexpectedError(Box::new(e)))?,
        metadata: ctx.metadata().to_json(),
        recorded_at: ctx.now,
    })
}

/// Where replaying a stream left off: its last sequence and the latest time recorded
/// on its events (`None` for an empty stream, or events without the time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StreamHead {
    pub sequence: usize,
    pub recorded_at: Option<DateTime<Utc>>,
}

/// Rebuilds an aggregate from stored events, continuing from `head`.
pub(crate) fn replay<A: Aggregate>(
    aggregate: &mut A,
    head: StreamHead,
    events: Vec<cqrs_es::persist::SerializedEvent>,
) -> Result<StreamHead, AggregateError<A::Error>> {
    let mut head = head;
    for stored in events {
        let recorded_at = stored.metadata.get("recorded_at").and_then(|t| t.as_str()?.parse().ok());
        head.recorded_at = head.recorded_at.max(recorded_at);
        // Read in the current shape (an older version is upcast; a newer one is refused).
        let payload =
            crate::events::upcast::upcast_owned(&stored.event_type, &stored.event_version, stored.payload)
                .map_err(|e| AggregateError::DeserializationError(Box::new(e)))?;
        let event: A::Event =
            serde_json::from_value(payload).map_err(|e| AggregateError::DeserializationError(Box::new(e)))?;
        aggregate.apply(event);
        head.sequence = stored.sequence;
    }
    Ok(head)
}

/// Turns a store failure into the framework's error type.
pub(crate) fn store_error<E: std::error::Error>(error: crate::events::StoreError) -> AggregateError<E> {
    match error {
        crate::events::StoreError::Corrupt(text) => AggregateError::DeserializationError(text.into()),
        other => AggregateError::DatabaseConnectionError(Box::new(other)),
    }
}
