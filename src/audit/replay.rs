//! Replay: every read model rebuilt from the log aside, in a scratch schema (PostgreSQL)
//! or a scratch file (SQLite), without touching the live tables; then either
//!
//! - [`verify`]: compared row by row with the live read models at the same cursor (each
//!   projection at its own live checkpoint, read in one snapshot with its rows), with the
//!   arithmetic of the credit events checked on the way ([`checks`]); or
//! - [`apply`]: swapped in, without downtime. The rebuild catches up while the live
//!   projectors run; then, while they wait (their leadership locks held, or SQLite's write
//!   lock), it catches up to the head and, in one transaction, makes each live table equal
//!   to its rebuilt copy by deleting and inserting only the rows that differ, and moves
//!   the live checkpoints to the rebuild's. Readers see the old rows until that commit and
//!   the new ones after it, never a half-built table; the live tables are the same
//!   objects throughout, so their grants, row-level-security policies, indexes and
//!   dependent views survive.

pub mod checks;
mod scratch;
mod tables;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::Connection;

pub use checks::{Finding, IMPORT_METADATA_KEY, LedgerChecks, Totals};
pub use tables::{KEYS_REPORTED, RowDifference, TableDifferences};

use scratch::{CHECKPOINTS, Scratch, Side};
use tables::{Exec, Table};

use crate::clock::SharedClock;
use crate::db::{Db, DbTx};
use crate::events::personal::KeyWrap;
use crate::events::{EventStore, LogCursor, LogSignal};
use crate::projections::{self, BatchOutcome, Projection, Projector, ProjectorSettings};
use crate::telemetry::Metrics;

/// How a replay reads the log.
#[derive(Clone, Copy, Debug)]
pub struct ReplaySettings {
    /// Events per batch (and per transaction of the rebuild).
    pub batch_size: usize,
}

/// What [`verify`] found.
#[derive(Debug)]
pub struct VerifyReport {
    /// Events the checks read (the whole readable log).
    pub events: u64,
    /// Where each live projection was compared.
    pub compared_at: Vec<(&'static str, LogCursor)>,
    /// The tables with differences (none when the read models are proven).
    pub differences: Vec<TableDifferences>,
    /// Rows compared per table (live rows).
    pub rows: Vec<(&'static str, u64)>,
    /// The first findings of the checks ([`checks::FINDINGS_KEPT`] at most), and how many
    /// there are in all.
    pub findings: Vec<Finding>,
    pub finding_count: u64,
    pub totals: Totals,
    pub elapsed: Duration,
}

impl VerifyReport {
    /// No table differs and every check holds.
    pub fn clean(&self) -> bool {
        self.differences.is_empty() && self.finding_count == 0
    }
}

/// What [`apply`] did.
#[derive(Debug)]
pub struct ApplyReport {
    /// Events the rebuild read.
    pub events: u64,
    /// Per table: rows deleted and inserted by the swap.
    pub swapped: Vec<(&'static str, u64, u64)>,
    /// Where each projection's checkpoint is now.
    pub checkpoints: Vec<(&'static str, LogCursor)>,
    /// How long the rebuild took before the live projectors were held.
    pub build: Duration,
    /// How long the live projectors were held (the final catch-up and the swap).
    pub held: Duration,
    pub elapsed: Duration,
}

/// Rebuilds every read model aside and compares it with the live one. Read-only for the
/// live database; the scratch copy is removed afterwards, also on failure.
pub async fn verify(
    live: &EventStore,
    clock: SharedClock,
    settings: ReplaySettings,
) -> anyhow::Result<VerifyReport> {
    let (wrap, live) = (live.key_wrap(), live.db());
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match verify_once(live, &wrap, clock.clone(), settings).await {
            // SQLite answers "busy" at once where waiting cannot help (a snapshot went
            // stale); the verification only reads the live file, so it starts again.
            Err(error) if attempt < SQLITE_BUSY_ATTEMPTS && sqlite_busy(&error) => {
                tracing::warn!(attempt, "the live SQLite file was busy; verifying again");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            outcome => {
                let mut report = outcome?;
                report.elapsed = started.elapsed();
                return Ok(report);
            }
        }
    }
}

async fn verify_once(
    live: &Db,
    wrap: &KeyWrap,
    clock: SharedClock,
    settings: ReplaySettings,
) -> anyhow::Result<VerifyReport> {
    let models = projections::all();
    let scratch = Scratch::create(live, &model_tables(&models)).await.context("creating the scratch copy")?;
    let outcome = verify_in(&scratch, live, wrap, clock, settings, &models).await;
    let removed = scratch.remove().await;
    let report = outcome?;
    removed?;
    Ok(report)
}

/// Rebuilds every read model aside and swaps it in without downtime.
pub async fn apply(
    live: &EventStore,
    clock: SharedClock,
    settings: ReplaySettings,
) -> anyhow::Result<ApplyReport> {
    let (wrap, live) = (live.key_wrap(), live.db());
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match apply_once(live, &wrap, clock.clone(), settings).await {
            // Nothing is swapped unless the whole swap commits: start again.
            Err(error) if attempt < SQLITE_BUSY_ATTEMPTS && sqlite_busy(&error) => {
                tracing::warn!(attempt, "the live SQLite file was busy; replaying again");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            outcome => {
                let mut report = outcome?;
                report.elapsed = started.elapsed();
                return Ok(report);
            }
        }
    }
}

async fn apply_once(
    live: &Db,
    wrap: &KeyWrap,
    clock: SharedClock,
    settings: ReplaySettings,
) -> anyhow::Result<ApplyReport> {
    let models = projections::all();
    let scratch = Scratch::create(live, &model_tables(&models)).await.context("creating the scratch copy")?;
    let outcome = apply_in(&scratch, live, wrap, clock, settings, &models).await;
    let removed = scratch.remove().await;
    let report = outcome?;
    removed?;
    Ok(report)
}

fn model_tables(models: &[Arc<dyn Projection>]) -> Vec<&'static str> {
    models.iter().flat_map(|p| p.tables().iter().copied()).collect()
}

fn scratch_projector(
    scratch: &Scratch,
    wrap: &KeyWrap,
    clock: SharedClock,
    settings: ReplaySettings,
    projections: Vec<Arc<dyn Projection>>,
) -> Projector {
    let store = EventStore::new(scratch.db.clone(), LogSignal::new(), Arc::new(Metrics::new()), wrap.clone());
    let settings =
        ProjectorSettings { batch_size: settings.batch_size, poll_interval: Duration::from_secs(1) };
    Projector::new(store, clock, settings, projections).with_lock_namespace(&scratch.name)
}

/// Runs group batches until nothing readable is left (or the projector's bound is
/// reached); the events read.
async fn build(projector: &Projector) -> anyhow::Result<u64> {
    let mut events = 0u64;
    loop {
        match projector.run_group_batch(&[]).await {
            Ok(BatchOutcome::Applied(n, _)) => events += n as u64,
            Ok(BatchOutcome::CaughtUp(_) | BatchOutcome::NotLeader(_)) => return Ok(events),
            Err(projections::GroupError::Projection(name, error)) => {
                return Err(error.context(format!("rebuilding projection {name}")));
            }
            Err(projections::GroupError::Other(error)) => return Err(error),
        }
    }
}

async fn verify_in(
    scratch: &Scratch,
    live: &Db,
    wrap: &KeyWrap,
    clock: SharedClock,
    settings: ReplaySettings,
    models: &[Arc<dyn Projection>],
) -> anyhow::Result<VerifyReport> {
    // The bulk of the rebuild stops where the slowest live projection is, so no rebuilt
    // projection passes its live one (the live checkpoints only move forward).
    let live_at = live_checkpoints(live).await.context("reading the live checkpoints")?;
    let floor =
        models.iter().map(|p| live_at.get(p.name()).copied().unwrap_or_default()).min().unwrap_or_default();
    let checks = Arc::new(LedgerChecks::default());
    let mut fed: Vec<Arc<dyn Projection>> = models.to_vec();
    fed.push(checks.clone());
    let projector = scratch_projector(scratch, wrap, clock, settings, fed).until(floor);
    projector.init().await.context("starting the rebuild")?;
    build(&projector).await.context("rebuilding")?;

    let mut tables = Vec::new();
    for model in models {
        for table in model.tables() {
            tables.push(scratch.table(table, Side::Scratch).await?);
        }
    }
    let checkpoints = scratch.table(CHECKPOINTS, Side::Scratch).await?;

    // The final step, in one snapshot: the live checkpoints and rows as they are together,
    // each rebuilt projection caught up to exactly its live checkpoint, then compared.
    let mut tx = scratch.db.begin_write().await.context("starting the comparison")?;
    if let DbTx::Postgres(pg) = &mut tx {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut **pg).await?;
    }
    let live_now = checkpoints_in(&mut tx, &checkpoints.live).await?;
    let rebuilt_now = checkpoints_in(&mut tx, &checkpoints.rebuilt).await?;
    let mut compared_at = Vec::new();
    for model in models {
        let name = model.name();
        let to = live_now.get(name).copied().unwrap_or_default();
        let from = rebuilt_now.get(name).copied().unwrap_or_default();
        anyhow::ensure!(from <= to, "the rebuilt {name} passed its live checkpoint");
        feed(projector.store(), &mut tx, model.as_ref(), from, Some(to), settings.batch_size).await?;
        compared_at.push((name, to));
    }
    let from = rebuilt_now.get(checks.name()).copied().unwrap_or_default();
    feed(projector.store(), &mut tx, checks.as_ref(), from, None, settings.batch_size).await?;

    let mut differences = Vec::new();
    let mut rows = Vec::new();
    for table in &tables {
        let mut exec = Exec::of(&mut tx);
        let found =
            table.differences(&mut exec).await.with_context(|| format!("comparing {}", table.name))?;
        let count = exec.texts(&format!("SELECT CAST(count(*) AS TEXT) FROM {}", table.live)).await?;
        rows.push((
            table.name,
            count.first().and_then(|r| r[0].as_deref()).and_then(|n| n.parse().ok()).unwrap_or(0),
        ));
        if found.count > 0 {
            differences.push(found);
        }
    }
    drop(tx);
    let (findings, finding_count, totals) = checks.outcome();
    Ok(VerifyReport {
        events: totals.events,
        compared_at,
        differences,
        rows,
        findings,
        finding_count,
        totals,
        elapsed: Duration::ZERO,
    })
}

async fn apply_in(
    scratch: &Scratch,
    live: &Db,
    wrap: &KeyWrap,
    clock: SharedClock,
    settings: ReplaySettings,
    models: &[Arc<dyn Projection>],
) -> anyhow::Result<ApplyReport> {
    let started = Instant::now();
    // Live checkpoint rows exist for every projection (a fresh database has none yet).
    let live_store = EventStore::new(live.clone(), LogSignal::new(), Arc::new(Metrics::new()), wrap.clone());
    let project_settings =
        ProjectorSettings { batch_size: settings.batch_size, poll_interval: Duration::from_secs(1) };
    Projector::new(live_store, clock.clone(), project_settings, models.to_vec())
        .init()
        .await
        .context("the live checkpoints")?;

    let projector = scratch_projector(scratch, wrap, clock, settings, models.to_vec());
    projector.init().await.context("starting the rebuild")?;
    let mut events = build(&projector).await.context("rebuilding")?;

    let mut tables = Vec::new();
    for model in models {
        for table in model.tables() {
            tables.push(scratch.table(table, Side::Live).await?);
        }
    }
    let checkpoints = scratch.table(CHECKPOINTS, Side::Live).await?;
    let build_time = started.elapsed();
    let held = Instant::now();
    let names: Vec<&'static str> = models.iter().map(|p| p.name()).collect();
    let (swapped, at) = match live {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // The live projectors' locks, in a fixed order: they try-lock, so they wait
            // (as "not leader") until this transaction ends.
            let mut keys: Vec<i64> = names.iter().map(|n| projections::lock_key("", n)).collect();
            keys.sort_unstable();
            for key in keys {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(key).execute(&mut *tx).await?;
            }
            events += build(&projector).await?;
            let done = swap(&mut Exec::Postgres(&mut tx), &tables, &checkpoints, &names).await?;
            tx.commit().await?;
            done
        }
        Db::Sqlite { writer, .. } => {
            let uri = scratch.sqlite_attach_uri().unwrap_or_default().replace('\'', "''");
            let mut conn = writer.acquire().await?;
            sqlx::query(&format!("ATTACH DATABASE '{uri}' AS scratch"))
                .execute(&mut *conn)
                .await
                .context("attaching the scratch file")?;
            // A busy answer (another writer committed between this transaction's first read
            // and its write, which SQLite reports at once instead of waiting) rolls the swap
            // back whole; it is tried again, a few times.
            let mut attempt = 0;
            let outcome = loop {
                attempt += 1;
                match sqlite_swap(&mut conn, &projector, &tables, &checkpoints, &names).await {
                    Err(error) if attempt < SQLITE_BUSY_ATTEMPTS && sqlite_busy(&error) => {
                        tracing::warn!(attempt, "the live SQLite file was busy; swapping again");
                        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    }
                    outcome => break outcome,
                }
            };
            sqlx::query("DETACH DATABASE scratch").execute(&mut *conn).await?;
            let (added, done) = outcome?;
            events += added;
            done
        }
    };
    Ok(ApplyReport {
        events,
        swapped,
        checkpoints: at,
        build: build_time,
        held: held.elapsed(),
        elapsed: Duration::ZERO,
    })
}

type Swapped = (Vec<(&'static str, u64, u64)>, Vec<(&'static str, LogCursor)>);

/// How many times a replay step on SQLite is tried when the file is busy.
const SQLITE_BUSY_ATTEMPTS: u64 = 5;

/// Whether an error is SQLite's "busy" or "locked" (primary codes 5 and 6).
fn sqlite_busy(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| match cause.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(e)) => {
            e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                && e.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6))
        }
        _ => false,
    })
}

/// The SQLite swap on a live connection with the scratch file attached as `scratch`: the
/// final catch-up and the swap, under the live file's write lock. Rolled back whole on any
/// error.
async fn sqlite_swap(
    conn: &mut sqlx::SqliteConnection,
    projector: &Projector,
    tables: &[Table],
    checkpoints: &Table,
    names: &[&'static str],
) -> anyhow::Result<(u64, Swapped)> {
    // The write lock stops every writer of the live file, appends included, so the head
    // cannot move until the swap commits. It is taken by a first write rather than `BEGIN
    // IMMEDIATE`, which would also start the read of the attached scratch file now, before
    // the last catch-up it must see.
    let mut tx = conn.begin().await?;
    let outcome = async {
        sqlx::query(&format!("UPDATE main.{CHECKPOINTS} SET updated_at = updated_at WHERE name = 'streams'"))
            .execute(&mut *tx)
            .await
            .context("taking the live file's write lock")?;
        let added = build(projector).await.context("the final catch-up")?;
        let done = swap(&mut Exec::Sqlite(&mut tx), tables, checkpoints, names).await.context("the swap")?;
        anyhow::Ok((added, done))
    }
    .await;
    match outcome {
        Ok(done) => {
            tx.commit().await?;
            Ok(done)
        }
        Err(error) => {
            tx.rollback().await?;
            Err(error)
        }
    }
}

/// Makes every live table equal to its rebuilt copy and moves the live checkpoints to
/// the rebuild's, inside the caller's transaction.
async fn swap(
    exec: &mut Exec<'_>,
    tables: &[Table],
    checkpoints: &Table,
    names: &[&'static str],
) -> anyhow::Result<Swapped> {
    let mut swapped = Vec::new();
    for table in tables {
        let (deleted, inserted) = table.swap(exec).await?;
        swapped.push((table.name, deleted, inserted));
    }
    let rebuilt = checkpoints_of(exec, &checkpoints.rebuilt).await?;
    let mut at = Vec::new();
    for name in names {
        let to = rebuilt.get(*name).copied().unwrap_or_default();
        let moved = exec
            .execute(&format!(
                "UPDATE {live} SET txid = {txid}, position = {position}, \
                 updated_at = (SELECT updated_at FROM {rebuilt} WHERE name = '{name}') \
                 WHERE name = '{name}' AND (txid < {txid} OR (txid = {txid} AND position <= {position}))",
                live = checkpoints.live,
                rebuilt = checkpoints.rebuilt,
                txid = to.txid,
                position = to.position,
            ))
            .await?;
        if moved != 1 {
            let live = checkpoints_of(exec, &checkpoints.live).await?;
            let live = live.get(*name).copied().unwrap_or_default();
            anyhow::bail!(
                "the live projection {name} is at {live}, past the rebuild's {to}; nothing was swapped"
            );
        }
        at.push((*name, to));
    }
    Ok((swapped, at))
}

/// Feeds `projection` the events after `from` (up to `to`, or all readable) inside `tx`.
async fn feed(
    store: &EventStore,
    tx: &mut DbTx,
    projection: &dyn Projection,
    mut from: LogCursor,
    to: Option<LogCursor>,
    batch: usize,
) -> anyhow::Result<()> {
    loop {
        if to.is_some_and(|to| from >= to) {
            return Ok(());
        }
        let mut events = store.read_after_in(tx, from, batch).await?;
        let full = events.len() == batch;
        if let Some(to) = to {
            events.truncate(events.partition_point(|e| e.cursor <= to));
        }
        let Some(last) = events.last().map(|e| e.cursor) else { return Ok(()) };
        projection.apply_batch(tx, &events).await?;
        from = last;
        if !full {
            return Ok(());
        }
    }
}

async fn checkpoints_in(tx: &mut DbTx, table: &str) -> anyhow::Result<HashMap<String, LogCursor>> {
    checkpoints_of(&mut Exec::of(tx), table).await
}

async fn checkpoints_of(exec: &mut Exec<'_>, table: &str) -> anyhow::Result<HashMap<String, LogCursor>> {
    let sql = format!("SELECT name, CAST(txid AS TEXT), CAST(position AS TEXT) FROM {table}");
    let mut checkpoints = HashMap::new();
    for row in exec.texts(&sql).await? {
        let number =
            |i: usize| row.get(i).cloned().flatten().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let name = row.first().cloned().flatten().unwrap_or_default();
        checkpoints.insert(name, LogCursor { txid: number(1), position: number(2) });
    }
    Ok(checkpoints)
}

/// The live checkpoints, read on their own (before the rebuild starts).
async fn live_checkpoints(live: &Db) -> anyhow::Result<HashMap<String, LogCursor>> {
    let mut tx = match live {
        Db::Postgres(pool) => DbTx::Postgres(pool.begin().await?),
        Db::Sqlite { reader, .. } => DbTx::Sqlite(reader.begin().await?),
    };
    checkpoints_in(&mut tx, CHECKPOINTS).await
}
