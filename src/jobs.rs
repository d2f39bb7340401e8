//! Scheduled jobs (tokio-cron-scheduler). Every process runs every job; each job is
//! safe to run concurrently: signing-key rotation decides on the keyring aggregate, whose
//! optimistic concurrency turns all but one concurrent rotation into no-ops.

use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler};

use crate::security::keys::KeyService;

/// How often the rotation job runs (6-field cron, seconds first, UTC).
pub const KEY_ROTATION_SCHEDULE: &str = "*/30 * * * * *";

/// Starts the scheduler with the service's jobs.
pub async fn start(keys: Arc<KeyService>) -> anyhow::Result<JobScheduler> {
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
    scheduler.start().await?;
    Ok(scheduler)
}
