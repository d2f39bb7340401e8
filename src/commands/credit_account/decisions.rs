//! The decisions of the credit account: one method per command, each saying what the
//! command emits on the account's current state, or why it is refused. `handle`
//! dispatches to them once it has checked that the account is open.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use super::{CreditAccount, CreditError, DailyGrant, REFUND_WINDOW, key_of};
use crate::domain::Credits;
use crate::events::credits::{Balances, CreditEvent, GrantSource, KeyUse, Pool};

/// What every keyed credit movement carries besides its own fields: the transaction it
/// creates, the idempotency key it came under, and the time it is decided at.
pub(super) struct Movement {
    pub(super) transaction_id: String,
    pub(super) key: Option<KeyUse>,
    pub(super) at: DateTime<Utc>,
}

impl CreditAccount {
    /// The events of the day's grant, if one is due at `daily.day`.
    fn daily_grant(&self, daily: &DailyGrant, at: DateTime<Utc>) -> Option<CreditEvent> {
        if self.last_grant_day.is_some_and(|day| day >= daily.day) {
            return None;
        }
        let room = daily
            .cap
            .map_or(daily.amount, |cap| (cap - self.balances.free).clamp(Credits::ZERO, daily.amount));
        if room <= Credits::ZERO {
            // Nothing to grant (cap reached or no daily credits): no zero-amount rows.
            return None;
        }
        Some(CreditEvent::CreditsGranted {
            transaction_id: daily.transaction_id.clone(),
            source: GrantSource::Daily { day: daily.day },
            pool: Pool::Free,
            amount: room,
            before: self.balances,
            after: self.balances.plus(Pool::Free, room),
            description: "Daily free credits".to_owned(),
            key: None,
            granted_at: at,
        })
    }

    /// Refuses a key already used for another request; true when it is a retry.
    fn replay(&self, key: Option<&KeyUse>) -> Result<bool, CreditError> {
        let Some(key) = key else { return Ok(false) };
        let Some(earlier) = self.keys.get(&key.key) else { return Ok(false) };
        let same = key_of(earlier).is_some_and(|k| k.fingerprint == key.fingerprint);
        if same { Ok(true) } else { Err(CreditError::KeyReused) }
    }

    /// Opens the account, with the signup bonus as a free grant when there is one.
    pub(super) fn open(
        &self,
        user_id: String,
        signup_bonus: Credits,
        bonus_transaction_id: String,
        day: NaiveDate,
        at: DateTime<Utc>,
    ) -> Result<Vec<CreditEvent>, CreditError> {
        if self.user_id.is_some() {
            return Err(CreditError::AlreadyOpen);
        }
        let mut events = vec![CreditEvent::CreditAccountOpened { user_id, granted_day: day, opened_at: at }];
        if signup_bonus > Credits::ZERO {
            events.push(CreditEvent::CreditsGranted {
                transaction_id: bonus_transaction_id,
                source: GrantSource::SignupBonus,
                pool: Pool::Free,
                amount: signup_bonus,
                before: self.balances,
                after: self.balances.plus(Pool::Free, signup_bonus),
                description: "Signup bonus".to_owned(),
                key: None,
                granted_at: at,
            });
        }
        Ok(events)
    }

    /// A balance read: the day's free credits if they are due, nothing otherwise.
    pub(super) fn touch(
        &self,
        daily: &DailyGrant,
        at: DateTime<Utc>,
    ) -> Result<Vec<CreditEvent>, CreditError> {
        Ok(self.daily_grant(daily, at).into_iter().collect())
    }

    /// Spends free credits first, then paid ones, after the day's grant if it is due.
    pub(super) fn spend(
        &self,
        movement: Movement,
        amount: Credits,
        app_id: String,
        description: String,
        metadata: Option<Value>,
        daily: &DailyGrant,
    ) -> Result<Vec<CreditEvent>, CreditError> {
        if self.replay(movement.key.as_ref())? {
            return Ok(Vec::new());
        }
        let grant = self.daily_grant(daily, movement.at);
        let before = match &grant {
            Some(CreditEvent::CreditsGranted { after, .. }) => *after,
            _ => self.balances,
        };
        // A negative paid pool is a debt, not credit: only free credits can be spent then.
        let available = before.free + before.paid.max(Credits::ZERO);
        if available < amount {
            return Err(CreditError::InsufficientCredits { available });
        }
        let from_free = amount.min(before.free);
        let from_paid = amount - from_free;
        let after = Balances { free: before.free - from_free, paid: before.paid - from_paid };
        let spent = CreditEvent::CreditsSpent {
            transaction_id: movement.transaction_id,
            amount,
            from_free,
            from_paid,
            before,
            after,
            total_spent_after: self.total_spent + amount,
            app_id,
            description,
            metadata,
            key: movement.key,
            spent_at: movement.at,
        };
        Ok(grant.into_iter().chain([spent]).collect())
    }

    /// An operator's grant to one pool; the reason is also the ledger description.
    pub(super) fn grant(
        &self,
        movement: Movement,
        pool: Pool,
        amount: Credits,
        actor: String,
        reason: String,
    ) -> Result<Vec<CreditEvent>, CreditError> {
        if self.replay(movement.key.as_ref())? {
            return Ok(Vec::new());
        }
        Ok(vec![CreditEvent::CreditsGranted {
            transaction_id: movement.transaction_id,
            source: GrantSource::Admin { actor, reason: reason.clone() },
            pool,
            amount,
            before: self.balances,
            after: self.balances.plus(pool, amount),
            description: reason,
            key: movement.key,
            granted_at: movement.at,
        }])
    }

    /// An operator's signed correction of one pool, which may not take it below zero.
    pub(super) fn adjust(
        &self,
        movement: Movement,
        pool: Pool,
        amount: Credits,
        actor: String,
        reason: String,
    ) -> Result<Vec<CreditEvent>, CreditError> {
        if self.replay(movement.key.as_ref())? {
            return Ok(Vec::new());
        }
        let after = self.balances.plus(pool, amount);
        let (held, left) = match pool {
            Pool::Free => (self.balances.free, after.free),
            Pool::Paid => (self.balances.paid, after.paid),
        };
        // Only a decrease is refused below zero: a paid pool in debt may be raised.
        if amount < Credits::ZERO && left < Credits::ZERO {
            return Err(CreditError::InsufficientCredits { available: held.max(Credits::ZERO) });
        }
        Ok(vec![CreditEvent::CreditsAdjusted {
            transaction_id: movement.transaction_id,
            pool,
            amount,
            before: self.balances,
            after,
            actor,
            reason,
            key: movement.key,
            adjusted_at: movement.at,
        }])
    }

    /// Gives back (part of) a spend at most [`REFUND_WINDOW`] old, to the paid pool first;
    /// without an amount, all that is left of it.
    pub(super) fn refund(
        &self,
        movement: Movement,
        spend_id: String,
        amount: Option<Credits>,
        actor: String,
        reason: String,
    ) -> Result<Vec<CreditEvent>, CreditError> {
        if self.replay(movement.key.as_ref())? {
            return Ok(Vec::new());
        }
        // Spends leave `spends` only when a later event passes their window, so a quiet
        // account still holds old ones: their age is checked against this refund's time.
        let spend = self
            .spends
            .get(&spend_id)
            .filter(|spend| spend.spent_at >= movement.at - REFUND_WINDOW)
            .ok_or(CreditError::UnknownTransaction)?;
        let refundable = spend.refundable();
        let amount = amount.unwrap_or(refundable);
        if amount > refundable || amount < Credits::new(1) {
            return Err(CreditError::RefundTooLarge { refundable });
        }
        let to_paid = amount.min(spend.from_paid - spend.refunded_paid);
        let to_free = amount - to_paid;
        let after = Balances { free: self.balances.free + to_free, paid: self.balances.paid + to_paid };
        Ok(vec![CreditEvent::CreditsRefunded {
            transaction_id: movement.transaction_id,
            refunded_transaction_id: spend_id,
            amount,
            to_free,
            to_paid,
            before: self.balances,
            after,
            actor,
            reason,
            key: movement.key,
            refunded_at: movement.at,
        }])
    }
}
