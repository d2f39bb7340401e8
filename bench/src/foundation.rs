//! Benchmarks of the foundation: appends through the command layer, projector catch-up,
//! projection lag, start-up time and idle memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use chrono::Utc;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{AppendArgs, CatchupArgs, LagArgs, Latencies, StartupArgs, Target};
use mana_core_auth::clock::SystemClock;
use mana_core_auth::commands::{CommandBus, CommandContext};
use mana_core_auth::config::{DatabaseConfig, Secret};
use mana_core_auth::db::{Db, DbTx};
use mana_core_auth::events::{EventStore, LogSignal, NewEvent, RecordedEvent, signal};
use mana_core_auth::projections::{self, Projection, Projector, ProjectorSettings};
use mana_core_auth::telemetry::Metrics;
use mana_core_auth::{exec, insert_rows};

/// A one-event-per-command aggregate for append benchmarks.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct BenchCounter {
    bumps: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum BenchEvent {
    Bumped { bumps: u64 },
}

impl DomainEvent for BenchEvent {
    fn event_type(&self) -> String {
        "BenchBumped".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for BenchCounter {
    const TYPE: &'static str = "bench_counter";
    type Command = ();
    type Event = BenchEvent;
    type Error = Never;
    type Services = ();

    async fn handle(&mut self, _: (), _: &(), sink: &EventSink<Self>) -> Result<(), Never> {
        sink.write(BenchEvent::Bumped { bumps: self.bumps + 1 }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: BenchEvent) {
        let BenchEvent::Bumped { bumps } = event;
        self.bumps = bumps;
    }
}

/// A projection writing one row per event (one multi-row INSERT per batch, unless
/// `per_event`: one INSERT per event).
struct BenchRows {
    per_event: bool,
}

#[async_trait]
impl Projection for BenchRows {
    fn name(&self) -> &'static str {
        "bench_rows"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["bench_rows"]
    }
    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        if self.per_event {
            for event in events {
                exec!(
                    tx,
                    "INSERT INTO bench_rows (position, aggregate_id, event_type) VALUES ($1, $2, $3)",
                    event.cursor.position,
                    &event.aggregate_id,
                    &event.event_type
                )?;
            }
            return Ok(());
        }
        insert_rows!(tx, "bench_rows", events, |e| {
            "position": "bigint" = e.cursor.position,
            "aggregate_id": "text" = e.aggregate_id.clone(),
            "event_type": "text" = e.event_type.clone(),
        })?;
        Ok(())
    }
}

/// A scratch database, dropped when the benchmark ends.
pub(super) struct Scratch {
    pub(super) store: EventStore,
    /// The scratch database's URL (PostgreSQL), for subprocesses.
    pub(super) url: Option<String>,
    drop_pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub(super) async fn open(target: &Target, pool_size: u32) -> anyhow::Result<Self> {
        Self::open_with(target, pool_size, true).await
    }

    /// `chained: false` builds the store that skips the hash chain (PostgreSQL only), to
    /// measure what the chain costs.
    pub(super) async fn open_with(target: &Target, pool_size: u32, chained: bool) -> anyhow::Result<Self> {
        let (config, drop_pg, dir) = match target.engine.as_str() {
            "postgres" => {
                let name = format!("mca_bench_{}", uuid::Uuid::new_v4().simple());
                let mut admin =
                    sqlx::PgConnection::connect(&target.admin_url).await.context("admin connection")?;
                sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await?;
                let url = match target.admin_url.rsplit_once('/') {
                    Some((base, _)) => format!("{base}/{name}"),
                    None => bail!("--admin-url needs a database name"),
                };
                (
                    DatabaseConfig::Postgres { url: Secret::new(url) },
                    Some((target.admin_url.clone(), name)),
                    None,
                )
            }
            "sqlite" => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("bench.db");
                (DatabaseConfig::Sqlite { path }, None, Some(dir))
            }
            other => bail!("unknown engine {other:?}: use postgres or sqlite"),
        };
        let url = match &config {
            DatabaseConfig::Postgres { url } => Some(url.expose().to_owned()),
            DatabaseConfig::Sqlite { .. } => None,
        };
        let db = Db::connect(&config, pool_size).await?;
        db.migrate().await?;
        let store = if chained {
            EventStore::new(db, LogSignal::new(), Arc::new(Metrics::new()), bench_key_wrap())
        } else {
            anyhow::ensure!(url.is_some(), "the store without the chain is PostgreSQL only");
            EventStore::without_chain_for_benchmarks(
                db,
                LogSignal::new(),
                Arc::new(Metrics::new()),
                bench_key_wrap(),
            )
        };
        let create = "CREATE TABLE IF NOT EXISTS bench_rows \
                      (position BIGINT NOT NULL, aggregate_id TEXT NOT NULL, event_type TEXT NOT NULL)";
        let mut tx = store.db().begin_write().await?;
        exec!(&mut tx, create)?;
        tx.commit().await?;
        Ok(Self { store, url, drop_pg, _dir: dir })
    }

    pub(super) async fn close(self) -> anyhow::Result<()> {
        self.store.db().close().await;
        if let Some((admin_url, name)) = self.drop_pg {
            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
        }
        Ok(())
    }

    fn projector(&self, batch_size: usize, extra: Vec<Arc<dyn Projection>>) -> Arc<Projector> {
        let mut all = projections::all();
        all.extend(extra);
        let settings = ProjectorSettings { batch_size, poll_interval: Duration::from_millis(200) };
        Arc::new(Projector::new(self.store.clone(), Arc::new(SystemClock), settings, all))
    }
}

pub(super) fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {} build", if cfg!(debug_assertions) { "DEBUG" } else { "release" })
}

/// Runs the projector followers (as a server would) until the token is cancelled.
fn follow(projector: &Arc<Projector>, store: &EventStore, shutdown: &CancellationToken) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    projector.spawn(&mut tasks, shutdown);
    if let Db::Postgres(pool) = store.db() {
        tasks.spawn(signal::run_pg_notifier(pool.clone(), store.signal().clone(), shutdown.clone()));
    }
    tasks
}

pub(super) async fn append(args: AppendArgs) -> anyhow::Result<()> {
    println!(
        "append: {} writers, {} s, engine {}, {}",
        args.concurrency,
        args.duration,
        args.target.engine,
        machine()
    );
    let (latencies, elapsed) = append_run(&args.target, args.concurrency, args.duration, true).await?;
    println!(
        "append: {} commands in {elapsed:.1} s = {:.0} events/s; latency {}",
        latencies.count(),
        latencies.count() as f64 / elapsed,
        latencies.summary()
    );

    if args.pgbench {
        let tps = pgbench(&args.target.admin_url, args.concurrency, args.duration).await?;
        println!("pgbench -b simple-update -c {} -j 2 -T {}: {tps:.0} tps", args.concurrency, args.duration);
        println!("ratio append/pgbench: {:.2}", latencies.count() as f64 / elapsed / tps);
    }
    Ok(())
}

/// One `append` run on a fresh scratch database: `concurrency` writers of one-event
/// commands on distinct aggregates for `duration` seconds, the projector following as in
/// a server; `chained: false` uses the store without the hash chain. Returns the
/// latencies and the elapsed seconds.
pub(super) async fn append_run(
    target: &Target,
    concurrency: usize,
    duration: u64,
    chained: bool,
) -> anyhow::Result<(Latencies, f64)> {
    let pool_size = u32::try_from(concurrency + 4).unwrap_or(36);
    let scratch = Scratch::open_with(target, pool_size, chained).await?;
    let projector = scratch.projector(500, vec![]);
    projector.init().await?;
    let shutdown = CancellationToken::new();
    let mut followers = follow(&projector, &scratch.store, &shutdown);

    let bus = CommandBus::<BenchCounter>::new(scratch.store.clone(), ());
    let deadline = Instant::now() + Duration::from_secs(duration);
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for writer in 0..concurrency {
        let bus = bus.clone();
        writers.spawn(async move {
            let mut latencies = Latencies::default();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let ctx = CommandContext::system(Utc::now());
                bus.execute(&format!("w{writer}-{i}"), (), &ctx).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                latencies.record(t0.elapsed());
                i += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Latencies::default();
    while let Some(result) = writers.join_next().await {
        latencies.merge(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    while followers.join_next().await.is_some() {}
    scratch.close().await?;
    Ok((latencies, elapsed))
}

pub(super) async fn pgbench(admin_url: &str, clients: usize, duration: u64) -> anyhow::Result<f64> {
    let options = PgConnectOptions::from_str(admin_url)?;
    let name = format!("mca_bench_pgbench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await?;
    let base = |cmd: &mut Command| {
        cmd.arg("-h").arg(options.get_host()).arg("-p").arg(options.get_port().to_string());
        cmd.arg("-U").arg(options.get_username());
    };
    let mut init = Command::new("pgbench");
    base(&mut init);
    let status = init.args(["-i", "-q"]).arg(&name).stdout(Stdio::null()).stderr(Stdio::null()).status();
    let result = match status {
        Ok(status) if status.success() => {
            let mut run = Command::new("pgbench");
            base(&mut run);
            let output = run
                .args(["-b", "simple-update", "-j", "2"])
                .arg("-c")
                .arg(clients.to_string())
                .arg("-T")
                .arg(duration.to_string())
                .arg(&name)
                .output()?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("tps = ").and_then(|rest| rest.split_whitespace().next()))
                .and_then(|n| n.parse::<f64>().ok())
                .with_context(|| format!("no tps in pgbench output:\n{text}"))
        }
        _ => Err(anyhow::anyhow!("pgbench -i failed (is pgbench installed?)")),
    };
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut admin).await?;
    result
}

pub(super) async fn catchup(args: CatchupArgs) -> anyhow::Result<()> {
    let kind =
        if args.realistic { "realistic mix, every real projection" } else { "bench events, one projection" };
    println!(
        "catchup: {} events ({kind}), batch {}, engine {}, {}",
        args.events,
        args.batch_size,
        args.target.engine,
        machine()
    );
    let scratch = Scratch::open(&args.target, 8).await?;
    let filled = Instant::now();
    let (written, users) = if args.realistic {
        fill_realistic(&scratch, args.events).await?
    } else {
        (fill_bench(&scratch, args.events).await?, 0)
    };
    println!("catchup: log filled with {written} events in {:.1} s", filled.elapsed().as_secs_f64());

    let settings =
        ProjectorSettings { batch_size: args.batch_size, poll_interval: Duration::from_millis(200) };
    let projections: Vec<Arc<dyn Projection>> = if args.realistic {
        let all = projections::all();
        if let Some(unknown) = args.only.iter().find(|n| !all.iter().any(|p| p.name() == n.as_str())) {
            anyhow::bail!("no projection named {unknown}");
        }
        all.into_iter().filter(|p| args.only.is_empty() || args.only.iter().any(|n| n == p.name())).collect()
    } else {
        vec![Arc::new(BenchRows { per_event: args.per_event })]
    };
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let projector =
        Projector::new(scratch.store.clone(), Arc::new(SystemClock), settings, projections.clone());
    projector.init().await?;
    let started = Instant::now();
    projector.catch_up().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let how = if args.per_event { "one INSERT per event" } else { "multi-row statements per batch" };
    println!(
        "catchup: {} ({how}) applied {written} events in {elapsed:.2} s = {:.0} events/s",
        names.join(", "),
        written as f64 / elapsed
    );
    verify_catchup(&projector, &scratch, &names, users).await?;
    scratch.close().await
}

/// A timing is only worth reporting if the work was done: every fed projection has reached
/// the end of the log and, for the realistic mix, holds the rows the mix implies.
pub(super) async fn verify_catchup(
    projector: &Projector,
    scratch: &Scratch,
    names: &[&str],
    users: usize,
) -> anyhow::Result<()> {
    for lag in projector.lag().await? {
        anyhow::ensure!(lag.events == 0, "{} stopped {} events short of the log's end", lag.name, lag.events);
    }
    if users == 0 {
        return Ok(());
    }
    let users = i64::try_from(users)?;
    let expected = [
        ("users", "users", users),
        ("sessions", "sessions", users),
        (
            "credit_transactions",
            "credit_transactions",
            users * (1 + mana_core_auth::events::mix::SPENDS_PER_USER),
        ),
        // Two postings per transaction (every spend of the mix is from the free pool).
        (
            "ledger_postings",
            "ledger_postings",
            2 * users * (1 + mana_core_auth::events::mix::SPENDS_PER_USER),
        ),
    ];
    for (projection, table, rows) in expected {
        if !names.contains(&projection) {
            continue;
        }
        let sql = format!("SELECT count(*) FROM {table}");
        let found: i64 = match scratch.store.db() {
            Db::Postgres(pool) => sqlx::query_scalar(&sql).fetch_one(pool).await?,
            Db::Sqlite { reader, .. } => sqlx::query_scalar(&sql).fetch_one(reader).await?,
        };
        anyhow::ensure!(found == rows, "{table} holds {found} rows, the mix implies {rows}");
    }
    println!("catchup: verified: every projection at the log's end, row counts as the mix implies");
    Ok(())
}

async fn fill_bench(scratch: &Scratch, total: usize) -> anyhow::Result<usize> {
    let chunk = 1000;
    let mut written = 0;
    while written < total {
        let n = chunk.min(total - written);
        let events: Vec<NewEvent> = (0..n)
            .map(|i| NewEvent {
                aggregate_type: BenchCounter::TYPE.to_owned(),
                aggregate_id: format!("a{}", (written + i) / 10),
                sequence: i64::try_from((written + i) % 10 + 1).unwrap_or(1),
                event_type: "BenchBumped".to_owned(),
                event_version: "1".to_owned(),
                payload: serde_json::json!({"Bumped": {"bumps": (written + i) % 10 + 1}}),
                metadata: mana_core_auth::events::EventMetadata::system(Utc::now()).to_json(),
                recorded_at: Utc::now(),
            })
            .collect();
        scratch.store.append(&events).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        written += n;
    }
    Ok(written)
}

/// Fills the log with whole users' event mixes; returns (events, users).
async fn fill_realistic(scratch: &Scratch, total: usize) -> anyhow::Result<(usize, usize)> {
    fill_realistic_from(scratch, 0, total).await
}

/// Appends whole users' event mixes, users numbered from `first_user`, until at least
/// `total` events are written; returns (events, users) written by this call.
pub(super) async fn fill_realistic_from(
    scratch: &Scratch,
    first_user: usize,
    total: usize,
) -> anyhow::Result<(usize, usize)> {
    let mut written = 0;
    let mut user = first_user;
    let mut chunk = Vec::new();
    while written < total {
        let events = mana_core_auth::events::mix::user_events(user, Utc::now());
        written += events.len();
        chunk.extend(events);
        user += 1;
        if chunk.len() >= 1000 || written >= total {
            scratch.store.append(&chunk).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            chunk.clear();
        }
    }
    Ok((written, user - first_user))
}

pub(super) async fn lag(args: LagArgs) -> anyhow::Result<()> {
    println!(
        "lag: {} appends/s for {} s, engine {}, {}",
        args.rate,
        args.duration,
        args.target.engine,
        machine()
    );
    let scratch = Scratch::open(&args.target, 24).await?;
    let projector = scratch.projector(500, vec![Arc::new(BenchRows { per_event: false })]);
    projector.init().await?;
    let shutdown = CancellationToken::new();
    let mut followers = follow(&projector, &scratch.store, &shutdown);

    let bus = CommandBus::<BenchCounter>::new(scratch.store.clone(), ());
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = args.rate * args.duration;
    let mut probes = JoinSet::new();
    let started = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let bus = bus.clone();
        let projector = Arc::clone(&projector);
        probes.spawn(async move {
            let ctx = CommandContext::system(Utc::now());
            let committed =
                bus.execute(&format!("lag-{i}"), (), &ctx).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let cursor = committed.cursor.context("no cursor")?;
            let t0 = Instant::now();
            let reached = projector.wait_for(cursor, Duration::from_secs(10)).await;
            anyhow::ensure!(reached, "projection did not reach {cursor} in 10 s");
            Ok::<_, anyhow::Error>(t0.elapsed())
        });
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    let mut lags = Latencies::default();
    while let Some(result) = probes.join_next().await {
        lags.record(result??);
    }
    shutdown.cancel();
    while followers.join_next().await.is_some() {}
    println!(
        "lag: {} appends at {achieved:.0}/s; commit-to-projected lag over all {} projections: {}",
        lags.count(),
        projector.projections().len(),
        lags.summary()
    );
    scratch.close().await
}

pub(super) async fn startup(args: StartupArgs) -> anyhow::Result<()> {
    // The server binary is built beside this one (`cargo build --release --workspace`).
    let exe = std::env::current_exe()?.with_file_name("mana-core-auth");
    anyhow::ensure!(
        exe.exists(),
        "{} not found: build it with `cargo build --release --workspace`",
        exe.display()
    );
    println!("startup: {} runs of {} on a fresh SQLite file, {}", args.runs, exe.display(), machine());
    let mut starts = Latencies::default();
    let mut rss = Vec::new();
    for _ in 0..args.runs {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let t0 = Instant::now();
        let mut child = Command::new(&exe)
            .arg("serve")
            .env_clear()
            .env("PORT", port.to_string())
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = t0 + Duration::from_secs(10);
        while !healthy(port) {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the server did not answer health within 10 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        starts.record(t0.elapsed());
        tokio::time::sleep(Duration::from_secs(args.idle)).await;
        rss.push(rss_kib(child.id())?);
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        child.wait()?;
    }
    rss.sort_unstable();
    println!("startup: time to first healthy response {}", starts.summary());
    println!(
        "startup: idle RSS after {} s: median {:.1} MiB, max {:.1} MiB",
        args.idle,
        rss[rss.len() / 2] as f64 / 1024.0,
        rss[rss.len() - 1] as f64 / 1024.0
    );
    Ok(())
}

pub(super) fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let request = "GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no VmRSS")
}

/// The data-key wrap of the benchmarks' own stores (their databases are scratch ones).
pub fn bench_key_wrap() -> mana_core_auth::events::personal::KeyWrap {
    mana_core_auth::security::secrets::ServerSecret::from_text("mana-core-auth-bench-key-encryption-secret")
        .key_wrap()
}
