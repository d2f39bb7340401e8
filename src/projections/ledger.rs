//! The ledger view of credit events: one transaction per credit-moving event, in the
//! original service's shape. The `credit_transactions` projection and the API's answers
//! (including idempotent replays) both come from [`transaction_of`].

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::Credits;
use crate::events::credits::{CreditEvent, GrantSource, Pool};

/// A transaction's type, as in the original.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bonus,
    Usage,
    Refund,
    Adjustment,
    Purchase,
}

impl Kind {
    /// The name in the API and the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bonus => "bonus",
            Self::Usage => "usage",
            Self::Refund => "refund",
            Self::Adjustment => "adjustment",
            Self::Purchase => "purchase",
        }
    }
}

/// One ledger line.
#[derive(Clone, Debug, PartialEq)]
pub struct Transaction {
    pub id: String,
    pub user_id: String,
    pub kind: Kind,
    /// Signed: negative for usage.
    pub amount: Credits,
    /// Paid + free before and after.
    pub balance_before: Credits,
    pub balance_after: Credits,
    pub app_id: String,
    pub description: String,
    pub metadata: Option<Value>,
    pub idempotency_key: Option<String>,
    pub at: DateTime<Utc>,
}

/// The `appId` of purchase lines and their refunds.
pub const STRIPE_APP: &str = "stripe";

/// Keys are stored namespaced: `use:<key>` for a user's spends, `admin:<actor>:<key>` for
/// admin operations (actors are UUIDs, without colons).
pub fn user_key(key: &str) -> String {
    format!("use:{key}")
}

/// The namespaced key of an admin operation.
pub fn admin_key(actor: &str, key: &str) -> String {
    format!("admin:{actor}:{key}")
}

/// The key as the client sent it.
pub fn client_key(namespaced: &str) -> &str {
    if let Some(key) = namespaced.strip_prefix("use:") {
        return key;
    }
    namespaced.strip_prefix("admin:").and_then(|rest| rest.split_once(':')).map_or(namespaced, |(_, key)| key)
}

/// The ledger line of a credit event (`None` for events that move nothing).
pub fn transaction_of(user_id: &str, event: &CreditEvent) -> Option<Transaction> {
    let client_key =
        |key: &Option<crate::events::credits::KeyUse>| key.as_ref().map(|k| client_key(&k.key).to_owned());
    let line = |id: &str, kind, amount, before: Credits, after: Credits, app: &str, description: &str, at| {
        Transaction {
            id: id.to_owned(),
            user_id: user_id.to_owned(),
            kind,
            amount,
            balance_before: before,
            balance_after: after,
            app_id: app.to_owned(),
            description: description.to_owned(),
            metadata: None,
            idempotency_key: None,
            at,
        }
    };
    Some(match event {
        CreditEvent::CreditAccountOpened { .. } => return None,
        CreditEvent::CreditsGranted {
            transaction_id,
            source,
            pool,
            amount,
            before,
            after,
            description,
            key,
            granted_at,
        } => {
            let (kind, app) = match (source, pool) {
                (GrantSource::Admin { .. }, Pool::Paid) => (Kind::Adjustment, "admin"),
                (GrantSource::Admin { .. }, Pool::Free) => (Kind::Bonus, "admin"),
                _ => (Kind::Bonus, "system"),
            };
            let mut t = line(
                transaction_id,
                kind,
                *amount,
                before.total(),
                after.total(),
                app,
                description,
                *granted_at,
            );
            t.idempotency_key = client_key(key);
            t
        }
        CreditEvent::CreditsSpent {
            transaction_id,
            amount,
            before,
            after,
            app_id,
            description,
            metadata,
            key,
            spent_at,
            ..
        } => {
            let mut t = line(
                transaction_id,
                Kind::Usage,
                -*amount,
                before.total(),
                after.total(),
                app_id,
                description,
                *spent_at,
            );
            t.metadata = metadata.clone();
            t.idempotency_key = client_key(key);
            t
        }
        CreditEvent::CreditsRefunded {
            transaction_id,
            refunded_transaction_id,
            amount,
            before,
            after,
            reason,
            key,
            refunded_at,
            ..
        } => {
            let mut t = line(
                transaction_id,
                Kind::Refund,
                *amount,
                before.total(),
                after.total(),
                "admin",
                reason,
                *refunded_at,
            );
            t.metadata = Some(serde_json::json!({"refundedTransactionId": refunded_transaction_id}));
            t.idempotency_key = client_key(key);
            t
        }
        CreditEvent::CreditsAdjusted {
            transaction_id,
            pool,
            amount,
            before,
            after,
            reason,
            key,
            adjusted_at,
            ..
        } => {
            let mut t = line(
                transaction_id,
                Kind::Adjustment,
                *amount,
                before.total(),
                after.total(),
                "admin",
                reason,
                *adjusted_at,
            );
            t.metadata = Some(serde_json::json!({"pool": pool}));
            t.idempotency_key = client_key(key);
            t
        }
        CreditEvent::CreditsPurchased {
            transaction_id,
            purchase_id,
            package_id,
            amount,
            price_cents,
            payment_intent_id,
            before,
            after,
            purchased_at,
            ..
        } => {
            let description = format!("Credit purchase: {amount} credits");
            let mut t = line(
                transaction_id,
                Kind::Purchase,
                *amount,
                before.total(),
                after.total(),
                STRIPE_APP,
                &description,
                *purchased_at,
            );
            t.metadata = Some(serde_json::json!({
                "purchaseId": purchase_id,
                "packageId": package_id,
                "stripePaymentIntentId": payment_intent_id,
                "priceEuroCents": price_cents,
            }));
            t
        }
        CreditEvent::PurchaseCreditsReversed {
            transaction_id,
            purchase_id,
            amount,
            cause,
            before,
            after,
            reversed_at,
        } => {
            let description = match cause.as_str() {
                "dispute_withdrawn" => "Purchase disputed",
                "dispute_reinstated" => "Dispute resolved: credits reinstated",
                _ => "Purchase refunded",
            };
            let mut t = line(
                transaction_id,
                Kind::Refund,
                -*amount,
                before.total(),
                after.total(),
                STRIPE_APP,
                description,
                *reversed_at,
            );
            t.metadata = Some(serde_json::json!({"purchaseId": purchase_id, "cause": cause}));
            t
        }
    })
}
