//! [`AppState`]: what every handler receives, the services of one server process. The
//! wiring (`app.rs`) builds it; the API only reads it.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::auth::AuthService;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::credits::CreditService;
use crate::credits::purchases::PurchaseService;
use crate::db::Db;
use crate::events::EventStore;
use crate::feed::Feed;
use crate::projections::Projector;
use crate::security::audit_keys::AuditKeys;
use crate::security::rate_limit::RateLimiter;
use crate::telemetry::Metrics;

/// Shared state of one server process; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    config: Config,
    clock: SharedClock,
    store: EventStore,
    projector: Arc<Projector>,
    auth: Arc<AuthService>,
    credits: Arc<CreditService>,
    limiter: Arc<RateLimiter>,
    audit_keys: Arc<AuditKeys>,
    feed: Option<Arc<Feed>>,
    purchases: Option<Arc<PurchaseService>>,
}

impl AppState {
    /// The state over a process's services.
    #[expect(clippy::too_many_arguments, reason = "one per service of the process; app.rs is the one caller")]
    pub fn new(
        config: Config,
        clock: SharedClock,
        store: EventStore,
        projector: Arc<Projector>,
        auth: Arc<AuthService>,
        credits: Arc<CreditService>,
        limiter: Arc<RateLimiter>,
        audit_keys: Arc<AuditKeys>,
    ) -> Self {
        let shared = Shared {
            config,
            clock,
            store,
            projector,
            auth,
            credits,
            limiter,
            audit_keys,
            feed: None,
            purchases: None,
        };
        Self { inner: Arc::new(shared) }
    }

    /// The same state with the change feed (`EVENT_STREAM_URL`); built before it is shared.
    #[must_use]
    pub fn with_feed(mut self, feed: Option<Arc<Feed>>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.inner) {
            shared.feed = feed;
        }
        self
    }

    /// The same state with the purchase service; built before it is shared.
    #[must_use]
    pub fn with_purchases(mut self, purchases: Arc<PurchaseService>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.inner) {
            shared.purchases = Some(purchases);
        }
        self
    }

    /// The purchase service (packages, Stripe purchases and webhooks).
    pub fn purchases(&self) -> Option<&Arc<PurchaseService>> {
        self.inner.purchases.as_ref()
    }

    /// The change feed of this process, when `EVENT_STREAM_URL` is set.
    pub fn feed(&self) -> Option<&Arc<Feed>> {
        self.inner.feed.as_ref()
    }

    /// The configuration the process started with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The clock service.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The current time from the clock service.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The database (the event store's pools).
    pub fn db(&self) -> &Db {
        self.inner.store.db()
    }

    /// The event log.
    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// The projector (read-your-writes waits, lag).
    pub fn projector(&self) -> &Arc<Projector> {
        &self.inner.projector
    }

    /// The authentication service.
    pub fn auth(&self) -> &Arc<AuthService> {
        &self.inner.auth
    }

    /// The credit service.
    pub fn credits(&self) -> &Arc<CreditService> {
        &self.inner.credits
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.inner.limiter
    }

    /// The audit keys (they sign the log's seals).
    pub fn audit_keys(&self) -> &Arc<AuditKeys> {
        &self.inner.audit_keys
    }

    /// The metrics registry of this process.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.inner.store.metrics()
    }
}
