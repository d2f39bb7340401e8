//! Projection `usage_stats` (table `usage_stats`): per user, app and UTC day, the credits
//! spent and the number of spends (gross: refunds are not subtracted).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::NaiveDate;

use super::Projection;
use crate::db::DbTx;
use crate::domain::Credits;
use crate::events::RecordedEvent;
use crate::events::credits::CreditEvent;
use crate::insert_rows;

/// The `usage_stats` read model: credits spent per user, app and UTC day.
pub struct UsageStats;

#[async_trait]
impl Projection for UsageStats {
    fn name(&self) -> &'static str {
        "usage_stats"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["usage_stats"]
    }

    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let mut totals: HashMap<(String, String, NaiveDate), (Credits, i64)> = HashMap::new();
        let mut order = Vec::new();
        for event in
            events.iter().filter(|e| e.aggregate_type == "credit_account" && e.event_type == "CreditsSpent")
        {
            if let CreditEvent::CreditsSpent { amount, app_id, spent_at, .. } = event.decode()? {
                let key = (event.aggregate_id.clone(), app_id, spent_at.date_naive());
                let entry = totals.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    (Credits::ZERO, 0)
                });
                entry.0 += amount;
                entry.1 += 1;
            }
        }
        let rows: Vec<_> = order.into_iter().filter_map(|k| totals.remove(&k).map(|v| (k, v))).collect();
        insert_rows!(
            tx,
            "usage_stats",
            &rows,
            |r| {
                "user_id": "text" = r.0.0.clone(),
                "app_id": "text" = r.0.1.clone(),
                "day": "date" = r.0.2,
                "credits_used": "bigint" = r.1.0.get(),
                "spends": "bigint" = r.1.1,
            },
            " ON CONFLICT (user_id, app_id, day) DO UPDATE SET \
              credits_used = usage_stats.credits_used + excluded.credits_used, \
              spends = usage_stats.spends + excluded.spends"
        )?;
        Ok(())
    }
}
