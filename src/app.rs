//! Wiring: [`Application::build`] opens the database, migrates it, starts the projector
//! and the cross-process signals, and binds the listener; [`AppState`] is what handlers
//! receive.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use tokio_cron_scheduler::JobScheduler;

pub use crate::api::AppState;

use crate::audit::seal::LogSealer;
use crate::auth::links::{LinkBase, RedirectOrigins};
use crate::auth::{AuthAggregates, AuthService, AuthSettings};
use crate::clock::{SharedClock, SystemClock};
use crate::commands::Aggregates;
use crate::commands::login_attempts::LockoutPolicy;
use crate::config::{Config, Secret};
use crate::credits::purchases::{PurchaseBuses, PurchaseService};
use crate::credits::{CreditService, CreditSettings};
use crate::db::Db;
use crate::domain::Credits;
use crate::events::{EventStore, LogSignal, signal};
use crate::projections::{self, Projector, ProjectorSettings};
use crate::security::audit_keys::{AUDIT_JWKS_MAX_AGE_SECS, AuditKeySettings, AuditKeys};
use crate::security::keys::{JWKS_MAX_AGE_SECS, KeyService, KeySettings};
use crate::security::passwords::PasswordPool;
use crate::security::rate_limit::RateLimiter;
use crate::security::revocations::Revocations;
use crate::security::secrets::ServerSecret;
use crate::security::tokens::{ACCESS_TOKEN_TTL_SECS, TokenService};
use crate::server::ServerLimits;
use crate::telemetry::Metrics;

/// A built server, bound to its address, not yet serving.
pub struct Application {
    state: AppState,
    listener: TcpListener,
    tasks: JoinSet<()>,
    background: CancellationToken,
    scheduler: JobScheduler,
}

impl Application {
    /// Builds the application with the system clock.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Builds the application with a given clock (tests inject a manual one).
    pub async fn build_with_clock(config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database, config.database_max_connections).await?;
        db.migrate().await?;
        let metrics = Arc::new(Metrics::new());
        let signal = LogSignal::new();
        let secret =
            ServerSecret::load(config.key_encryption_secret.as_ref(), config.app_env, &config.data_dir())?;
        let store = EventStore::new(db.clone(), signal.clone(), metrics, secret.key_wrap());
        let sealed_keys =
            store.personal_keys().seal_plaintext_keys().await.context("cannot seal the data keys")?;
        if sealed_keys > 0 {
            tracing::info!(keys = sealed_keys, "personal data keys written before sealing are now sealed");
        }
        let backfilled = store.backfill_chain().await.context("cannot backfill the hash chain")?;
        if backfilled > 0 {
            tracing::info!(events = backfilled, "hash chain backfilled for events written before it");
        }
        let settings = ProjectorSettings {
            batch_size: config.projection_batch_size,
            poll_interval: config.projection_poll_interval,
        };
        let projector = Arc::new(Projector::new(store.clone(), clock.clone(), settings, projections::all()));
        projector.init().await.context("cannot initialise the projections")?;

        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let aggregates = Aggregates::new(&store);
        let auth = build_auth(&config, &secret, &store, &aggregates, &projector, &clock).await?;
        let audit_keys = start_audit(&config, &secret, &store, &aggregates, &clock, &mut tasks, &background)
            .await
            .context("cannot start the audit seals")?;
        let limiter = Arc::new(
            RateLimiter::new(
                config.rate_limits.clone(),
                config.redis_url.as_ref().map(Secret::expose),
                &config.redis_key_prefix,
                config.redis_timeout,
                Arc::clone(store.metrics()),
            )?
            .with_subject_key(secret.derive("rate-limit-subjects/v1")),
        );
        limiter.warm_up().await;
        let credits = Arc::new(CreditService::new(
            store.clone(),
            Arc::clone(&projector),
            clock.clone(),
            aggregates.credits.clone(),
            aggregates.operator_keys.clone(),
            CreditSettings {
                daily_free: Credits::new(config.credits_daily_free),
                free_cap: config.credits_free_cap.map(Credits::new),
                timezone: config.credits_daily_timezone,
                read_your_writes: config.read_your_writes_timeout,
            },
        ));
        let purchases = Arc::new(PurchaseService::new(
            store.clone(),
            Arc::clone(&projector),
            clock.clone(),
            PurchaseBuses::from(&aggregates),
            &config.payments,
            config.read_your_writes_timeout,
        )?);
        purchases.publish_catalogue().await?;
        auth.revocations().spawn(&mut tasks, config.projection_poll_interval, &background);
        purchases.spawn_expiry(&mut tasks, &background);
        let scheduler = crate::jobs::start(
            Arc::clone(auth.tokens().keys()),
            Arc::clone(&audit_keys),
            store.clone(),
            clock.clone(),
        )
        .await?;
        projector.spawn(&mut tasks, &background);
        let feed = match &config.event_stream {
            Some(settings) => {
                let feed = crate::feed::Feed::new(settings.clone(), store.clone(), clock.clone())
                    .await
                    .context("cannot start the event stream")?;
                let feed = Arc::new(feed);
                feed.spawn(&mut tasks, &background);
                Some(feed)
            }
            None => None,
        };
        let transport: Arc<dyn crate::mail::Transport> = match &config.smtp_url {
            Some(url) => Arc::new(crate::mail::Smtp::new(url, &config.smtp_from).context("SMTP_URL")?),
            None => {
                if config.app_env == crate::config::AppEnv::Production {
                    tracing::warn!(
                        "SMTP_URL is not set: password-reset and verification mail will not be sent"
                    );
                }
                Arc::new(crate::mail::DevMailer::new(db.clone(), config.app_env, clock.clone()))
            }
        };
        let dispatcher = crate::mail::Dispatcher::new(db.clone(), transport, clock.clone());
        tasks.spawn(dispatcher.run(signal.clone(), std::time::Duration::from_secs(1), background.clone()));
        if let Db::Postgres(pool) = &db {
            tasks.spawn(signal::run_pg_notifier(pool.clone(), signal.clone(), background.clone()));
            tasks.spawn(signal::run_pg_listener(pool.clone(), signal, background.clone()));
        }
        let listener = TcpListener::bind((config.host, config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let state = AppState::new(config, clock, store, projector, auth, credits, limiter, audit_keys)
            .with_feed(feed)
            .with_purchases(purchases);
        Ok(Self { state, listener, tasks, background, scheduler })
    }

    /// The address the server is bound to (port 0 in tests becomes a real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The shared state (tests use it to reach the store and the projector).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes; then stops accepting, finishes in-flight
    /// requests, lets each projection commit its current batch, and closes the database.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = crate::api::router(self.state.clone());
        let config = self.state.config();
        let limits = ServerLimits {
            header_read_timeout: config.http_header_read_timeout,
            idle_timeout: config.http_idle_timeout,
            max_connections: config.http_max_connections,
        };
        let metrics = Arc::clone(self.state.metrics());
        crate::server::serve(self.listener, router, limits, metrics, shutdown).await;
        if let Err(error) = self.scheduler.shutdown().await {
            tracing::warn!(%error, "scheduler did not stop cleanly");
        }
        self.background.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.state.db().close().await;
        Ok(())
    }
}

/// Starts the audit keys and the sealer: seals the log once now (so a log written before
/// the seals gets its first seal at once), then every `AUDIT_SEAL_INTERVAL_SECS`.
async fn start_audit(
    config: &Config,
    secret: &ServerSecret,
    store: &EventStore,
    aggregates: &Aggregates,
    clock: &SharedClock,
    tasks: &mut JoinSet<()>,
    background: &CancellationToken,
) -> anyhow::Result<Arc<AuditKeys>> {
    let settings = AuditKeySettings {
        rotation_interval: chrono::Duration::from_std(config.audit_key_rotation_interval)?,
        publish_ahead: chrono::Duration::seconds(2 * AUDIT_JWKS_MAX_AGE_SECS + 60),
    };
    let keys = AuditKeys::start(aggregates.keyring.clone(), secret.sealer(), clock.clone(), settings).await?;
    if !config.audit_seal_interval.is_zero() {
        // The chain backfill ran right after the migrations: every event has its hash.
        let sealer = Arc::new(LogSealer::new(store.clone(), Arc::clone(&keys), clock.clone()));
        sealer.seal_now().await?;
        sealer.spawn(tasks, config.audit_seal_interval, background);
    }
    Ok(keys)
}

/// Wires the authentication service: signing keys, tokens, password pool and the
/// revocation index.
async fn build_auth(
    config: &Config,
    secret: &ServerSecret,
    store: &EventStore,
    aggregates: &Aggregates,
    projector: &Arc<Projector>,
    clock: &SharedClock,
) -> anyhow::Result<Arc<AuthService>> {
    let leeway = chrono::Duration::from_std(config.jwt_leeway)?;
    let token_lifetime = chrono::Duration::seconds(ACCESS_TOKEN_TTL_SECS) + leeway;
    let settings = KeySettings {
        rotation_interval: chrono::Duration::from_std(config.key_rotation_interval)?,
        publish_ahead: chrono::Duration::seconds(2 * JWKS_MAX_AGE_SECS + 60),
        retired_lifetime: token_lifetime + chrono::Duration::seconds(60),
    };
    let keys = KeyService::start(aggregates.keyring.clone(), secret.sealer(), clock.clone(), settings)
        .await
        .context("cannot load the signing keys")?;
    let tokens = TokenService::new(
        keys,
        clock.clone(),
        config.jwt_issuer.clone(),
        config.jwt_audience.clone(),
        leeway.num_seconds(),
    );
    let window = token_lifetime + chrono::Duration::minutes(5);
    let revocations = Revocations::bootstrap(store.clone(), projector, clock.clone(), window).await?;
    let passwords = PasswordPool::new(config.password_hash_threads, config.password_hash_queue);
    let settings = AuthSettings {
        refresh_grace: chrono::Duration::from_std(config.refresh_grace)?,
        signup_bonus: Credits::new(config.credits_signup_bonus),
        daily_timezone: config.credits_daily_timezone,
        read_your_writes: config.read_your_writes_timeout,
        lockout: LockoutPolicy {
            threshold: config.lockout_threshold,
            lock_for: chrono::Duration::from_std(config.lockout_duration)?,
        },
        login_queue_wait: config.login_queue_wait,
        require_verified_email: config.require_verified_email,
        frontend: LinkBase::configured(&config.frontend_url).context("FRONTEND_URL is not a URL")?,
        redirect_origins: RedirectOrigins::new(
            config.cors_origins.iter().chain([&config.frontend_url]).map(String::as_str),
        ),
    };
    Ok(Arc::new(AuthService::new(
        store.clone(),
        Arc::clone(projector),
        clock.clone(),
        AuthAggregates::of(aggregates),
        passwords,
        tokens,
        revocations,
        secret.derive("refresh-token-successor/v1"),
        secret.email_id_key(),
        settings,
    )))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
