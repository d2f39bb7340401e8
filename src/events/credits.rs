//! Events of the credit account (one per user). Every event that moves credits carries
//! the amounts per pool and the resulting balances, so the transaction history is a
//! projection of the log.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

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
        granted_at: DateTime<Utc>,
    },
}

impl DomainEvent for CreditEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CreditAccountOpened { .. } => "CreditAccountOpened",
            Self::CreditsGranted { .. } => "CreditsGranted",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
