//! Credit use cases: balance (with the day's grant), idempotent spends, history, and the
//! admin grant, adjust and refund. Decisions are the credit account aggregate's; this
//! layer computes what the aggregate needs from outside (the day, ids, key fingerprints)
//! and turns its events into answers. Commands are built from the time they are decided
//! at (see `CommandBus::execute_at`), so an account's events never go back in time.

pub mod input;
pub mod ledger;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;

use crate::auth::{ClientInfo, uuid_at};
use crate::clock::SharedClock;
use crate::commands::CommandBus;
use crate::commands::credit_account::{CreditAccount, CreditCommand, CreditError, DailyGrant};
use crate::events::credits::{CreditEvent, KeyUse, Pool};
use crate::events::{EventStore, LogCursor};
use crate::projections::Projector;
use crate::projections::credit_transactions;
use input::SpendRequest;
use ledger::Transaction;

/// Why a credit use case failed.
#[derive(Debug, thiserror::Error)]
pub enum CreditFailure {
    #[error("validation failed")]
    Validation(Vec<String>),
    #[error("insufficient credits: {available} available, {requested} requested")]
    Insufficient { available: i64, requested: i64 },
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    #[error("not found")]
    NotFound,
    #[error("at most {refundable} credits can still be refunded")]
    RefundTooLarge { refundable: i64 },
    #[error("a concurrent change could not be resolved")]
    Conflict,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn failure(error: AggregateError<CreditError>, requested: i64) -> CreditFailure {
    match error {
        AggregateError::UserError(CreditError::InsufficientCredits { available }) => {
            CreditFailure::Insufficient { available, requested }
        }
        AggregateError::UserError(CreditError::KeyReused) => CreditFailure::KeyReused,
        AggregateError::UserError(CreditError::NotOpen | CreditError::UnknownTransaction) => {
            CreditFailure::NotFound
        }
        AggregateError::UserError(CreditError::RefundTooLarge { refundable }) => {
            CreditFailure::RefundTooLarge { refundable }
        }
        AggregateError::UserError(CreditError::AlreadyOpen) => {
            CreditFailure::Internal(anyhow::anyhow!("already open"))
        }
        AggregateError::AggregateConflict => CreditFailure::Conflict,
        other => CreditFailure::Internal(anyhow::anyhow!("{other}")),
    }
}

/// `GET /credits/balance`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub paid: i64,
    pub free: i64,
    pub total_earned: i64,
    pub total_spent: i64,
    pub daily_free_credits: i64,
}

/// What a spend answered: its transaction and the balance right after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Spent {
    pub transaction: Transaction,
    pub paid_after: i64,
    pub free_after: i64,
    pub total_spent_after: i64,
    /// True when this is a retry answered from the key's first request.
    pub replayed: bool,
}

/// Settings of the credit rules.
#[derive(Clone, Copy, Debug)]
pub struct CreditSettings {
    pub daily_free: i64,
    pub free_cap: Option<i64>,
    pub timezone: chrono_tz::Tz,
    pub read_your_writes: Duration,
}

/// An admin operation on an account.
#[derive(Clone, Debug)]
pub enum AdminOperation {
    Grant { user_id: String, pool: Pool, amount: i64 },
    Adjust { user_id: String, pool: Pool, amount: i64 },
    Refund { transaction_id: String, amount: Option<i64> },
}

/// The day's free credits for a command decided at `at`.
fn daily_grant(settings: &CreditSettings, at: DateTime<Utc>, transaction_id: &str) -> DailyGrant {
    DailyGrant {
        day: at.with_timezone(&settings.timezone).date_naive(),
        amount: settings.daily_free,
        cap: settings.free_cap,
        transaction_id: transaction_id.to_owned(),
    }
}

/// The credit service of one process.
pub struct CreditService {
    store: EventStore,
    projector: Arc<Projector>,
    clock: SharedClock,
    accounts: CommandBus<CreditAccount>,
    settings: CreditSettings,
}

impl CreditService {
    pub fn new(
        store: EventStore,
        projector: Arc<Projector>,
        clock: SharedClock,
        accounts: CommandBus<CreditAccount>,
        settings: CreditSettings,
    ) -> Self {
        Self { store, projector, clock, accounts, settings }
    }

    async fn settle(&self, cursor: Option<LogCursor>) {
        if let Some(cursor) = cursor {
            self.projector.wait_for(cursor, self.settings.read_your_writes).await;
        }
    }

    /// The balance, after granting the day's free credits if due.
    pub async fn balance(&self, user_id: &str, client: &ClientInfo) -> Result<Balance, CreditFailure> {
        let now = self.clock.now();
        let daily_free = self.settings.daily_free;
        let view = move |account: &CreditAccount| Balance {
            paid: account.balances.paid,
            free: account.balances.free,
            total_earned: account.total_earned,
            total_spent: account.total_spent,
            daily_free_credits: daily_free,
        };
        let (settings, daily_id) = (self.settings, uuid_at(now).to_string());
        let command = move |at| CreditCommand::Touch { daily: daily_grant(&settings, at, &daily_id), at };
        let committed = self
            .accounts
            .execute_at(user_id, command, &client.context(user_id, now), view)
            .await
            .map_err(|e| failure(e, 0))?;
        self.settle(committed.cursor).await;
        Ok(committed.reply)
    }

    /// Spends credits; a retried key answers its first request's result again.
    pub async fn spend(
        &self,
        user_id: &str,
        request: SpendRequest,
        client: &ClientInfo,
    ) -> Result<Spent, CreditFailure> {
        let now = self.clock.now();
        let key = request.idempotency_key.as_deref().map(ledger::user_key);
        let key_use = key.clone().map(|key| KeyUse { key, fingerprint: request.fingerprint() });
        let amount = request.amount;
        let (settings, transaction_id, daily_id) =
            (self.settings, uuid_at(now).to_string(), uuid_at(now).to_string());
        let command = move |at| CreditCommand::Spend {
            transaction_id: transaction_id.clone(),
            amount,
            app_id: request.app_id.clone(),
            description: request.description.clone(),
            metadata: request.metadata.clone(),
            key: key_use.clone(),
            daily: daily_grant(&settings, at, &daily_id),
            at,
        };
        let view = move |account: &CreditAccount| key.as_deref().and_then(|k| account.keyed(k)).cloned();
        let committed = self
            .accounts
            .execute_at(user_id, command, &client.context(user_id, now), view)
            .await
            .map_err(|e| failure(e, amount))?;
        let replayed = committed.events.is_empty();
        let event = match committed.events.iter().find(|e| matches!(e, CreditEvent::CreditsSpent { .. })) {
            Some(event) => event.clone(),
            None => committed.reply.ok_or_else(|| anyhow::anyhow!("a replay without its first answer"))?,
        };
        let CreditEvent::CreditsSpent { after, total_spent_after, .. } = &event else {
            return Err(CreditFailure::KeyReused);
        };
        let (paid_after, free_after, total_spent_after) = (after.paid, after.free, *total_spent_after);
        let transaction = ledger::transaction_of(user_id, &event)
            .ok_or_else(|| anyhow::anyhow!("a spend without a ledger line"))?;
        self.settle(committed.cursor).await;
        Ok(Spent { transaction, paid_after, free_after, total_spent_after, replayed })
    }

    /// The user's transactions, newest first.
    pub async fn transactions(
        &self,
        user_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Transaction>, CreditFailure> {
        Ok(credit_transactions::for_user(self.store.db(), user_id, limit, offset).await?)
    }

    /// An admin or service operation, idempotent under `key` for that actor.
    pub async fn admin(
        &self,
        actor: &str,
        operation: AdminOperation,
        reason: String,
        key: Option<(String, String)>,
        client: &ClientInfo,
    ) -> Result<(Transaction, bool), CreditFailure> {
        let now = self.clock.now();
        let key_use =
            key.map(|(key, fingerprint)| KeyUse { key: ledger::admin_key(actor, &key), fingerprint });
        let lookup = key_use.as_ref().map(|k| k.key.clone());
        let transaction_id = uuid_at(now).to_string();
        let (user_id, command, requested) = match operation {
            AdminOperation::Grant { user_id, pool, amount } => {
                let command = CreditCommand::Grant {
                    transaction_id,
                    pool,
                    amount,
                    actor: actor.to_owned(),
                    reason,
                    key: key_use,
                    at: now,
                };
                (user_id, command, amount)
            }
            AdminOperation::Adjust { user_id, pool, amount } => {
                let command = CreditCommand::Adjust {
                    transaction_id,
                    pool,
                    amount,
                    actor: actor.to_owned(),
                    reason,
                    key: key_use,
                    at: now,
                };
                (user_id, command, amount.abs())
            }
            AdminOperation::Refund { transaction_id: spend_id, amount } => {
                // Route to the account that holds the spend; the account decides.
                let head = self.store.committed_head().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                self.projector.wait_for(head, self.settings.read_your_writes).await;
                let owner = credit_transactions::owner(self.store.db(), &spend_id)
                    .await?
                    .ok_or(CreditFailure::NotFound)?;
                let command = CreditCommand::Refund {
                    transaction_id,
                    spend_id,
                    amount,
                    actor: actor.to_owned(),
                    reason,
                    key: key_use,
                    at: now,
                };
                (owner, command, amount.unwrap_or(0))
            }
        };
        let view = move |account: &CreditAccount| lookup.as_deref().and_then(|k| account.keyed(k)).cloned();
        let committed = self
            .accounts
            .execute_with(&user_id, command, &client.context(actor, now), view)
            .await
            .map_err(|e| failure(e, requested))?;
        let replayed = committed.events.is_empty();
        let event = match committed.events.last() {
            Some(event) => event.clone(),
            None => committed.reply.ok_or_else(|| anyhow::anyhow!("a replay without its first answer"))?,
        };
        let transaction =
            ledger::transaction_of(&user_id, &event).ok_or_else(|| anyhow::anyhow!("no ledger line"))?;
        self.settle(committed.cursor).await;
        Ok((transaction, replayed))
    }
}
