//! Projection `balances` (table `balances`): one row per credit account with its pools and
//! totals, as after the last event applied. [`BalanceState::apply`] is the one fold of
//! credit events into pools and totals: this projection uses it per batch, and the
//! point-in-time balance (`credits::history::balance_at`) over an account's stream.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::NaiveDate;

use super::Projection;
use crate::db::{DbTime, DbTx};
use crate::domain::Credits;
use crate::events::RecordedEvent;
use crate::events::credits::{Balances, CreditEvent, GrantSource};
use crate::insert_rows;

/// The `balances` read model: one row per credit account with its pools and totals.
pub struct BalancesProjection;

/// An account's pools and totals as a fold of its credit events ([`Self::apply`]), from
/// [`Default`] (an account before its first event).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalanceState {
    /// The pools after the last event folded in.
    pub balances: Balances,
    /// Every credit added: grants of either pool, purchases and positive adjustments.
    pub total_earned: Credits,
    /// Credits used, less refunds.
    pub total_spent: Credits,
    /// The last day whose free credits were granted (the registration day counts).
    pub grant_day: Option<NaiveDate>,
}

impl BalanceState {
    /// Folds one event in. Pools are taken from the event (each carries the balances
    /// after it); totals add up. Folded from the default over part of a stream, the
    /// totals are that part's deltas (how the projection upserts a batch).
    pub fn apply(&mut self, event: &CreditEvent) {
        match event {
            CreditEvent::CreditAccountOpened { granted_day, .. } => self.grant_day = Some(*granted_day),
            CreditEvent::CreditsGranted { source, amount, after, .. } => {
                if let GrantSource::Daily { day } = source {
                    self.grant_day = Some(*day);
                }
                self.balances = *after;
                self.total_earned += *amount;
            }
            CreditEvent::CreditsSpent { amount, after, .. } => {
                self.balances = *after;
                self.total_spent += *amount;
            }
            CreditEvent::CreditsRefunded { amount, after, .. } => {
                self.balances = *after;
                self.total_spent -= *amount;
            }
            CreditEvent::CreditsAdjusted { amount, after, .. } => {
                self.balances = *after;
                self.total_earned += (*amount).max(Credits::ZERO);
            }
            CreditEvent::CreditsPurchased { amount, after, .. } => {
                self.balances = *after;
                self.total_earned += *amount;
            }
            CreditEvent::PurchaseCreditsReversed { after, .. } => self.balances = *after,
        }
    }
}

/// A row as the batch leaves it: totals are the batch's deltas until the upsert adds them.
#[derive(Default)]
struct Row {
    state: BalanceState,
    at: Option<DbTime>,
}

const UPSERT: &str = " ON CONFLICT (user_id) DO UPDATE SET \
    balance = excluded.balance, \
    free_credits_remaining = excluded.free_credits_remaining, \
    total_earned = balances.total_earned + excluded.total_earned, \
    total_spent = balances.total_spent + excluded.total_spent, \
    last_daily_grant_day = COALESCE(excluded.last_daily_grant_day, balances.last_daily_grant_day), \
    updated_at = excluded.updated_at";

#[async_trait]
impl Projection for BalancesProjection {
    fn name(&self) -> &'static str {
        "balances"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["balances"]
    }

    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        // One upsert per account touched by the batch, in first-touch order.
        let mut order: Vec<String> = Vec::new();
        let mut rows: HashMap<String, Row> = HashMap::new();
        for event in events.iter().filter(|e| e.aggregate_type == "credit_account") {
            let user = &event.aggregate_id;
            if !rows.contains_key(user) {
                order.push(user.clone());
            }
            let row = rows.entry(user.clone()).or_default();
            row.at = Some(DbTime(event.recorded_at));
            row.state.apply(&event.decode::<CreditEvent>()?);
        }
        let rows: Vec<(String, Row)> =
            order.into_iter().filter_map(|u| rows.remove(&u).map(|r| (u, r))).collect();
        insert_rows!(
            tx,
            "balances",
            &rows,
            |r| {
                "user_id": "text" = r.0.clone(),
                "balance": "bigint" = r.1.state.balances.paid.get(),
                "free_credits_remaining": "bigint" = r.1.state.balances.free.get(),
                "total_earned": "bigint" = r.1.state.total_earned.get(),
                "total_spent": "bigint" = r.1.state.total_spent.get(),
                "last_daily_grant_day": "date" = r.1.state.grant_day,
                "updated_at": "timestamptz" = r.1.at,
            },
            UPSERT
        )?;
        Ok(())
    }
}
