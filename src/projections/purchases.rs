//! Projection `purchases` (tables `purchases` and `stripe_events`): one row per purchase
//! with its package as bought, status and credits taken back; one row per Stripe event
//! received, with what was done with it (the auditor's match against Stripe's dashboard,
//! and the webhooks for unknown PaymentIntents awaiting review).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Projection;
use crate::db::{Db, DbTime, DbTx};
use crate::events::RecordedEvent;
use crate::events::purchases::{PurchaseEvent, StripeEventEvent, WebhookOutcome};
use crate::exec;

/// The `purchases` read model.
pub struct Purchases;

#[async_trait]
impl Projection for Purchases {
    fn name(&self) -> &'static str {
        "purchases"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["purchases", "stripe_events"]
    }

    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for event in events {
            let applied = match event.aggregate_type.as_str() {
                "purchase" => apply_purchase(tx, event).await,
                "stripe_event" => apply_receipt(tx, event).await,
                _ => Ok(()),
            };
            applied.map_err(|e| super::on_event(e, event))?;
        }
        Ok(())
    }
}

/// The status of a completed purchase with `refunded` of `credits` taken back.
const REFUND_STATUS: &str = "CASE WHEN status IN ('completed', 'refunded', 'partially_refunded') THEN \
     (CASE WHEN credits_refunded + $2 >= credits AND credits_refunded + $2 > 0 THEN 'refunded' \
           WHEN credits_refunded + $2 > 0 THEN 'partially_refunded' ELSE 'completed' END) \
     ELSE status END";

async fn apply_purchase(tx: &mut DbTx, event: &RecordedEvent) -> anyhow::Result<()> {
    let id = &event.aggregate_id;
    let at = DbTime(event.recorded_at);
    match event.decode::<PurchaseEvent>()? {
        PurchaseEvent::PurchaseStarted { user_id, package, started_at, .. } => {
            exec!(
                tx,
                "INSERT INTO purchases (id, user_id, package_id, package_name, credits, price_euro_cents, \
                     currency, status, failure_reason, stripe_payment_intent_id, credits_refunded, \
                     needs_review, created_at, completed_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', NULL, NULL, 0, false, $8, NULL, $8)",
                id,
                user_id,
                package.id,
                package.name,
                package.credits.get(),
                package.price_euro_cents,
                package.currency,
                DbTime(started_at)
            )?;
        }
        PurchaseEvent::PaymentIntentCreated { payment_intent_id, .. } => {
            exec!(
                tx,
                "UPDATE purchases SET stripe_payment_intent_id = $2, updated_at = $3 WHERE id = $1",
                id,
                payment_intent_id,
                at
            )?;
        }
        PurchaseEvent::PurchaseFailed { reason, .. } => {
            exec!(
                tx,
                "UPDATE purchases SET status = 'failed', failure_reason = $2, updated_at = $3 WHERE id = $1",
                id,
                reason.as_str(),
                at
            )?;
        }
        PurchaseEvent::PurchaseCompleted { payment_intent_id, completed_at, .. } => {
            exec!(
                tx,
                "UPDATE purchases SET status = 'completed', failure_reason = NULL, needs_review = false, \
                     stripe_payment_intent_id = COALESCE(stripe_payment_intent_id, $2), completed_at = $3, \
                     updated_at = $3 WHERE id = $1",
                id,
                payment_intent_id,
                DbTime(completed_at)
            )?;
        }
        PurchaseEvent::PurchaseMismatched { .. } => {
            exec!(tx, "UPDATE purchases SET needs_review = true, updated_at = $2 WHERE id = $1", id, at)?;
        }
        PurchaseEvent::PurchaseReversed { credits, .. } => {
            let sql = format!(
                "UPDATE purchases SET status = {REFUND_STATUS}, credits_refunded = credits_refunded + $2, \
                     updated_at = $3 WHERE id = $1"
            );
            exec!(tx, &sql, id, credits.get(), at)?;
        }
    }
    Ok(())
}

async fn apply_receipt(tx: &mut DbTx, event: &RecordedEvent) -> anyhow::Result<()> {
    let StripeEventEvent::StripeEventReceived {
        stripe_event_id,
        event_type,
        created,
        payment_intent_id,
        purchase_id,
        outcome,
        received_at,
    } = event.decode::<StripeEventEvent>()?;
    exec!(
        tx,
        "INSERT INTO stripe_events (id, position, event_type, created, payment_intent_id, purchase_id, outcome, \
             received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        stripe_event_id,
        event.cursor.position,
        event_type,
        created,
        payment_intent_id,
        purchase_id,
        outcome.as_str(),
        DbTime(received_at)
    )?;
    Ok(())
}

/// A purchase as the read model holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct PurchaseRow {
    pub id: String,
    pub user_id: String,
    pub package_id: String,
    pub credits: i64,
    pub price_euro_cents: i64,
    pub currency: String,
    pub status: String,
    pub failure_reason: Option<String>,
    pub stripe_payment_intent_id: Option<String>,
    pub credits_refunded: i64,
    pub needs_review: bool,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A Stripe event received for a PaymentIntent that is not one of ours.
#[derive(Clone, Debug, PartialEq)]
pub struct UnknownIntent {
    pub stripe_event_id: String,
    pub event_type: String,
    pub payment_intent_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// Which purchases to list.
#[derive(Clone, Debug, Default)]
pub struct PurchaseFilter {
    pub user_id: Option<String>,
    /// A status, or `needs_review` for the mismatched ones.
    pub status: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

const COLUMNS: &str = "id, user_id, package_id, credits, price_euro_cents, currency, status, failure_reason, \
     stripe_payment_intent_id, credits_refunded, needs_review, created_at, completed_at";

/// Purchases matching `filter`, newest first.
pub async fn list(db: &Db, filter: &PurchaseFilter) -> anyhow::Result<Vec<PurchaseRow>> {
    let review = filter.status.as_deref() == Some("needs_review");
    let status = if review { None } else { filter.status.as_deref() };
    let sql = format!(
        "SELECT {COLUMNS} FROM purchases WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR status = $2) \
           AND ($3 = false OR needs_review = true) \
         ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
    );
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(&sql)
                .bind(filter.user_id.as_deref())
                .bind(status)
                .bind(review)
                .bind(filter.limit)
                .bind(filter.offset)
                .fetch_all($pool)
                .await?
                .iter()
                .map(row_of)
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        };
    }
    Ok(match db {
        Db::Postgres(pool) => fetch!(pool),
        Db::Sqlite { reader, .. } => fetch!(reader),
    })
}

/// One purchase.
pub async fn get(db: &Db, purchase_id: &str) -> anyhow::Result<Option<PurchaseRow>> {
    let sql = format!("SELECT {COLUMNS} FROM purchases WHERE id = $1");
    Ok(match db {
        Db::Postgres(pool) => {
            sqlx::query(&sql).bind(purchase_id).fetch_optional(pool).await?.as_ref().map(row_of)
        }
        Db::Sqlite { reader, .. } => {
            sqlx::query(&sql).bind(purchase_id).fetch_optional(reader).await?.as_ref().map(row_of)
        }
    }
    .transpose()?)
}

/// Pending purchases started before `before` (the expiry job's candidates), oldest first.
pub async fn pending_before(db: &Db, before: DateTime<Utc>, limit: i64) -> anyhow::Result<Vec<String>> {
    let sql =
        "SELECT id FROM purchases WHERE status = 'pending' AND created_at <= $1 ORDER BY created_at LIMIT $2";
    Ok(match db {
        Db::Postgres(pool) => {
            sqlx::query_scalar(sql).bind(DbTime(before)).bind(limit).fetch_all(pool).await?
        }
        Db::Sqlite { reader, .. } => {
            sqlx::query_scalar(sql).bind(DbTime(before)).bind(limit).fetch_all(reader).await?
        }
    })
}

/// Webhooks for PaymentIntents that are not ours, newest first.
pub async fn unknown_intents(db: &Db, limit: i64, offset: i64) -> anyhow::Result<Vec<UnknownIntent>> {
    let sql = format!(
        "SELECT id, event_type, payment_intent_id, received_at FROM stripe_events WHERE outcome = '{}' \
         ORDER BY position DESC LIMIT $1 OFFSET $2",
        WebhookOutcome::UnknownPaymentIntent.as_str()
    );
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(&sql)
                .bind(limit)
                .bind(offset)
                .fetch_all($pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(UnknownIntent {
                        stripe_event_id: r.try_get(0)?,
                        event_type: r.try_get(1)?,
                        payment_intent_id: r.try_get(2)?,
                        received_at: r.try_get::<DbTime, _>(3)?.0,
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

fn row_of<R>(r: &R) -> Result<PurchaseRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DbTime: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<DbTime>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(PurchaseRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        package_id: r.try_get("package_id")?,
        credits: r.try_get("credits")?,
        price_euro_cents: r.try_get("price_euro_cents")?,
        currency: r.try_get("currency")?,
        status: r.try_get("status")?,
        failure_reason: r.try_get("failure_reason")?,
        stripe_payment_intent_id: r.try_get("stripe_payment_intent_id")?,
        credits_refunded: r.try_get("credits_refunded")?,
        needs_review: r.try_get("needs_review")?,
        created_at: r.try_get::<DbTime, _>("created_at")?.0,
        completed_at: r.try_get::<Option<DbTime>, _>("completed_at")?.map(|t| t.0),
    })
}
