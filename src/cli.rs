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
use crate::security::secrets::ServerSecret;
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
    /// Verify the event log: every hash, stream chain and seal; live, or offline on an
    /// export. Exits 0 when clean, 1 at the first failure (printed), 2 on a usage error.
    Verify {
        /// Verify this export (NDJSON from `export`, from the log's start) instead of the
        /// live database; needs nothing else.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// The audit public keys (JWKS, as `GET /api/v1/audit/keys` serves them) that
        /// seals must be signed with. Live, the service's own keys are used without it.
        #[arg(long)]
        jwks: Option<std::path::PathBuf>,
    },
    /// Inspect or rebuild the projections (read models).
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Print the OpenAPI document the server publishes at `/api/v1/openapi.json` (needs
    /// no database; CI lints it).
    Openapi,
    /// Print the event catalogue (needs no database).
    Events {
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Rebuild every read model from the log aside (a scratch schema or file) and either
    /// compare it row by row with the live one (`--verify`: exits 0 when equal and every
    /// credit event's arithmetic holds, 1 with the differences printed, 2 on a usage error)
    /// or swap it in without downtime (`--apply`).
    Replay(ReplayArgs),
    /// Manage read-only PostgreSQL login roles for analytics jobs: the read models (schema
    /// `read`) and nothing else; `--app` limits one to an app's rows (docs/PROJECTIONS.md).
    AnalyticsRole {
        #[command(subcommand)]
        action: AnalyticsRoleAction,
    },
    /// Write the event log as NDJSON, one event a line in global order, secrets as their
    /// commitments (docs/AUDIT.md). Logs go to standard error.
    Export(ExportArgs),
    /// Read the double-entry ledger (docs/PROJECTIONS.md, `ledger_postings`).
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
}

/// The double-entry ledger.
#[derive(Debug, Subcommand)]
pub enum LedgerAction {
    /// Print every account's balance at a point of the log, their total (0) and the cursor
    /// answered. Brings the ledger up to the log first, as a server's projector would.
    TrialBalance {
        /// A cursor (`txid:position`) or an RFC 3339 time (the last event recorded at or
        /// before it); default: the whole log.
        #[arg(long, value_name = "CURSOR|RFC3339")]
        at: Option<crate::credits::input::Point>,
        /// Print the JSON `GET /api/v1/admin/ledger/trial-balance` answers instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The event catalogue, generated from the code.
#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Print the JSON Schema of every event type, with its version, aggregate type and the
    /// secret/personal class of its fields, as one JSON document.
    Schema,
    /// Print the catalogue as Markdown (docs/EVENTS.md).
    Markdown,
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

/// What a replay does with the rebuilt read models.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ReplayArgs {
    /// Compare with the live read models; change nothing.
    #[arg(long)]
    pub verify: bool,
    /// Replace the live read models, without downtime.
    #[arg(long)]
    pub apply: bool,
}

/// Analytics roles.
#[derive(Debug, Subcommand)]
pub enum AnalyticsRoleAction {
    /// Create the role, or bring it up to date on a second run.
    Create {
        /// The role's name: lowercase letters, digits and underscores.
        name: String,
        /// Limit the role to this app's rows (row-level security); it then reads no purchase.
        #[arg(long, value_name = "APP_ID")]
        app: Option<String>,
        /// Set the login password from this file (its first line); without it a new role
        /// has none and an existing one keeps its own.
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
    },
    /// Drop the role, its policies and its privileges.
    Drop { name: String },
}

/// User administration.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Set a user's role: user, admin, service or auditor (docs/API.md lists what each may do).
    SetRole { email: String, role: crate::events::auth::Role },
    /// Stop a user from signing in and revoke their sessions.
    Disable { email: String },
    /// Let a disabled user sign in again.
    Enable { email: String },
    /// Erase a person (GDPR Art. 17; docs/PRIVACY.md): destroy their personal data, keep
    /// the books. Takes the user's e-mail address or id; exits 1 for an unknown or an
    /// already erased user.
    Erase {
        /// The user's e-mail address or id.
        user: String,
    },
}

/// Projection maintenance.
#[derive(Debug, Subcommand)]
pub enum ProjectionsAction {
    /// Print each projection's checkpoint and lag.
    Status,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Events { action }) = &cli.command {
        return events_command(action);
    }
    if let Some(Command::Openapi) = &cli.command {
        return openapi_command();
    }
    let config = Config::from_env()?;
    // An export or a ledger report may write its data to standard output: keep the logs out of it.
    let logs_to_stderr = matches!(cli.command, Some(Command::Export(_) | Command::Ledger { .. }));
    init_tracing(config.log_format, &config.log_filter, logs_to_stderr)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let db = Db::connect(&config.database, 2).await?;
            db.migrate().await?;
            let store = open_store(&config, &db).await?;
            let backfilled = store.backfill_chain().await?;
            tracing::info!(engine = db.engine(), backfilled, "migrations applied");
            Ok(())
        }
        Command::Projections { action } => projections_command(config, action).await,
        Command::Verify { file, jwks } => verify_command(config, file, jwks).await,
        Command::User { action } => user_command(config, action).await,
        Command::Export(args) => export_command(config, args).await,
        Command::Replay(args) => replay_command(config, args).await,
        Command::AnalyticsRole { action } => analytics_role_command(config, action).await,
        Command::Ledger { action } => ledger_command(config, action).await,
        Command::Events { action } => events_command(&action),
        Command::Openapi => openapi_command(),
    }
}

fn openapi_command() -> anyhow::Result<()> {
    let mut json = serde_json::to_string_pretty(&crate::api::openapi_document())?;
    json.push('\n');
    print(&json)
}

/// The log of an operator's command: the same data keys as the servers' (the server
/// secret from the environment), with keys written before sealing sealed first.
async fn open_store(config: &Config, db: &Db) -> anyhow::Result<EventStore> {
    let secret =
        ServerSecret::load(config.key_encryption_secret.as_ref(), config.app_env, &config.data_dir())?;
    let store = EventStore::new(db.clone(), LogSignal::new(), Arc::new(Metrics::new()), secret.key_wrap());
    store.personal_keys().seal_plaintext_keys().await?;
    Ok(store)
}

fn events_command(action: &EventsAction) -> anyhow::Result<()> {
    let text = match action {
        EventsAction::Schema => {
            let mut json = serde_json::to_string_pretty(&crate::events::schemas::schema_document())?;
            json.push('\n');
            json
        }
        EventsAction::Markdown => crate::events::schemas::markdown(),
    };
    print(&text)
}

/// Writes `text` to standard output.
fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // A reader that stops early (`| head`) is not an error.
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

async fn export_command(config: Config, args: ExportArgs) -> anyhow::Result<()> {
    use crate::audit::export::Export;
    use std::io::IsTerminal;
    let db = Db::connect(&config.database, 2).await?;
    db.migrate().await?;
    let store = open_store(&config, &db).await?;
    let after = args.after.unwrap_or(crate::events::LogCursor::ORIGIN);
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
    let store = open_store(&config, &db).await?;
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
    }
    db.close().await;
    Ok(())
}

async fn ledger_command(config: Config, action: LedgerAction) -> anyhow::Result<()> {
    use crate::credits::{analytics, input::Point};
    use crate::projections::ledger_postings::LedgerPostings;
    let LedgerAction::TrialBalance { at, json } = action;
    let db = Db::connect(&config.database, 4).await?;
    db.migrate().await?;
    let store = open_store(&config, &db).await?;
    let settings = ProjectorSettings {
        batch_size: config.projection_batch_size.max(1_000),
        poll_interval: config.projection_poll_interval,
    };
    // Only the ledger's own projection; safe beside servers (its lock is taken per batch).
    let projector =
        Projector::new(store.clone(), Arc::new(SystemClock), settings, vec![Arc::new(LedgerPostings)]);
    projector.init().await?;
    projector.catch_up().await?;
    let balance =
        analytics::trial_balance(&store, &projector, at.unwrap_or(Point::Now), std::time::Duration::ZERO)
            .await;
    db.close().await;
    let balance = balance?;
    if json {
        println!("{}", serde_json::to_string_pretty(&balance)?);
        return Ok(());
    }
    let width = balance.accounts.iter().map(|a| a.account.len()).max().unwrap_or(0).max(7);
    println!("{:<width$}  {:>14}", "account", "balance");
    for account in &balance.accounts {
        println!("{:<width$}  {:>14}", account.account, account.balance.to_string());
    }
    println!("{:<width$}  {:>14}", "total", balance.total.to_string());
    match &balance.requested_cursor {
        Some(requested) if *requested != balance.cursor => {
            println!("at cursor {} (asked for {requested}: the readable log ends before it)", balance.cursor);
        }
        _ => println!("at cursor {}", balance.cursor),
    }
    Ok(())
}

/// Ends the process with this exit code (after printing its message, if any).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

async fn verify_command(
    config: Config,
    file: Option<std::path::PathBuf>,
    jwks: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use crate::audit::verify::{AuditKeys, verify_export, verify_live};
    let usage = |message: String| Exit { code: 2, message };
    let keys = match &jwks {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            let document: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| usage(format!("{}: not JSON: {e}", path.display())))?;
            Some(AuditKeys::from_jwks(&document).map_err(|e| usage(format!("{}: {e}", path.display())))?)
        }
        None => None,
    };
    let started = std::time::Instant::now();
    let report = match file {
        Some(path) => {
            let reader = std::fs::File::open(&path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            let keys = keys.unwrap_or_default();
            let reader = std::io::BufReader::with_capacity(1 << 20, reader);
            tokio::task::spawn_blocking(move || verify_export(reader, keys)).await??
        }
        None => {
            let db = Db::connect(&config.database, 4).await?;
            db.migrate().await?;
            let store = open_store(&config, &db).await?;
            let keys = match keys {
                Some(keys) => keys,
                None => crate::audit::published_keys(&store).await?,
            };
            let report = verify_live(&store, keys, 5_000).await?;
            db.close().await;
            report
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let sealed = report.sealed_through.as_deref().unwrap_or("nothing");
    eprintln!(
        "checked {} events and {} seals in {seconds:.1} s; sealed through {sealed}, {} events after the last seal; \
         {} personal values checked, {} without a key; {} events of erased people's renamed legacy streams",
        report.events,
        report.seals,
        report.unsealed,
        report.personal_checked,
        report.personal_without_key,
        report.redacted
    );
    match report.failure {
        None => {
            println!("ok: the log verifies");
            Ok(())
        }
        Some(failure) => Err(Exit { code: 1, message: format!("verification failed at {failure}") }.into()),
    }
}

async fn replay_command(config: Config, args: ReplayArgs) -> anyhow::Result<()> {
    use crate::audit::replay::{self, ReplaySettings};
    let db = Db::connect(&config.database, 4).await?;
    db.migrate().await?;
    let settings = ReplaySettings { batch_size: config.projection_batch_size.max(1_000) };
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let store = open_store(&config, &db).await?;
    if args.apply {
        let report = replay::apply(&store, clock, settings).await;
        db.close().await;
        let report = report?;
        for (table, deleted, inserted) in &report.swapped {
            println!("{table:<24} {deleted:>9} rows replaced or removed, {inserted:>9} rows written");
        }
        eprintln!(
            "replayed {} events in {:.1} s; the live projectors waited {:.2} s for the swap",
            report.events,
            report.elapsed.as_secs_f64(),
            report.held.as_secs_f64()
        );
        println!("ok: the read models are rebuilt from the log");
        return Ok(());
    }
    let report = replay::verify(&store, clock, settings).await;
    db.close().await;
    let report = report?;
    for difference in &report.differences {
        println!("table {}: {} rows differ", difference.table, difference.count);
        for (key, how) in &difference.rows {
            println!("  {}: {key}: {}", difference.table, how.describe());
        }
        if difference.count > difference.rows.len() {
            println!("  {}: ... and {} more", difference.table, difference.count - difference.rows.len());
        }
    }
    for finding in &report.findings {
        println!("check: {finding}");
    }
    if report.finding_count > report.findings.len() as u64 {
        println!("check: ... and {} more", report.finding_count - report.findings.len() as u64);
    }
    let at: Vec<String> =
        report.compared_at.iter().map(|(name, cursor)| format!("{name} {cursor}")).collect();
    eprintln!("compared each read model at its live checkpoint: {}", at.join(", "));
    let rows: u64 = report.rows.iter().map(|(_, n)| n).sum();
    let t = &report.totals;
    eprintln!(
        "replayed {} events ({:.0}/s) of {} streams and {} credit accounts in {:.1} s; compared {rows} rows in {} tables; \
         granted {}, spent {}, refunded {}, adjusted {}, held {}",
        report.events,
        report.events as f64 / report.elapsed.as_secs_f64().max(1e-9),
        t.streams,
        t.accounts,
        report.elapsed.as_secs_f64(),
        report.rows.len(),
        t.granted,
        t.spent,
        t.refunded,
        t.adjusted,
        t.held
    );
    if report.clean() {
        println!("ok: the read models equal the log's replay and every credit event's arithmetic holds");
        Ok(())
    } else {
        let tables = report.differences.len();
        let message = format!(
            "replay differs: {tables} tables with differences, {} failed checks",
            report.finding_count
        );
        Err(Exit { code: 1, message }.into())
    }
}

async fn analytics_role_command(config: Config, action: AnalyticsRoleAction) -> anyhow::Result<()> {
    use crate::security::analytics_roles::{self, AnalyticsRole, AnalyticsRoleError, Created};
    let usage = |message: String| Exit { code: 2, message };
    if !matches!(config.database, crate::config::DatabaseConfig::Postgres { .. }) {
        return Err(usage(AnalyticsRoleError::NotPostgres.to_string()).into());
    }
    let db = Db::connect(&config.database, 2).await?;
    db.migrate().await?;
    let outcome = match action {
        AnalyticsRoleAction::Create { name, app, password_file } => {
            let password = match &password_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| usage(format!("{}: {e}", path.display())))?;
                    let line = text.lines().next().unwrap_or_default().to_owned();
                    if line.is_empty() {
                        return Err(
                            usage(format!("{}: no password on its first line", path.display())).into()
                        );
                    }
                    Some(crate::config::Secret::new(line))
                }
                None => None,
            };
            let role = AnalyticsRole { name: name.clone(), app: app.clone(), password };
            analytics_roles::create(&db, &role).await.map(|created| {
                let scope = app.map_or_else(|| "every app".to_owned(), |a| format!("app {a} only"));
                match created {
                    Created::Created => println!("created analytics role {name} ({scope})"),
                    Created::Updated => println!("updated analytics role {name} ({scope})"),
                }
            })
        }
        AnalyticsRoleAction::Drop { name } => {
            analytics_roles::drop_role(&db, &name).await.map(|()| println!("dropped analytics role {name}"))
        }
    };
    db.close().await;
    match outcome {
        Ok(()) => Ok(()),
        Err(error @ (AnalyticsRoleError::InvalidName(_) | AnalyticsRoleError::InvalidApp(_))) => {
            Err(usage(error.to_string()).into())
        }
        Err(error @ (AnalyticsRoleError::NotOurs(_) | AnalyticsRoleError::NotFound(_))) => {
            Err(Exit { code: 1, message: error.to_string() }.into())
        }
        Err(error) => Err(error.into()),
    }
}

async fn erase_user(app: &Application, user: &str) -> anyhow::Result<()> {
    use crate::auth::AuthError;
    use crate::auth::erasure::EraseTarget;
    let target = if user.contains('@') { EraseTarget::Email(user) } else { EraseTarget::Id(user) };
    let operator = crate::auth::ClientInfo::default();
    match app.state().auth().erase_user(target, &operator, crate::events::SYSTEM_ACTOR).await {
        Ok(erased) => {
            println!(
                "{user}: erased user {} at {}; {} events written before sealing scrubbed, {} messages deleted; \
                 the credit history keeps its amounts",
                erased.user_id,
                erased.erased_at.to_rfc3339(),
                erased.scrubbed.events,
                erased.scrubbed.messages
            );
            Ok(())
        }
        Err(AuthError::NotFound) => anyhow::bail!("no user {user}: unknown address or id"),
        Err(AuthError::AlreadyErased) => anyhow::bail!("{user} was already erased"),
        Err(AuthError::Validation(messages)) => anyhow::bail!("{}", messages.join("; ")),
        Err(other) => Err(other.into()),
    }
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
        UserAction::Erase { user } => {
            let outcome = erase_user(&app, &user).await;
            app.run_until(async {}).await?;
            return outcome;
        }
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
