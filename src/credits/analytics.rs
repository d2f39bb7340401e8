//! Analytics over the double-entry ledger (`projections::ledger_postings`): the trial
//! balance at a point of the log, and usage figures per day, app or user. Both answer as
//! of one cursor of the log and name it, so the same question at that cursor always
//! gets the same answer; the route and `mana-core-auth ledger trial-balance` share them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::input::Point;
use crate::domain::Credits;
use crate::events::{EventStore, LogCursor};
use crate::projections::Projector;
use crate::projections::ledger_postings::{self, NAME, UsageFilter};

/// One account of the trial balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct AccountBalance {
    /// An account of the chart (docs/PROJECTIONS.md), e.g. `user:<id>:free`,
    /// `system:usage:chat`.
    pub account: String,
    /// The sum of its postings up to the cursor: what a user account holds; negative for
    /// the sources that issued credits.
    #[schema(value_type = i64)]
    pub balance: Credits,
}

/// Every account's balance at one cursor of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrialBalance {
    /// The point answered (`txid:position`): every event up to and including it, none
    /// after. Asking again with `at` set to it gives the same accounts.
    pub cursor: String,
    /// The cursor asked for (`at`, or the cursor `at`'s time resolved to); null without
    /// `at`. When it is later than `cursor`, the ledger had not reached it within the wait:
    /// the answer is at `cursor`, the furthest it had got.
    pub requested_cursor: Option<String>,
    /// Every account with postings by then, in byte order of its name.
    pub accounts: Vec<AccountBalance>,
    /// The sum of every balance: 0 unless an event's parts do not add up.
    #[schema(value_type = i64)]
    pub total: Credits,
}

/// The trial balance at `at`: now is the ledger's own checkpoint; a cursor (or a time's
/// cursor) beyond it is waited for at most `wait`, then answered at the checkpoint.
pub async fn trial_balance(
    store: &EventStore,
    projector: &Projector,
    at: Point,
    wait: Duration,
) -> anyhow::Result<TrialBalance> {
    let requested = match at {
        Point::Now => None,
        Point::Cursor(cursor) => Some(cursor),
        Point::Time(time) => Some(store.cursor_recorded_by(time).await?),
    };
    let mut checkpoint = projector.checkpoint(NAME).await?;
    if let Some(wanted) = requested.filter(|wanted| *wanted > checkpoint && !wait.is_zero()) {
        // Nothing past the log's committed head can arrive by waiting.
        let target = wanted.min(store.committed_head().await?);
        if let Some(mut progress) = projector.subscribe(NAME).filter(|_| target > checkpoint) {
            let _ = tokio::time::timeout(wait, progress.wait_for(|at| *at >= target)).await;
        }
        checkpoint = projector.checkpoint(NAME).await?;
    }
    let cursor = requested.map_or(checkpoint, |wanted| wanted.min(checkpoint));
    let accounts: Vec<AccountBalance> = ledger_postings::balances_at(store.db(), cursor)
        .await?
        .into_iter()
        .map(|(account, balance)| AccountBalance { account, balance })
        .collect();
    Ok(TrialBalance {
        cursor: cursor.to_string(),
        requested_cursor: requested.map(|c| c.to_string()),
        total: accounts.iter().map(|a| a.balance).sum(),
        accounts,
    })
}

/// Credits used and refunded, and how many spends and refunds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageFigures {
    /// Credits spent.
    #[schema(value_type = i64)]
    pub credits_used: Credits,
    /// Credits of those spends given back by refunds in the period (refunds count when
    /// they happen, wherever their spend falls).
    #[schema(value_type = i64)]
    pub credits_refunded: Credits,
    /// Used less refunded.
    #[schema(value_type = i64)]
    pub net_credits_used: Credits,
    pub spends: i64,
    pub refunds: i64,
}

/// One group of usage figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageGroup {
    /// The day (`YYYY-MM-DD`, UTC), the app id or the user id, as `groupBy` says.
    pub key: String,
    #[serde(flatten)]
    pub figures: UsageFigures,
}

/// Usage figures over a period, grouped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// The point of the log the figures are at (`txid:position`).
    pub cursor: String,
    /// The app counted; null for every app.
    pub app_id: Option<String>,
    /// The period `[from, to)`; null ends are open.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// `day`, `app` or `user`.
    pub group_by: &'static str,
    /// The groups with any spend or refund, in key order.
    pub groups: Vec<UsageGroup>,
    /// The sum of the groups.
    pub total: UsageFigures,
}

/// Why a caller limited to its own app is refused usage figures.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageRefusal {
    #[error("This service account is bound to no app (SERVICE_APPS)")]
    NotBound,
    #[error("This service account may only read the figures of its own app, {own}")]
    OtherApp { own: String },
}

/// Narrows a usage request to the caller's own app (`own`, from `SERVICE_APPS`): a
/// request without `appId` gets that app; one naming another app is refused, as is a
/// caller bound to no app.
pub fn own_app_only(filter: &mut UsageFilter, own: Option<&str>) -> Result<(), UsageRefusal> {
    let own = own.ok_or(UsageRefusal::NotBound)?;
    match filter.app_id.as_deref() {
        Some(asked) if asked != own => Err(UsageRefusal::OtherApp { own: own.to_owned() }),
        _ => {
            filter.app_id = Some(own.to_owned());
            Ok(())
        }
    }
}

/// Usage figures at the ledger's checkpoint.
pub async fn usage(
    store: &EventStore,
    projector: &Projector,
    filter: UsageFilter,
) -> anyhow::Result<UsageReport> {
    let cursor: LogCursor = projector.checkpoint(NAME).await?;
    let rows = ledger_postings::usage(store.db(), &filter, cursor).await?;
    let figures = |used: Credits, refunded: Credits, spends, refunds| UsageFigures {
        credits_used: used,
        credits_refunded: refunded,
        net_credits_used: used - refunded,
        spends,
        refunds,
    };
    let groups: Vec<UsageGroup> = rows
        .into_iter()
        .map(|r| UsageGroup { key: r.key, figures: figures(r.used, r.refunded, r.spends, r.refunds) })
        .collect();
    let sum = |f: fn(&UsageFigures) -> Credits| groups.iter().map(|g| f(&g.figures)).sum::<Credits>();
    let total = figures(
        sum(|f| f.credits_used),
        sum(|f| f.credits_refunded),
        groups.iter().map(|g| g.figures.spends).sum(),
        groups.iter().map(|g| g.figures.refunds).sum(),
    );
    Ok(UsageReport {
        cursor: cursor.to_string(),
        app_id: filter.app_id,
        from: filter.from,
        to: filter.to,
        group_by: filter.group_by.as_str(),
        groups,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projections::ledger_postings::GroupBy;

    fn filter(app: Option<&str>) -> UsageFilter {
        UsageFilter { app_id: app.map(str::to_owned), from: None, to: None, group_by: GroupBy::App }
    }

    #[test]
    fn a_service_gets_its_own_app_and_nothing_else() {
        let mut none = filter(None);
        assert_eq!(own_app_only(&mut none, Some("chat")), Ok(()));
        assert_eq!(none.app_id.as_deref(), Some("chat"));
        let mut own = filter(Some("chat"));
        assert_eq!(own_app_only(&mut own, Some("chat")), Ok(()));
        let mut other = filter(Some("picture"));
        assert_eq!(
            own_app_only(&mut other, Some("chat")),
            Err(UsageRefusal::OtherApp { own: "chat".into() })
        );
        assert_eq!(own_app_only(&mut filter(None), None), Err(UsageRefusal::NotBound));
    }
}
