//! The project's own benchmarks (`mana-core-auth-bench <scenario>`). Each scenario prints
//! its numbers; docs/BENCHMARKS.md records them with the machine, command and date.
//!
//! Benchmarks run on the real path: the release build of the service's library and
//! binary, real projections, default durability. Scratch databases are created and
//! dropped by the benchmark itself. This crate is a workspace member beside the service:
//! it uses the service's library, and the service knows nothing of it.

mod audit;
mod balance_at;
mod ceilings;
mod feed;
mod foundation;
mod http;
mod http_client;
mod ledger;
mod process;
mod replay;
mod stats;
mod storm;
mod webhooks;

use clap::Args;
use clap::{Parser, Subcommand};

pub use http::HttpScenario;
pub use stats::Latencies;

/// The benchmark to run (`mana-core-auth-bench --help`).
#[derive(Debug, Parser)]
#[command(
    name = "mana-core-auth-bench",
    version,
    about = "The benchmarks of mana-core-auth (docs/BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Cli::parse().command).await
}

/// `mana-core-auth-bench <scenario>`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Appends through the command layer (one event per command, distinct aggregates),
    /// optionally next to pgbench's simple-update on the same server.
    Append(AppendArgs),
    /// Projector catch-up from position 0 over a pre-filled log.
    Catchup(CatchupArgs),
    /// Projection lag under a steady append rate.
    Lag(LagArgs),
    /// Start-up time to the first healthy response and idle RSS of the server binary.
    Startup(StartupArgs),
    /// The rate limiter's own cost: latency of one limit check on Redis under load.
    Limiter(LimiterArgs),
    /// HTTP load against a running server (this one or any with the same routes).
    Http(HttpArgs),
    /// The audit log on PostgreSQL: `verify` (live and offline) and `export` rates and
    /// peak RSS at growing log sizes, and appends with and without the hash chain.
    Audit(AuditArgs),
    /// A balance at a past moment from the log (`credits::history::balance_at`) for one
    /// account with a long history: over the whole stream, at its middle by time and by
    /// cursor (median of a few runs).
    BalanceAt(BalanceAtArgs),
    /// Replay on PostgreSQL: `replay --verify` rate and `replay --apply` time and peak RSS
    /// over a realistic log, beside the projector's own catch-up over the same log.
    Replay(ReplayArgs),
    /// The double-entry ledger: `ledger_postings` catch-up alone, then the trial balance
    /// (now and at a cursor) and a usage report over a million postings or more.
    Ledger(LedgerArgs),
    /// The change feed on NATS JetStream: catch-up throughput over a pre-filled log, and
    /// commit-to-consumer lag at a steady append rate.
    Feed(FeedArgs),
    /// Signed Stripe webhooks per second, each completing a distinct purchase, against the
    /// release server binary on PostgreSQL (with a fake Stripe on loopback for the setup).
    Webhooks(WebhooksArgs),
}

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    pub target: Target,
    /// The Redis the server's rate limiter uses.
    #[arg(long, env = "BENCH_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Concurrent deliveries, one keep-alive connection each.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Users the purchases are spread over (consecutive purchases by different users).
    #[arg(long, default_value_t = 256)]
    pub users: usize,
    /// Purchases started before the run: one webhook each, so at least the run's total.
    #[arg(long, default_value_t = 40_000)]
    pub purchases: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of the same load before the measured window, not counted.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(flatten)]
    pub target: Target,
    /// Postings the ledger holds at least (32 per user of the realistic mix).
    #[arg(long, default_value_t = 1_000_000)]
    pub postings: usize,
    /// Events per projector transaction.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Timed runs of each read.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

#[derive(Debug, Args)]
pub struct FeedArgs {
    #[command(flatten)]
    pub target: Target,
    /// JetStream to publish to (a stream of the benchmark's own, deleted at the end).
    #[arg(long, env = "BENCH_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Events in the log before the publisher starts (the catch-up).
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// `EVENT_STREAM_BATCH_SIZE`.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Appends per second in the lag phase.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of the lag phase.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
}

/// Where a benchmark keeps its scratch database.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// `postgres` or `sqlite`.
    #[arg(long, default_value = "postgres")]
    pub engine: String,
    /// A PostgreSQL maintenance database; a scratch database is created beside it.
    #[arg(long, env = "BENCH_ADMIN_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub admin_url: String,
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    #[command(flatten)]
    pub target: Target,
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Also run `pgbench -b simple-update -c <concurrency>` on a scratch database.
    #[arg(long)]
    pub pgbench: bool,
}

#[derive(Debug, Args)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub target: Target,
    /// Events in the log before the projector starts.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Events per projector transaction.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Apply with one INSERT per event instead of one multi-row statement per batch.
    #[arg(long)]
    pub per_event: bool,
    /// Fill the log with a realistic mix (registrations, sessions, refreshes, failed
    /// logins, spends) and feed every real projection, instead of the one-row-per-event
    /// benchmark projection.
    #[arg(long)]
    pub realistic: bool,
    /// With `--realistic`: feed only these projections (comma-separated names), to see
    /// what each one costs.
    #[arg(long, value_delimiter = ',', requires = "realistic")]
    pub only: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LagArgs {
    #[command(flatten)]
    pub target: Target,
    /// Appends per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
}

#[derive(Debug, Args)]
pub struct LimiterArgs {
    #[arg(long, env = "BENCH_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

#[derive(Debug, Args)]
pub struct StartupArgs {
    /// How many starts to measure.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Seconds to let the server idle before reading its RSS.
    #[arg(long, default_value_t = 3)]
    pub idle: u64,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Base URL of the server under test (`http://` only); routes are appended to it.
    #[arg(long, default_value = "http://127.0.0.1:3001")]
    pub url: String,
    /// The request mix.
    #[arg(long, value_enum)]
    pub scenario: HttpScenario,
    /// Concurrent workers, one keep-alive connection each (the validate workers in `mixed`).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of the same load before the measured window, not counted.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Login workers next to the validate workers in `mixed`.
    #[arg(long, default_value_t = 8)]
    pub login_concurrency: usize,
    /// Users registered per worker for `erase` (each request erases one).
    #[arg(long, default_value_t = 40)]
    pub erase_per_worker: usize,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub target: Target,
    /// Log sizes to measure at (comma-separated, realistic mix); the log grows from one
    /// to the next. Empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "250000,1000000")]
    pub events: Vec<usize>,
    /// Where the export files go (a scratch directory is made inside); the system's
    /// temporary directory by default.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// At the largest size, also time the phases of offline verification in this process.
    #[arg(long)]
    pub phases: bool,
    /// Skip the append cost of the chain.
    #[arg(long)]
    pub no_append: bool,
    /// Concurrent writers of the append runs.
    #[arg(long, default_value_t = 32)]
    pub append_concurrency: usize,
    /// Seconds of each append run.
    #[arg(long, default_value_t = 20)]
    pub append_duration: u64,
    /// Rounds of (with, without) append runs, alternating which goes first.
    #[arg(long, default_value_t = 2)]
    pub append_rounds: usize,
    /// Events of each bulk fill with and without the chain per round (0 to skip).
    #[arg(long, default_value_t = 200_000)]
    pub bulk_events: usize,
}

#[derive(Debug, Args)]
pub struct BalanceAtArgs {
    #[command(flatten)]
    pub target: Target,
    /// Events of the account (its opening, then grants and spends alternately).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub target: Target,
    /// Log sizes to measure at (comma-separated, realistic mix); the log grows from one
    /// to the next.
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    pub events: Vec<usize>,
    /// Events per batch of the projector that brings the live read models up to date in
    /// this process; the default is the replay's own batch at the default settings, so
    /// the two rates compare like for like.
    #[arg(long, default_value_t = 1_000)]
    pub catchup_batch: usize,
    /// `PROJECTION_BATCH_SIZE` values to run `replay --verify` with, one run each
    /// (comma-separated; the replay batch is max(value, 1000)); `--apply` runs with the
    /// first. Unset by default.
    #[arg(long, value_delimiter = ',')]
    pub projection_batch_sizes: Vec<usize>,
    /// Skip `replay --apply`.
    #[arg(long)]
    pub no_apply: bool,
    /// `RUST_LOG` for the replay subprocesses (e.g. `info,sqlx::query=debug` to see each
    /// statement's time); their output goes to `--logs`.
    #[arg(long)]
    pub rust_log: Option<String>,
    /// Keep each replay subprocess's output (logs, then the summary) in this directory.
    #[arg(long)]
    pub logs: Option<std::path::PathBuf>,
    /// At the largest size, also time in this process what a verify is made of: reading
    /// the log, the ledger checks, the comparison statements.
    #[arg(long)]
    pub phases: bool,
}

/// Runs one benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(args) => foundation::append(args).await,
        BenchCommand::Catchup(args) => foundation::catchup(args).await,
        BenchCommand::Lag(args) => foundation::lag(args).await,
        BenchCommand::Startup(args) => foundation::startup(args).await,
        BenchCommand::Limiter(args) => limiter(args).await,
        BenchCommand::Http(args) => http::run(args).await,
        BenchCommand::Audit(args) => audit::audit(args).await,
        BenchCommand::BalanceAt(args) => balance_at::balance_at_bench(args).await,
        BenchCommand::Replay(args) => replay::replay(args).await,
        BenchCommand::Ledger(args) => ledger::ledger(args).await,
        BenchCommand::Feed(args) => feed::feed(args).await,
        BenchCommand::Webhooks(args) => webhooks::webhooks(args).await,
    }
}

/// Concurrent limit checks against Redis (one key per worker, limits out of reach).
async fn limiter(args: LimiterArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use mana_core_auth::security::rate_limit::{Limit, Limits, RateLimiter, Rule};

    let mut limits = Limits::defaults();
    limits.rules.insert(Rule::Default, Limit { max: u32::MAX - 1, window: Duration::from_secs(60) });
    let prefix = format!("bench-limiter:{}:", uuid::Uuid::new_v4().simple());
    let limiter = Arc::new(RateLimiter::new(
        limits,
        Some(&args.redis_url),
        &prefix,
        Duration::from_millis(250),
        Arc::new(mana_core_auth::telemetry::Metrics::new()),
    )?);
    limiter.warm_up().await;
    anyhow::ensure!(limiter.mode() == "redis", "Redis at {} is not reachable", args.redis_url);
    println!("limiter: {} tasks, {} s, Redis {}", args.concurrency, args.duration, args.redis_url);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let limiter = Arc::clone(&limiter);
        tasks.spawn(async move {
            let mut latencies = Latencies::default();
            let subject = format!("ip:10.0.0.{worker}");
            while Instant::now() < deadline {
                let started = Instant::now();
                limiter.hit(Rule::Default, &subject).await;
                latencies.record(started.elapsed());
            }
            latencies
        });
    }
    let mut all = Latencies::default();
    while let Some(latencies) = tasks.join_next().await {
        all.merge(latencies?);
    }
    println!(
        "limiter: {} checks = {:.0}/s; per check {}; mode after the run: {}",
        all.count(),
        all.count() as f64 / args.duration as f64,
        all.summary(),
        limiter.mode()
    );
    Ok(())
}
