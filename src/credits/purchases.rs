//! Purchases of paid credits through Stripe: the package catalogue, starting a purchase
//! (a pending purchase, then a PaymentIntent), Stripe's signed webhooks (completion with
//! the credits in the same append, failures, refunds and disputes, each Stripe event
//! recorded once), reads, and the expiry of purchases left pending.
//!
//! Decisions are the purchase aggregate's (`commands::purchase`) and the credit account's;
//! this layer talks to Stripe, finds the purchase an event is about, and appends the
//! receipt, the purchase's events and the account's events in one unit of work, so a
//! webhook is answered 2xx only once its effect is committed, and a retry converges.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use sha2::{Digest, Sha256};

use super::stripe::{self, Action, CreatedIntent, IntentRequest, SignatureError, StripeClient, StripeEvent};
use crate::clock::SharedClock;
use crate::commands::credit_account::{CreditAccount, CreditCommand};
use crate::commands::payment_records::{
    Catalogue, IntentLink, Link, Publish, Receive, RecordError, StripeReceipt,
};
use crate::commands::purchase::{PENDING_LIMIT, Purchase, PurchaseCommand, PurchaseError, Stage};
use crate::commands::{
    Aggregates, ClientInfo, CommandBus, CommandContext, Retryable, StreamHead, UnitOfWork, commit_error,
    with_retries,
};
use crate::config::{PaymentsConfig, Secret};
use crate::domain::{CreditPackage, Credits, uuid_at};
use crate::events::credits::KeyUse;
use crate::events::purchases::{CATALOGUE_ID, FailureReason, PurchaseEvent, ReversalCause, WebhookOutcome};
use crate::events::{EventStore, LogCursor};
use crate::projections::Projector;
use crate::projections::purchases::{self as read, PurchaseFilter, PurchaseRow, UnknownIntent};

/// How often pending purchases are checked for expiry.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// Why a purchase use case failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentFailure {
    #[error("payments are not configured")]
    NotConfigured,
    #[error("the payment provider is unavailable")]
    ProviderUnavailable,
    #[error("not found")]
    NotFound,
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    #[error("invalid webhook signature: {0}")]
    InvalidSignature(SignatureError),
    #[error("not a Stripe event")]
    InvalidEvent,
    #[error("a concurrent change could not be resolved")]
    Conflict,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Retryable for PaymentFailure {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict)
    }
}

fn failure<E: std::error::Error>(error: AggregateError<E>) -> PaymentFailure {
    match error {
        AggregateError::AggregateConflict => PaymentFailure::Conflict,
        other => PaymentFailure::Internal(anyhow::anyhow!("{other}")),
    }
}

fn purchase_failure(error: AggregateError<PurchaseError>) -> PaymentFailure {
    match error {
        AggregateError::UserError(PurchaseError::KeyReused) => PaymentFailure::KeyReused,
        AggregateError::UserError(PurchaseError::NotFound) => PaymentFailure::NotFound,
        other => failure(other),
    }
}

/// A purchase as started: what the client needs to confirm the payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub purchase_id: String,
    pub client_secret: String,
    pub amount: i64,
    pub currency: String,
    pub credits: Credits,
    pub replayed: bool,
}

/// The buses the purchase flow decides on.
#[derive(Clone)]
pub struct PurchaseBuses {
    pub purchases: CommandBus<Purchase>,
    pub accounts: CommandBus<CreditAccount>,
    pub catalogue: CommandBus<Catalogue>,
    pub receipts: CommandBus<StripeReceipt>,
    pub links: CommandBus<IntentLink>,
}

impl From<&Aggregates> for PurchaseBuses {
    fn from(all: &Aggregates) -> Self {
        Self {
            purchases: all.purchases.clone(),
            accounts: all.credits.clone(),
            catalogue: all.catalogue.clone(),
            receipts: all.stripe_receipts.clone(),
            links: all.intent_links.clone(),
        }
    }
}

/// The purchase service of one process.
pub struct PurchaseService {
    store: EventStore,
    projector: Arc<Projector>,
    clock: SharedClock,
    buses: PurchaseBuses,
    packages: Vec<CreditPackage>,
    stripe: Option<StripeClient>,
    webhook_secret: Option<Secret>,
    read_your_writes: Duration,
}

/// The id of a purchase made under a client's idempotency key: the same for every retry,
/// in every process, and per user.
fn keyed_purchase_id(user_id: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("purchase\0{user_id}\0{key}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

impl PurchaseService {
    /// The service over the store, with Stripe's settings.
    pub fn new(
        store: EventStore,
        projector: Arc<Projector>,
        clock: SharedClock,
        buses: PurchaseBuses,
        config: &PaymentsConfig,
        read_your_writes: Duration,
    ) -> anyhow::Result<Self> {
        let stripe = match &config.stripe_secret_key {
            Some(key) => {
                Some(StripeClient::new(&config.stripe_api_base, key.clone(), config.stripe_timeout)?)
            }
            None => None,
        };
        Ok(Self {
            store,
            projector,
            clock,
            buses,
            packages: config.packages.clone(),
            stripe,
            webhook_secret: config.stripe_webhook_secret.clone(),
            read_your_writes,
        })
    }

    /// Records the catalogue in the log if it differs from the last one recorded.
    pub async fn publish_catalogue(&self) -> anyhow::Result<()> {
        let now = self.clock.now();
        let command = Publish { packages: self.packages.clone(), at: now };
        self.buses
            .catalogue
            .execute(CATALOGUE_ID, command, &CommandContext::system(now))
            .await
            .map_err(|e| anyhow::anyhow!("cannot record the package catalogue: {e}"))?;
        Ok(())
    }

    /// The active packages, by `sortOrder`.
    pub fn packages(&self) -> Vec<CreditPackage> {
        let mut active: Vec<CreditPackage> = self.packages.iter().filter(|p| p.active).cloned().collect();
        active.sort_by(|a, b| a.sort_order.cmp(&b.sort_order).then_with(|| a.id.cmp(&b.id)));
        active
    }

    /// Starts a purchase of an active package: a pending purchase, then a PaymentIntent.
    /// A retry under the same key answers the same purchase and client secret.
    pub async fn purchase(
        &self,
        user_id: &str,
        package_id: &str,
        key: Option<&str>,
        client: &ClientInfo,
    ) -> Result<Started, PaymentFailure> {
        // An unknown package is the caller's mistake (404) whether or not payments are
        // configured; a known one without Stripe is the server's (503).
        let package =
            self.packages().into_iter().find(|p| p.id == package_id).ok_or(PaymentFailure::NotFound)?;
        let stripe = self.stripe.as_ref().ok_or(PaymentFailure::NotConfigured)?;
        let now = self.clock.now();
        let purchase_id = key.map_or_else(|| uuid_at(now).to_string(), |k| keyed_purchase_id(user_id, k));
        let key_use = key
            .map(|k| KeyUse { key: format!("purchase:{k}"), fingerprint: format!("package:{package_id}") });
        let ctx = CommandContext::for_client(client, user_id, now);
        let start = {
            let (purchase_id, user_id, package) = (purchase_id.clone(), user_id.to_owned(), package.clone());
            move |at| PurchaseCommand::Start {
                purchase_id: purchase_id.clone(),
                user_id: user_id.clone(),
                package: package.clone(),
                key: key_use.clone(),
                at,
            }
        };
        let started = self
            .buses
            .purchases
            .execute_at(&purchase_id, start, &ctx, |p: &Purchase| {
                (p.stage, p.payment_intent_id.clone(), p.package.clone())
            })
            .await
            .map_err(purchase_failure)?;
        let replayed = started.events.is_empty();
        let (stage, known_intent, bought) = started.reply;
        // A retry answers the package as it was bought, even if the catalogue changed since.
        let package = bought.unwrap_or(package);
        if replayed && stage == Stage::Failed && known_intent.is_none() {
            return Err(PaymentFailure::ProviderUnavailable);
        }
        let request = IntentRequest {
            amount: package.price_euro_cents,
            currency: &package.currency,
            purchase_id: &purchase_id,
            user_id,
            package_id: &package.id,
        };
        let intent = match stripe.create_payment_intent(&request, &format!("purchase-{purchase_id}")).await {
            Ok(intent) => intent,
            Err(error) => {
                tracing::warn!(%error, purchase_id, "PaymentIntent not created; the purchase fails");
                self.fail(&purchase_id, FailureReason::ProviderUnavailable, &ctx).await;
                return Err(PaymentFailure::ProviderUnavailable);
            }
        };
        let cursor = self.record_intent(&purchase_id, user_id, &intent, &ctx).await?;
        if let Some(cursor) = cursor.or(started.cursor) {
            self.projector.wait_for(cursor, self.read_your_writes).await;
        }
        Ok(Started {
            purchase_id,
            client_secret: intent.client_secret,
            amount: package.price_euro_cents,
            currency: package.currency,
            credits: package.credits,
            replayed,
        })
    }

    async fn fail(&self, purchase_id: &str, reason: FailureReason, ctx: &CommandContext) {
        let command = move |at| PurchaseCommand::Fail { reason, at };
        if let Err(error) = self.buses.purchases.execute_at(purchase_id, command, ctx, |_| ()).await {
            tracing::error!(%error, purchase_id, "cannot record a failed purchase; the expiry job will");
        }
    }

    /// Records the PaymentIntent on the purchase and links it to the purchase, together.
    async fn record_intent(
        &self,
        purchase_id: &str,
        user_id: &str,
        intent: &CreatedIntent,
        ctx: &CommandContext,
    ) -> Result<Option<LogCursor>, PaymentFailure> {
        with_retries(self.store.metrics(), "purchase-intent", || async {
            let mut unit = UnitOfWork::new(self.store.clone(), ctx.clone());
            let record = |at| PurchaseCommand::RecordIntent { payment_intent_id: intent.id.clone(), at };
            unit.execute_at(&self.buses.purchases, purchase_id, record, |_| ())
                .await
                .map_err(purchase_failure)?;
            let link = Link {
                payment_intent_id: intent.id.clone(),
                purchase_id: purchase_id.to_owned(),
                user_id: user_id.to_owned(),
            };
            unit.execute(&self.buses.links, &intent.id, link).await.map_err(failure)?;
            unit.commit().await.map_err(|e| failure::<PurchaseError>(commit_error(e)))
        })
        .await
    }

    /// The caller's purchases, newest first.
    pub async fn purchases(
        &self,
        user_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<PurchaseRow>, PaymentFailure> {
        let filter = PurchaseFilter { user_id: Some(user_id.to_owned()), status: None, limit, offset };
        Ok(read::list(self.store.db(), &filter).await?)
    }

    /// One of the caller's purchases; another user's is not found.
    pub async fn purchase_of(&self, user_id: &str, purchase_id: &str) -> Result<PurchaseRow, PaymentFailure> {
        match read::get(self.store.db(), purchase_id).await? {
            Some(row) if row.user_id == user_id => Ok(row),
            _ => Err(PaymentFailure::NotFound),
        }
    }

    /// Operators' list; `needs_review` also answers the webhooks for unknown intents.
    pub async fn admin_list(
        &self,
        filter: &PurchaseFilter,
    ) -> Result<(Vec<PurchaseRow>, Vec<UnknownIntent>), PaymentFailure> {
        let rows = read::list(self.store.db(), filter).await?;
        let unknown = if filter.status.as_deref() == Some("needs_review") {
            read::unknown_intents(self.store.db(), filter.limit, filter.offset).await?
        } else {
            Vec::new()
        };
        Ok((rows, unknown))
    }

    /// Fails the purchases pending for longer than [`PENDING_LIMIT`]; answers how many.
    pub async fn expire_pending(&self) -> anyhow::Result<usize> {
        let now = self.clock.now();
        let ids = read::pending_before(self.store.db(), now - PENDING_LIMIT, 500).await?;
        let ctx = CommandContext::system(now);
        let mut expired = 0;
        for id in ids {
            let command = |at| PurchaseCommand::Fail { reason: FailureReason::Expired, at };
            let committed = self.buses.purchases.execute_at(&id, command, &ctx, |_| ()).await;
            match committed {
                Ok(c) if !c.events.is_empty() => expired += 1,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, purchase_id = id, "cannot expire a purchase"),
            }
        }
        Ok(expired)
    }

    /// Runs [`Self::expire_pending`] every minute until `stop`, in every process (the
    /// purchase aggregate makes a second expiry a no-op).
    pub fn spawn_expiry(
        self: &Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        let (service, stop) = (Arc::clone(self), stop.clone());
        tasks.spawn(async move {
            let mut every = tokio::time::interval(EXPIRY_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                match service.expire_pending().await {
                    Ok(0) => {}
                    Ok(expired) => tracing::info!(expired, "pending purchases expired"),
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "purchase expiry failed; will retry")
                    }
                }
            }
        });
    }

    /// Handles a signed Stripe webhook: checks the signature over the raw body first, then
    /// records the event and its effect in one append. Answers what was done.
    pub async fn webhook(
        &self,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<WebhookOutcome, PaymentFailure> {
        let secret = self.webhook_secret.as_ref().ok_or(PaymentFailure::NotConfigured)?;
        let now = self.clock.now();
        stripe::verify_signature(secret.expose(), signature, body, now.timestamp())
            .map_err(PaymentFailure::InvalidSignature)?;
        let event = stripe::parse_event(body).ok_or(PaymentFailure::InvalidEvent)?;
        let ctx = CommandContext::system(now).acting_for("stripe");
        with_retries(self.store.metrics(), "stripe-webhook", || self.apply_event(&event, &ctx)).await
    }

    /// The purchase a PaymentIntent pays for. A PaymentIntent's own events name it in their
    /// metadata (ours, and signed): the purchase is loaded once, checked to be paid by no
    /// other intent, and its state reused by the unit of work; a charge's or a dispute's
    /// event finds it through the intent's link.
    async fn resolve(&self, event: &StripeEvent) -> Result<Option<Resolved>, PaymentFailure> {
        let Some(intent) = event.action.payment_intent_id() else { return Ok(None) };
        if let Some(purchase_id) = event.action.metadata_purchase() {
            let loaded = self.buses.purchases.load_head(purchase_id).await.map_err(purchase_failure)?;
            let purchase = &loaded.0;
            if purchase.purchase_id.is_some()
                && purchase.payment_intent_id.as_ref().is_none_or(|id| id == intent)
            {
                // Stripe may deliver the intent's events before its creation is recorded.
                let link_missing = purchase.payment_intent_id.is_none();
                return Ok(Some(Resolved {
                    purchase_id: purchase_id.to_owned(),
                    link_missing,
                    loaded: Some(loaded),
                }));
            }
        }
        let (link, _) = self.buses.links.load(intent).await.map_err(failure)?;
        Ok(link.purchase_id.map(|purchase_id| Resolved { purchase_id, link_missing: false, loaded: None }))
    }

    async fn apply_event(
        &self,
        event: &StripeEvent,
        ctx: &CommandContext,
    ) -> Result<WebhookOutcome, PaymentFailure> {
        // No separate look-up of the receipt first: a delivery seen before is refused by the
        // receipt in the unit of work below, before anything is committed.
        let mut unit = UnitOfWork::new(self.store.clone(), ctx.clone());
        let intent = event.action.payment_intent_id().map(str::to_owned);
        let resolved = match event.action {
            Action::Ignored => None,
            _ => self.resolve(event).await?,
        };
        let purchase_id = resolved.as_ref().map(|r| r.purchase_id.clone());
        let outcome = match (&event.action, resolved) {
            (Action::Ignored, _) => WebhookOutcome::Ignored,
            (_, None) => WebhookOutcome::UnknownPaymentIntent,
            (_, Some(resolved)) => self.stage_effect(&mut unit, event, resolved, ctx.now).await?,
        };
        let receive = move |at| Receive {
            stripe_event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            created: event.created,
            payment_intent_id: intent.clone(),
            purchase_id: purchase_id.clone(),
            outcome,
            at,
        };
        match unit.execute_at(&self.buses.receipts, &event.id, receive, |_| ()).await {
            Ok(_) => {}
            Err(AggregateError::UserError(RecordError::AlreadyRecorded)) => {
                return Ok(WebhookOutcome::NoChange);
            }
            Err(other) => return Err(failure(other)),
        }
        unit.commit().await.map_err(|e| failure::<PurchaseError>(commit_error(e)))?;
        if outcome == WebhookOutcome::UnknownPaymentIntent {
            tracing::warn!(
                stripe_event = event.id,
                "a Stripe event for an unknown PaymentIntent, kept for review"
            );
        }
        Ok(outcome)
    }

    /// Stages the purchase's decision on `event` and the account's events that follow.
    async fn stage_effect(
        &self,
        unit: &mut UnitOfWork,
        event: &StripeEvent,
        resolved: Resolved,
        now: DateTime<Utc>,
    ) -> Result<WebhookOutcome, PaymentFailure> {
        let purchase_id = resolved.purchase_id.as_str();
        let transaction_id = uuid_at(now).to_string();
        let command = {
            let (action, event_id, transaction_id) =
                (event.action.clone(), event.id.clone(), transaction_id.clone());
            move |at: DateTime<Utc>| match &action {
                Action::Succeeded { payment_intent_id, amount_received, currency, .. } => {
                    PurchaseCommand::Complete {
                        payment_intent_id: payment_intent_id.clone(),
                        stripe_event_id: event_id.clone(),
                        amount_received: *amount_received,
                        currency: currency.clone(),
                        transaction_id: transaction_id.clone(),
                        at,
                    }
                }
                Action::PaymentFailed { canceled, .. } => PurchaseCommand::Fail {
                    reason: if *canceled { FailureReason::Canceled } else { FailureReason::PaymentFailed },
                    at,
                },
                Action::Refunded { amount, amount_refunded, .. } => PurchaseCommand::Reverse {
                    cause: ReversalCause::Refund {
                        amount_refunded: *amount_refunded,
                        charge_amount: *amount,
                    },
                    transaction_id: transaction_id.clone(),
                    at,
                },
                Action::DisputeWithdrawn { dispute_id, amount, .. } => PurchaseCommand::Reverse {
                    cause: ReversalCause::DisputeWithdrawn {
                        dispute_id: dispute_id.clone(),
                        amount: *amount,
                    },
                    transaction_id: transaction_id.clone(),
                    at,
                },
                Action::DisputeReinstated { dispute_id, amount, .. } => PurchaseCommand::Reverse {
                    cause: ReversalCause::DisputeReinstated {
                        dispute_id: dispute_id.clone(),
                        amount: *amount,
                    },
                    transaction_id: transaction_id.clone(),
                    at,
                },
                Action::Ignored => PurchaseCommand::Fail { reason: FailureReason::PaymentFailed, at },
            }
        };
        let view = |p: &Purchase| (p.user_id.clone(), p.package.clone());
        let loaded = match resolved.loaded {
            Some(loaded) => loaded,
            None => self.buses.purchases.load_head(purchase_id).await.map_err(purchase_failure)?,
        };
        if resolved.link_missing
            && let Action::Succeeded { payment_intent_id, .. } = &event.action
        {
            let link = Link {
                payment_intent_id: payment_intent_id.clone(),
                purchase_id: purchase_id.to_owned(),
                user_id: loaded.0.user_id.clone(),
            };
            unit.execute(&self.buses.links, payment_intent_id, link).await.map_err(failure)?;
        }
        let (events, (user_id, package)) = unit
            .execute_loaded(&self.buses.purchases, purchase_id, loaded, command, view)
            .await
            .map_err(purchase_failure)?;
        let account_command = account_command(purchase_id, package.as_ref(), &events);
        let outcome = if events.iter().any(|e| matches!(e, PurchaseEvent::PurchaseMismatched { .. })) {
            WebhookOutcome::Mismatch
        } else if events.is_empty() {
            WebhookOutcome::NoChange
        } else {
            WebhookOutcome::Applied
        };
        if let Some(command) = account_command {
            unit.execute_at(&self.buses.accounts, &user_id, command, |_| ()).await.map_err(failure)?;
        }
        Ok(outcome)
    }
}

/// The purchase a Stripe event is about.
struct Resolved {
    purchase_id: String,
    /// The PaymentIntent's link to the purchase is still to be written.
    link_missing: bool,
    /// The purchase as just loaded, when finding it took loading it.
    loaded: Option<(Purchase, StreamHead)>,
}

/// The credit account's command for the purchase's new events, if they move credits.
fn account_command(
    purchase_id: &str,
    package: Option<&CreditPackage>,
    events: &[PurchaseEvent],
) -> Option<Box<dyn FnOnce(DateTime<Utc>) -> CreditCommand + Send>> {
    let package = package?.clone();
    let purchase_id = purchase_id.to_owned();
    let refund_of = |events: &[PurchaseEvent]| {
        events.iter().find_map(|e| match e {
            PurchaseEvent::PurchaseReversed { credits, transaction_id: Some(id), .. }
                if *credits != Credits::ZERO =>
            {
                Some((id.clone(), *credits, e.clone()))
            }
            _ => None,
        })
    };
    let completed = events.iter().find_map(|e| match e {
        PurchaseEvent::PurchaseCompleted { payment_intent_id, transaction_id, .. } => {
            Some((payment_intent_id.clone(), transaction_id.clone()))
        }
        _ => None,
    });
    let reversal = refund_of(events);
    let command: Box<dyn FnOnce(DateTime<Utc>) -> CreditCommand + Send> = match (completed, reversal) {
        (Some((payment_intent_id, transaction_id)), reversal) => {
            Box::new(move |at| CreditCommand::Purchase {
                transaction_id,
                purchase_id,
                package_id: package.id.clone(),
                credits: package.credits,
                price_cents: package.price_euro_cents,
                currency: package.currency.clone(),
                payment_intent_id,
                refund: reversal.map(|(id, credits, _)| (id, credits)),
                at,
            })
        }
        (None, Some((transaction_id, amount, event))) => {
            let cause = match event {
                PurchaseEvent::PurchaseReversed { cause: ReversalCause::Refund { .. }, .. } => "refund",
                PurchaseEvent::PurchaseReversed { cause: ReversalCause::DisputeWithdrawn { .. }, .. } => {
                    "dispute_withdrawn"
                }
                _ => "dispute_reinstated",
            };
            Box::new(move |at| CreditCommand::ReversePurchase {
                transaction_id,
                purchase_id,
                amount,
                cause: cause.to_owned(),
                at,
            })
        }
        (None, None) => return None,
    };
    Some(command)
}
