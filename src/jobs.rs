//! Scheduled jobs (tokio-cron-scheduler). Every process runs every job; each job is
//! safe to run concurrently: signing- and audit-key rotation decide on the keyring
//! aggregate, whose optimistic concurrency turns all but one concurrent rotation into
//! no-ops; destroying expired per-day data keys is idempotent. (The sealer runs on its own
//! interval, `audit::seal`.)

use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler};

use crate::clock::SharedClock;
use crate::events::EventStore;
use crate::events::personal::DAY_KEY_DAYS;
use crate::security::audit_keys::AuditKeys;
use crate::security::keys::KeyService;

/// How often the rotation job runs (6-field cron, seconds first, UTC).
pub const KEY_ROTATION_SCHEDULE: &str = "*/30 * * * * *";

/// How often expired per-day data keys are destroyed.
pub const DAY_KEY_SCHEDULE: &str = "0 17 * * * *";

/// Starts the scheduler with the service's jobs.
pub async fn start(
    keys: Arc<KeyService>,
    audit_keys: Arc<AuditKeys>,
    store: EventStore,
    clock: SharedClock,
) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let job = Job::new_async(KEY_ROTATION_SCHEDULE, move |_, _| {
        let keys = Arc::clone(&keys);
        Box::pin(async move {
            if let Err(error) = keys.rotate().await {
                tracing::warn!(error = format!("{error:#}"), "signing-key rotation job failed; will retry");
            }
        })
    })?;
    scheduler.add(job).await?;
    let job = Job::new_async(KEY_ROTATION_SCHEDULE, move |_, _| {
        let keys = Arc::clone(&audit_keys);
        Box::pin(async move {
            if let Err(error) = keys.rotate().await {
                tracing::warn!(error = format!("{error:#}"), "audit-key rotation job failed; will retry");
            }
        })
    })?;
    scheduler.add(job).await?;
    // Data of attempts on unknown addresses is sealed under a key per day: destroyed
    // after DAY_KEY_DAYS days, it becomes unreadable everywhere (docs/PRIVACY.md).
    let job = Job::new_async(DAY_KEY_SCHEDULE, move |_, _| {
        let (store, clock) = (store.clone(), clock.clone());
        Box::pin(async move {
            if let Err(error) = expire_day_keys(&store, &clock).await {
                tracing::warn!(error = format!("{error:#}"), "expiring per-day data keys failed; will retry");
            }
        })
    })?;
    scheduler.add(job).await?;
    scheduler.start().await?;
    Ok(scheduler)
}

/// Destroys the per-day data keys older than [`DAY_KEY_DAYS`] days and blanks what the
/// read models kept of those days' data; returns the keys destroyed.
pub async fn expire_day_keys(store: &EventStore, clock: &SharedClock) -> anyhow::Result<u64> {
    let before = clock.now().date_naive() - chrono::Duration::days(DAY_KEY_DAYS);
    let destroyed = store.personal_keys().destroy_day_keys_before(before).await?;
    let blanked = crate::projections::security_events::blank_days_before(store.db(), before).await?;
    store.checkpoint().await?;
    if destroyed > 0 || blanked > 0 {
        tracing::info!(destroyed, blanked, %before, "per-day data keys destroyed, their read-model rows blanked");
    }
    Ok(destroyed)
}
