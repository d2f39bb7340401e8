//! Projection `balances` (table `balances`): one row per credit account with its pools and
//! totals, as after the last event applied.

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

/// A row as the batch leaves it (totals are deltas until written).
#[derive(Default)]
struct Row {
    balances: Balances,
    earned: Credits,
    spent: Credits,
    grant_day: Option<NaiveDate>,
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
            match event.decode::<CreditEvent>()? {
                CreditEvent::CreditAccountOpened { granted_day, .. } => row.grant_day = Some(granted_day),
                CreditEvent::CreditsGranted { source, amount, after, .. } => {
                    if let GrantSource::Daily { day } = source {
                        row.grant_day = Some(day);
                    }
                    row.balances = after;
                    row.earned += amount;
                }
                CreditEvent::CreditsSpent { amount, after, .. } => {
                    row.balances = after;
                    row.spent += amount;
                }
                CreditEvent::CreditsRefunded { amount, after, .. } => {
                    row.balances = after;
                    row.spent -= amount;
                }
                CreditEvent::CreditsAdjusted { amount, after, .. } => {
                    row.balances = after;
                    row.earned += amount.max(Credits::ZERO);
                }
            }
        }
        let rows: Vec<(String, Row)> =
            order.into_iter().filter_map(|u| rows.remove(&u).map(|r| (u, r))).collect();
        insert_rows!(
            tx,
            "balances",
            &rows,
            |r| {
                "user_id": "text" = r.0.clone(),
                "balance": "bigint" = r.1.balances.paid.get(),
                "free_credits_remaining": "bigint" = r.1.balances.free.get(),
                "total_earned": "bigint" = r.1.earned.get(),
                "total_spent": "bigint" = r.1.spent.get(),
                "last_daily_grant_day": "date" = r.1.grant_day,
                "updated_at": "timestamptz" = r.1.at,
            },
            UPSERT
        )?;
        Ok(())
    }
}
