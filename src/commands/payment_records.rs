//! Three small aggregates of the purchase flow, each a record that is written once:
//!
//! * [`Catalogue`] (one stream, `credit_packages`): the package catalogue, published again
//!   only when a process starts with a different one;
//! * [`StripeReceipt`] (one stream per Stripe event id): a Stripe event was received and
//!   handled; a second delivery finds it and changes nothing, and concurrent deliveries
//!   conflict on it so that only one effect is appended;
//! * [`IntentLink`] (one stream per PaymentIntent id): the purchase a PaymentIntent pays
//!   for, so that a charge's or a dispute's event finds its purchase from the log.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::domain::CreditPackage;
use crate::events::purchases::{CatalogueEvent, PaymentIntentEvent, StripeEventEvent, WebhookOutcome};

/// Refusals of these records.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("already recorded")]
    AlreadyRecorded,
}

/// The package catalogue as last published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalogue {
    pub packages: Option<Vec<CreditPackage>>,
}

/// Publishes the catalogue if it differs from the last one.
#[derive(Clone, Debug)]
pub struct Publish {
    pub packages: Vec<CreditPackage>,
    pub at: DateTime<Utc>,
}

impl Aggregate for Catalogue {
    const TYPE: &'static str = "credit_catalogue";
    type Command = Publish;
    type Event = CatalogueEvent;
    type Error = RecordError;
    type Services = ();

    async fn handle(&mut self, command: Publish, _: &(), sink: &EventSink<Self>) -> Result<(), RecordError> {
        if self.packages.as_ref() != Some(&command.packages) {
            let event =
                CatalogueEvent::PackagesPublished { packages: command.packages, published_at: command.at };
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: CatalogueEvent) {
        let CatalogueEvent::PackagesPublished { packages, .. } = event;
        self.packages = Some(packages);
    }
}

/// A Stripe event's receipt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StripeReceipt {
    pub outcome: Option<WebhookOutcome>,
}

/// Records a Stripe event as received, with what was done with it.
#[derive(Clone, Debug)]
pub struct Receive {
    pub stripe_event_id: String,
    pub event_type: String,
    pub created: i64,
    pub payment_intent_id: Option<String>,
    pub purchase_id: Option<String>,
    pub outcome: WebhookOutcome,
    pub at: DateTime<Utc>,
}

impl Aggregate for StripeReceipt {
    const TYPE: &'static str = "stripe_event";
    type Command = Receive;
    type Event = StripeEventEvent;
    type Error = RecordError;
    type Services = ();

    async fn handle(&mut self, command: Receive, _: &(), sink: &EventSink<Self>) -> Result<(), RecordError> {
        if self.outcome.is_some() {
            return Err(RecordError::AlreadyRecorded);
        }
        let event = StripeEventEvent::StripeEventReceived {
            stripe_event_id: command.stripe_event_id,
            event_type: command.event_type,
            created: command.created,
            payment_intent_id: command.payment_intent_id,
            purchase_id: command.purchase_id,
            outcome: command.outcome,
            received_at: command.at,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: StripeEventEvent) {
        let StripeEventEvent::StripeEventReceived { outcome, .. } = event;
        self.outcome = Some(outcome);
    }
}

/// A PaymentIntent's purchase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IntentLink {
    pub purchase_id: Option<String>,
    pub user_id: Option<String>,
}

/// Links a PaymentIntent to its purchase (once).
#[derive(Clone, Debug)]
pub struct Link {
    pub payment_intent_id: String,
    pub purchase_id: String,
    pub user_id: String,
}

impl Aggregate for IntentLink {
    const TYPE: &'static str = "payment_intent";
    type Command = Link;
    type Event = PaymentIntentEvent;
    type Error = RecordError;
    type Services = ();

    async fn handle(&mut self, command: Link, _: &(), sink: &EventSink<Self>) -> Result<(), RecordError> {
        if self.purchase_id.is_none() {
            let Link { payment_intent_id, purchase_id, user_id } = command;
            sink.write(
                PaymentIntentEvent::PaymentIntentLinked { payment_intent_id, purchase_id, user_id },
                self,
            )
            .await;
        }
        Ok(())
    }

    fn apply(&mut self, event: PaymentIntentEvent) {
        let PaymentIntentEvent::PaymentIntentLinked { purchase_id, user_id, .. } = event;
        self.purchase_id = Some(purchase_id);
        self.user_id = Some(user_id);
    }
}
