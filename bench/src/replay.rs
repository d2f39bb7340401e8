//! Benchmarks of replay (issue 12): `mana-core-auth replay --verify` and `replay --apply`
//! over a realistic log on PostgreSQL, beside the projector's own catch-up over the same
//! log.
//!
//! PostgreSQL only: the issue sets its targets for a log of 1,000,000 events on
//! PostgreSQL, the production store (SQLite's replay builds in a scratch file instead of
//! a scratch schema, a different path that deserves its own figures).
//!
//! For each log size the scratch database is filled with the realistic mix through the
//! store, the live read models are brought up to date by the projector in this process
//! (as a server would, timed), and then the release binary runs as a subprocess with only
//! `DATABASE_URL` set (and `PROJECTION_BATCH_SIZE`, `RUST_LOG` when asked): `replay
//! --verify` (must exit 0, print `ok` and have replayed every event), then `replay
//! --apply` (the same). Wall time and peak RSS (`VmHWM`) come from the subprocess; the
//! rate, the compared rows and the swap's wait from its own summary line.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sqlx::PgPool;

use super::ReplayArgs;
use super::foundation::{Scratch, fill_realistic_from, machine, verify_catchup};
use super::process::{Measured, measure};
use mana_core_auth::audit::replay::LedgerChecks;
use mana_core_auth::clock::SystemClock;
use mana_core_auth::db::Db;
use mana_core_auth::events::LogCursor;
use mana_core_auth::projections::{self, Projector, ProjectorSettings};

/// The summary line of `replay --verify` on stderr.
struct VerifyLine {
    events: u64,
    rate: f64,
    seconds: f64,
    rows: u64,
}

/// The summary of `replay --apply`: its stderr line and the rows its swap changed.
struct ApplyLine {
    events: u64,
    seconds: f64,
    waited: f64,
    deleted: u64,
    inserted: u64,
}

struct VerifyRun {
    batch: Option<usize>,
    measured: Measured,
    line: VerifyLine,
}

/// One log size's results.
struct SizeRow {
    events: usize,
    fill_rate: f64,
    /// Events the projector applied in this process, and the seconds it took.
    catchup: (usize, f64),
    verify: Vec<VerifyRun>,
    apply: Option<(Measured, ApplyLine)>,
}

pub(super) async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    ensure!(
        args.target.engine == "postgres",
        "the replay benchmark runs on PostgreSQL only (issue 12's target)"
    );
    let exe = std::env::current_exe()?.with_file_name("mana-core-auth");
    ensure!(exe.exists(), "{} not found: build it with `cargo build --release --workspace`", exe.display());
    let mut sizes = args.events.clone();
    sizes.sort_unstable();
    ensure!(!sizes.is_empty(), "--events needs at least one log size");
    if let Some(dir) = &args.logs {
        std::fs::create_dir_all(dir)?;
    }
    println!(
        "replay: log sizes {sizes:?}, projector catch-up batch {}, PROJECTION_BATCH_SIZE for verify {}, {}, {}",
        args.catchup_batch,
        if args.projection_batch_sizes.is_empty() {
            "unset (replay batch 1,000)".to_owned()
        } else {
            format!("{:?}", args.projection_batch_sizes)
        },
        exe.display(),
        machine()
    );
    let scratch = Scratch::open(&args.target, 8).await?;
    let result = sizes_on(&scratch, &args, &sizes, &exe).await;
    scratch.close().await?;
    let rows = result?;

    println!();
    println!("replay: summary ({})", machine());
    println!("| events | fill | projector catch-up (in the bench) | replay --verify | replay --apply |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        let verify: Vec<String> = row
            .verify
            .iter()
            .map(|run| {
                let batch = run.batch.map(|b| format!("PROJECTION_BATCH_SIZE={b}: ")).unwrap_or_default();
                format!(
                    "{batch}{:.0} events/s ({:.1} s in replay, {:.1} s wall), peak RSS {:.1} MiB",
                    run.line.rate,
                    run.line.seconds,
                    run.measured.seconds,
                    mib(run.measured.peak_rss_kib)
                )
            })
            .collect();
        let apply = match &row.apply {
            Some((m, line)) => format!(
                "{:.1} s wall ({:.0} events/s), swap wait {:.2} s, peak RSS {:.1} MiB",
                m.seconds,
                line.events as f64 / line.seconds.max(1e-9),
                line.waited,
                mib(m.peak_rss_kib)
            ),
            None => "not run".into(),
        };
        println!(
            "| {} | {:.0} events/s | {:.0} events/s ({} events in {:.1} s) | {} | {apply} |",
            row.events,
            row.fill_rate,
            row.catchup.0 as f64 / row.catchup.1,
            row.catchup.0,
            row.catchup.1,
            verify.join("; ")
        );
    }
    println!("target: replay --verify at least 30,000 events/s over at least 1,000,000 events");
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn sizes_on(
    scratch: &Scratch,
    args: &ReplayArgs,
    sizes: &[usize],
    exe: &Path,
) -> anyhow::Result<Vec<SizeRow>> {
    let url = scratch.url.clone().context("no scratch URL")?;
    let Db::Postgres(pool) = scratch.store.db() else { bail!("PostgreSQL only") };
    let work = tempfile::tempdir()?;
    let settings =
        ProjectorSettings { batch_size: args.catchup_batch, poll_interval: Duration::from_millis(200) };
    let models = projections::all();
    let names: Vec<&str> = models.iter().map(|p| p.name()).collect();
    let projector = Projector::new(scratch.store.clone(), Arc::new(SystemClock), settings, models.clone());
    projector.init().await?;

    let mut rows = Vec::new();
    let (mut events, mut users) = (0usize, 0usize);
    for &size in sizes {
        let started = Instant::now();
        let (written, added) = fill_realistic_from(scratch, users, size.saturating_sub(events)).await?;
        let fill_seconds = started.elapsed().as_secs_f64();
        events += written;
        users += added;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await?;
        ensure!(count == i64::try_from(events)?, "the log holds {count} events, {events} were written");
        // A log written a while ago has been vacuumed: readers do not pay for hint bits.
        sqlx::query("VACUUM (ANALYZE) events").execute(pool).await?;
        println!(
            "replay: {events} events ({users} users), filled {written} in {fill_seconds:.1} s = {:.0} events/s",
            written as f64 / fill_seconds
        );

        let started = Instant::now();
        projector.catch_up().await?;
        let catchup_seconds = started.elapsed().as_secs_f64();
        println!(
            "replay: {events}: projector catch-up of {written} events, batch {}: {catchup_seconds:.1} s = {:.0} events/s",
            args.catchup_batch,
            written as f64 / catchup_seconds
        );
        verify_catchup(&projector, scratch, &names, users).await?;
        // The live read models of a running service have been vacuumed by autovacuum.
        sqlx::query("VACUUM (ANALYZE)").execute(pool).await?;

        let log = |what: &str| args.logs.as_ref().map(|d| d.join(format!("replay-{events}-{what}.log")));
        let mut verify = Vec::new();
        let batches: Vec<Option<usize>> = if args.projection_batch_sizes.is_empty() {
            vec![None]
        } else {
            args.projection_batch_sizes.iter().copied().map(Some).collect()
        };
        for &batch in &batches {
            let batch_text = batch.map(|b| b.to_string());
            let env = environment(&url, batch_text.as_deref(), args.rust_log.as_deref());
            let measured = measure(exe, &["replay", "--verify"], &env, work.path())?;
            keep_log(&measured, log(&format!("verify-{}", batch_text.as_deref().unwrap_or("default"))))?;
            let line = parse_verify(&measured)?;
            ensure!(
                line.events == events as u64,
                "replay --verify replayed {} events of {events}",
                line.events
            );
            println!(
                "replay: {events}: replay --verify{}: {:.0} events/s ({:.1} s in replay, {:.1} s wall), \
                 {} rows compared, peak RSS {:.1} MiB",
                batch.map(|b| format!(" (PROJECTION_BATCH_SIZE={b})")).unwrap_or_default(),
                line.rate,
                line.seconds,
                measured.seconds,
                line.rows,
                mib(measured.peak_rss_kib)
            );
            verify.push(VerifyRun { batch, measured, line });
        }

        let apply = if args.no_apply {
            None
        } else {
            let batch_text = batches[0].map(|b| b.to_string());
            let env = environment(&url, batch_text.as_deref(), args.rust_log.as_deref());
            let measured = measure(exe, &["replay", "--apply"], &env, work.path())?;
            keep_log(&measured, log("apply"))?;
            let line = parse_apply(&measured)?;
            ensure!(
                line.events == events as u64,
                "replay --apply replayed {} events of {events}",
                line.events
            );
            // The live read models were already right: the swap must have left them so.
            verify_catchup(&projector, scratch, &names, users).await?;
            println!(
                "replay: {events}: replay --apply: {:.1} s wall ({:.1} s in replay), the live projectors waited \
                 {:.2} s for the swap; {} rows deleted, {} inserted; peak RSS {:.1} MiB",
                measured.seconds,
                line.seconds,
                line.waited,
                line.deleted,
                line.inserted,
                mib(measured.peak_rss_kib)
            );
            Some((measured, line))
        };

        if args.phases && size == sizes[sizes.len() - 1] {
            let batch = batches[0].unwrap_or(0).max(1_000);
            phases(scratch, pool, batch, events).await?;
        }
        rows.push(SizeRow {
            events,
            fill_rate: written as f64 / fill_seconds,
            catchup: (written, catchup_seconds),
            verify,
            apply,
        });
    }
    Ok(rows)
}

fn environment<'a>(
    url: &'a str,
    batch: Option<&'a str>,
    rust_log: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("DATABASE_URL", url)];
    if let Some(batch) = batch {
        env.push(("PROJECTION_BATCH_SIZE", batch));
    }
    if let Some(filter) = rust_log {
        env.push(("RUST_LOG", filter));
    }
    env
}

fn keep_log(measured: &Measured, file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    if let Some(file) = file {
        std::fs::write(&file, format!("{}{}", measured.stdout, measured.stderr))?;
        println!("replay: output kept in {}", file.display());
    }
    Ok(())
}

fn summary_line<'a>(measured: &'a Measured, what: &str) -> anyhow::Result<&'a str> {
    ensure!(
        measured.stdout.lines().any(|l| l.starts_with("ok:")),
        "{what} did not print ok: {}",
        measured.stdout.trim()
    );
    measured
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("replayed "))
        .with_context(|| format!("{what} printed no `replayed ...` line: {}", measured.stderr.trim()))
}

/// The number after `before` in `line` (digits, `.`).
fn number_after(line: &str, before: &str) -> Option<f64> {
    let rest = &line[line.find(before)? + before.len()..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `replayed N events (R/s) of S streams and A credit accounts in T s; compared C rows in ...`
fn parse_verify(measured: &Measured) -> anyhow::Result<VerifyLine> {
    let line = summary_line(measured, "replay --verify")?;
    let parsed = (|| {
        Some(VerifyLine {
            events: number_after(line, "replayed ")? as u64,
            rate: number_after(line, " events (")?,
            seconds: number_after(line, " credit accounts in ")?,
            rows: number_after(line, "; compared ")? as u64,
        })
    })();
    parsed.with_context(|| format!("cannot read the summary of replay --verify: {line}"))
}

/// `replayed N events in T s; the live projectors waited W s for the swap`, and the
/// per-table lines `TABLE D rows replaced or removed, I rows written` on stdout.
fn parse_apply(measured: &Measured) -> anyhow::Result<ApplyLine> {
    let line = summary_line(measured, "replay --apply")?;
    let (mut deleted, mut inserted) = (0, 0);
    for table in measured.stdout.lines().filter(|l| l.contains("rows replaced or removed")) {
        let words: Vec<&str> = table.split_whitespace().collect();
        deleted += words.get(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        inserted += table
            .split(", ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let parsed = (|| {
        Some(ApplyLine {
            events: number_after(line, "replayed ")? as u64,
            seconds: number_after(line, " events in ")?,
            waited: number_after(line, "projectors waited ")?,
            deleted,
            inserted,
        })
    })();
    parsed.with_context(|| format!("cannot read the summary of replay --apply: {line}"))
}

/// Where a verify's time can go, measured in this process over the same database: reading
/// the log in the replay's batches; the same with the ledger checks; and the comparison
/// of each live table with itself: as `replay --verify` does it (one `FULL JOIN` on the key) and
/// as its first release did (two `EXCEPT`s, with the default and a large `work_mem`).
async fn phases(scratch: &Scratch, pool: &PgPool, batch: usize, events: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut after = LogCursor::START;
    let mut read = 0usize;
    loop {
        let page = scratch.store.read_after(after, batch).await?;
        let Some(last) = page.last() else { break };
        after = last.cursor;
        read += page.len();
    }
    let read_seconds = started.elapsed().as_secs_f64();
    ensure!(read == events, "read {read} events of {events}");

    let checks = LedgerChecks::default();
    let started = Instant::now();
    let mut after = LogCursor::START;
    loop {
        let page = scratch.store.read_after(after, batch).await?;
        let Some(last) = page.last() else { break };
        after = last.cursor;
        for event in &page {
            checks.check(event);
        }
    }
    let checks_seconds = started.elapsed().as_secs_f64();
    let (_, findings, totals) = checks.outcome();
    ensure!(findings == 0 && totals.events == events as u64, "the checks found {findings} problems");

    println!("replay: phases in the bench process, {events} events, batch {batch}:");
    println!(
        "replay:   read the log                    {read_seconds:>7.2} s = {:>9.0} events/s",
        events as f64 / read_seconds
    );
    println!(
        "replay:   read the log + ledger checks    {checks_seconds:>7.2} s = {:>9.0} events/s",
        events as f64 / checks_seconds
    );
    println!(
        "replay:   comparison of each live table with itself: EXCEPT both ways (default work_mem; the first \
         release of replay), the same with work_mem 256MB, and one FULL JOIN on the key (as `replay --verify` does it)"
    );
    let mut totals = [0.0; 3];
    for model in projections::all() {
        for table in model.tables() {
            let shape = TableShape::read(pool, table).await?;
            let mut cells = Vec::new();
            for (i, variant) in
                [Compare::Except, Compare::ExceptWorkMem, Compare::FullJoin].into_iter().enumerate()
            {
                let seconds = shape.compare(pool, variant).await?;
                totals[i] += seconds;
                cells.push(format!("{seconds:>7.2} s"));
            }
            println!("replay:   compare {table:<24} {}", cells.join(" "));
        }
    }
    let cells: Vec<String> = totals.iter().map(|s| format!("{s:>7.2} s")).collect();
    println!("replay:   compare, every table         {}", cells.join(" "));
    Ok(())
}

/// How [`TableShape::compare`] compares a table with itself.
#[derive(Clone, Copy)]
enum Compare {
    /// As `replay --verify`: the keys of `a EXCEPT b` and of `b EXCEPT a` (up to 1,000
    /// each, sorted), then the row count.
    Except,
    /// The same with `work_mem` at 256MB, so the set operations can hash in memory.
    ExceptWorkMem,
    /// One statement: the keys whose rows differ or exist on one side only, by a FULL
    /// JOIN on the primary key (both directions at once), then the row count.
    FullJoin,
}

/// A table's quoted columns and primary key, from the catalogue.
struct TableShape {
    table: String,
    columns: String,
    key: Vec<String>,
}

impl TableShape {
    async fn read(pool: &PgPool, table: &str) -> anyhow::Result<Self> {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(column_name) FROM information_schema.columns \
             WHERE table_schema = (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)) AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(pool)
        .await?;
        let key: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(a.attname) FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
        )
        .bind(table)
        .fetch_all(pool)
        .await?;
        ensure!(!columns.is_empty() && !key.is_empty(), "table {table}: no columns or no primary key");
        Ok(Self { table: table.to_owned(), columns: columns.join(", "), key })
    }

    /// Runs the comparison of the table with itself; the seconds it took.
    async fn compare(&self, pool: &PgPool, how: Compare) -> anyhow::Result<f64> {
        let (table, columns) = (&self.table, &self.columns);
        let started = Instant::now();
        let mut tx = pool.begin().await?;
        let statements = match how {
            Compare::Except | Compare::ExceptWorkMem => {
                if matches!(how, Compare::ExceptWorkMem) {
                    sqlx::query("SET LOCAL work_mem = '256MB'").execute(&mut *tx).await?;
                }
                let keys: Vec<String> = self.key.iter().map(|k| format!("CAST({k} AS TEXT)")).collect();
                let keys = keys.join(", ");
                let one_way = format!(
                    "SELECT {keys} FROM (SELECT {columns} FROM {table} EXCEPT SELECT {columns} FROM {table}) d \
                     ORDER BY {keys} LIMIT 1000"
                );
                vec![one_way.clone(), one_way]
            }
            Compare::FullJoin => {
                let keys: Vec<String> =
                    self.key.iter().map(|k| format!("CAST(COALESCE(a.{k}, b.{k}) AS TEXT)")).collect();
                let keys = keys.join(", ");
                let on: Vec<String> = self.key.iter().map(|k| format!("a.{k} = b.{k}")).collect();
                vec![format!(
                    "SELECT {keys}, count(*) OVER () FROM {table} a FULL JOIN {table} b ON {} \
                     WHERE a IS DISTINCT FROM b ORDER BY {keys} LIMIT 1000",
                    on.join(" AND ")
                )]
            }
        };
        for statement in statements {
            let found = sqlx::query(&statement).fetch_all(&mut *tx).await?;
            ensure!(found.is_empty(), "table {table} differs from itself");
        }
        sqlx::query(&format!("SELECT CAST(count(*) AS TEXT) FROM {table}")).fetch_one(&mut *tx).await?;
        drop(tx);
        Ok(started.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(stdout: &str, stderr: &str) -> Measured {
        Measured { seconds: 1.0, peak_rss_kib: 0, stdout: stdout.into(), stderr: stderr.into() }
    }

    #[test]
    fn the_verify_summary_line_is_read() {
        let m = measured(
            "ok: the read models equal the log's replay\n",
            "INFO something\nreplayed 1000012 events (31234/s) of 192310 streams and 38462 credit accounts in 32.0 s; \
             compared 500000 rows in 8 tables; granted 1, spent 2, refunded 0, adjusted 0, held 3\n",
        );
        let line = parse_verify(&m).expect("parsed");
        assert_eq!(line.events, 1_000_012);
        assert!((line.rate - 31_234.0).abs() < 1e-9);
        assert!((line.seconds - 32.0).abs() < 1e-9);
        assert_eq!(line.rows, 500_000);
    }

    #[test]
    fn a_verify_without_ok_does_not_count() {
        let m = measured(
            "table users: 1 rows differ\n",
            "replayed 10 events (5/s) of 1 streams and 1 credit accounts in 2.0 s; compared 3 rows\n",
        );
        assert!(parse_verify(&m).is_err());
    }

    #[test]
    fn the_apply_summary_and_swapped_rows_are_read() {
        let m = measured(
            "users                            0 rows replaced or removed,         2 rows written\n\
             sessions                         3 rows replaced or removed,         4 rows written\n\
             ok: the read models are rebuilt from the log\n",
            "replayed 1000012 events in 40.5 s; the live projectors waited 1.25 s for the swap\n",
        );
        let line = parse_apply(&m).expect("parsed");
        assert_eq!(line.events, 1_000_012);
        assert!((line.seconds - 40.5).abs() < 1e-9);
        assert!((line.waited - 1.25).abs() < 1e-9);
        assert_eq!((line.deleted, line.inserted), (3, 6));
    }
}
