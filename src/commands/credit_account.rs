//! The credit account aggregate (one per user, id = user id): grants, spends, refunds
//! and adjustments decided by the account's own history.
//!
//! Rules: free credits are spent before paid ones; a spend never takes a pool below zero;
//! a paid pool below zero (a refunded purchase whose credits were spent) is a debt: spends
//! use free credits only until a purchase fills it;
//! the day's free credits are granted by the first balance read or spend of the day (in
//! the daily-grant time zone), before the spend is decided; idempotency keys are kept
//! with what their operation answered, so a retry answers the same and moves nothing and
//! a different request under a used key is refused.
//!
//! This file holds the account's state, its commands and how events evolve the state;
//! `decisions` holds one method per command, to which `handle` dispatches.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod decisions;

use decisions::Movement;

use crate::domain::Credits;
use crate::events::credits::{Balances, CreditEvent, GrantSource, KeyUse, Pool};

/// How long an idempotency key is remembered.
pub const KEY_RETENTION: Duration = Duration::days(30);
/// How long a spend may be refunded.
pub const REFUND_WINDOW: Duration = Duration::days(90);

/// The day's free credits, as the caller computed them from its clock and settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyGrant {
    pub day: NaiveDate,
    pub amount: Credits,
    /// The free pool is not raised above this by daily grants.
    pub cap: Option<Credits>,
    /// The id the grant's transaction gets if it happens.
    pub transaction_id: String,
}

/// A spend that may still be refunded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRecord {
    pub amount: Credits,
    pub from_free: Credits,
    pub from_paid: Credits,
    pub refunded_free: Credits,
    pub refunded_paid: Credits,
    /// When the spend happened: it may be refunded until [`REFUND_WINDOW`] after.
    pub spent_at: DateTime<Utc>,
}

impl SpendRecord {
    fn refundable(&self) -> Credits {
        self.amount - self.refunded_free - self.refunded_paid
    }
}

/// A credit account as the write model sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreditAccount {
    pub user_id: Option<String>,
    pub balances: Balances,
    pub total_earned: Credits,
    pub total_spent: Credits,
    pub last_grant_day: Option<NaiveDate>,
    /// The event each idempotency key produced.
    keys: HashMap<String, CreditEvent>,
    key_order: VecDeque<(DateTime<Utc>, String)>,
    spends: HashMap<String, SpendRecord>,
    spend_order: VecDeque<(DateTime<Utc>, String)>,
}

/// What can be asked of a credit account.
#[derive(Clone, Debug)]
pub enum CreditCommand {
    /// Opens the account with the signup bonus (0 allowed) as a free grant.
    Open {
        user_id: String,
        signup_bonus: Credits,
        bonus_transaction_id: String,
        day: NaiveDate,
        at: DateTime<Utc>,
    },
    /// A balance read: grants the day's free credits if due.
    Touch { daily: DailyGrant, at: DateTime<Utc> },
    /// A user's spend, free credits first; grants the day's free credits first if due.
    Spend {
        transaction_id: String,
        amount: Credits,
        app_id: String,
        description: String,
        metadata: Option<Value>,
        key: Option<KeyUse>,
        daily: DailyGrant,
        at: DateTime<Utc>,
    },
    /// An operator's grant to one pool.
    Grant {
        transaction_id: String,
        pool: Pool,
        amount: Credits,
        actor: String,
        reason: String,
        key: Option<KeyUse>,
        at: DateTime<Utc>,
    },
    /// An operator's signed correction of one pool.
    Adjust {
        transaction_id: String,
        pool: Pool,
        amount: Credits,
        actor: String,
        reason: String,
        key: Option<KeyUse>,
        at: DateTime<Utc>,
    },
    /// Paid credits bought with a completed purchase (the purchase aggregate decided it,
    /// in the same unit of work).
    Purchase {
        transaction_id: String,
        purchase_id: String,
        package_id: String,
        credits: Credits,
        price_cents: i64,
        currency: String,
        payment_intent_id: String,
        /// A refund seen before the success, taken back right after: its transaction
        /// id and credits.
        refund: Option<(String, Credits)>,
        at: DateTime<Utc>,
    },
    /// Paid credits of a purchase taken back (positive) or given again (negative); the
    /// paid pool may go below zero.
    ReversePurchase {
        transaction_id: String,
        purchase_id: String,
        amount: Credits,
        cause: String,
        at: DateTime<Utc>,
    },
    /// Gives back (part of) a spend; `amount: None` refunds all that is left of it.
    Refund {
        transaction_id: String,
        spend_id: String,
        amount: Option<Credits>,
        actor: String,
        reason: String,
        key: Option<KeyUse>,
        at: DateTime<Utc>,
    },
}

/// Refusals. A refused request is not recorded against its key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CreditError {
    #[error("the credit account already exists")]
    AlreadyOpen,
    #[error("no credit account")]
    NotOpen,
    #[error("insufficient credits: {available} available")]
    InsufficientCredits { available: Credits },
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    #[error("no refundable spend with that id")]
    UnknownTransaction,
    #[error("at most {refundable} credits of that spend can still be refunded")]
    RefundTooLarge { refundable: Credits },
}

impl CreditAccount {
    /// The event a key produced, if it is remembered.
    pub fn keyed(&self, key: &str) -> Option<&CreditEvent> {
        self.keys.get(key)
    }

    /// Records the key `event` was made under, and forgets keys and spends past their
    /// retention, counted in the account's own event time (`at`).
    fn remember(&mut self, event: &CreditEvent, at: DateTime<Utc>) {
        if let Some(key) = key_of(event) {
            self.keys.insert(key.key.clone(), event.clone());
            self.key_order.push_back((at, key.key.clone()));
        }
        while self.key_order.front().is_some_and(|(t, _)| *t < at - KEY_RETENTION) {
            if let Some((_, key)) = self.key_order.pop_front() {
                self.keys.remove(&key);
            }
        }
        while self.spend_order.front().is_some_and(|(t, _)| *t < at - REFUND_WINDOW) {
            if let Some((_, id)) = self.spend_order.pop_front() {
                self.spends.remove(&id);
            }
        }
    }
}

/// The key an event recorded, if any.
pub fn key_of(event: &CreditEvent) -> Option<&KeyUse> {
    match event {
        CreditEvent::CreditsGranted { key, .. }
        | CreditEvent::CreditsSpent { key, .. }
        | CreditEvent::CreditsRefunded { key, .. }
        | CreditEvent::CreditsAdjusted { key, .. } => key.as_ref(),
        CreditEvent::CreditAccountOpened { .. }
        | CreditEvent::CreditsPurchased { .. }
        | CreditEvent::PurchaseCreditsReversed { .. } => None,
    }
}

impl Aggregate for CreditAccount {
    const TYPE: &'static str = "credit_account";
    type Command = CreditCommand;
    type Event = CreditEvent;
    type Error = CreditError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CreditCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CreditError> {
        use CreditCommand as C;
        let events = match command {
            C::Open { user_id, signup_bonus, bonus_transaction_id, day, at } => {
                self.open(user_id, signup_bonus, bonus_transaction_id, day, at)
            }
            _ if self.user_id.is_none() => Err(CreditError::NotOpen),
            C::Touch { daily, at } => self.touch(&daily, at),
            C::Spend { transaction_id, amount, app_id, description, metadata, key, daily, at } => self.spend(
                Movement { transaction_id, key, at },
                amount,
                app_id,
                description,
                metadata,
                &daily,
            ),
            C::Grant { transaction_id, pool, amount, actor, reason, key, at } => {
                self.grant(Movement { transaction_id, key, at }, pool, amount, actor, reason)
            }
            C::Adjust { transaction_id, pool, amount, actor, reason, key, at } => {
                self.adjust(Movement { transaction_id, key, at }, pool, amount, actor, reason)
            }
            C::Refund { transaction_id, spend_id, amount, actor, reason, key, at } => {
                self.refund(Movement { transaction_id, key, at }, spend_id, amount, actor, reason)
            }
            C::Purchase {
                transaction_id,
                purchase_id,
                package_id,
                credits,
                price_cents,
                currency,
                payment_intent_id,
                refund,
                at,
            } => {
                let after = self.balances.plus(Pool::Paid, credits);
                let mut events = vec![CreditEvent::CreditsPurchased {
                    transaction_id,
                    purchase_id: purchase_id.clone(),
                    package_id,
                    amount: credits,
                    price_cents,
                    currency,
                    payment_intent_id,
                    before: self.balances,
                    after,
                    purchased_at: at,
                }];
                if let Some((transaction_id, amount)) = refund {
                    events.push(CreditEvent::PurchaseCreditsReversed {
                        transaction_id,
                        purchase_id,
                        amount,
                        cause: "refund".to_owned(),
                        before: after,
                        after: after.plus(Pool::Paid, -amount),
                        reversed_at: at,
                    });
                }
                Ok(events)
            }
            C::ReversePurchase { transaction_id, purchase_id, amount, cause, at } => {
                Ok(vec![CreditEvent::PurchaseCreditsReversed {
                    transaction_id,
                    purchase_id,
                    amount,
                    cause,
                    before: self.balances,
                    after: self.balances.plus(Pool::Paid, -amount),
                    reversed_at: at,
                }])
            }
        }?;
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: CreditEvent) {
        let at = match &event {
            CreditEvent::CreditAccountOpened { user_id, granted_day, opened_at } => {
                self.user_id = Some(user_id.clone());
                self.last_grant_day = Some(*granted_day);
                *opened_at
            }
            CreditEvent::CreditsGranted { source, amount, after, granted_at, .. } => {
                if let GrantSource::Daily { day } = source {
                    self.last_grant_day = Some(*day);
                }
                self.balances = *after;
                self.total_earned += *amount;
                *granted_at
            }
            CreditEvent::CreditsSpent {
                transaction_id,
                amount,
                from_free,
                from_paid,
                after,
                spent_at,
                ..
            } => {
                self.balances = *after;
                self.total_spent += *amount;
                let record = SpendRecord {
                    amount: *amount,
                    from_free: *from_free,
                    from_paid: *from_paid,
                    refunded_free: Credits::ZERO,
                    refunded_paid: Credits::ZERO,
                    spent_at: *spent_at,
                };
                self.spends.insert(transaction_id.clone(), record);
                self.spend_order.push_back((*spent_at, transaction_id.clone()));
                *spent_at
            }
            CreditEvent::CreditsRefunded {
                refunded_transaction_id,
                amount,
                to_free,
                to_paid,
                after,
                refunded_at,
                ..
            } => {
                self.balances = *after;
                self.total_spent -= *amount;
                if let Some(spend) = self.spends.get_mut(refunded_transaction_id) {
                    spend.refunded_free += *to_free;
                    spend.refunded_paid += *to_paid;
                }
                *refunded_at
            }
            CreditEvent::CreditsAdjusted { amount, after, adjusted_at, .. } => {
                self.balances = *after;
                if *amount > Credits::ZERO {
                    self.total_earned += *amount;
                }
                *adjusted_at
            }
            CreditEvent::CreditsPurchased { amount, after, purchased_at, .. } => {
                self.balances = *after;
                self.total_earned += *amount;
                *purchased_at
            }
            CreditEvent::PurchaseCreditsReversed { after, reversed_at, .. } => {
                self.balances = *after;
                *reversed_at
            }
        };
        self.remember(&event, at);
    }
}

#[cfg(test)]
mod tests;
