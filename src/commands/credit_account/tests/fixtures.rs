//! The vocabulary of the credit account's rules: fixed instants, and the events and
//! commands the tests are written in (one user `u`, five free credits a day).

use chrono::{DateTime, Duration, NaiveDate, Utc};
use cqrs_es::test::TestFramework;

use crate::commands::credit_account::{CreditAccount, CreditCommand, DailyGrant};
use crate::domain::Credits;
use crate::events::credits::{Balances, CreditEvent, GrantSource, KeyUse, Pool};

pub(super) type Account = TestFramework<CreditAccount>;

/// The instant the account opens; day `d` is `d` days later (the daily-grant time zone
/// is UTC here).
pub(super) fn at(d: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z").expect("time").with_timezone(&Utc)
        + Duration::days(d)
}

pub(super) fn day(d: i64) -> NaiveDate {
    at(d).date_naive()
}

/// `n` credits.
pub(super) fn c(n: i64) -> Credits {
    Credits::new(n)
}

pub(super) fn b(free: i64, paid: i64) -> Balances {
    Balances { free: c(free), paid: c(paid) }
}

// Events.

pub(super) fn opened() -> CreditEvent {
    CreditEvent::CreditAccountOpened { user_id: "u".into(), granted_day: day(0), opened_at: at(0) }
}

pub(super) fn signup_bonus(amount: i64) -> CreditEvent {
    CreditEvent::CreditsGranted {
        transaction_id: "bonus".into(),
        source: GrantSource::SignupBonus,
        pool: Pool::Free,
        amount: c(amount),
        before: b(0, 0),
        after: b(amount, 0),
        description: "Signup bonus".into(),
        key: None,
        granted_at: at(0),
    }
}

pub(super) fn daily_granted(d: i64, amount: i64, before: Balances) -> CreditEvent {
    CreditEvent::CreditsGranted {
        transaction_id: format!("daily-{d}"),
        source: GrantSource::Daily { day: day(d) },
        pool: Pool::Free,
        amount: c(amount),
        before,
        after: before.plus(Pool::Free, c(amount)),
        description: "Daily free credits".into(),
        key: None,
        granted_at: at(d),
    }
}

/// What [`grant`] emits.
pub(super) fn granted(pool: Pool, amount: i64, before: Balances) -> CreditEvent {
    CreditEvent::CreditsGranted {
        transaction_id: "g".into(),
        source: GrantSource::Admin { actor: "admin".into(), reason: "support".into() },
        pool,
        amount: c(amount),
        before,
        after: before.plus(pool, c(amount)),
        description: "support".into(),
        key: None,
        granted_at: at(0),
    }
}

/// What [`spend`] emits, taking `(free, paid)` from the pools.
pub(super) fn spent(
    id: &str,
    (free, paid): (i64, i64),
    before: Balances,
    total_spent_after: i64,
    d: i64,
) -> CreditEvent {
    CreditEvent::CreditsSpent {
        transaction_id: id.into(),
        amount: c(free + paid),
        from_free: c(free),
        from_paid: c(paid),
        before,
        after: b(before.free.get() - free, before.paid.get() - paid),
        total_spent_after: c(total_spent_after),
        app_id: "chat".into(),
        description: "a reply".into(),
        metadata: None,
        key: None,
        spent_at: at(d),
    }
}

/// What [`adjust`] emits.
pub(super) fn adjusted(pool: Pool, amount: i64, before: Balances) -> CreditEvent {
    CreditEvent::CreditsAdjusted {
        transaction_id: "a".into(),
        pool,
        amount: c(amount),
        before,
        after: before.plus(pool, c(amount)),
        actor: "admin".into(),
        reason: "correction".into(),
        key: None,
        adjusted_at: at(0),
    }
}

/// What [`refund`] emits, giving `(free, paid)` back to the pools.
pub(super) fn refunded(
    id: &str,
    spend_id: &str,
    (free, paid): (i64, i64),
    before: Balances,
    d: i64,
) -> CreditEvent {
    CreditEvent::CreditsRefunded {
        transaction_id: id.into(),
        refunded_transaction_id: spend_id.into(),
        amount: c(free + paid),
        to_free: c(free),
        to_paid: c(paid),
        before,
        after: b(before.free.get() + free, before.paid.get() + paid),
        actor: "svc".into(),
        reason: "failed".into(),
        key: None,
        refunded_at: at(d),
    }
}

pub(super) fn key_use(key: &str, fingerprint: &str) -> Option<KeyUse> {
    Some(KeyUse { key: key.into(), fingerprint: fingerprint.into() })
}

/// `event` as made under an idempotency key.
pub(super) fn keyed_event(mut event: CreditEvent, key: &str, fingerprint: &str) -> CreditEvent {
    match &mut event {
        CreditEvent::CreditsGranted { key: k, .. }
        | CreditEvent::CreditsSpent { key: k, .. }
        | CreditEvent::CreditsRefunded { key: k, .. }
        | CreditEvent::CreditsAdjusted { key: k, .. } => *k = key_use(key, fingerprint),
        CreditEvent::CreditAccountOpened { .. }
        | CreditEvent::CreditsPurchased { .. }
        | CreditEvent::PurchaseCreditsReversed { .. } => panic!("no key on this event"),
    }
    event
}

// Commands.

pub(super) fn open(signup_bonus: i64) -> CreditCommand {
    CreditCommand::Open {
        user_id: "u".into(),
        signup_bonus: c(signup_bonus),
        bonus_transaction_id: "bonus".into(),
        day: day(0),
        at: at(0),
    }
}

/// Five free credits a day, without a cap.
pub(super) fn daily(d: i64) -> DailyGrant {
    DailyGrant { day: day(d), amount: c(5), cap: None, transaction_id: format!("daily-{d}") }
}

pub(super) fn touch(d: i64) -> CreditCommand {
    CreditCommand::Touch { daily: daily(d), at: at(d) }
}

pub(super) fn spend(id: &str, amount: i64, d: i64) -> CreditCommand {
    CreditCommand::Spend {
        transaction_id: id.into(),
        amount: c(amount),
        app_id: "chat".into(),
        description: "a reply".into(),
        metadata: None,
        key: None,
        daily: daily(d),
        at: at(d),
    }
}

pub(super) fn grant(pool: Pool, amount: i64) -> CreditCommand {
    CreditCommand::Grant {
        transaction_id: "g".into(),
        pool,
        amount: c(amount),
        actor: "admin".into(),
        reason: "support".into(),
        key: None,
        at: at(0),
    }
}

pub(super) fn adjust(pool: Pool, amount: i64) -> CreditCommand {
    CreditCommand::Adjust {
        transaction_id: "a".into(),
        pool,
        amount: c(amount),
        actor: "admin".into(),
        reason: "correction".into(),
        key: None,
        at: at(0),
    }
}

pub(super) fn refund(id: &str, spend_id: &str, amount: Option<i64>, d: i64) -> CreditCommand {
    CreditCommand::Refund {
        transaction_id: id.into(),
        spend_id: spend_id.into(),
        amount: amount.map(c),
        actor: "svc".into(),
        reason: "failed".into(),
        key: None,
        at: at(d),
    }
}

/// `command` sent under an idempotency key.
pub(super) fn keyed(mut command: CreditCommand, key: &str, fingerprint: &str) -> CreditCommand {
    match &mut command {
        CreditCommand::Spend { key: k, .. }
        | CreditCommand::Grant { key: k, .. }
        | CreditCommand::Adjust { key: k, .. }
        | CreditCommand::Refund { key: k, .. } => *k = key_use(key, fingerprint),
        CreditCommand::Open { .. }
        | CreditCommand::Touch { .. }
        | CreditCommand::Purchase { .. }
        | CreditCommand::ReversePurchase { .. } => panic!("not a keyed command"),
    }
    command
}
