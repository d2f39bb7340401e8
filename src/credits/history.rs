//! An account's past, for operators: the balance and totals at a moment, computed from the
//! log, and a user's transactions. [`balance_at`] folds the account's stream with the
//! `balances` projection's own fold ([`BalanceState::apply`]), a chunk of events at a
//! time, so an account with a long history costs reads, not memory. It needs no HTTP: the
//! benchmark calls it directly.

use anyhow::Context;
use cqrs_es::Aggregate;

use super::{Balance, CreditFailure, CreditService};
use crate::commands::credit_account::CreditAccount;
pub use crate::events::Moment;
use crate::events::credits::CreditEvent;
use crate::events::{EventStore, LogCursor, RecordedEvent};
use crate::projections::balances::BalanceState;
use crate::projections::credit_transactions;
use crate::projections::ledger::Transaction;
use crate::projections::users;

/// Events read per round trip while folding a stream.
pub const CHUNK: usize = 1_000;

/// Whether an event of a stream is part of the account's state at `moment`.
fn admits(moment: &Moment, event: &RecordedEvent) -> bool {
    match moment {
        Moment::Time(at) => event.recorded_at <= *at,
        Moment::Cursor(cursor) => event.cursor <= *cursor,
    }
}

/// An account at a moment: its pools and totals, and the cursor of the last event that
/// made them (`None` before the account's first event).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PointBalance {
    pub state: BalanceState,
    pub cursor: Option<LogCursor>,
}

/// The account of `user_id` as it was at `moment`, from its stream in the log: the
/// longest prefix of the stream at or before the moment, folded. Within a stream, sequence
/// order is time order and log order (`EventStore::read_stream`), so the prefix is every
/// event at or before the moment and the result is a state the account really was in. An
/// account with no event yet (or none at all) is all zeros. Reads [`CHUNK`] events at a
/// time and decodes each through its upcasters.
pub async fn balance_at(store: &EventStore, user_id: &str, moment: Moment) -> anyhow::Result<PointBalance> {
    let mut point = PointBalance::default();
    let mut after_sequence = 0;
    loop {
        let chunk = store.read_stream(CreditAccount::TYPE, user_id, after_sequence, CHUNK).await?;
        for event in &chunk {
            if !admits(&moment, event) {
                return Ok(point);
            }
            let decoded = event
                .decode::<CreditEvent>()
                .with_context(|| format!("credit event at {} ({})", event.cursor, event.event_type))?;
            point.state.apply(&decoded);
            point.cursor = Some(event.cursor);
            after_sequence = event.sequence;
        }
        if chunk.len() < CHUNK {
            return Ok(point);
        }
    }
}

/// A user's balance at a moment, as operators are answered: the fields of
/// `GET /credits/balance`, the moment and the cursor of the last event included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PastBalance {
    pub balance: Balance,
    pub moment: Moment,
    pub cursor: Option<LogCursor>,
}

impl CreditService {
    /// A user's balance and totals at `at`, from the log; without a moment, after every
    /// event committed so far, as of now. An unknown user is [`CreditFailure::NotFound`].
    pub async fn balance_at(&self, user_id: &str, at: Option<Moment>) -> Result<PastBalance, CreditFailure> {
        self.require_user(user_id).await?;
        let (moment, through) = match at {
            Some(moment) => (moment, moment),
            // Not "recorded up to now": another process's clock may run ahead of ours, and
            // its events, already committed, belong to the balance now.
            None => (
                Moment::Time(self.clock.now()),
                Moment::Cursor(LogCursor { txid: i64::MAX, position: i64::MAX }),
            ),
        };
        let point = balance_at(&self.store, user_id, through).await?;
        let balance = Balance {
            paid: point.state.balances.paid,
            free: point.state.balances.free,
            total_earned: point.state.total_earned,
            total_spent: point.state.total_spent,
            daily_free_credits: self.settings.daily_free,
        };
        Ok(PastBalance { balance, moment, cursor: point.cursor })
    }

    /// Another user's transactions for an operator: the page `GET /credits/transactions`
    /// would show that user; an unknown user is [`CreditFailure::NotFound`].
    pub async fn transactions_of(
        &self,
        user_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Transaction>, CreditFailure> {
        self.require_user(user_id).await?;
        Ok(credit_transactions::for_user(self.store.db(), user_id, limit, offset).await?)
    }

    async fn require_user(&self, user_id: &str) -> Result<(), CreditFailure> {
        match users::by_id(self.store.db(), user_id).await? {
            Some(_) => Ok(()),
            None => Err(CreditFailure::NotFound),
        }
    }
}
