//! The chart of accounts of the double-entry ledger, and the rules that post each credit
//! event to it (the `ledger_postings` projection writes what [`postings_of`] returns).
//!
//! A posting adds its signed amount to its account. Every event's postings sum to zero:
//! user accounts hold credits (a paid pool goes below zero only when a refunded
//! purchase's credits were already spent); the sources that issue credits
//! (`system:signup_bonus`, `system:daily_free`, `system:adjustments`, later
//! `system:purchases` and `system:import`) go negative by what they issued; the sinks
//! that take them (`system:usage:<app>`, later `system:purchase_refunds`) go positive.
//! So the balances of all accounts at any point of the log sum to exactly zero, and a
//! user's two accounts are that user's balances.
//!
//! A new kind of account is one variant here, with its text form in `Display` and
//! `FromStr` (a unit test round-trips every variant) and a line in docs/PROJECTIONS.md.

use std::fmt;
use std::str::FromStr;

use crate::domain::Credits;
use crate::events::credits::{CreditEvent, GrantSource, Pool};

/// An account of the chart. Its text form (`Display`, parsed back by `FromStr`) is what
/// the `account` column holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    /// `user:<id>:free` and `user:<id>:paid`: the credits a user holds in a pool.
    User { user_id: String, pool: Pool },
    /// `system:signup_bonus`: free credits given at registration.
    SignupBonus,
    /// `system:daily_free`: the daily free credits.
    DailyFree,
    /// `system:adjustments`: operators' grants and corrections (both pools).
    Adjustments,
    /// `system:usage:<appId>`: credits consumed by an app, less what was refunded.
    Usage { app_id: String },
    /// `system:refunds`: credits returned by operators for a spend whose app is not in
    /// the ledger (a spend older than the log, once an importer brings such history).
    /// A refund of a spend the ledger knows reverses `system:usage:<app>` instead.
    Refunds,
    /// `system:purchases`: paid credits sold.
    Purchases,
    /// `system:purchase_refunds`: paid credits taken back with a refunded or disputed
    /// purchase, less those given again when a dispute is won.
    PurchaseRefunds,
    /// `system:import`: opening balances and corrections brought in from another system
    /// (once an importer exists).
    Import,
}

/// The accounts without a parameter, in the order docs/PROJECTIONS.md lists them.
pub const SYSTEM_ACCOUNTS: [Account; 7] = [
    Account::SignupBonus,
    Account::DailyFree,
    Account::Adjustments,
    Account::Refunds,
    Account::Purchases,
    Account::PurchaseRefunds,
    Account::Import,
];

const USER_PREFIX: &str = "user:";
/// What every app's usage account starts with (`system:usage:<appId>`).
pub const USAGE_PREFIX: &str = "system:usage:";

impl Account {
    /// A user's account for a pool.
    pub fn user(user_id: &str, pool: Pool) -> Self {
        Self::User { user_id: user_id.to_owned(), pool }
    }

    /// An app's usage account.
    pub fn usage(app_id: &str) -> Self {
        Self::Usage { app_id: app_id.to_owned() }
    }

    /// The text of an account without a parameter.
    fn fixed_name(&self) -> Option<&'static str> {
        Some(match self {
            Self::SignupBonus => "system:signup_bonus",
            Self::DailyFree => "system:daily_free",
            Self::Adjustments => "system:adjustments",
            Self::Refunds => "system:refunds",
            Self::Purchases => "system:purchases",
            Self::PurchaseRefunds => "system:purchase_refunds",
            Self::Import => "system:import",
            Self::User { .. } | Self::Usage { .. } => return None,
        })
    }
}

fn pool_name(pool: Pool) -> &'static str {
    match pool {
        Pool::Free => "free",
        Pool::Paid => "paid",
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User { user_id, pool } => write!(f, "{USER_PREFIX}{user_id}:{}", pool_name(*pool)),
            Self::Usage { app_id } => write!(f, "{USAGE_PREFIX}{app_id}"),
            fixed => f.write_str(fixed.fixed_name().unwrap_or_default()),
        }
    }
}

impl FromStr for Account {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || format!("{text:?} is not an account of the chart");
        if let Some(rest) = text.strip_prefix(USER_PREFIX) {
            let (user_id, pool) = rest.rsplit_once(':').ok_or_else(unknown)?;
            let pool = match pool {
                "free" => Pool::Free,
                "paid" => Pool::Paid,
                _ => return Err(unknown()),
            };
            if user_id.is_empty() {
                return Err(unknown());
            }
            return Ok(Self::user(user_id, pool));
        }
        if let Some(app_id) = text.strip_prefix(USAGE_PREFIX) {
            return if app_id.is_empty() { Err(unknown()) } else { Ok(Self::usage(app_id)) };
        }
        SYSTEM_ACCOUNTS.into_iter().find(|account| account.fixed_name() == Some(text)).ok_or_else(unknown)
    }
}

/// One posting: a signed amount added to an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    pub account: Account,
    pub amount: Credits,
}

/// The postings of a credit event, in line order: the system account first, then the
/// user's pools (free, then paid; a pool the event does not touch is left out unless
/// neither is touched). Empty for an event that moves nothing (the account's opening).
///
/// `refunded_app` is the app of the spend a refund returns (`None` when the ledger does
/// not know that spend: the refund then goes to `system:refunds`).
///
/// The system line carries the event's own `amount`, not the sum of its pool lines: an
/// event whose parts did not add up would show as a trial balance off zero instead of
/// being hidden.
pub fn postings_of(user_id: &str, event: &CreditEvent, refunded_app: Option<&str>) -> Vec<Posting> {
    let line = |account, amount| Posting { account, amount };
    let pools = |lines: &mut Vec<Posting>, free: Credits, paid: Credits| {
        if free != Credits::ZERO || paid == Credits::ZERO {
            lines.push(line(Account::user(user_id, Pool::Free), free));
        }
        if paid != Credits::ZERO {
            lines.push(line(Account::user(user_id, Pool::Paid), paid));
        }
    };
    match event {
        CreditEvent::CreditAccountOpened { .. } => Vec::new(),
        CreditEvent::CreditsGranted { source, pool, amount, .. } => {
            let from = match source {
                GrantSource::SignupBonus => Account::SignupBonus,
                GrantSource::Daily { .. } => Account::DailyFree,
                GrantSource::Admin { .. } => Account::Adjustments,
            };
            vec![line(from, -*amount), line(Account::user(user_id, *pool), *amount)]
        }
        CreditEvent::CreditsSpent { amount, from_free, from_paid, app_id, .. } => {
            let mut lines = vec![line(Account::usage(app_id), *amount)];
            pools(&mut lines, -*from_free, -*from_paid);
            lines
        }
        CreditEvent::CreditsRefunded { amount, to_free, to_paid, .. } => {
            let to = refunded_app.map_or(Account::Refunds, Account::usage);
            let mut lines = vec![line(to, -*amount)];
            pools(&mut lines, *to_free, *to_paid);
            lines
        }
        CreditEvent::CreditsAdjusted { pool, amount, .. } => {
            vec![line(Account::Adjustments, -*amount), line(Account::user(user_id, *pool), *amount)]
        }
        CreditEvent::CreditsPurchased { amount, .. } => {
            vec![line(Account::Purchases, -*amount), line(Account::user(user_id, Pool::Paid), *amount)]
        }
        CreditEvent::PurchaseCreditsReversed { amount, .. } => {
            vec![line(Account::PurchaseRefunds, *amount), line(Account::user(user_id, Pool::Paid), -*amount)]
        }
    }
}

#[cfg(test)]
mod tests;
