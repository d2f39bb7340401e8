//! The arithmetic the events claim, checked while a replay reads the log: every stream's
//! sequence is gapless from 1; every native credit event's `before ± amount = after`,
//! chained from the previous event of its account; the running total spent; no pool below
//! zero; no refund beyond what its spend has left; and, over the whole log, that the
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
    sequences: HashMap<(String, String), i64>,
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
        totals.streams = state.sequences.len() as u64;
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
        let flowed = totals.opening + totals.granted - totals.spent + totals.refunded + totals.adjusted;
        if flowed != totals.held {
            count += 1;
            findings.push(Finding {
                cursor: LogCursor::START,
                stream: "(whole log)".into(),
                sequence: 0,
                problem: format!(
                    "the balances held ({}) are not opening {} + granted {} - spent {} + refunded {} + adjusted {} = {flowed}",
                    totals.held, totals.opening, totals.granted, totals.spent, totals.refunded, totals.adjusted
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
        let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
        let expected = self.sequences.get(&stream).map_or(1, |s| s + 1);
        if event.sequence != expected {
            let problem = if expected == 1 {
                format!("the stream starts at sequence {} instead of 1", event.sequence)
            } else {
                format!("sequence {} follows {} (a gap or a repeat)", event.sequence, expected - 1)
            };
            self.find(event, problem);
        }
        self.sequences.insert(stream, event.sequence);
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
            | CreditEvent::CreditsAdjusted { before, after, .. } => (*before, *after),
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
        if af < 0 || ap < 0 {
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
