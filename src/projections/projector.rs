//! [`Projector`]: runs every projection over the global log, one task per projection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Projection;
use super::group::GroupError;
use crate::clock::SharedClock;
use crate::db::parse_sqlite_time;
use crate::db::{Db, DbTime, DbTx};
use crate::events::{EventStore, LogCursor};
use crate::exec;

/// How the projector batches and polls.
#[derive(Clone, Copy, Debug)]
pub struct ProjectorSettings {
    /// Events applied per transaction at most.
    pub batch_size: usize,
    /// The polling fallback when no wake-up arrives.
    pub poll_interval: Duration,
}

/// What one batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Applied this many events; the checkpoint is now at the cursor.
    Applied(usize, LogCursor),
    /// Nothing new to apply.
    CaughtUp(LogCursor),
    /// Another process holds this projection right now; its checkpoint is at the cursor.
    NotLeader(LogCursor),
}

/// How far behind the log a projection is.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionLag {
    pub name: &'static str,
    pub checkpoint: LogCursor,
    /// Readable events not applied yet (counted up to [`LAG_COUNT_CAP`]).
    pub events: i64,
    /// Age of the oldest event not applied yet.
    pub seconds: f64,
}

/// Lag counts stop here, so measuring lag stays cheap when a projection is far behind.
pub const LAG_COUNT_CAP: i64 = 100_000;

/// Follows the log and feeds projections.
pub struct Projector {
    pub(super) store: EventStore,
    pub(super) clock: SharedClock,
    pub(super) settings: ProjectorSettings,
    pub(super) projections: Vec<Arc<dyn Projection>>,
    progress: HashMap<&'static str, watch::Sender<LogCursor>>,
    /// Separates this projector's leadership locks from those of projectors writing other
    /// tables of the same database (a replay's scratch schema): empty for the live ones.
    lock_namespace: String,
    /// Applies nothing after this cursor (a replay that must stop where the live read
    /// models are).
    pub(super) until: Option<LogCursor>,
}

impl Projector {
    /// A projector over `store` feeding `projections` (names must be unique).
    pub fn new(
        store: EventStore,
        clock: SharedClock,
        settings: ProjectorSettings,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Self {
        let progress = projections
            .iter()
            .map(|p| (p.name(), watch::Sender::new(LogCursor::START)))
            .collect::<HashMap<_, _>>();
        assert_eq!(progress.len(), projections.len(), "projection names must be unique");
        Self { store, clock, settings, projections, progress, lock_namespace: String::new(), until: None }
    }

    /// The same projector with its own leadership locks (for a replay's scratch tables,
    /// which must not contend with the live projectors of the same database).
    #[must_use]
    pub fn with_lock_namespace(mut self, namespace: &str) -> Self {
        self.lock_namespace = namespace.to_owned();
        self
    }

    /// The same projector stopping after `cursor`: batches apply nothing later.
    #[must_use]
    pub fn until(mut self, cursor: LogCursor) -> Self {
        self.until = Some(cursor);
        self
    }

    /// The advisory-lock key of a projection of this projector.
    pub(super) fn lock_key(&self, name: &str) -> i64 {
        lock_key(&self.lock_namespace, name)
    }

    /// Drops the events after [`Self::until`] from a batch read.
    pub(super) fn bounded(
        &self,
        mut events: Vec<crate::events::RecordedEvent>,
    ) -> Vec<crate::events::RecordedEvent> {
        if let Some(until) = self.until {
            events.truncate(events.partition_point(|e| e.cursor <= until));
        }
        events
    }

    /// The projections this projector feeds.
    pub fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.projections
    }

    /// The log this projector reads.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    fn db(&self) -> &Db {
        self.store.db()
    }

    /// Creates missing checkpoint rows and publishes the stored checkpoints.
    pub async fn init(&self) -> anyhow::Result<()> {
        for projection in &self.projections {
            let name = projection.name();
            let mut tx = self.db().begin_write().await?;
            exec!(
                &mut tx,
                "INSERT INTO projection_checkpoints (name, txid, position, updated_at) \
                 VALUES ($1, 0, 0, $2) ON CONFLICT (name) DO NOTHING",
                name,
                DbTime(self.clock.now())
            )?;
            tx.commit().await?;
            self.publish(name, self.checkpoint(name).await?);
        }
        Ok(())
    }

    /// Starts one follower task per projection; they stop after their current batch
    /// when `shutdown` is cancelled.
    pub fn spawn(self: &Arc<Self>, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        let projector = Arc::clone(self);
        let shutdown = shutdown.clone();
        tasks.spawn(async move { projector.follow(shutdown).await });
    }

    /// The follower: group batches for every projection this process can lock, and
    /// separate retries (with backoff) for a projection whose batch failed, so that one
    /// failing projection does not hold the others back.
    async fn follow(&self, shutdown: CancellationToken) {
        let mut events = self.store.signal().subscribe_events();
        let mut progress = self.store.signal().subscribe_progress();
        let mut quarantine: HashMap<&'static str, (u32, std::time::Instant)> = HashMap::new();
        while !shutdown.is_cancelled() {
            let excluded: Vec<&'static str> = quarantine.keys().copied().collect();
            let outcome = self.run_group_batch(&excluded).await;
            let wait_for_progress = match outcome {
                Ok(BatchOutcome::Applied(..)) => continue,
                Ok(BatchOutcome::CaughtUp(_)) => false,
                Ok(BatchOutcome::NotLeader(_)) => true,
                Err(GroupError::Projection(name, error)) => {
                    let failures = quarantine.get(name).map_or(1, |(n, _)| n + 1);
                    self.failed(name, failures, &error);
                    quarantine.insert(name, (failures, std::time::Instant::now() + backoff(failures)));
                    continue;
                }
                Err(GroupError::Other(error)) => {
                    tracing::error!(error = format!("{error:#}"), "projector batch failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff(1)) => {}
                        () = shutdown.cancelled() => {}
                    }
                    continue;
                }
            };
            self.retry_quarantined(&mut quarantine).await;
            tokio::select! {
                _ = events.changed() => {}
                _ = progress.changed(), if wait_for_progress => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Runs each quarantined projection whose backoff passed on its own until it has
    /// caught up (then it rejoins the group) or fails again.
    async fn retry_quarantined(&self, quarantine: &mut HashMap<&'static str, (u32, std::time::Instant)>) {
        let due: Vec<&'static str> = quarantine
            .iter()
            .filter(|(_, (_, at))| *at <= std::time::Instant::now())
            .map(|(n, _)| *n)
            .collect();
        for name in due {
            let Some(projection) = self.projections.iter().find(|p| p.name() == name) else { continue };
            loop {
                match self.run_batch(projection.as_ref()).await {
                    Ok(BatchOutcome::Applied(..)) => {}
                    Ok(_) => {
                        tracing::info!(projection = name, "projection recovered");
                        quarantine.remove(name);
                        break;
                    }
                    Err(error) => {
                        let failures = quarantine.get(name).map_or(1, |(n, _)| n + 1);
                        self.failed(name, failures, &error);
                        quarantine.insert(name, (failures, std::time::Instant::now() + backoff(failures)));
                        break;
                    }
                }
            }
        }
    }

    fn failed(&self, name: &str, failures: u32, error: &anyhow::Error) {
        self.store.metrics().projection_error(name);
        tracing::error!(
            projection = name,
            failures,
            error = format!("{error:#}"),
            "projection batch failed; retrying it alone"
        );
    }

    /// Applies at most one batch of one projection.
    pub async fn run_batch(&self, projection: &dyn Projection) -> anyhow::Result<BatchOutcome> {
        let name = projection.name();
        let started = std::time::Instant::now();
        let mut tx = self.db().begin_write().await?;
        let (leader, checkpoint) = lock_checkpoint(&mut tx, name, self.lock_key(name)).await?;
        if !leader {
            drop(tx);
            self.publish(name, checkpoint);
            return Ok(BatchOutcome::NotLeader(checkpoint));
        }
        let events =
            self.bounded(self.store.read_after_in(&mut tx, checkpoint, self.settings.batch_size).await?);
        let read = started.elapsed();
        let Some(last) = events.last().map(|e| e.cursor) else {
            drop(tx);
            self.publish(name, checkpoint);
            return Ok(BatchOutcome::CaughtUp(checkpoint));
        };
        if let Err(error) = projection.apply_batch(&mut tx, &events).await {
            let _ = tx.rollback().await;
            return Err(error.context(format!("projection {name} failed")));
        }
        let moved = exec!(
            &mut tx,
            "UPDATE projection_checkpoints SET txid = $2, position = $3, updated_at = $4 \
             WHERE name = $1 AND txid = $5 AND position = $6",
            name,
            last.txid,
            last.position,
            DbTime(self.clock.now()),
            checkpoint.txid,
            checkpoint.position
        )?;
        anyhow::ensure!(moved == 1, "checkpoint of {name} moved during the batch");
        let applied = started.elapsed();
        tx.commit().await?;
        tracing::debug!(
            projection = name,
            events = events.len(),
            read_ms = read.as_secs_f64() * 1e3,
            applied_ms = applied.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "batch applied"
        );
        self.publish(name, last);
        self.store.signal().progress_committed();
        Ok(BatchOutcome::Applied(events.len(), last))
    }

    /// Runs every projection until it has applied everything readable now.
    pub async fn catch_up(&self) -> anyhow::Result<()> {
        // Group batches first (one read and one transaction per batch for every
        // projection this process can lock), then each projection on its own, which
        // also waits out any projection another process is leading.
        loop {
            match self.run_group_batch(&[]).await {
                Ok(BatchOutcome::Applied(..)) => {}
                Ok(BatchOutcome::CaughtUp(_) | BatchOutcome::NotLeader(_)) => break,
                Err(GroupError::Projection(name, error)) => {
                    return Err(error.context(format!("projection {name}")));
                }
                Err(GroupError::Other(error)) => return Err(error),
            }
        }
        for projection in &self.projections {
            loop {
                match self.run_batch(projection.as_ref()).await? {
                    BatchOutcome::Applied(..) => {}
                    BatchOutcome::CaughtUp(_) => break,
                    BatchOutcome::NotLeader(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        Ok(())
    }

    /// Empties a projection's tables and resets its checkpoint in one transaction, then
    /// replays the whole log into it.
    pub async fn rebuild(&self, name: &str) -> anyhow::Result<()> {
        let projection = self
            .projections
            .iter()
            .find(|p| p.name() == name)
            .with_context(|| format!("no projection named {name:?}"))?;
        let mut tx = self.db().begin_write().await?;
        if let DbTx::Postgres(pg) = &mut tx {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(self.lock_key(projection.name()))
                .execute(&mut **pg)
                .await?;
        }
        for table in projection.tables() {
            exec!(&mut tx, &format!("DELETE FROM {table}"))?;
        }
        exec!(
            &mut tx,
            "UPDATE projection_checkpoints SET txid = 0, position = 0, updated_at = $2 WHERE name = $1",
            projection.name(),
            DbTime(self.clock.now())
        )?;
        tx.commit().await?;
        self.publish(projection.name(), LogCursor::START);
        loop {
            match self.run_batch(projection.as_ref()).await? {
                BatchOutcome::Applied(..) => {}
                BatchOutcome::CaughtUp(_) => return Ok(()),
                BatchOutcome::NotLeader(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Waits until every projection has applied the event at `cursor`, at most `timeout`.
    /// Returns whether they did.
    pub async fn wait_for(&self, cursor: LogCursor, timeout: Duration) -> bool {
        let all = async {
            for sender in self.progress.values() {
                let mut receiver = sender.subscribe();
                if receiver.wait_for(|at| *at >= cursor).await.is_err() {
                    return false;
                }
            }
            true
        };
        let reached = tokio::time::timeout(timeout, all).await.unwrap_or(false);
        if !reached {
            self.store.metrics().read_your_writes_timeout();
        }
        reached
    }

    /// The position each projection has published in this process.
    pub fn published(&self, name: &str) -> Option<LogCursor> {
        self.progress.get(name).map(|s| *s.borrow())
    }

    /// Watches one projection's published position.
    pub fn subscribe(&self, name: &str) -> Option<watch::Receiver<LogCursor>> {
        self.progress.get(name).map(watch::Sender::subscribe)
    }

    pub(super) fn publish(&self, name: &str, at: LogCursor) {
        if let Some(sender) = self.progress.get(name) {
            sender.send_if_modified(|current| {
                let newer = at > *current;
                if newer {
                    *current = at;
                }
                newer
            });
        }
        self.store.metrics().projection_position(name, at.position);
    }

    /// A projection's stored checkpoint.
    pub async fn checkpoint(&self, name: &str) -> anyhow::Result<LogCursor> {
        let sql = "SELECT txid, position FROM projection_checkpoints WHERE name = $1";
        let row = match self.db() {
            Db::Postgres(pool) => {
                let row = sqlx::query(sql).bind(name).fetch_optional(pool).await?;
                row.map(|r| Ok::<_, sqlx::Error>(LogCursor { txid: r.try_get(0)?, position: r.try_get(1)? }))
            }
            Db::Sqlite { reader, .. } => {
                let row = sqlx::query(sql).bind(name).fetch_optional(reader).await?;
                row.map(|r| Ok(LogCursor { txid: r.try_get(0)?, position: r.try_get(1)? }))
            }
        };
        Ok(row.transpose()?.unwrap_or_default())
    }

    /// How far behind each projection is (for readiness and metrics).
    pub async fn lag(&self) -> anyhow::Result<Vec<ProjectionLag>> {
        let now = self.clock.now();
        let mut lags = Vec::with_capacity(self.projections.len());
        for projection in &self.projections {
            let name = projection.name();
            let checkpoint = self.checkpoint(name).await?;
            let (events, oldest) = pending(self.db(), checkpoint).await?;
            let seconds = oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
            self.store.metrics().projection_lag(name, events, seconds);
            lags.push(ProjectionLag { name, checkpoint, events, seconds });
        }
        Ok(lags)
    }
}

/// Events readable after `checkpoint` (capped) and the time of the oldest of them.
async fn pending(db: &Db, checkpoint: LogCursor) -> anyhow::Result<(i64, Option<DateTime<Utc>>)> {
    let sql = "SELECT count(*) AS n, min(recorded_at) AS oldest FROM ( \
               SELECT recorded_at FROM events WHERE (txid, position) > ($1, $2) \
               ORDER BY txid, position LIMIT $3) pending";
    Ok(match db {
        Db::Postgres(pool) => {
            let row = sqlx::query(sql)
                .bind(checkpoint.txid)
                .bind(checkpoint.position)
                .bind(LAG_COUNT_CAP)
                .fetch_one(pool)
                .await?;
            (row.try_get("n")?, row.try_get("oldest")?)
        }
        Db::Sqlite { reader, .. } => {
            let row = sqlx::query(sql)
                .bind(checkpoint.txid)
                .bind(checkpoint.position)
                .bind(LAG_COUNT_CAP)
                .fetch_one(reader)
                .await?;
            let oldest: Option<String> = row.try_get("oldest")?;
            (row.try_get("n")?, oldest.and_then(|t| parse_sqlite_time(&t).ok()))
        }
    })
}

/// Takes the projection's lock (PostgreSQL: a transaction-level advisory lock, in the
/// same round trip as the checkpoint read; SQLite: the write lock `BEGIN IMMEDIATE`
/// already holds) and reads its checkpoint. `false` when another process holds it.
async fn lock_checkpoint(tx: &mut DbTx, name: &str, key: i64) -> anyhow::Result<(bool, LogCursor)> {
    let row = match tx {
        DbTx::Postgres(tx) => {
            let sql = "SELECT pg_try_advisory_xact_lock($2) AS leader, txid, position \
                       FROM projection_checkpoints WHERE name = $1";
            let row = sqlx::query(sql).bind(name).bind(key).fetch_optional(&mut **tx).await?;
            row.map(|r| {
                Ok::<_, sqlx::Error>((
                    r.try_get(0)?,
                    LogCursor { txid: r.try_get(1)?, position: r.try_get(2)? },
                ))
            })
        }
        DbTx::Sqlite(tx) => {
            let sql = "SELECT txid, position FROM projection_checkpoints WHERE name = $1";
            let row = sqlx::query(sql).bind(name).fetch_optional(&mut **tx).await?;
            row.map(|r| Ok((true, LogCursor { txid: r.try_get(0)?, position: r.try_get(1)? })))
        }
    };
    row.transpose()?.with_context(|| format!("no checkpoint row for {name}; run init first"))
}

/// How long a failing projection waits before its next try.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(failures.min(7)))
}

/// A stable advisory-lock key per projection (FNV-1a of a namespaced name). The live
/// projectors' namespace is empty, which keeps the keys every earlier release took.
pub fn lock_key(namespace: &str, name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let prefix = if namespace.is_empty() { String::new() } else { format!("{namespace}/") };
    for byte in "mana-core-auth/projection/".bytes().chain(prefix.bytes()).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}
