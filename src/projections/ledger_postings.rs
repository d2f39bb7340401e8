//! Projection `ledger_postings` (table `ledger_postings`): the credit ledger in double
//! entry, two or more postings per credit-moving event on the accounts of the chart
//! ([`chart`](super::chart)), summing to zero per transaction. Each posting keeps its
//! event's cursor, so every read here is "as of" a cursor: the trial balance at any
//! point of the log, and usage per app, day or user.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Projection;
use super::chart::{USAGE_PREFIX, postings_of};
use super::ledger::{Kind, transaction_of};
use crate::db::{Db, DbTime, DbTx};
use crate::domain::Credits;
use crate::events::credits::CreditEvent;
use crate::events::{LogCursor, RecordedEvent};
use crate::insert_rows;

/// The `ledger_postings` projection.
pub struct LedgerPostings;

/// Its name (the checkpoint's key).
pub const NAME: &str = "ledger_postings";

/// A posting row before it is written.
struct PostingRow {
    transaction_id: String,
    line: i32,
    cursor: LogCursor,
    user_id: String,
    kind: Kind,
    account: String,
    amount: Credits,
    app_id: Option<String>,
    at: DateTime<Utc>,
}

/// A posting's id: its transaction's id and its line number (from 1).
fn posting_id(transaction_id: &str, line: i32) -> String {
    format!("{transaction_id}:{line}")
}

#[async_trait]
impl Projection for LedgerPostings {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["ledger_postings"]
    }

    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let mut credit = Vec::new();
        for event in events.iter().filter(|e| e.aggregate_type == "credit_account") {
            if event.event_type != "CreditAccountOpened" {
                credit.push((event, event.decode::<CreditEvent>()?));
            }
        }
        let apps = refunded_apps(tx, &credit).await?;
        let mut rows = Vec::new();
        for (event, decoded) in &credit {
            let Some(transaction) = transaction_of(&event.aggregate_id, decoded) else { continue };
            let app_id = match decoded {
                CreditEvent::CreditsSpent { app_id, .. } => Some(app_id.clone()),
                CreditEvent::CreditsRefunded { refunded_transaction_id, .. } => {
                    apps.get(refunded_transaction_id).cloned()
                }
                _ => None,
            };
            let postings = postings_of(&event.aggregate_id, decoded, app_id.as_deref());
            for (line, posting) in (1..).zip(postings) {
                rows.push(PostingRow {
                    transaction_id: transaction.id.clone(),
                    line,
                    cursor: event.cursor,
                    user_id: transaction.user_id.clone(),
                    kind: transaction.kind,
                    account: posting.account.to_string(),
                    amount: posting.amount,
                    app_id: app_id.clone(),
                    at: transaction.at,
                });
            }
        }
        insert_rows!(tx, "ledger_postings", &rows, |r| {
            "id": "text" = posting_id(&r.transaction_id, r.line),
            "transaction_id": "text" = r.transaction_id.clone(),
            "line": "integer" = r.line,
            "txid": "bigint" = r.cursor.txid,
            "position": "bigint" = r.cursor.position,
            "user_id": "text" = r.user_id.clone(),
            "type": "text" = r.kind.as_str(),
            "account": "text" = r.account.clone(),
            "amount": "bigint" = r.amount.get(),
            "app_id": "text" = r.app_id.clone(),
            "created_at": "timestamptz" = DbTime(r.at),
        })?;
        Ok(())
    }
}

/// The app of every spend refunded in the batch: from the spends of the batch itself, else
/// from this table's first posting of the spend (written by an earlier batch). A spend the
/// ledger does not have is left out.
async fn refunded_apps(
    tx: &mut DbTx,
    credit: &[(&RecordedEvent, CreditEvent)],
) -> anyhow::Result<HashMap<String, String>> {
    let mut apps = HashMap::new();
    let mut wanted = Vec::new();
    for (_, event) in credit {
        match event {
            CreditEvent::CreditsSpent { transaction_id, app_id, .. } => {
                apps.insert(transaction_id.clone(), app_id.clone());
            }
            CreditEvent::CreditsRefunded { refunded_transaction_id, .. } => {
                wanted.push(refunded_transaction_id.clone());
            }
            _ => {}
        }
    }
    let sql = "SELECT app_id FROM ledger_postings WHERE id = $1";
    for spend in wanted {
        if apps.contains_key(&spend) {
            continue;
        }
        let id = posting_id(&spend, 1);
        let app: Option<Option<String>> = match tx {
            DbTx::Postgres(tx) => sqlx::query_scalar(sql).bind(id).fetch_optional(&mut **tx).await?,
            DbTx::Sqlite(tx) => sqlx::query_scalar(sql).bind(id).fetch_optional(&mut **tx).await?,
        };
        if let Some(app) = app.flatten() {
            apps.insert(spend, app);
        }
    }
    Ok(apps)
}

/// Every account's balance at `cursor` (the sum of its postings of events up to and
/// including it), by account text in byte order; accounts without postings by then are
/// absent.
pub async fn balances_at(db: &Db, cursor: LogCursor) -> anyhow::Result<Vec<(String, Credits)>> {
    let sql = "SELECT account, CAST(SUM(amount) AS BIGINT) FROM ledger_postings \
               WHERE (txid, position) <= ($1, $2) GROUP BY account";
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(cursor.txid)
                .bind(cursor.position)
                .fetch_all($pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, Credits::new(r.try_get(1)?))))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        };
    }
    let mut balances = match db {
        Db::Postgres(pool) => fetch!(pool),
        Db::Sqlite { reader, .. } => fetch!(reader),
    };
    balances.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(balances)
}

/// How usage figures are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// The UTC day of the spend or refund (`YYYY-MM-DD`).
    Day,
    App,
    User,
}

impl GroupBy {
    /// The name in `?groupBy=` and in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::App => "app",
            Self::User => "user",
        }
    }
}

/// Which spends and refunds usage figures count: an app (or every app) and a period
/// `[from, to)` of their times (open where `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageFilter {
    pub app_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub group_by: GroupBy,
}

/// The figures of one group: credits used by spends and returned by refunds, and how
/// many of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub key: String,
    pub used: Credits,
    pub refunded: Credits,
    pub spends: i64,
    pub refunds: i64,
}

/// Usage figures at `cursor`: the postings of spends and refunds on the apps' usage
/// accounts, grouped, in key order (byte order).
pub async fn usage(db: &Db, filter: &UsageFilter, cursor: LogCursor) -> anyhow::Result<Vec<UsageRow>> {
    let key = match (filter.group_by, db) {
        (GroupBy::Day, Db::Postgres(_)) => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        // SQLite keeps times as UTC RFC 3339 text: the day is its first ten characters.
        (GroupBy::Day, Db::Sqlite { .. }) => "substr(created_at, 1, 10)",
        (GroupBy::App, _) => "app_id",
        (GroupBy::User, _) => "user_id",
    };
    let (usage, refund) = (Kind::Usage.as_str(), Kind::Refund.as_str());
    let sql = format!(
        "SELECT {key}, \
                CAST(COALESCE(SUM(CASE WHEN type = '{usage}' THEN amount END), 0) AS BIGINT), \
                CAST(COALESCE(-SUM(CASE WHEN type = '{refund}' THEN amount END), 0) AS BIGINT), \
                CAST(COUNT(CASE WHEN type = '{usage}' THEN 1 END) AS BIGINT), \
                CAST(COUNT(CASE WHEN type = '{refund}' THEN 1 END) AS BIGINT) \
           FROM ledger_postings \
          WHERE app_id IS NOT NULL AND account = '{prefix}' || app_id \
            AND (txid, position) <= ($1, $2) \
            AND ($3 IS NULL OR app_id = $3) \
            AND ($4 IS NULL OR created_at >= $4) \
            AND ($5 IS NULL OR created_at < $5) \
          GROUP BY 1",
        prefix = USAGE_PREFIX
    );
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(&sql)
                .bind(cursor.txid)
                .bind(cursor.position)
                .bind(filter.app_id.as_deref())
                .bind(filter.from.map(DbTime))
                .bind(filter.to.map(DbTime))
                .fetch_all($pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(UsageRow {
                        key: r.try_get(0)?,
                        used: Credits::new(r.try_get(1)?),
                        refunded: Credits::new(r.try_get(2)?),
                        spends: r.try_get(3)?,
                        refunds: r.try_get(4)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        };
    }
    let mut rows = match db {
        Db::Postgres(pool) => fetch!(pool),
        Db::Sqlite { reader, .. } => fetch!(reader),
    };
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}
