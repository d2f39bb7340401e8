//! Projection `credit_transactions` (table `credit_transactions`): the ledger, one row
//! per credit-moving event, in the original's transaction shape. Each row keeps its
//! event's sequence in the account's stream, the order in which the account applied it,
//! so that a history listed by it chains: each row's balance before is the balance after
//! of the row below.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::Row;
use sqlx::types::Json;

use super::Projection;
use super::ledger::{Kind, Transaction, transaction_of};
use crate::db::{Db, DbTime, DbTx};
use crate::domain::Credits;
use crate::events::RecordedEvent;
use crate::events::credits::CreditEvent;
use crate::{exec, insert_rows};

/// The `credit_transactions` projection: fills the ledger table from credit account events.
pub struct CreditTransactions;

#[async_trait]
impl Projection for CreditTransactions {
    fn name(&self) -> &'static str {
        "credit_transactions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["credit_transactions"]
    }

    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        for event in events {
            match event.aggregate_type.as_str() {
                "credit_account" => {
                    if let Some(t) = transaction_of(&event.aggregate_id, &event.decode::<CreditEvent>()?) {
                        rows.push(((event.cursor.position, event.sequence), t));
                    }
                }
                // An erasure keeps the amounts, types, apps and times; the free text a user
                // sent (description, metadata, idempotency key) goes.
                "user" if event.event_type == "UserErased" => {
                    insert(tx, std::mem::take(&mut rows)).await?;
                    exec!(
                        tx,
                        "UPDATE credit_transactions SET description = '', metadata = NULL, idempotency_key = NULL \
                         WHERE user_id = $1",
                        &event.aggregate_id
                    )?;
                }
                _ => {}
            }
        }
        insert(tx, rows).await
    }
}

type Pending = ((i64, i64), Transaction);

async fn insert(tx: &mut DbTx, rows: Vec<Pending>) -> anyhow::Result<()> {
    {
        insert_rows!(tx, "credit_transactions", &rows, |r| {
            "id": "text" = r.1.id.clone(),
            "position": "bigint" = r.0.0,
            "sequence": "bigint" = r.0.1,
            "user_id": "text" = r.1.user_id.clone(),
            "type": "text" = r.1.kind.as_str(),
            "status": "text" = "completed",
            "amount": "bigint" = r.1.amount.get(),
            "balance_before": "bigint" = r.1.balance_before.get(),
            "balance_after": "bigint" = r.1.balance_after.get(),
            "app_id": "text" = r.1.app_id.clone(),
            "description": "text" = r.1.description.clone(),
            "metadata": "jsonb" = r.1.metadata.clone().map(Json),
            "idempotency_key": "text" = r.1.idempotency_key.clone(),
            "created_at": "timestamptz" = DbTime(r.1.at),
            "completed_at": "timestamptz" = DbTime(r.1.at),
        })?;
        Ok(())
    }
}

fn kind(text: &str) -> Kind {
    match text {
        "usage" => Kind::Usage,
        "refund" => Kind::Refund,
        "adjustment" => Kind::Adjustment,
        "purchase" => Kind::Purchase,
        _ => Kind::Bonus,
    }
}

/// A user's transactions, newest first: in the reverse of the order the account applied
/// them (its event sequence), whatever the clocks of the requests said.
pub async fn for_user(db: &Db, user_id: &str, limit: i64, offset: i64) -> anyhow::Result<Vec<Transaction>> {
    let sql = "SELECT id, user_id, type, amount, balance_before, balance_after, app_id, description, metadata, \
                      idempotency_key, created_at \
               FROM credit_transactions WHERE user_id = $1 \
               ORDER BY sequence DESC LIMIT $2 OFFSET $3";
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(user_id)
                .bind(limit)
                .bind(offset)
                .fetch_all($pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(Transaction {
                        id: r.try_get(0)?,
                        user_id: r.try_get(1)?,
                        kind: kind(&r.try_get::<String, _>(2)?),
                        amount: Credits::new(r.try_get(3)?),
                        balance_before: Credits::new(r.try_get(4)?),
                        balance_after: Credits::new(r.try_get(5)?),
                        app_id: r.try_get(6)?,
                        description: r.try_get(7)?,
                        metadata: r.try_get::<Option<Json<Value>>, _>(8)?.map(|j| j.0),
                        idempotency_key: r.try_get(9)?,
                        at: r.try_get::<DbTime, _>(10)?.0,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        };
    }
    Ok(match db {
        Db::Postgres(pool) => fetch!(pool),
        Db::Sqlite { reader, .. } => fetch!(reader),
    })
}

/// The user a transaction belongs to.
pub async fn owner(db: &Db, transaction_id: &str) -> anyhow::Result<Option<String>> {
    let sql = "SELECT user_id FROM credit_transactions WHERE id = $1";
    Ok(match db {
        Db::Postgres(pool) => sqlx::query_scalar(sql).bind(transaction_id).fetch_optional(pool).await?,
        Db::Sqlite { reader, .. } => {
            sqlx::query_scalar(sql).bind(transaction_id).fetch_optional(reader).await?
        }
    })
}
