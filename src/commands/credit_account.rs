//! The credit account aggregate (one per user, id = user id): grants, spends, refunds
//! and adjustments decided by the account's own history.
//!
//! Rules: free credits are spent before paid ones; a spend never takes a pool below zero;
//! the day's free credits are granted by the first balance read or spend of the day (in
//! the daily-grant time zone), before the spend is decided; idempotency keys are kept
//! with what their operation answered, so a retry answers the same and moves nothing and
//! a different request under a used key is refused.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::credits::{Balances, CreditEvent, GrantSource, KeyUse, Pool};

/// How long an idempotency key is remembered.
pub const KEY_RETENTION: Duration = Duration::days(30);
/// How long a spend may be refunded.
pub const REFUND_WINDOW: Duration = Duration::days(90);

/// The day's free credits, as the caller computed them from its clock and settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyGrant {
    pub day: NaiveDate,
    pub amount: i64,
    /// The free pool is not raised above this by daily grants.
    pub cap: Option<i64>,
    /// The id the grant's transaction gets if it happens.
    pub transaction_id: String,
}

/// A spend that may still be refunded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRecord {
    pub amount: i64,
    pub from_free: i64,
    pub from_paid: i64,
    pub refunded_free: i64,
    pub refunded_paid: i64,
}

impl SpendRecord {
    fn refundable(&self) -> i64 {
        self.amount - self.refunded_free - self.refunded_paid
    }
}

/// A credit account as the write model sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreditAccount {
    pub user_id: Option<String>,
    pub balances: Balances,
    pub total_earned: i64,
    pub total_spent: i64,
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
        signup_bonus: i64,
        bonus_transaction_id: String,
        day: NaiveDate,
        at: DateTime<Utc>,
    },
    /// A balance read: grants the day's free credits if due.
    Touch { daily: DailyGrant, at: DateTime<Utc> },
    Spend {
        transaction_id: String,
        amount: i64,
        app_id: String,
        description: String,
        metadata: Option<Value>,
        key: Option<KeyUse>,
        daily: DailyGrant,
        at: DateTime<Utc>,
    },
    Grant {
        transaction_id: String,
        pool: Pool,
        amount: i64,
        actor: String,
        reason: String,
        key: Option<KeyUse>,
        at: DateTime<Utc>,
    },
    Adjust {
        transaction_id: String,
        pool: Pool,
        amount: i64,
        actor: String,
        reason: String,
        key: Option<KeyUse>,
        at: DateTime<Utc>,
    },
    Refund {
        transaction_id: String,
        spend_id: String,
        amount: Option<i64>,
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
    InsufficientCredits { available: i64 },
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    #[error("no refundable spend with that id")]
    UnknownTransaction,
    #[error("at most {refundable} credits of that spend can still be refunded")]
    RefundTooLarge { refundable: i64 },
}

impl CreditAccount {
    /// The event a key produced, if it is remembered.
    pub fn keyed(&self, key: &str) -> Option<&CreditEvent> {
        self.keys.get(key)
    }

    /// The events of the day's grant, if one is due at `daily.day`.
    fn daily_grant(&self, daily: &DailyGrant, at: DateTime<Utc>) -> Option<CreditEvent> {
        if self.last_grant_day.is_some_and(|day| day >= daily.day) {
            return None;
        }
        let room = daily.cap.map_or(daily.amount, |cap| (cap - self.balances.free).clamp(0, daily.amount));
        if room <= 0 {
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

    fn decide(&self, command: CreditCommand) -> Result<Vec<CreditEvent>, CreditError> {
        if !matches!(command, CreditCommand::Open { .. }) && self.user_id.is_none() {
            return Err(CreditError::NotOpen);
        }
        match command {
            CreditCommand::Open { .. } if self.user_id.is_some() => Err(CreditError::AlreadyOpen),
            CreditCommand::Open { user_id, signup_bonus, bonus_transaction_id, day, at } => {
                let mut events =
                    vec![CreditEvent::CreditAccountOpened { user_id, granted_day: day, opened_at: at }];
                if signup_bonus > 0 {
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
            CreditCommand::Touch { daily, at } => Ok(self.daily_grant(&daily, at).into_iter().collect()),
            CreditCommand::Spend {
                transaction_id,
                amount,
                app_id,
                description,
                metadata,
                key,
                daily,
                at,
            } => {
                if self.replay(key.as_ref())? {
                    return Ok(Vec::new());
                }
                let grant = self.daily_grant(&daily, at);
                let before = match &grant {
                    Some(CreditEvent::CreditsGranted { after, .. }) => *after,
                    _ => self.balances,
                };
                if before.total() < amount {
                    return Err(CreditError::InsufficientCredits { available: before.total() });
                }
                let from_free = amount.min(before.free);
                let from_paid = amount - from_free;
                let after = Balances { free: before.free - from_free, paid: before.paid - from_paid };
                let spent = CreditEvent::CreditsSpent {
                    transaction_id,
                    amount,
                    from_free,
                    from_paid,
                    before,
                    after,
                    total_spent_after: self.total_spent + amount,
                    app_id,
                    description,
                    metadata,
                    key,
                    spent_at: at,
                };
                Ok(grant.into_iter().chain([spent]).collect())
            }
            CreditCommand::Grant { transaction_id, pool, amount, actor, reason, key, at } => {
                if self.replay(key.as_ref())? {
                    return Ok(Vec::new());
                }
                Ok(vec![CreditEvent::CreditsGranted {
                    transaction_id,
                    source: GrantSource::Admin { actor, reason: reason.clone() },
                    pool,
                    amount,
                    before: self.balances,
                    after: self.balances.plus(pool, amount),
                    description: reason,
                    key,
                    granted_at: at,
                }])
            }
            CreditCommand::Adjust { transaction_id, pool, amount, actor, reason, key, at } => {
                if self.replay(key.as_ref())? {
                    return Ok(Vec::new());
                }
                let after = self.balances.plus(pool, amount);
                if after.free < 0 || after.paid < 0 {
                    let available = match pool {
                        Pool::Free => self.balances.free,
                        Pool::Paid => self.balances.paid,
                    };
                    return Err(CreditError::InsufficientCredits { available });
                }
                Ok(vec![CreditEvent::CreditsAdjusted {
                    transaction_id,
                    pool,
                    amount,
                    before: self.balances,
                    after,
                    actor,
                    reason,
                    key,
                    adjusted_at: at,
                }])
            }
            CreditCommand::Refund { transaction_id, spend_id, amount, actor, reason, key, at } => {
                if self.replay(key.as_ref())? {
                    return Ok(Vec::new());
                }
                let spend = self.spends.get(&spend_id).ok_or(CreditError::UnknownTransaction)?;
                let refundable = spend.refundable();
                let amount = amount.unwrap_or(refundable);
                if amount > refundable || amount < 1 {
                    return Err(CreditError::RefundTooLarge { refundable });
                }
                let to_paid = amount.min(spend.from_paid - spend.refunded_paid);
                let to_free = amount - to_paid;
                let after =
                    Balances { free: self.balances.free + to_free, paid: self.balances.paid + to_paid };
                Ok(vec![CreditEvent::CreditsRefunded {
                    transaction_id,
                    refunded_transaction_id: spend_id,
                    amount,
                    to_free,
                    to_paid,
                    before: self.balances,
                    after,
                    actor,
                    reason,
                    key,
                    refunded_at: at,
                }])
            }
        }
    }

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
        CreditEvent::CreditAccountOpened { .. } => None,
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
        for event in self.decide(command)? {
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
                self.total_earned += amount;
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
                self.total_spent += amount;
                let record = SpendRecord {
                    amount: *amount,
                    from_free: *from_free,
                    from_paid: *from_paid,
                    refunded_free: 0,
                    refunded_paid: 0,
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
                self.total_spent -= amount;
                if let Some(spend) = self.spends.get_mut(refunded_transaction_id) {
                    spend.refunded_free += to_free;
                    spend.refunded_paid += to_paid;
                }
                *refunded_at
            }
            CreditEvent::CreditsAdjusted { amount, after, adjusted_at, .. } => {
                self.balances = *after;
                if *amount > 0 {
                    self.total_earned += amount;
                }
                *adjusted_at
            }
        };
        self.remember(&event, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    fn at(d: u32) -> DateTime<Utc> {
        day(d).and_hms_opt(12, 0, 0).unwrap().and_utc()
    }

    fn daily(d: u32) -> DailyGrant {
        DailyGrant { day: day(d), amount: 5, cap: None, transaction_id: format!("daily-{d}") }
    }

    fn opened(bonus: i64) -> CreditAccount {
        let mut account = CreditAccount::default();
        let command = CreditCommand::Open {
            user_id: "u".into(),
            signup_bonus: bonus,
            bonus_transaction_id: "b".into(),
            day: day(1),
            at: at(1),
        };
        for event in account.decide(command).unwrap() {
            account.apply(event);
        }
        account
    }

    fn run(account: &mut CreditAccount, command: CreditCommand) -> Result<Vec<CreditEvent>, CreditError> {
        let events = account.decide(command)?;
        for event in events.clone() {
            account.apply(event);
        }
        Ok(events)
    }

    fn spend(id: &str, amount: i64, key: Option<(&str, &str)>, d: u32) -> CreditCommand {
        CreditCommand::Spend {
            transaction_id: id.into(),
            amount,
            app_id: "chat".into(),
            description: "x".into(),
            metadata: None,
            key: key.map(|(k, f)| KeyUse { key: k.into(), fingerprint: f.into() }),
            daily: daily(d),
            at: at(d),
        }
    }

    /// An operator's grant of `amount` paid credits on day 1.
    fn paid_grant(amount: i64) -> CreditCommand {
        CreditCommand::Grant {
            transaction_id: "g".into(),
            pool: Pool::Paid,
            amount,
            actor: "admin".into(),
            reason: "r".into(),
            key: None,
            at: at(1),
        }
    }

    #[test]
    fn the_signup_bonus_is_a_counted_free_grant_and_covers_its_day() {
        let mut account = opened(150);
        assert_eq!((account.balances, account.total_earned), (Balances { free: 150, paid: 0 }, 150));
        assert!(run(&mut account, CreditCommand::Touch { daily: daily(1), at: at(1) }).unwrap().is_empty());
        assert_eq!(run(&mut account, CreditCommand::Touch { daily: daily(2), at: at(2) }).unwrap().len(), 1);
        assert!(
            run(&mut account, CreditCommand::Touch { daily: daily(2), at: at(2) }).unwrap().is_empty(),
            "once a day"
        );
        assert_eq!(account.balances.free, 155);
        assert_eq!(
            run(&mut account, CreditCommand::Touch { daily: daily(9), at: at(9) }).unwrap().len(),
            1,
            "no catch-up"
        );
        assert_eq!(account.balances.free, 160);
    }

    #[test]
    fn free_credits_are_spent_before_paid_ones() {
        let mut account = opened(10);
        run(&mut account, paid_grant(20)).unwrap();
        let events = run(&mut account, spend("s", 15, None, 1)).unwrap();
        let CreditEvent::CreditsSpent { from_free, from_paid, before, after, .. } = &events[0] else {
            panic!()
        };
        assert_eq!((*from_free, *from_paid, before.total(), after.total()), (10, 5, 30, 15));
        assert_eq!(
            run(&mut account, spend("t", 16, None, 1)),
            Err(CreditError::InsufficientCredits { available: 15 })
        );
    }

    #[test]
    fn a_user_at_zero_can_spend_the_days_grant_and_a_refusal_grants_nothing() {
        let mut account = opened(0);
        assert_eq!(
            run(&mut account, spend("s", 6, None, 2)),
            Err(CreditError::InsufficientCredits { available: 5 })
        );
        assert_eq!(account.balances.free, 0, "a refused spend writes nothing");
        let events = run(&mut account, spend("s", 5, None, 2)).unwrap();
        assert_eq!(events.len(), 2, "grant, then spend");
        assert_eq!(account.balances.total(), 0);
    }

    #[test]
    fn a_key_replays_its_request_and_refuses_another() {
        let mut account = opened(100);
        run(&mut account, spend("s1", 10, Some(("k", "f1")), 1)).unwrap();
        assert!(run(&mut account, spend("s2", 10, Some(("k", "f1")), 1)).unwrap().is_empty(), "replay");
        assert_eq!(account.balances.free, 90);
        assert_eq!(run(&mut account, spend("s3", 11, Some(("k", "f2")), 1)), Err(CreditError::KeyReused));
        assert!(
            matches!(account.keyed("k"), Some(CreditEvent::CreditsSpent { transaction_id, .. }) if transaction_id == "s1")
        );
        // Keys are forgotten after their retention.
        run(
            &mut account,
            CreditCommand::Touch { daily: daily(30), at: at(1) + KEY_RETENTION + Duration::days(1) },
        )
        .unwrap();
        assert!(account.keyed("k").is_none());
    }

    #[test]
    fn refunds_return_to_the_pools_paid_first_and_never_exceed_the_spend() {
        let mut account = opened(10);
        run(&mut account, paid_grant(10)).unwrap();
        run(&mut account, spend("s", 15, None, 1)).unwrap();
        let refund = |id: &str, amount| CreditCommand::Refund {
            transaction_id: id.into(),
            spend_id: "s".into(),
            amount,
            actor: "svc".into(),
            reason: "failed".into(),
            key: None,
            at: at(1),
        };
        let events = run(&mut account, refund("r1", Some(7))).unwrap();
        let CreditEvent::CreditsRefunded { to_paid, to_free, .. } = &events[0] else { panic!() };
        assert_eq!((*to_paid, *to_free), (5, 2));
        assert_eq!(
            run(&mut account, refund("r2", Some(9))),
            Err(CreditError::RefundTooLarge { refundable: 8 })
        );
        run(&mut account, refund("r3", None)).unwrap();
        assert_eq!(account.balances.total(), 20);
        assert_eq!(account.total_spent, 0);
        assert_eq!(run(&mut account, refund("r4", None)), Err(CreditError::RefundTooLarge { refundable: 0 }));
    }

    #[test]
    fn an_adjustment_cannot_take_a_pool_below_zero() {
        let mut account = opened(10);
        let adjust = |amount| CreditCommand::Adjust {
            transaction_id: "a".into(),
            pool: Pool::Free,
            amount,
            actor: "admin".into(),
            reason: "r".into(),
            key: None,
            at: at(1),
        };
        assert_eq!(run(&mut account, adjust(-11)), Err(CreditError::InsufficientCredits { available: 10 }));
        run(&mut account, adjust(-10)).unwrap();
        assert_eq!(account.balances.free, 0);
    }

    #[test]
    fn a_cap_limits_daily_grants_but_not_the_signup_bonus() {
        let mut account = opened(150);
        let capped = DailyGrant { cap: Some(100), ..daily(2) };
        let events = run(&mut account, CreditCommand::Touch { daily: capped.clone(), at: at(2) }).unwrap();
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(account.balances.free, 150);
        // A spend on day 1 (already granted by the registration) brings the pool below the cap.
        run(&mut account, spend("s", 60, None, 1)).unwrap();
        let events = run(&mut account, CreditCommand::Touch { daily: capped, at: at(2) }).unwrap();
        assert!(
            matches!(&events[0], CreditEvent::CreditsGranted { amount: 5, .. }),
            "below the cap again: {events:?}"
        );
    }
}
