//! Events of the credit account (one per user). Every event that moves credits carries
//! the amounts per pool and the resulting balances, so the transaction history is a
//! projection of the log.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::Credits;

/// The two pools of credits.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Signup bonus, daily grants, promotional grants: spent first.
    Free,
    /// Purchased credits.
    Paid,
}

/// Why credits were granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GrantSource {
    SignupBonus,
    /// The daily free credits of `day` (in the daily-grant time zone).
    Daily {
        day: NaiveDate,
    },
    /// An admin or service grant.
    Admin {
        actor: String,
        reason: String,
    },
}

/// Balances after an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Balances {
    pub free: Credits,
    pub paid: Credits,
}

impl Balances {
    /// Paid plus free, as in the original's `balanceBefore`/`balanceAfter`.
    pub fn total(self) -> Credits {
        self.free + self.paid
    }

    /// The balances with `amount` added to `pool` (negative takes away).
    pub fn plus(self, pool: Pool, amount: Credits) -> Self {
        match pool {
            Pool::Free => Self { free: self.free + amount, ..self },
            Pool::Paid => Self { paid: self.paid + amount, ..self },
        }
    }
}

/// An idempotency key as recorded with the operation it made: the key, and the
/// fingerprint of the request (so that a different request under the same key is told
/// apart from a retry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeyUse {
    pub key: String,
    pub fingerprint: String,
}

/// Events of a credit account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CreditEvent {
    /// The account exists from registration on; `granted_day` is the day of the
    /// registration in the daily-grant time zone (counts as that day's grant).
    CreditAccountOpened { user_id: String, granted_day: NaiveDate, opened_at: DateTime<Utc> },
    CreditsGranted {
        transaction_id: String,
        source: GrantSource,
        pool: Pool,
        amount: Credits,
        before: Balances,
        after: Balances,
        description: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<KeyUse>,
        granted_at: DateTime<Utc>,
    },
    CreditsSpent {
        transaction_id: String,
        amount: Credits,
        from_free: Credits,
        from_paid: Credits,
        before: Balances,
        after: Balances,
        total_spent_after: Credits,
        app_id: String,
        description: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<KeyUse>,
        spent_at: DateTime<Utc>,
    },
    /// Credits of a spend given back, to the pools they came from (paid first).
    CreditsRefunded {
        transaction_id: String,
        refunded_transaction_id: String,
        amount: Credits,
        to_free: Credits,
        to_paid: Credits,
        before: Balances,
        after: Balances,
        actor: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<KeyUse>,
        refunded_at: DateTime<Utc>,
    },
    /// An admin correction of one pool (signed).
    CreditsAdjusted {
        transaction_id: String,
        pool: Pool,
        amount: Credits,
        before: Balances,
        after: Balances,
        actor: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<KeyUse>,
        adjusted_at: DateTime<Utc>,
    },
    /// Paid credits bought (`commands::purchase`): the paid pool rises by `amount`, which
    /// first fills a negative pool (a debt left by an earlier refund).
    CreditsPurchased {
        transaction_id: String,
        purchase_id: String,
        package_id: String,
        amount: Credits,
        price_cents: i64,
        currency: String,
        payment_intent_id: String,
        before: Balances,
        after: Balances,
        purchased_at: DateTime<Utc>,
    },
    /// Paid credits of a purchase taken back (`amount` positive: a refund or a dispute's
    /// withdrawal) or given again (negative: a dispute's reinstatement). The paid pool may
    /// go below zero: the credits were already spent, and the next purchase fills the debt.
    PurchaseCreditsReversed {
        transaction_id: String,
        purchase_id: String,
        amount: Credits,
        /// `refund`, `dispute_withdrawn` or `dispute_reinstated`.
        cause: String,
        before: Balances,
        after: Balances,
        reversed_at: DateTime<Utc>,
    },
}

impl DomainEvent for CreditEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CreditAccountOpened { .. } => "CreditAccountOpened",
            Self::CreditsGranted { .. } => "CreditsGranted",
            Self::CreditsSpent { .. } => "CreditsSpent",
            Self::CreditsRefunded { .. } => "CreditsRefunded",
            Self::CreditsAdjusted { .. } => "CreditsAdjusted",
            Self::CreditsPurchased { .. } => "CreditsPurchased",
            Self::PurchaseCreditsReversed { .. } => "PurchaseCreditsReversed",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        super::upcast::current_version(&self.event_type()).to_string()
    }
}

/// Events of an operator's idempotency key: one stream per operator and key
/// (`commands::operator_key`), so that an admin key is scoped to the operator who sent
/// it, whichever account the request targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OperatorKeyEvent {
    /// The operator used the key for a request: the request's fingerprint (which covers
    /// the operation, the target and the body) and the account it went to.
    OperatorKeyUsed {
        operator: String,
        key: String,
        fingerprint: String,
        user_id: String,
        used_at: DateTime<Utc>,
    },
}

impl DomainEvent for OperatorKeyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OperatorKeyUsed { .. } => "OperatorKeyUsed",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        super::upcast::current_version(&self.event_type()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events as the first release wrote them, with bare numbers for every amount: one
    /// of each kind, with and without the optional fields.
    const FIRST_RELEASE: [&str; 6] = [
        r#"{"CreditAccountOpened":{"user_id":"u-1","granted_day":"2026-11-20","opened_at":"2026-11-20T12:00:00Z"}}"#,
        r#"{"CreditsGranted":{"transaction_id":"t-1","source":{"kind":"signup_bonus"},"pool":"free","amount":150,"before":{"free":0,"paid":0},"after":{"free":150,"paid":0},"description":"Signup bonus","granted_at":"2026-11-20T12:00:00Z"}}"#,
        r#"{"CreditsGranted":{"transaction_id":"t-2","source":{"kind":"admin","actor":"a-1","reason":"why"},"pool":"paid","amount":1000000,"before":{"free":150,"paid":0},"after":{"free":150,"paid":1000000},"description":"why","key":{"key":"admin:a-1:k","fingerprint":"f"},"granted_at":"2026-11-20T12:00:01Z"}}"#,
        r#"{"CreditsSpent":{"transaction_id":"t-3","amount":160,"from_free":150,"from_paid":10,"before":{"free":150,"paid":1000000},"after":{"free":0,"paid":999990},"total_spent_after":160,"app_id":"chat","description":"a reply","metadata":{"model":"m"},"key":{"key":"use:k","fingerprint":"g"},"spent_at":"2026-11-21T00:00:00.123Z"}}"#,
        r#"{"CreditsRefunded":{"transaction_id":"t-4","refunded_transaction_id":"t-3","amount":12,"to_free":2,"to_paid":10,"before":{"free":0,"paid":999990},"after":{"free":2,"paid":1000000},"actor":"svc","reason":"failed","refunded_at":"2026-11-21T00:00:01Z"}}"#,
        r#"{"CreditsAdjusted":{"transaction_id":"t-5","pool":"paid","amount":-1000000,"before":{"free":2,"paid":1000000},"after":{"free":2,"paid":0},"actor":"a-1","reason":"fix","adjusted_at":"2026-11-21T00:00:02Z"}}"#,
    ];

    #[test]
    fn credit_events_of_the_first_release_decode_and_encode_to_the_same_json() {
        for json in FIRST_RELEASE {
            let event: CreditEvent = serde_json::from_str(json).expect(json);
            assert_eq!(serde_json::to_string(&event).expect("encode"), json);
        }
    }

    #[test]
    fn credit_amounts_decode_into_credits() {
        let CreditEvent::CreditsSpent { amount, from_free, from_paid, after, total_spent_after, .. } =
            serde_json::from_str(FIRST_RELEASE[3]).expect("a spend")
        else {
            panic!("not a spend");
        };
        assert_eq!((amount, from_free, from_paid), (Credits::new(160), Credits::new(150), Credits::new(10)));
        assert_eq!(after, Balances { free: Credits::ZERO, paid: Credits::new(999_990) });
        assert_eq!((after.total(), total_spent_after), (Credits::new(999_990), Credits::new(160)));
        let CreditEvent::CreditsAdjusted { amount, .. } =
            serde_json::from_str(FIRST_RELEASE[5]).expect("an adjustment")
        else {
            panic!("not an adjustment");
        };
        assert_eq!(amount, Credits::new(-1_000_000));
    }
}
