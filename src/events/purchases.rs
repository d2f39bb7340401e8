//! Events of paid credits bought through Stripe: the package catalogue as it was at each
//! start, each purchase's life, the link from a Stripe PaymentIntent to its purchase, and
//! the receipt of every Stripe event (its id and type, so an auditor can match the log
//! against Stripe's dashboard).
//!
//! Only what the ledger needs is stored: ids, amounts, currency and type. Stripe's billing
//! details (names, e-mails, addresses, card data) never enter the log.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::domain::{CreditPackage, Credits};

use super::credits::KeyUse;

/// The aggregate id of the one package catalogue.
pub const CATALOGUE_ID: &str = "credit_packages";

/// Events of the package catalogue (one stream, [`CATALOGUE_ID`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CatalogueEvent {
    /// The catalogue a process started with differed from the last one recorded: every
    /// package, active or not, as from now.
    PackagesPublished { packages: Vec<CreditPackage>, published_at: DateTime<Utc> },
}

/// Why a purchase failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Stripe could not be reached, was too slow or answered an error.
    ProviderUnavailable,
    /// `payment_intent.payment_failed`.
    PaymentFailed,
    /// `payment_intent.canceled`.
    Canceled,
    /// No outcome within 24 hours.
    Expired,
}

impl FailureReason {
    /// The reason as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProviderUnavailable => "provider_unavailable",
            Self::PaymentFailed => "payment_failed",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
        }
    }
}

/// What took credits of a completed purchase back, or gave them again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ReversalCause {
    /// `charge.refunded`: `amount_refunded` cents of the charge's `charge_amount`, in total.
    Refund { amount_refunded: i64, charge_amount: i64 },
    /// `charge.dispute.funds_withdrawn`: the disputed share.
    DisputeWithdrawn { dispute_id: String, amount: i64 },
    /// `charge.dispute.funds_reinstated`: the share given back.
    DisputeReinstated { dispute_id: String, amount: i64 },
}

/// Events of a purchase (one stream per purchase id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PurchaseEvent {
    /// A user asked to buy a package; the package is recorded as it was then.
    PurchaseStarted {
        purchase_id: String,
        user_id: String,
        package: CreditPackage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<KeyUse>,
        started_at: DateTime<Utc>,
    },
    /// Stripe created the PaymentIntent (its client secret is not kept).
    PaymentIntentCreated { payment_intent_id: String, created_at: DateTime<Utc> },
    /// The purchase failed; a later success still completes it.
    PurchaseFailed { user_id: String, reason: FailureReason, failed_at: DateTime<Utc> },
    /// The payment succeeded with the expected amount: the credits were granted in the
    /// same append (`CreditsPurchased` on the account).
    PurchaseCompleted {
        payment_intent_id: String,
        stripe_event_id: String,
        amount_received: i64,
        currency: String,
        credits: Credits,
        transaction_id: String,
        completed_at: DateTime<Utc>,
    },
    /// A success whose amount or currency did not match: nothing granted, kept for review.
    PurchaseMismatched {
        payment_intent_id: String,
        stripe_event_id: String,
        amount_received: i64,
        currency: String,
        noticed_at: DateTime<Utc>,
    },
    /// Credits taken back (positive) or given again (negative) on the account, in the
    /// same append (`PurchaseCreditsReversed`); before completion, `credits` is zero and
    /// the refund waits for the completion.
    PurchaseReversed {
        cause: ReversalCause,
        credits: Credits,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction_id: Option<String>,
        reversed_at: DateTime<Utc>,
    },
}

/// What the service did with a Stripe event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookOutcome {
    /// It changed a purchase.
    Applied,
    /// It changed nothing (already applied, an older refund, a failure after success).
    NoChange,
    /// Its amount or currency did not match the purchase: kept for review.
    Mismatch,
    /// Its PaymentIntent is not one of ours: kept for review.
    UnknownPaymentIntent,
    /// A type the service does not handle.
    Ignored,
}

impl WebhookOutcome {
    /// The outcome as the API and the read model write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::NoChange => "no_change",
            Self::Mismatch => "mismatch",
            Self::UnknownPaymentIntent => "unknown_payment_intent",
            Self::Ignored => "ignored",
        }
    }
}

/// Events of a Stripe event's receipt (one stream per Stripe event id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum StripeEventEvent {
    /// A signed Stripe event was received and its effect (if any) appended with it.
    StripeEventReceived {
        stripe_event_id: String,
        event_type: String,
        /// Stripe's `created` (Unix seconds).
        created: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payment_intent_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        purchase_id: Option<String>,
        outcome: WebhookOutcome,
        received_at: DateTime<Utc>,
    },
}

/// Events of a PaymentIntent's link to its purchase (one stream per PaymentIntent id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PaymentIntentEvent {
    PaymentIntentLinked { payment_intent_id: String, purchase_id: String, user_id: String },
}

macro_rules! domain_event {
    ($ty:ty, $($variant:ident),+) => {
        impl DomainEvent for $ty {
            fn event_type(&self) -> String {
                match self {
                    $(Self::$variant { .. } => stringify!($variant),)+
                }
                .to_owned()
            }
            fn event_version(&self) -> String {
                super::upcast::current_version(&self.event_type()).to_string()
            }
        }
    };
}

domain_event!(CatalogueEvent, PackagesPublished);
domain_event!(
    PurchaseEvent,
    PurchaseStarted,
    PaymentIntentCreated,
    PurchaseFailed,
    PurchaseCompleted,
    PurchaseMismatched,
    PurchaseReversed
);
domain_event!(StripeEventEvent, StripeEventReceived);
domain_event!(PaymentIntentEvent, PaymentIntentLinked);
