//! The project's own benchmarks (`mana-core-auth bench ...`). Each scenario prints its
//! numbers; docs/BENCHMARKS.md records them with the machine, command and date.
//!
//! Benchmarks run on the real path: the release binary's code, real projections, default
//! durability. Scratch databases are created and dropped by the benchmark itself.

mod ceilings;
mod foundation;
mod http;
mod http_client;
mod stats;

use clap::{Args, Subcommand};

pub use http::HttpScenario;
pub use stats::Latencies;

/// `mana-core-auth bench <scenario>`.
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
    /// HTTP load against a running server (this one or any with the same routes).
    Http(HttpArgs),
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
    /// Apply with one INSERT per event (the trait's default path) instead of one per batch.
    #[arg(long)]
    pub per_event: bool,
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
}

/// Runs one benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(args) => foundation::append(args).await,
        BenchCommand::Catchup(args) => foundation::catchup(args).await,
        BenchCommand::Lag(args) => foundation::lag(args).await,
        BenchCommand::Startup(args) => foundation::startup(args).await,
        BenchCommand::Http(args) => http::run(args).await,
    }
}
