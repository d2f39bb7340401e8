//! Events of the credit account (one per user). Every event that moves credits carries
//! the amounts per pool and the resulting balances, so the transaction history is a
//! projection of the log.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The two pools of credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Signup bonus, daily grants, promotional grants: spent first.
    Free,
    /// Purchased credits.
    Paid,
}

/// Why credits were granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    pub free: i64,
    pub paid: i64,
}

impl Balances {
    /// Paid plus free, as in the original's `balanceBefore`/`balanceAfter`.
    pub fn total(self) -> i64 {
        self.free + self.paid
    }

    /// The balances with `amount` added to `pool` (negative takes away).
    pub fn plus(self, pool: Pool, amount: i64) -> Self {
        match pool {
            Pool::Free => Self { free: self.free + amount, ..self },
            Pool::Paid => Self { paid: self.paid + amount, ..self },
        }
    }
}

/// An idempotency key as recorded with the operation it made: the key, and the
/// fingerprint of the request (so that a different request under the same key is told
/// apart from a retry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUse {
    pub key: String,
    pub fingerprint: String,
}

/// Events of a credit account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CreditEvent {
    /// The account exists from registration on; `granted_day` is the day of the
    /// registration in the daily-grant time zone (counts as that day's grant).
    CreditAccountOpened { user_id: String, granted_day: NaiveDate, opened_at: DateTime<Utc> },
    CreditsGranted {
        transaction_id: String,
        source: GrantSource,
        pool: Pool,
        amount: i64,
        before: Balances,
        after: Balances,
        description: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<KeyUse>,
        granted_at: DateTime<Utc>,
    },
    CreditsSpent {
        transaction_id: String,
        amount: i64,
        from_free: i64,
        from_paid: i64,
        before: Balances,
        after: Balances,
        total_spent_after: i64,
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
        amount: i64,
        to_free: i64,
        to_paid: i64,
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
        amount: i64,
        before: Balances,
        after: Balances,
        actor: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<KeyUse>,
        adjusted_at: DateTime<Utc>,
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
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Events of an operator's idempotency key: one stream per operator and key
/// (`commands::operator_key`), so that an admin key is scoped to the operator who sent
/// it, whichever account the request targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
        "1".to_owned()
    }
}
