//! Properties of the credit account over random command sequences (proptest): whatever
//! operators and users ask, in any order and with any retries,
//! - no pool goes below zero, except the documented debt case: a purchase's paid credits
//!   taken back (refund, dispute) after they were spent leave the paid pool negative, and
//!   nothing else makes that debt deeper (spends then take free credits only);
//! - every event's `before` is the previous event's `after`, its `after` is its `before`
//!   moved by its amount, and the account's balances are the last `after`;
//! - the balances are what was granted and adjusted, less what was spent, plus what was
//!   refunded; `total_spent` is spends less refunds, never negative, and no spend is
//!   refunded beyond its amount;
//! - a retry under the same key and request emits nothing and changes nothing; the same
//!   key with another request is refused;
//! - a refused command changes nothing.
//!
//! A shrunk failing case belongs in `tests.rs` as a plain given/when/then test.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use proptest::prelude::*;

use super::fixtures::{at, c, day};
use crate::commands::credit_account::{CreditAccount, CreditCommand, CreditError, DailyGrant, KEY_RETENTION};
use crate::domain::Credits;
use crate::events::credits::{Balances, CreditEvent, KeyUse, Pool};

/// One step of a random history, in small numbers so that refusals and edges happen.
#[derive(Clone, Debug)]
enum Step {
    Touch {
        day: i64,
    },
    Spend {
        amount: i64,
        day: i64,
        key: Option<(u8, u8)>,
    },
    Grant {
        paid: bool,
        amount: i64,
        key: Option<(u8, u8)>,
    },
    Adjust {
        paid: bool,
        amount: i64,
        key: Option<(u8, u8)>,
    },
    Refund {
        spend: u8,
        amount: Option<i64>,
        day: i64,
        key: Option<(u8, u8)>,
    },
    Purchase {
        credits: i64,
    },
    /// Takes back (positive) or gives again (negative) paid credits of a purchase.
    Reverse {
        amount: i64,
    },
}

/// A key (one of four) and a fingerprint (one of two): collisions are frequent.
fn key() -> impl Strategy<Value = Option<(u8, u8)>> {
    proptest::option::of((0u8..4, 0u8..2))
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0i64..6).prop_map(|day| Step::Touch { day }),
        (1i64..60, 0i64..6, key()).prop_map(|(amount, day, key)| Step::Spend { amount, day, key }),
        (any::<bool>(), 1i64..50, key()).prop_map(|(paid, amount, key)| Step::Grant { paid, amount, key }),
        (any::<bool>(), -60i64..60, key())
            .prop_filter("adjustments are non-zero", |(_, amount, _)| *amount != 0)
            .prop_map(|(paid, amount, key)| Step::Adjust { paid, amount, key }),
        (0u8..6, proptest::option::of(0i64..40), 0i64..120, key())
            .prop_map(|(spend, amount, day, key)| Step::Refund { spend, amount, day, key }),
        (1i64..80).prop_map(|credits| Step::Purchase { credits }),
        (-40i64..80)
            .prop_filter("reversals are non-zero", |amount| *amount != 0)
            .prop_map(|amount| Step::Reverse { amount }),
    ]
}

fn pool(paid: bool) -> Pool {
    if paid { Pool::Paid } else { Pool::Free }
}

/// The key a step uses: the fingerprint names the request, so that the same key with a
/// different fingerprint is a different request.
fn key_use(key: Option<(u8, u8)>, kind: &str) -> Option<KeyUse> {
    key.map(|(k, f)| KeyUse { key: format!("k{k}"), fingerprint: format!("{kind}-{f}") })
}

fn command(step: &Step, n: usize) -> CreditCommand {
    let daily = |d: i64| DailyGrant {
        day: day(d),
        amount: c(5),
        cap: Some(c(100)),
        transaction_id: format!("daily-{n}"),
    };
    let id = format!("t{n}");
    match step.clone() {
        Step::Touch { day } => CreditCommand::Touch { daily: daily(day), at: at(day) },
        Step::Spend { amount, day, key } => CreditCommand::Spend {
            transaction_id: id,
            amount: c(amount),
            app_id: "chat".into(),
            description: "a reply".into(),
            metadata: None,
            key: key_use(key, &format!("spend{amount}")),
            daily: daily(day),
            at: at(day),
        },
        Step::Grant { paid, amount, key } => CreditCommand::Grant {
            transaction_id: id,
            pool: pool(paid),
            amount: c(amount),
            actor: "admin".into(),
            reason: "support".into(),
            key: key_use(key, &format!("grant{paid}{amount}")),
            at: at(0),
        },
        Step::Adjust { paid, amount, key } => CreditCommand::Adjust {
            transaction_id: id,
            pool: pool(paid),
            amount: c(amount),
            actor: "admin".into(),
            reason: "correction".into(),
            key: key_use(key, &format!("adjust{paid}{amount}")),
            at: at(0),
        },
        Step::Refund { spend, amount, day, key } => CreditCommand::Refund {
            transaction_id: id,
            spend_id: format!("t{spend}"),
            amount: amount.map(c),
            actor: "svc".into(),
            reason: "failed".into(),
            key: key_use(key, &format!("refund{spend}{amount:?}")),
            at: at(day),
        },
        Step::Purchase { credits } => CreditCommand::Purchase {
            transaction_id: id,
            purchase_id: format!("p{n}"),
            package_id: "pack".into(),
            credits: c(credits),
            price_cents: credits,
            currency: "eur".into(),
            payment_intent_id: format!("pi{n}"),
            refund: None,
            at: at(0),
        },
        Step::Reverse { amount } => CreditCommand::ReversePurchase {
            transaction_id: id,
            purchase_id: "p0".into(),
            amount: c(amount),
            cause: if amount > 0 { "refund" } else { "dispute_reinstated" }.into(),
            at: at(0),
        },
    }
}

/// Runs one command as the command bus does: the events it emits are applied at once.
fn run(account: &mut CreditAccount, command: CreditCommand) -> Result<Vec<CreditEvent>, CreditError> {
    futures::executor::block_on(async {
        let sink = EventSink::default();
        account.handle(command, &(), &sink).await?;
        Ok(sink.collect().await)
    })
}

/// The balances an event says it found and left, and how it moved them.
fn movement(event: &CreditEvent) -> Option<(Balances, Balances, i64)> {
    match event {
        CreditEvent::CreditAccountOpened { .. } => None,
        CreditEvent::CreditsGranted { before, after, amount, .. }
        | CreditEvent::CreditsAdjusted { before, after, amount, .. } => Some((*before, *after, amount.get())),
        CreditEvent::CreditsSpent { before, after, amount, .. } => Some((*before, *after, -amount.get())),
        CreditEvent::CreditsRefunded { before, after, amount, .. } => Some((*before, *after, amount.get())),
        CreditEvent::CreditsPurchased { before, after, amount, .. } => Some((*before, *after, amount.get())),
        CreditEvent::PurchaseCreditsReversed { before, after, amount, .. } => {
            Some((*before, *after, -amount.get()))
        }
    }
}

/// Everything the properties follow across a history.
#[derive(Default)]
struct Ledger {
    last_after: Balances,
    moved: i64,
    spent: HashMap<String, i64>,
    refunded: HashMap<String, i64>,
}

impl Ledger {
    fn record(&mut self, event: &CreditEvent) -> Result<(), TestCaseError> {
        let Some((before, after, delta)) = movement(event) else { return Ok(()) };
        prop_assert_eq!(before, self.last_after, "before is the previous after: {:?}", event);
        prop_assert_eq!(after.total().get() - before.total().get(), delta, "after moves by the amount");
        prop_assert!(after.free >= Credits::ZERO, "no free pool below zero: {:?}", event);
        // The debt case: only a reversal of purchased credits takes the paid pool below
        // zero; any other event leaves it at zero or above, or no deeper than it was.
        if !matches!(event, CreditEvent::PurchaseCreditsReversed { .. }) {
            prop_assert!(
                after.paid >= Credits::ZERO || after.paid >= before.paid,
                "the paid pool went deeper below zero: {:?}",
                event
            );
        }
        self.last_after = after;
        self.moved += delta;
        match event {
            CreditEvent::CreditsSpent { transaction_id, amount, from_free, from_paid, .. } => {
                prop_assert_eq!(*from_free + *from_paid, *amount);
                self.spent.insert(transaction_id.clone(), amount.get());
            }
            CreditEvent::CreditsRefunded { refunded_transaction_id, amount, .. } => {
                let refunded = self.refunded.entry(refunded_transaction_id.clone()).or_default();
                *refunded += amount.get();
                let spent = self.spent.get(refunded_transaction_id).copied().unwrap_or_default();
                prop_assert!(*refunded <= spent, "refunded {} of a spend of {}", refunded, spent);
            }
            _ => {}
        }
        Ok(())
    }
}

proptest! {
    // No regression files: a shrunk failure becomes a plain test in `tests.rs`.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_invariant_of_the_credit_account(
        bonus in 0i64..200,
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut account = CreditAccount::default();
        let mut ledger = Ledger::default();
        let opened = run(&mut account, CreditCommand::Open {
            user_id: "u".into(),
            signup_bonus: c(bonus),
            bonus_transaction_id: "bonus".into(),
            day: day(0),
            at: at(0),
        }).expect("opens");
        for event in &opened {
            ledger.record(event)?;
        }
        // Each key's request (its fingerprint) and when it was answered; a key may be
        // forgotten once the account's events have moved past its retention.
        let mut answered: HashMap<String, (String, DateTime<Utc>)> = HashMap::new();
        let mut latest = at(0);
        for (n, step) in steps.iter().enumerate() {
            let command = command(step, n);
            let (key, when) = match &command {
                CreditCommand::Spend { key, at, .. }
                | CreditCommand::Grant { key, at, .. }
                | CreditCommand::Adjust { key, at, .. }
                | CreditCommand::Refund { key, at, .. } => (key.clone(), *at),
                CreditCommand::Touch { at, .. }
                | CreditCommand::Open { at, .. }
                | CreditCommand::Purchase { at, .. }
                | CreditCommand::ReversePurchase { at, .. } => (None, *at),
            };
            let remembered = key.as_ref().and_then(|k| answered.get(&k.key)).filter(|(_, t)| latest - *t <= KEY_RETENTION).cloned();
            let before = account.clone();
            match run(&mut account, command.clone()) {
                Ok(events) => {
                    for event in &events {
                        ledger.record(event)?;
                    }
                    if !events.is_empty() {
                        latest = latest.max(when);
                    }
                    if let Some(key) = &key {
                        if let Some((fingerprint, _)) = &remembered {
                            prop_assert_eq!(fingerprint, &key.fingerprint, "a reused key is refused");
                            prop_assert!(events.is_empty(), "a retry emits nothing: {:?}", events);
                        } else if !events.is_empty() {
                            answered.insert(key.key.clone(), (key.fingerprint.clone(), when));
                        }
                        // The same request again: nothing more happens.
                        let settled = account.clone();
                        let retry = run(&mut account, command);
                        prop_assert_eq!(retry, Ok(Vec::new()), "a retry answers without events");
                        prop_assert_eq!(&account, &settled, "a retry changes nothing");
                    }
                }
                Err(error) => {
                    prop_assert_eq!(&account, &before, "a refused command changes nothing");
                    if error == CreditError::KeyReused {
                        let key = key.expect("only keyed commands are refused for their key");
                        let earlier = answered.get(&key.key);
                        prop_assert!(earlier.is_some_and(|(f, _)| *f != key.fingerprint), "refused for a key never used otherwise");
                    } else {
                        prop_assert!(remembered.is_none(), "an answered key is checked before anything else: {:?}", error);
                    }
                }
            }
            prop_assert_eq!(account.balances, ledger.last_after, "the account holds the last after");
            prop_assert_eq!(account.balances.total().get(), ledger.moved, "balances add up");
            let spent: i64 = ledger.spent.values().sum::<i64>() - ledger.refunded.values().sum::<i64>();
            prop_assert_eq!(account.total_spent.get(), spent);
            prop_assert!(account.total_spent >= Credits::ZERO);
        }
    }
}
