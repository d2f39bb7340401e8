//! The read side: a projector that follows the global log and feeds named projections
//! (plain SQL tables that analytics jobs may read).
//!
//! Each projection's rows and its checkpoint are written in the same transaction, so a
//! crash loses nothing and applies nothing twice. With several server processes, a
//! projection is applied by one of them at a time (a transaction-level advisory lock on
//! PostgreSQL; SQLite's single writer), and the checkpoint update is a compare-and-set
//! as a second guard. [`Projector::wait_for`] gives requests read-your-writes.

pub mod balances;
pub mod chart;
pub mod credit_transactions;
mod group;
pub mod ledger;
pub mod ledger_postings;
mod projector;
pub mod purchases;
pub mod security_events;
pub mod sessions;
pub mod streams;
pub mod usage_stats;
pub mod users;

use async_trait::async_trait;

pub use group::GroupError;
pub use projector::{BatchOutcome, ProjectionLag, Projector, ProjectorSettings, lock_key};
pub use streams::Streams;

use crate::db::DbTx;
use crate::events::RecordedEvent;

/// A read model built from the log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The projection's name; its checkpoint row is keyed by it.
    fn name(&self) -> &'static str;

    /// The tables this projection owns, emptied when it is rebuilt.
    fn tables(&self) -> &'static [&'static str];

    /// Applies a batch of events in order inside the batch transaction. Events the
    /// projection does not care about are ignored. An error rolls the whole batch back
    /// (rows and checkpoint). Projections that write a row per event do it with one
    /// multi-row statement (a round trip per event is the projector's bottleneck on
    /// PostgreSQL); others apply the events one by one (see [`on_event`]).
    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()>;

    /// Applies one event: a batch of one.
    async fn apply(&self, tx: &mut DbTx, event: &RecordedEvent) -> anyhow::Result<()> {
        self.apply_batch(tx, std::slice::from_ref(event)).await
    }
}

/// Names the event an error came from (for projections that apply a batch event by
/// event).
pub fn on_event(error: anyhow::Error, event: &RecordedEvent) -> anyhow::Error {
    error.context(format!("on event {} ({})", event.cursor, event.event_type))
}

/// Every projection the service runs, in the order they are fed.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(Streams),
        std::sync::Arc::new(users::Users),
        std::sync::Arc::new(sessions::Sessions),
        std::sync::Arc::new(security_events::SecurityEvents),
        std::sync::Arc::new(balances::BalancesProjection),
        std::sync::Arc::new(credit_transactions::CreditTransactions),
        std::sync::Arc::new(usage_stats::UsageStats),
        std::sync::Arc::new(ledger_postings::LedgerPostings),
        std::sync::Arc::new(purchases::Purchases),
    ]
}
