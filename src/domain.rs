//! Value types every layer shares, at the bottom of the module graph: they depend on
//! nothing else of this crate (docs/ARCHITECTURE.md, "Layers").

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The stored form of an opaque token (refresh, reset, verification): its SHA-256, never
/// the token itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct TokenHash(pub String);

impl TokenHash {
    /// Constant-time equality.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

/// Who is asking: the request's id and the client's address and agent (personal data).
/// Commands turn it into their context (`commands::client`), events into the client
/// they record (`events::auth`).
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Whether `id` is an app id: 1 to 64 characters of `[A-Za-z0-9._-]` (the `appId` of a
/// spend, and the apps services are bound to).
pub fn valid_app_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A UUIDv7 stamped with the clock service's time: a session id carries its start.
/// (No monotonic context: it would move a timestamp forward after a clock step back,
/// and a session's start must be exact for user-wide revocation.)
pub fn uuid_at(at: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(at.timestamp()).unwrap_or(0);
    Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, at.timestamp_subsec_nanos()))
}

/// An amount of credits (a grant, a spend, a pool's balance, a total): what every credit
/// figure of the write model, the events, the projections and the answers is, instead of
/// a bare `i64`. It serializes as the plain number (`#[serde(transparent)]`), so events
/// already in the log keep their exact JSON.
///
/// Arithmetic saturates at the bounds of `i64` and never panics or wraps. A request
/// moves at most 1,000,000 credits and balances and totals are sums of such moves, so
/// the bounds are out of reach (about 9.2 × 10¹² requests); saturating keeps every
/// operator total without a failure path that could never be taken. Use
/// [`Credits::checked_add`] and [`Credits::checked_sub`] where an overflow must be seen.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Credits(i64);

impl Credits {
    /// No credits.
    pub const ZERO: Self = Self(0);

    /// `amount` credits (negative for a signed change, as of an adjustment or a usage line).
    pub const fn new(amount: i64) -> Self {
        Self(amount)
    }

    /// The number, for SQL binds, JSON built by hand and comparisons with settings.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The size of a signed amount (saturating: `i64::MIN` gives `i64::MAX`).
    pub const fn abs(self) -> Self {
        Self(self.0.saturating_abs())
    }

    /// The sum, or `None` if it leaves the range of `i64`.
    pub const fn checked_add(self, other: Self) -> Option<Self> {
        match self.0.checked_add(other.0) {
            Some(sum) => Some(Self(sum)),
            None => None,
        }
    }

    /// The difference, or `None` if it leaves the range of `i64`.
    pub const fn checked_sub(self, other: Self) -> Option<Self> {
        match self.0.checked_sub(other.0) {
            Some(difference) => Some(Self(difference)),
            None => None,
        }
    }
}

impl From<i64> for Credits {
    fn from(amount: i64) -> Self {
        Self(amount)
    }
}

impl std::fmt::Display for Credits {
    /// The plain number, as error messages have always shown it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::ops::Add for Credits {
    type Output = Self;

    /// Saturating addition.
    fn add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
}

impl std::ops::Sub for Credits {
    type Output = Self;

    /// Saturating subtraction.
    fn sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }
}

impl std::ops::Neg for Credits {
    type Output = Self;

    /// Saturating negation (`i64::MIN` gives `i64::MAX`).
    fn neg(self) -> Self {
        Self(self.0.saturating_neg())
    }
}

impl std::ops::AddAssign for Credits {
    fn add_assign(&mut self, other: Self) {
        *self = *self + other;
    }
}

impl std::ops::SubAssign for Credits {
    fn sub_assign(&mut self, other: Self) {
        *self = *self - other;
    }
}

impl std::iter::Sum for Credits {
    /// The saturating sum.
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, |total, amount| total + amount)
    }
}

#[cfg(test)]
mod tests {
    use super::Credits;

    #[test]
    fn credits_serialize_as_the_plain_number() {
        assert_eq!(serde_json::to_string(&Credits::new(-42)).unwrap(), "-42");
        assert_eq!(serde_json::from_str::<Credits>("150").unwrap(), Credits::new(150));
        assert!(serde_json::from_str::<Credits>("\"150\"").is_err());
        assert!(serde_json::from_str::<Credits>("1.5").is_err());
    }

    #[test]
    fn arithmetic_is_that_of_the_numbers_within_range() {
        let (a, b) = (Credits::new(7), Credits::new(3));
        assert_eq!((a + b).get(), 10);
        assert_eq!((b - a).get(), -4);
        assert_eq!((-a).get(), -7);
        assert_eq!(Credits::new(-5).abs(), Credits::new(5));
        assert_eq!([a, b, Credits::new(-1)].into_iter().sum::<Credits>(), Credits::new(9));
        assert_eq!(std::iter::empty::<Credits>().sum::<Credits>(), Credits::ZERO);
        let mut c = Credits::ZERO;
        c += a;
        c -= b;
        assert_eq!(c, Credits::from(4));
        assert!(Credits::new(-1) < Credits::ZERO && Credits::ZERO < Credits::new(1));
        assert_eq!(Credits::default(), Credits::ZERO);
        assert_eq!(Credits::new(12).to_string(), "12");
    }

    #[test]
    fn arithmetic_saturates_at_the_bounds_instead_of_wrapping() {
        let (max, min, one) = (Credits::new(i64::MAX), Credits::new(i64::MIN), Credits::new(1));
        assert_eq!(max + one, max);
        assert_eq!(min - one, min);
        assert_eq!(-min, max);
        assert_eq!(min.abs(), max);
        assert_eq!([max, one].into_iter().sum::<Credits>(), max);
        assert_eq!(max.checked_add(one), None);
        assert_eq!(min.checked_sub(one), None);
        assert_eq!(one.checked_add(one), Some(Credits::new(2)));
        assert_eq!(one.checked_sub(one), Some(Credits::ZERO));
    }
}

/// A package of paid credits as sold (the catalogue's entry, and a purchase's record of
/// it as it was when bought).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct CreditPackage {
    pub id: String,
    pub name: String,
    pub description: String,
    pub credits: Credits,
    /// The price in euro cents, as Stripe counts it.
    pub price_euro_cents: i64,
    /// ISO 4217, lower case, as Stripe writes it (`eur`).
    pub currency: String,
    pub active: bool,
    pub sort_order: i64,
}

impl CreditPackage {
    /// The built-in catalogue, 100 credits = €1: 100 for €1, 500 for €5, 1,200 for €10
    /// (bonus included).
    pub fn built_in() -> Vec<Self> {
        let package = |id: &str, name: &str, description: &str, credits, cents, sort_order| Self {
            id: id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            credits: Credits::new(credits),
            price_euro_cents: cents,
            currency: "eur".to_owned(),
            active: true,
            sort_order,
        };
        vec![
            package("credits-100", "100 credits", "100 credits for €1", 100, 100, 1),
            package("credits-500", "500 credits", "500 credits for €5", 500, 500, 2),
            package("credits-1200", "1,200 credits", "1,000 credits and 200 bonus for €10", 1_200, 1_000, 3),
        ]
    }
}
