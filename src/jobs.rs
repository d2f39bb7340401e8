//! Scheduled jobs (tokio-cron-scheduler). Every process runs every job; each job is
//! safe to run concurrently: signing- and audit-key rotation decide on the keyring
//! aggregate, whose optimistic concurrency turns all but one concurrent rotation into
//! no-ops. (The sealer runs on its own interval, `audit::seal`.)

use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler};

use crate::security::audit_keys::AuditKeys;
use crate::security::keys::KeyService;

/// How often the rotation job runs (6-field cron, seconds first, UTC).
pub const KEY_ROTATION_SCHEDULE: &str = "*/30 * * * * *";

/// Starts the scheduler with the service's jobs.
pub async fn start(keys: Arc<KeyService>, audit_keys: Arc<AuditKeys>) -> anyhow::Result<JobScheduler> {
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
    scheduler.start().await?;
    Ok(scheduler)
}
