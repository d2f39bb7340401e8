//! The command line: `serve` (the default), `migrate`, and operator tools.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{Application, shutdown_signal};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::db::Db;
use crate::events::{EventStore, LogSignal};
use crate::projections::{self, Projector, ProjectorSettings};
use crate::telemetry::{Metrics, init_tracing};

/// The central authentication and credit service.
#[derive(Debug, Parser)]
#[command(name = "mana-core-auth", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; `serve` when none is given.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (migrates the database first).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage users (recorded as events; a role change or a disable revokes every
    /// session of the user).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Inspect or rebuild the projections (read models).
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Write the event log as NDJSON, one event a line in global order, secrets as their
    /// commitments (docs/AUDIT.md). Logs go to standard error.
    Export(ExportArgs),
}

/// The bounds and destination of an export.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Start after this event (the `cursor` field of an exported line).
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<crate::events::LogCursor>,
    /// Stop after this cursor, or before the first event recorded after this RFC 3339
    /// time (inclusive either way).
    #[arg(long, value_name = "CURSOR|RFC3339")]
    pub until: Option<crate::audit::export::Until>,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

/// User administration.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Set a user's role: user, admin or service.
    SetRole { email: String, role: crate::events::auth::Role },
    /// Stop a user from signing in and revoke their sessions.
    Disable { email: String },
    /// Let a disabled user sign in again.
    Enable { email: String },
}

/// Projection maintenance.
#[derive(Debug, Subcommand)]
pub enum ProjectionsAction {
    /// Print each projection's checkpoint and lag.
    Status,
    /// Empty a projection and replay the whole log into it.
    Rebuild {
        /// The projection's name (see `status`).
        name: String,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    // An export may write its data to standard output: keep the logs out of it.
    let logs_to_stderr = matches!(cli.command, Some(Command::Export(_)));
    init_tracing(config.log_format, &config.log_filter, logs_to_stderr)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let db = Db::connect(&config.database, 2).await?;
            db.migrate().await?;
            tracing::info!(engine = db.engine(), "migrations applied");
            Ok(())
        }
        Command::Projections { action } => projections_command(config, action).await,
        Command::User { action } => user_command(config, action).await,
        Command::Export(args) => export_command(config, args).await,
    }
}

async fn export_command(config: Config, args: ExportArgs) -> anyhow::Result<()> {
    use crate::audit::export::Export;
    use std::io::IsTerminal;
    let db = Db::connect(&config.database, 2).await?;
    db.migrate().await?;
    let store = EventStore::new(db.clone(), LogSignal::new(), Arc::new(Metrics::new()));
    let after = args.after.unwrap_or(crate::events::LogCursor::START);
    let export = Export::plan(&store, after, args.until).await?;
    let bar = if std::io::stderr().is_terminal() {
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} {wide_bar} {human_pos}/~{human_len} events, {per_sec}, {elapsed}",
        )?;
        indicatif::ProgressBar::new(export.estimate()).with_style(style)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = {
        let bar = bar.clone();
        move |count| bar.set_position(count)
    };
    let summary = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            export.run(file, progress).await?
        }
        None => export.run(std::io::stdout(), progress).await?,
    };
    bar.finish_and_clear();
    db.close().await;
    let last = summary.last.map_or_else(|| "none".to_owned(), |c| c.to_string());
    eprintln!(
        "exported {} events in {:.2} s ({:.0}/s); last cursor {last}",
        summary.events,
        summary.elapsed.as_secs_f64(),
        summary.rate()
    );
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let engine = match &config.database {
        crate::config::DatabaseConfig::Postgres { .. } => "postgres",
        crate::config::DatabaseConfig::Sqlite { .. } => "sqlite",
    };
    let app = Application::build(config).await?;
    tracing::info!(address = %app.local_addr(), engine, "listening");
    app.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn projections_command(config: Config, action: ProjectionsAction) -> anyhow::Result<()> {
    let db = Db::connect(&config.database, 4).await?;
    db.migrate().await?;
    let store = EventStore::new(db.clone(), LogSignal::new(), Arc::new(Metrics::new()));
    let settings = ProjectorSettings {
        batch_size: config.projection_batch_size,
        poll_interval: config.projection_poll_interval,
    };
    let projector = Projector::new(store, Arc::new(SystemClock), settings, projections::all());
    projector.init().await?;
    match action {
        ProjectionsAction::Status => {
            for lag in projector.lag().await? {
                println!(
                    "{:<24} checkpoint {:<24} behind {:>8} events, {:>8.1} s",
                    lag.name,
                    lag.checkpoint.to_string(),
                    lag.events,
                    lag.seconds
                );
            }
        }
        ProjectionsAction::Rebuild { name } => {
            projector.rebuild(&name).await.with_context(|| format!("rebuilding {name}"))?;
            println!("rebuilt {name}");
        }
    }
    db.close().await;
    Ok(())
}

async fn user_command(mut config: Config, action: UserAction) -> anyhow::Result<()> {
    use crate::auth::{AuthError, UserChange};
    // The command runs the service's own write path in this process; it does not serve.
    config.port = 0;
    config.host = std::net::IpAddr::from([127, 0, 0, 1]);
    let app = Application::build(config).await?;
    let (email, change) = match action {
        UserAction::SetRole { email, role } => (email, UserChange::SetRole(role)),
        UserAction::Disable { email } => (email, UserChange::Disable),
        UserAction::Enable { email } => (email, UserChange::Enable),
    };
    let outcome = app.state().auth().change_user(&email, change).await;
    let stopped = app.run_until(async {}).await;
    match outcome {
        Ok(true) => println!("{email}: done ({change:?}); every affected session is revoked"),
        Ok(false) => println!("{email}: nothing to change ({change:?})"),
        Err(AuthError::NotFound) => anyhow::bail!("no user is registered with {email}"),
        Err(AuthError::Validation(messages)) => anyhow::bail!("{}", messages.join("; ")),
        Err(other) => return Err(other.into()),
    }
    stopped
}
