//! The arithmetic the events claim, checked while a replay reads the log: every stream's
//! sequence is gapless from 1; every native credit event's `before ± amount = after`,
//! chained from the previous event of its account; the running total spent; no pool below
//! zero (but a paid pool in debt after a purchase's reversal); no refund beyond what its spend has left; and, over the whole log, that the
//! balances held equal what was granted, spent, refunded and adjusted.
//!
//! History imported from another system (an event whose metadata carries an `import`
//! object, [`IMPORT_METADATA_KEY`]) is not held to the native rules: only its final state,
//! the `after` of the account's last imported event, must equal the opening balance of the
//! first native event after it, and every native event after it must chain. An imported
//! event after a native one is itself a finding.
//!
//! It runs as a [`Projection`] without tables, fed the same batches as the rebuilt read
//! models, so the log is read once.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::db::DbTx;
use crate::events::credits::{Balances, CreditEvent, Pool};
use crate::events::{LogCursor, RecordedEvent};
use crate::projections::Projection;

/// The metadata key that marks an event as imported history.
pub const IMPORT_METADATA_KEY: &str = "import";

/// One claim of the log that does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub cursor: LogCursor,
    /// `aggregate_type/aggregate_id`.
    pub stream: String,
    pub sequence: i64,
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}#{}: {}", self.cursor, self.stream, self.sequence, self.problem)
    }
}

/// What the checks saw, over the whole log read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub streams: u64,
    pub accounts: u64,
    pub imported_events: u64,
    pub granted: i128,
    pub spent: i128,
    pub refunded: i128,
    pub adjusted: i128,
    /// Paid credits bought.
    pub purchased: i128,
    /// Paid credits of purchases taken back (refunds, disputes), less those given again.
    pub reversed: i128,
    /// The sum of every account's balances (free and paid) after its last event.
    pub held: i128,
    /// The sum of the imported accounts' opening balances.
    pub opening: i128,
}

/// At most this many findings are kept (the count goes on).
pub const FINDINGS_KEPT: usize = 1_000;

#[derive(Default)]
struct Account {
    /// The state after the last event, once there is one.
    after: Option<Balances>,
    spent: i128,
    /// A native credit-moving event was seen (imports must come before).
    native: bool,
    /// The state after the last imported event, if the account has imported history.
    imported: Option<Balances>,
    /// Whether `spent` is known (an imported history's spends are not: the first native
    /// spend's total sets it).
    spent_known: bool,
}

#[derive(Default)]
struct State {
    /// The last sequence of each stream, by aggregate type then id (looked up without
    /// allocating; a stream's id is copied once, when it first appears).
    sequences: HashMap<String, HashMap<String, i64>>,
    accounts: HashMap<String, Account>,
    /// What is left to refund of each spend.
    refundable: HashMap<String, i128>,
    totals: Totals,
    findings: Vec<Finding>,
    finding_count: u64,
}

/// The checks, as a projection of the replay's scratch projector.
#[derive(Default)]
pub struct LedgerChecks {
    state: Mutex<State>,
}

impl LedgerChecks {
    /// The findings kept, their full count, and the totals.
    pub fn outcome(&self) -> (Vec<Finding>, u64, Totals) {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut totals = state.totals.clone();
        totals.streams = state.sequences.values().map(|ids| ids.len() as u64).sum();
        totals.accounts = state.accounts.len() as u64;
        totals.held = state
            .accounts
            .values()
            .filter_map(|a| a.after)
            .map(|b| i128::from(b.free.get()) + i128::from(b.paid.get()))
            .sum();
        totals.opening = state.accounts.values().filter_map(|a| a.imported).map(total).sum();
        let mut findings = state.findings.clone();
        let mut count = state.finding_count;
        let flowed = totals.opening + totals.granted - totals.spent
            + totals.refunded
            + totals.adjusted
            + totals.purchased
            - totals.reversed;
        if flowed != totals.held {
            count += 1;
            findings.push(Finding {
                cursor: LogCursor::START,
                stream: "(whole log)".into(),
                sequence: 0,
                problem: format!(
                    "the balances held ({}) are not opening {} + granted {} - spent {} + refunded {} + adjusted {} + purchased {} - reversed {} = {flowed}",
                    totals.held,
                    totals.opening,
                    totals.granted,
                    totals.spent,
                    totals.refunded,
                    totals.adjusted,
                    totals.purchased,
                    totals.reversed
                ),
            });
        }
        (findings, count, totals)
    }

    /// Checks one event (in global order).
    pub fn check(&self, event: &RecordedEvent) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.check(event);
    }
}

#[async_trait]
impl Projection for LedgerChecks {
    fn name(&self) -> &'static str {
        "replay_ledger_checks"
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    async fn apply_batch(&self, _tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for event in events {
            state.check(event);
        }
        Ok(())
    }
}

fn total(b: Balances) -> i128 {
    i128::from(b.free.get()) + i128::from(b.paid.get())
}

fn pools(b: Balances) -> (i128, i128) {
    (i128::from(b.free.get()), i128::from(b.paid.get()))
}

impl State {
    fn find(&mut self, event: &RecordedEvent, problem: String) {
        self.finding_count += 1;
        if self.findings.len() < FINDINGS_KEPT {
            self.findings.push(Finding {
                cursor: event.cursor,
                stream: format!("{}/{}", event.aggregate_type, event.aggregate_id),
                sequence: event.sequence,
                problem,
            });
        }
    }

    fn check(&mut self, event: &RecordedEvent) {
        self.totals.events += 1;
        let last = match self.sequences.get_mut(event.aggregate_type.as_str()) {
            Some(ids) => ids.get_mut(event.aggregate_id.as_str()),
            None => None,
        };
        let expected = match last {
            Some(last) => {
                let expected = *last + 1;
                *last = event.sequence;
                expected
            }
            None => {
                self.sequences
                    .entry(event.aggregate_type.clone())
                    .or_default()
                    .insert(event.aggregate_id.clone(), event.sequence);
                1
            }
        };
        if event.sequence != expected {
            let problem = if expected == 1 {
                format!("the stream starts at sequence {} instead of 1", event.sequence)
            } else {
                format!("sequence {} follows {} (a gap or a repeat)", event.sequence, expected - 1)
            };
            self.find(event, problem);
        }
        if event.aggregate_type == "credit_account" {
            self.credit(event);
        }
    }

    fn credit(&mut self, event: &RecordedEvent) {
        let credit = match event.decode::<CreditEvent>() {
            Ok(credit) => credit,
            Err(error) => return self.find(event, format!("undecodable credit event: {error}")),
        };
        let imported = event.metadata.get(IMPORT_METADATA_KEY).is_some_and(|v| !v.is_null());
        let (before, after) = match &credit {
            CreditEvent::CreditAccountOpened { .. } => return,
            CreditEvent::CreditsGranted { before, after, .. }
            | CreditEvent::CreditsSpent { before, after, .. }
            | CreditEvent::CreditsRefunded { before, after, .. }
            | CreditEvent::CreditsAdjusted { before, after, .. }
            | CreditEvent::CreditsPurchased { before, after, .. }
            | CreditEvent::PurchaseCreditsReversed { before, after, .. } => (*before, *after),
        };
        let account = self.accounts.entry(event.aggregate_id.clone()).or_default();
        if imported {
            let late = account.native;
            account.imported = Some(after);
            account.after = Some(after);
            self.totals.imported_events += 1;
            if late {
                self.find(event, "imported history after a native credit event".into());
            }
            return;
        }
        let opening = account.after.unwrap_or_default();
        let first_native = !account.native;
        let was_imported = account.imported.is_some();
        let spent_known = account.spent_known || !was_imported;
        account.native = true;
        account.after = Some(after);
        let spent_before = account.spent;
        let mut problems = Vec::new();
        if before != opening {
            let what = if first_native && was_imported {
                "the imported history's final state"
            } else if first_native {
                "an empty account"
            } else {
                "the previous event's after"
            };
            problems.push(format!("before {before:?} is not {what} {opening:?}"));
        }
        let (bf, bp) = pools(before);
        let (af, ap) = pools(after);
        // A paid pool may be in debt only through a purchase's reversal; other events may
        // leave a debt as it was or lessen it, never deepen it.
        let reversal = matches!(credit, CreditEvent::PurchaseCreditsReversed { .. });
        if af < 0 || (ap < 0 && ap < bp && !reversal) {
            problems.push(format!("after {after:?} takes a pool below zero"));
        }
        let mut spent_after = spent_before;
        match &credit {
            CreditEvent::CreditAccountOpened { .. } => {}
            CreditEvent::CreditsGranted { pool, amount, transaction_id, .. } => {
                let amount = i128::from(amount.get());
                let (ef, ep) = match pool {
                    Pool::Free => (bf + amount, bp),
                    Pool::Paid => (bf, bp + amount),
                };
                if amount <= 0 {
                    problems.push(format!("grant {transaction_id} of {amount} is not positive"));
                }
                if (af, ap) != (ef, ep) {
                    problems.push(format!(
                        "grant {transaction_id}: before + {amount} to {pool:?} is not after {after:?}"
                    ));
                }
                self.totals.granted += amount;
            }
            CreditEvent::CreditsSpent {
                transaction_id,
                amount,
                from_free,
                from_paid,
                total_spent_after,
                ..
            } => {
                let (amount, ff, fp) =
                    (i128::from(amount.get()), i128::from(from_free.get()), i128::from(from_paid.get()));
                if amount <= 0 || ff < 0 || fp < 0 || ff + fp != amount {
                    problems.push(format!(
                        "spend {transaction_id}: {ff} free + {fp} paid is not a positive {amount}"
                    ));
                }
                if (af, ap) != (bf - ff, bp - fp) {
                    problems.push(format!(
                        "spend {transaction_id}: before - ({ff} free, {fp} paid) is not after {after:?}"
                    ));
                }
                spent_after += amount;
                if !spent_known {
                    spent_after = i128::from(total_spent_after.get());
                } else if i128::from(total_spent_after.get()) != spent_after {
                    problems.push(format!(
                        "spend {transaction_id}: total spent after is {total_spent_after}, the account's spends add up to {spent_after}"
                    ));
                }
                self.refundable.insert(transaction_id.clone(), amount);
                self.totals.spent += amount;
            }
            CreditEvent::CreditsRefunded {
                transaction_id,
                refunded_transaction_id,
                amount,
                to_free,
                to_paid,
                ..
            } => {
                let (amount, tf, tp) =
                    (i128::from(amount.get()), i128::from(to_free.get()), i128::from(to_paid.get()));
                if amount <= 0 || tf < 0 || tp < 0 || tf + tp != amount {
                    problems.push(format!(
                        "refund {transaction_id}: {tf} free + {tp} paid is not a positive {amount}"
                    ));
                }
                if (af, ap) != (bf + tf, bp + tp) {
                    problems.push(format!(
                        "refund {transaction_id}: before + ({tf} free, {tp} paid) is not after {after:?}"
                    ));
                }
                match self.refundable.get_mut(refunded_transaction_id) {
                    Some(left) if *left >= amount => *left -= amount,
                    Some(left) => {
                        problems.push(format!(
                            "refund {transaction_id} of {amount} exceeds the {left} left of spend {refunded_transaction_id}"
                        ));
                        *left = 0;
                    }
                    // A spend of imported history is not known here.
                    None if was_imported => {}
                    None => problems.push(format!(
                        "refund {transaction_id} of an unknown spend {refunded_transaction_id}"
                    )),
                }
                spent_after -= amount;
                self.totals.refunded += amount;
            }
            CreditEvent::CreditsAdjusted { transaction_id, pool, amount, .. } => {
                let amount = i128::from(amount.get());
                let (ef, ep) = match pool {
                    Pool::Free => (bf + amount, bp),
                    Pool::Paid => (bf, bp + amount),
                };
                if (af, ap) != (ef, ep) {
                    problems.push(format!(
                        "adjustment {transaction_id}: before + {amount} to {pool:?} is not after {after:?}"
                    ));
                }
                self.totals.adjusted += amount;
            }
            CreditEvent::CreditsPurchased { transaction_id, amount, .. } => {
                let amount = i128::from(amount.get());
                if amount <= 0 || (af, ap) != (bf, bp + amount) {
                    problems.push(format!(
                        "purchase {transaction_id}: before + {amount} paid is not after {after:?}"
                    ));
                }
                self.totals.purchased += amount;
            }
            CreditEvent::PurchaseCreditsReversed { transaction_id, amount, .. } => {
                let amount = i128::from(amount.get());
                if (af, ap) != (bf, bp - amount) {
                    problems.push(format!(
                        "purchase reversal {transaction_id}: before - {amount} paid is not after {after:?}"
                    ));
                }
                self.totals.reversed += amount;
            }
        }
        if let Some(account) = self.accounts.get_mut(&event.aggregate_id) {
            account.spent = spent_after;
            account.spent_known = spent_known || matches!(credit, CreditEvent::CreditsSpent { .. });
        }
        for problem in problems {
            self.find(event, problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::{Value, json};

    use super::*;

    /// A credit account's log built event by event.
    struct Log {
        checks: LedgerChecks,
        position: i64,
        sequence: i64,
    }

    impl Log {
        fn new() -> Self {
            Self { checks: LedgerChecks::default(), position: 0, sequence: 0 }
        }

        fn push(&mut self, payload: Value, metadata: Value) -> &mut Self {
            self.position += 1;
            self.sequence += 1;
            let event_type = payload.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
            self.checks.check(&RecordedEvent {
                cursor: LogCursor { txid: 0, position: self.position },
                aggregate_type: "credit_account".into(),
                aggregate_id: "u-1".into(),
                sequence: self.sequence,
                event_type,
                event_version: "1".into(),
                payload,
                metadata,
                recorded_at: chrono::Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap(),
                hash: None,
                commitments: None,
            });
            self
        }

        fn problems(&self) -> Vec<String> {
            self.checks.outcome().0.into_iter().map(|f| f.problem).collect()
        }
    }

    fn b(free: i64, paid: i64) -> Value {
        json!({"free": free, "paid": paid})
    }

    fn grant(id: &str, pool: &str, amount: i64, before: Value, after: Value) -> Value {
        json!({"CreditsGranted": {"transaction_id": id, "source": {"kind": "signup_bonus"}, "pool": pool,
            "amount": amount, "before": before, "after": after, "description": "d", "granted_at": "2026-11-30T00:00:00Z"}})
    }

    fn spend(id: &str, amount: i64, free: i64, paid: i64, before: Value, after: Value, total: i64) -> Value {
        json!({"CreditsSpent": {"transaction_id": id, "amount": amount, "from_free": free, "from_paid": paid,
            "before": before, "after": after, "total_spent_after": total, "app_id": "chat", "description": "d",
            "spent_at": "2026-11-30T00:00:00Z"}})
    }

    fn refund(id: &str, of: &str, amount: i64, free: i64, paid: i64, before: Value, after: Value) -> Value {
        json!({"CreditsRefunded": {"transaction_id": id, "refunded_transaction_id": of, "amount": amount,
            "to_free": free, "to_paid": paid, "before": before, "after": after, "actor": "a", "reason": "r",
            "refunded_at": "2026-11-30T00:00:00Z"}})
    }

    fn native() -> Value {
        json!({"actor": "system"})
    }

    fn imported() -> Value {
        json!({"actor": "import", "import": {"source": "mana-core-auth (NestJS)"}})
    }

    #[test]
    fn a_sound_native_history_has_no_finding_and_its_totals_add_up() {
        let mut log = Log::new();
        log.push(grant("t1", "free", 150, b(0, 0), b(150, 0)), native())
            .push(grant("t2", "paid", 100, b(150, 0), b(150, 100)), native())
            .push(spend("t3", 170, 150, 20, b(150, 100), b(0, 80), 170), native())
            .push(refund("t4", "t3", 30, 10, 20, b(0, 80), b(10, 100)), native());
        assert_eq!(log.problems(), Vec::<String>::new());
        let (_, count, totals) = log.checks.outcome();
        assert_eq!(count, 0);
        assert_eq!((totals.granted, totals.spent, totals.refunded, totals.held), (250, 170, 30, 110));
    }

    #[test]
    fn a_broken_chain_a_wrong_sum_an_overdraft_and_an_over_refund_are_each_found() {
        let mut log = Log::new();
        log.push(grant("t1", "free", 150, b(0, 0), b(150, 0)), native())
            // before is not the previous after
            .push(grant("t2", "paid", 100, b(140, 0), b(140, 100)), native())
            // from_free + from_paid != amount, and the total spent is off
            .push(spend("t3", 170, 100, 20, b(140, 100), b(40, 80), 171), native())
            // a pool below zero
            .push(spend("t4", 50, 50, 0, b(40, 80), b(-10, 80), 221), native())
            // more back than the spend has left
            .push(refund("t5", "t4", 60, 60, 0, b(-10, 80), b(50, 80)), native());
        let problems = log.problems();
        let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
        assert!(has("is not the previous event's after"), "{problems:?}");
        assert!(has("100 free + 20 paid is not a positive 170"), "{problems:?}");
        assert!(has("total spent after is 171"), "{problems:?}");
        assert!(has("below zero"), "{problems:?}");
        assert!(has("exceeds the 50 left of spend t4"), "{problems:?}");
        assert!(has("the balances held"), "the whole log no longer adds up: {problems:?}");
    }

    #[test]
    fn imported_history_is_checked_only_where_it_ends_and_native_events_must_chain_from_it() {
        // Imported rows need not chain among themselves; the native part starts from
        // their final state.
        let mut log = Log::new();
        log.push(grant("i1", "paid", 500, b(0, 0), b(0, 500)), imported())
            .push(spend("i2", 70, 0, 70, b(3, 3), b(0, 430), 9_000), imported())
            .push(spend("t1", 30, 0, 30, b(0, 430), b(0, 400), 9_030), native())
            .push(refund("t2", "i2", 10, 0, 10, b(0, 400), b(0, 410)), native());
        assert_eq!(log.problems(), Vec::<String>::new());
        let (_, _, totals) = log.checks.outcome();
        assert_eq!((totals.opening, totals.imported_events, totals.held), (430, 2, 410));

        // A native event that does not start from the imported final state.
        let mut log = Log::new();
        log.push(grant("i1", "paid", 500, b(0, 0), b(0, 500)), imported())
            .push(spend("t1", 30, 0, 30, b(0, 499), b(0, 469), 30), native());
        assert!(
            log.problems().iter().any(|p| p.contains("the imported history's final state")),
            "{:?}",
            log.problems()
        );

        // Imported history after native events.
        let mut log = Log::new();
        log.push(grant("t1", "free", 150, b(0, 0), b(150, 0)), native())
            .push(grant("i1", "paid", 500, b(150, 0), b(150, 500)), imported());
        assert!(log.problems().iter().any(|p| p.contains("imported history after")), "{:?}", log.problems());
    }

    #[test]
    fn a_stream_that_does_not_start_at_one_or_skips_a_sequence_is_found() {
        let mut log = Log::new();
        log.sequence = 1;
        log.push(grant("t1", "free", 150, b(0, 0), b(150, 0)), native());
        log.sequence += 1;
        log.push(grant("t2", "free", 1, b(150, 0), b(151, 0)), native());
        let problems = log.problems();
        assert!(problems.iter().any(|p| p.contains("starts at sequence 2")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("sequence 4 follows 2")), "{problems:?}");
    }
}
