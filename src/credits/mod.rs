//! Credit use cases: balance (with the day's grant), idempotent spends, history, the
//! admin grant, adjust and refund, and operators' reads ([`history`]: a balance at a past
//! moment, from the log). Decisions are the credit account aggregate's; this
//! layer computes what the aggregate needs from outside (the day, ids; requests and their
//! key fingerprints come from [`input`]) and turns its events into answers. Commands are
//! built from the time they are decided at (see `CommandBus::execute_at`), so an
//! account's events never go back in time.
//! An admin operation appends its operator's key (`commands::operator_key`) in the same
//! unit of work as the account's event, so admin keys are scoped to the operator.

pub mod analytics;
pub mod history;
pub mod input;
pub mod purchases;
pub mod stripe;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;

use crate::clock::SharedClock;
use crate::commands::ClientInfo;
use crate::commands::CommandContext;
use crate::commands::credit_account::{CreditAccount, CreditCommand, CreditError, DailyGrant};
use crate::commands::operator_key::{OperatorKey, OperatorKeyCommand, OperatorKeyError, operator_key_id};
use crate::commands::{CommandBus, Retryable, UnitOfWork, commit_error, with_retries};
use crate::domain::{Credits, uuid_at};
use crate::events::credits::{CreditEvent, KeyUse};
use crate::events::{EventStore, LogCursor};
use crate::projections::Projector;
use crate::projections::credit_transactions;
use crate::projections::ledger::{self, Transaction};
pub use input::AdminOperation;
use input::{AdminRequest, SpendRequest};

/// Why a credit use case failed.
#[derive(Debug, thiserror::Error)]
pub enum CreditFailure {
    #[error("validation failed")]
    Validation(Vec<String>),
    #[error("insufficient credits: {available} available, {requested} requested")]
    Insufficient { available: Credits, requested: Credits },
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    #[error("not found")]
    NotFound,
    #[error("at most {refundable} credits can still be refunded")]
    RefundTooLarge { refundable: Credits },
    #[error("a concurrent change could not be resolved")]
    Conflict,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn failure(error: AggregateError<CreditError>, requested: Credits) -> CreditFailure {
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

fn key_failure(error: AggregateError<OperatorKeyError>) -> CreditFailure {
    match error {
        AggregateError::UserError(OperatorKeyError::Reused) => CreditFailure::KeyReused,
        AggregateError::AggregateConflict => CreditFailure::Conflict,
        other => CreditFailure::Internal(anyhow::anyhow!("{other}")),
    }
}

impl Retryable for CreditFailure {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict)
    }
}

/// `GET /credits/balance`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub paid: Credits,
    pub free: Credits,
    pub total_earned: Credits,
    pub total_spent: Credits,
    pub daily_free_credits: Credits,
}

/// What a spend answered: its transaction and the balance right after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Spent {
    pub transaction: Transaction,
    pub paid_after: Credits,
    pub free_after: Credits,
    pub total_spent_after: Credits,
    /// True when this is a retry answered from the key's first request.
    pub replayed: bool,
}

/// Settings of the credit rules.
#[derive(Clone, Copy, Debug)]
pub struct CreditSettings {
    pub daily_free: Credits,
    pub free_cap: Option<Credits>,
    pub timezone: chrono_tz::Tz,
    pub read_your_writes: Duration,
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
    operator_keys: CommandBus<OperatorKey>,
    settings: CreditSettings,
}

impl CreditService {
    /// The credit service over the store, deciding on `accounts`.
    pub fn new(
        store: EventStore,
        projector: Arc<Projector>,
        clock: SharedClock,
        accounts: CommandBus<CreditAccount>,
        operator_keys: CommandBus<OperatorKey>,
        settings: CreditSettings,
    ) -> Self {
        Self { store, projector, clock, accounts, operator_keys, settings }
    }

    async fn settle(&self, cursor: Option<LogCursor>) {
        if let Some(cursor) = cursor {
            self.projector.wait_for(cursor, self.settings.read_your_writes).await;
        }
    }

    /// Waits (bounded) until the read models show this operation. One that wrote nothing
    /// (a replay of an idempotency key) answers for a write another request may have made
    /// a moment ago: it waits for everything committed so far, so a client that retries
    /// and then reads its history sees the original.
    async fn settle_operation(&self, cursor: Option<LogCursor>) {
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => match self.store.committed_head().await {
                Ok(head) => head,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the log's head; answering without waiting");
                    return;
                }
            },
        };
        self.projector.wait_for(cursor, self.settings.read_your_writes).await;
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
            .execute_at(user_id, command, &CommandContext::for_client(client, user_id, now), view)
            .await
            .map_err(|e| failure(e, Credits::ZERO))?;
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
            .execute_at(user_id, command, &CommandContext::for_client(client, user_id, now), view)
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
        self.settle_operation(committed.cursor).await;
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

    /// An admin or service operation, idempotent under its key for that actor: the key is
    /// recorded on the operator's key aggregate in the same append as the account's
    /// event, so it holds whichever account a later request targets, under concurrent
    /// retries, across processes and restarts. Answers the transaction and whether it is
    /// a replay.
    pub async fn admin(
        &self,
        actor: &str,
        request: impl Into<AdminRequest>,
        client: &ClientInfo,
    ) -> Result<(Transaction, bool), CreditFailure> {
        let request = request.into();
        let now = self.clock.now();
        let requested = request.operation.requested();
        let user_id = match &request.operation {
            AdminOperation::Grant { user_id, .. } | AdminOperation::Adjust { user_id, .. } => user_id.clone(),
            AdminOperation::Refund { transaction_id, .. } => self.owner_of(transaction_id).await?,
        };
        let (key_id, operator_fingerprint) =
            (operator_key_id(actor, &request.key), request.operator_fingerprint());
        let key_use =
            KeyUse { key: ledger::admin_key(actor, &request.key), fingerprint: request.fingerprint() };
        let lookup = key_use.key.clone();
        let transaction_id = uuid_at(now).to_string();
        let command = |at| {
            let (operation, reason) = (&request.operation, &request.reason);
            admin_command(operation, actor, reason, &transaction_id, Some(key_use.clone()), at)
        };
        let ctx = CommandContext::for_client(client, actor, now);
        let (events, earlier, cursor) = with_retries(self.store.metrics(), "admin-credit", || async {
            let mut unit = UnitOfWork::new(self.store.clone(), ctx.clone());
            let use_key = |at| OperatorKeyCommand::Use {
                operator: actor.to_owned(),
                key: request.key.clone(),
                fingerprint: operator_fingerprint.clone(),
                user_id: user_id.clone(),
                at,
            };
            let (events, ()) =
                unit.execute_at(&self.operator_keys, &key_id, use_key, |_| ()).await.map_err(key_failure)?;
            let key_replayed = events.is_empty();
            let view = |account: &CreditAccount| account.keyed(&lookup).cloned();
            let (events, earlier) = unit
                .execute_at(&self.accounts, &user_id, command, view)
                .await
                .map_err(|e| failure(e, requested))?;
            if key_replayed && !events.is_empty() {
                // The operator's key holds this request but the account no longer
                // remembers it (its retention ran out in the account's own time): refuse
                // rather than move credits a second time.
                return Err(CreditFailure::KeyReused);
            }
            let cursor = unit.commit().await.map_err(|e| failure(commit_error(e), requested))?;
            Ok((events, earlier, cursor))
        })
        .await?;
        let replayed = events.is_empty();
        let event = match events.last() {
            Some(event) => event.clone(),
            None => earlier.ok_or_else(|| anyhow::anyhow!("a replay without its first answer"))?,
        };
        let transaction =
            ledger::transaction_of(&user_id, &event).ok_or_else(|| anyhow::anyhow!("no ledger line"))?;
        self.settle_operation(cursor).await;
        Ok((transaction, replayed))
    }

    /// The account that holds a spend, from the ledger once it has caught up with
    /// everything committed; the account itself then decides on the refund.
    async fn owner_of(&self, spend_id: &str) -> Result<String, CreditFailure> {
        let head = self.store.committed_head().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        self.projector.wait_for(head, self.settings.read_your_writes).await;
        credit_transactions::owner(self.store.db(), spend_id).await?.ok_or(CreditFailure::NotFound)
    }
}

/// The account command of an admin operation, decided at `at`.
fn admin_command(
    operation: &AdminOperation,
    actor: &str,
    reason: &str,
    transaction_id: &str,
    key: Option<KeyUse>,
    at: DateTime<Utc>,
) -> CreditCommand {
    let (transaction_id, actor, reason) = (transaction_id.to_owned(), actor.to_owned(), reason.to_owned());
    match operation {
        AdminOperation::Grant { pool, amount, .. } => {
            CreditCommand::Grant { transaction_id, pool: *pool, amount: *amount, actor, reason, key, at }
        }
        AdminOperation::Adjust { pool, amount, .. } => {
            CreditCommand::Adjust { transaction_id, pool: *pool, amount: *amount, actor, reason, key, at }
        }
        AdminOperation::Refund { transaction_id: spend_id, amount } => CreditCommand::Refund {
            transaction_id,
            spend_id: spend_id.clone(),
            amount: *amount,
            actor,
            reason,
            key,
            at,
        },
    }
}
