//! The purchase aggregate (one per purchase, id = purchase id): a package bought through
//! Stripe, from the request to its outcome and later refunds and disputes.
//!
//! Rules: a purchase completes once, whatever order Stripe's events arrive in (a failure
//! after a success changes nothing; a success after a failure or the 24-hour expiry still
//! completes it); it completes only with the amount and currency it was started with
//! (else it is kept for review); refunds are cumulative (`floor(credits × refunded /
//! charged)` taken back in total, an older, smaller total changes nothing) and a refund
//! seen before the success is applied with it; a dispute's withdrawal takes its share back
//! once and its reinstatement gives it again once.
//!
//! The credit account's events (`CreditsPurchased`, `PurchaseCreditsReversed`) are
//! appended in the same unit of work by the use case (`credits::purchases`), from the
//! events decided here.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::domain::{CreditPackage, Credits};
use crate::events::credits::KeyUse;
use crate::events::purchases::{FailureReason, PurchaseEvent, ReversalCause};

/// How long a purchase may stay pending before it fails as expired.
pub const PENDING_LIMIT: Duration = Duration::hours(24);

/// Where a purchase stands (refunds are counted apart, in `credits_reversed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    #[default]
    Pending,
    Completed,
    Failed,
}

/// A purchase as the write model sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Purchase {
    pub purchase_id: Option<String>,
    pub user_id: String,
    pub package: Option<CreditPackage>,
    pub key: Option<KeyUse>,
    pub stage: Stage,
    pub payment_intent_id: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    /// The largest cumulative refund seen: (amount refunded, charge amount), in cents.
    pub refund_seen: Option<(i64, i64)>,
    /// Credits taken back by refunds.
    pub refunded: Credits,
    /// Credits taken back by each dispute still withdrawn.
    pub disputes: BTreeMap<String, Credits>,
    /// Disputes already reinstated (never withdrawn again).
    pub reinstated: Vec<String>,
}

/// What can happen to a purchase.
#[derive(Clone, Debug)]
pub enum PurchaseCommand {
    Start {
        purchase_id: String,
        user_id: String,
        package: CreditPackage,
        key: Option<KeyUse>,
        at: DateTime<Utc>,
    },
    RecordIntent {
        payment_intent_id: String,
        at: DateTime<Utc>,
    },
    Fail {
        reason: FailureReason,
        at: DateTime<Utc>,
    },
    Complete {
        payment_intent_id: String,
        stripe_event_id: String,
        amount_received: i64,
        currency: String,
        transaction_id: String,
        at: DateTime<Utc>,
    },
    Reverse {
        cause: ReversalCause,
        transaction_id: String,
        at: DateTime<Utc>,
    },
}

/// Refusals.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PurchaseError {
    #[error("no such purchase")]
    NotFound,
    #[error("the idempotency key was used for a different request")]
    KeyReused,
}

impl Purchase {
    /// Credits taken back and not given again (refunds and withdrawn disputes).
    pub fn credits_reversed(&self) -> Credits {
        self.refunded + self.disputes.values().copied().sum::<Credits>()
    }

    fn credits(&self) -> Credits {
        self.package.as_ref().map_or(Credits::ZERO, |p| p.credits)
    }

    /// `floor(credits × part / whole)`, within `0..=credits`.
    fn share(&self, part: i64, whole: i64) -> Credits {
        if whole <= 0 {
            return Credits::ZERO;
        }
        let credits = i128::from(self.credits().get());
        let share = (credits * i128::from(part.max(0)) / i128::from(whole)).clamp(0, credits);
        Credits::new(i64::try_from(share).unwrap_or(0))
    }

    fn start(
        &self,
        purchase_id: String,
        user_id: String,
        package: CreditPackage,
        key: Option<KeyUse>,
        at: DateTime<Utc>,
    ) -> Result<Vec<PurchaseEvent>, PurchaseError> {
        if self.purchase_id.is_some() {
            let same = match (&self.key, &key) {
                (Some(held), Some(asked)) => held.fingerprint == asked.fingerprint,
                _ => false,
            };
            return if same { Ok(Vec::new()) } else { Err(PurchaseError::KeyReused) };
        }
        Ok(vec![PurchaseEvent::PurchaseStarted { purchase_id, user_id, package, key, started_at: at }])
    }

    fn fail(&self, reason: FailureReason, at: DateTime<Utc>) -> Vec<PurchaseEvent> {
        let due = match reason {
            FailureReason::Expired => self.started_at.is_some_and(|started| started + PENDING_LIMIT <= at),
            _ => true,
        };
        if self.stage != Stage::Pending || !due {
            return Vec::new();
        }
        vec![PurchaseEvent::PurchaseFailed { user_id: self.user_id.clone(), reason, failed_at: at }]
    }

    fn complete(
        &self,
        payment_intent_id: String,
        stripe_event_id: String,
        amount_received: i64,
        currency: String,
        transaction_id: String,
        at: DateTime<Utc>,
    ) -> Vec<PurchaseEvent> {
        let Some(package) = &self.package else { return Vec::new() };
        if self.stage == Stage::Completed {
            return Vec::new();
        }
        let intent_matches = self.payment_intent_id.as_ref().is_none_or(|id| *id == payment_intent_id);
        if amount_received != package.price_euro_cents || currency != package.currency || !intent_matches {
            return vec![PurchaseEvent::PurchaseMismatched {
                payment_intent_id,
                stripe_event_id,
                amount_received,
                currency,
                noticed_at: at,
            }];
        }
        let mut events = vec![PurchaseEvent::PurchaseCompleted {
            payment_intent_id,
            stripe_event_id,
            amount_received,
            currency,
            credits: package.credits,
            transaction_id: transaction_id.clone(),
            completed_at: at,
        }];
        // A refund that arrived before the success is applied with it.
        if let Some((amount_refunded, charge_amount)) = self.refund_seen {
            let credits = self.share(amount_refunded, charge_amount);
            if credits > Credits::ZERO {
                events.push(PurchaseEvent::PurchaseReversed {
                    cause: ReversalCause::Refund { amount_refunded, charge_amount },
                    credits,
                    transaction_id: Some(format!("{transaction_id}:refund")),
                    reversed_at: at,
                });
            }
        }
        events
    }

    fn reverse(&self, cause: ReversalCause, transaction_id: String, at: DateTime<Utc>) -> Vec<PurchaseEvent> {
        let completed = self.stage == Stage::Completed;
        let credits = match &cause {
            ReversalCause::Refund { amount_refunded, charge_amount } => {
                if self.refund_seen.is_some_and(|(seen, _)| seen >= *amount_refunded) || *amount_refunded <= 0
                {
                    return Vec::new();
                }
                if completed {
                    self.share(*amount_refunded, *charge_amount) - self.refunded
                } else {
                    Credits::ZERO
                }
            }
            ReversalCause::DisputeWithdrawn { dispute_id, amount } => {
                if !completed
                    || self.disputes.contains_key(dispute_id)
                    || self.reinstated.contains(dispute_id)
                {
                    return Vec::new();
                }
                let price = self.package.as_ref().map_or(0, |p| p.price_euro_cents);
                let left = self.credits() - self.credits_reversed();
                self.share(*amount, price).min(left.max(Credits::ZERO))
            }
            ReversalCause::DisputeReinstated { dispute_id, .. } => match self.disputes.get(dispute_id) {
                Some(taken) => -*taken,
                None => return Vec::new(),
            },
        };
        let transaction_id = (credits != Credits::ZERO).then_some(transaction_id);
        vec![PurchaseEvent::PurchaseReversed { cause, credits, transaction_id, reversed_at: at }]
    }
}

impl Aggregate for Purchase {
    const TYPE: &'static str = "purchase";
    type Command = PurchaseCommand;
    type Event = PurchaseEvent;
    type Error = PurchaseError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PurchaseCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PurchaseError> {
        use PurchaseCommand as C;
        let events = match command {
            C::Start { purchase_id, user_id, package, key, at } => {
                self.start(purchase_id, user_id, package, key, at)?
            }
            _ if self.purchase_id.is_none() => return Err(PurchaseError::NotFound),
            C::RecordIntent { payment_intent_id, at } => match &self.payment_intent_id {
                Some(_) => Vec::new(),
                None => vec![PurchaseEvent::PaymentIntentCreated { payment_intent_id, created_at: at }],
            },
            C::Fail { reason, at } => self.fail(reason, at),
            C::Complete {
                payment_intent_id,
                stripe_event_id,
                amount_received,
                currency,
                transaction_id,
                at,
            } => self.complete(
                payment_intent_id,
                stripe_event_id,
                amount_received,
                currency,
                transaction_id,
                at,
            ),
            C::Reverse { cause, transaction_id, at } => self.reverse(cause, transaction_id, at),
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: PurchaseEvent) {
        match event {
            PurchaseEvent::PurchaseStarted { purchase_id, user_id, package, key, started_at } => {
                self.purchase_id = Some(purchase_id);
                self.user_id = user_id;
                self.package = Some(package);
                self.key = key;
                self.started_at = Some(started_at);
            }
            PurchaseEvent::PaymentIntentCreated { payment_intent_id, .. } => {
                self.payment_intent_id = Some(payment_intent_id);
            }
            PurchaseEvent::PurchaseFailed { .. } => self.stage = Stage::Failed,
            PurchaseEvent::PurchaseCompleted { payment_intent_id, .. } => {
                self.stage = Stage::Completed;
                self.payment_intent_id.get_or_insert(payment_intent_id);
            }
            PurchaseEvent::PurchaseMismatched { .. } => {}
            PurchaseEvent::PurchaseReversed { cause, credits, .. } => match cause {
                ReversalCause::Refund { amount_refunded, charge_amount } => {
                    self.refund_seen = Some((amount_refunded, charge_amount));
                    self.refunded += credits;
                }
                ReversalCause::DisputeWithdrawn { dispute_id, .. } => {
                    self.disputes.insert(dispute_id, credits);
                }
                ReversalCause::DisputeReinstated { dispute_id, .. } => {
                    self.disputes.remove(&dispute_id);
                    self.reinstated.push(dispute_id);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::minutes(minutes)
    }

    fn started() -> Purchase {
        let mut purchase = Purchase::default();
        let package = CreditPackage::built_in().remove(2);
        purchase.apply(PurchaseEvent::PurchaseStarted {
            purchase_id: "p".into(),
            user_id: "u".into(),
            package,
            key: None,
            started_at: at(0),
        });
        purchase
            .apply(PurchaseEvent::PaymentIntentCreated { payment_intent_id: "pi".into(), created_at: at(0) });
        purchase
    }

    fn complete(purchase: &Purchase, amount: i64) -> Vec<PurchaseEvent> {
        purchase.complete("pi".into(), "evt".into(), amount, "eur".into(), "t".into(), at(1))
    }

    fn refund(purchase: &Purchase, refunded: i64) -> Vec<PurchaseEvent> {
        let cause = ReversalCause::Refund { amount_refunded: refunded, charge_amount: 1_000 };
        purchase.reverse(cause, "r".into(), at(2))
    }

    fn applied(mut purchase: Purchase, events: Vec<PurchaseEvent>) -> Purchase {
        for event in events {
            purchase.apply(event);
        }
        purchase
    }

    #[test]
    fn a_success_with_the_wrong_amount_is_a_mismatch_and_grants_nothing() {
        let events = complete(&started(), 999);
        assert!(matches!(events.as_slice(), [PurchaseEvent::PurchaseMismatched { .. }]));
    }

    #[test]
    fn a_purchase_completes_once_and_a_later_failure_changes_nothing() {
        let purchase = applied(started(), complete(&started(), 1_000));
        assert!(complete(&purchase, 1_000).is_empty());
        assert!(purchase.fail(FailureReason::PaymentFailed, at(3)).is_empty());
    }

    #[test]
    fn refunds_take_back_the_floor_of_their_cumulative_share_and_an_older_total_changes_nothing() {
        let purchase = applied(started(), complete(&started(), 1_000));
        let purchase = applied(purchase.clone(), refund(&purchase, 333));
        assert_eq!(purchase.refunded, Credits::new(399));
        let purchase = applied(purchase.clone(), refund(&purchase, 1_000));
        assert_eq!(purchase.refunded, Credits::new(1_200));
        assert!(refund(&purchase, 500).is_empty());
    }

    #[test]
    fn a_refund_before_the_success_is_applied_with_it() {
        let purchase = applied(started(), refund(&started(), 500));
        let events = complete(&purchase, 1_000);
        assert!(matches!(
            events.as_slice(),
            [PurchaseEvent::PurchaseCompleted { .. }, PurchaseEvent::PurchaseReversed { credits, .. }]
                if *credits == Credits::new(600)
        ));
    }

    #[test]
    fn expiry_waits_for_the_pending_limit() {
        let purchase = started();
        assert!(purchase.fail(FailureReason::Expired, at(60)).is_empty());
        assert_eq!(purchase.fail(FailureReason::Expired, at(24 * 60)).len(), 1);
    }
}
