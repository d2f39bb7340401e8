//! Benchmarks of the audit log (issue 11): the rates and peak memory of `verify` (live and
//! offline on an export) and of `export` at growing log sizes, and what the hash chain
//! costs appends (with and without it, alternating, in the same run).
//!
//! The service's commands run as subprocesses of the release binary beside this one, on a
//! scratch PostgreSQL database filled with the realistic mix through the store (so every
//! event is stamped). Peak RSS is the subprocess's `VmHWM`, read from /proc while it runs.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail, ensure};

use super::foundation::{Scratch, append_run, fill_realistic_from, machine};
use super::process::{Measured, measure};
use super::{AuditArgs, Latencies};
use mana_core_auth::audit::record::ExportRecord;
use mana_core_auth::audit::verify::{AuditKeys, verify_export};
use mana_core_auth::db::Db;
use mana_core_auth::events::LogCursor;
use mana_core_auth::events::chain::{self, Secrets, ZERO};

/// One log size's results.
struct SizeRow {
    events: usize,
    fill_rate: f64,
    live: Measured,
    export: Option<Measured>,
    standin_export_seconds: Option<f64>,
    export_bytes: u64,
    offline: Measured,
}

pub(super) async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    ensure!(args.target.engine == "postgres", "the audit benchmark runs on PostgreSQL only");
    let exe = std::env::current_exe()?.with_file_name("mana-core-auth");
    ensure!(exe.exists(), "{} not found: build it with `cargo build --release --workspace`", exe.display());
    let has_export = Command::new(&exe)
        .args(["export", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    println!(
        "audit: log sizes {:?}, {} `export` command: {}, {}",
        args.events,
        exe.display(),
        if has_export { "present" } else { "ABSENT (export not measured; the bench writes the file itself)" },
        machine()
    );

    let mut sizes = args.events.clone();
    sizes.sort_unstable();
    let rows = if sizes.is_empty() { Vec::new() } else { log_sizes(&args, &sizes, &exe, has_export).await? };
    let append = if args.no_append { None } else { Some(append_cost(&args).await?) };

    println!();
    println!("audit: summary ({})", machine());
    if !rows.is_empty() {
        println!("| events | fill (chained, bulk) | verify live | export | verify --file | export size |");
        println!("|---|---|---|---|---|---|");
        for row in &rows {
            let export = match (&row.export, row.standin_export_seconds) {
                (Some(m), _) => rate_cell(row.events, m),
                (None, Some(s)) => {
                    format!("not measured (stand-in in the bench: {:.0} events/s)", row.events as f64 / s)
                }
                (None, None) => "not measured".into(),
            };
            println!(
                "| {} | {:.0} events/s | {} | {export} | {} | {:.0} MiB |",
                row.events,
                row.fill_rate,
                rate_cell(row.events, &row.live),
                rate_cell(row.events, &row.offline),
                row.export_bytes as f64 / 1_048_576.0
            );
        }
        println!("target: export and verify at least 100,000 events/s; peak RSS flat in the log size");
    }
    if let Some(append) = append {
        append.print(&args);
    }
    Ok(())
}

fn rate_cell(events: usize, m: &Measured) -> String {
    format!(
        "{:.0} events/s ({:.1} s), peak RSS {:.1} MiB",
        events as f64 / m.seconds,
        m.seconds,
        m.peak_rss_kib as f64 / 1024.0
    )
}

async fn log_sizes(
    args: &AuditArgs,
    sizes: &[usize],
    exe: &Path,
    has_export: bool,
) -> anyhow::Result<Vec<SizeRow>> {
    let scratch = Scratch::open(&args.target, 8).await?;
    let result = log_sizes_on(&scratch, args, sizes, exe, has_export).await;
    scratch.close().await?;
    result
}

async fn log_sizes_on(
    scratch: &Scratch,
    args: &AuditArgs,
    sizes: &[usize],
    exe: &Path,
    has_export: bool,
) -> anyhow::Result<Vec<SizeRow>> {
    let url = scratch.url.clone().context("no scratch URL")?;
    let Db::Postgres(pool) = scratch.store.db() else { bail!("PostgreSQL only") };
    let work = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let mut rows = Vec::new();
    let (mut events, mut users) = (0usize, 0usize);
    for &size in sizes {
        let started = Instant::now();
        let (written, added) = fill_realistic_from(scratch, users, size.saturating_sub(events)).await?;
        let fill_seconds = started.elapsed().as_secs_f64();
        events += written;
        users += added;
        let (count, unhashed): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE hash IS NULL) FROM events")
                .fetch_one(pool)
                .await?;
        ensure!(count == i64::try_from(events)?, "the log holds {count} events, {events} were written");
        ensure!(unhashed == 0, "{unhashed} events have no hash");
        // A log that has been written a while ago has been vacuumed: readers do not pay
        // for setting hint bits.
        sqlx::query("VACUUM (ANALYZE) events").execute(pool).await?;
        println!(
            "audit: {events} events ({users} users), filled {written} in {fill_seconds:.1} s = {:.0} events/s; \
             0 without hash",
            written as f64 / fill_seconds
        );

        let live = measure(exe, &["verify"], &[("DATABASE_URL", &url)], work.path())?;
        check_verified(&live, events, "verify (live)")?;
        println!("audit: {events}: verify live      {}", rate_cell(events, &live));

        let file = work.path().join("export.ndjson");
        let (export, standin_export_seconds) = if has_export {
            let out = file.to_string_lossy().into_owned();
            let m = measure(exe, &["export", "--out", &out], &[("DATABASE_URL", &url)], work.path())?;
            println!("audit: {events}: export           {}", rate_cell(events, &m));
            (Some(m), None)
        } else {
            let seconds = write_export(scratch, &file).await?;
            println!(
                "audit: {events}: export not measured (no `export` command); the bench wrote the file \
                 in {seconds:.1} s = {:.0} events/s",
                events as f64 / seconds
            );
            (None, Some(seconds))
        };
        let lines = count_lines(&file)?;
        ensure!(lines == events, "the export holds {lines} lines, the log {events} events");
        let export_bytes = std::fs::metadata(&file)?.len();

        let path = file.to_string_lossy().into_owned();
        let offline = measure(exe, &["verify", "--file", &path], &[("DATABASE_URL", &url)], work.path())?;
        check_verified(&offline, events, "verify --file")?;
        println!("audit: {events}: verify --file    {}", rate_cell(events, &offline));

        if args.phases && size == sizes[sizes.len() - 1] {
            let file = file.clone();
            tokio::task::spawn_blocking(move || phases(&file)).await??;
        }
        std::fs::remove_file(&file)?;
        rows.push(SizeRow {
            events,
            fill_rate: written as f64 / fill_seconds,
            live,
            export,
            standin_export_seconds,
            export_bytes,
            offline,
        });
    }
    Ok(rows)
}

/// A timing counts only if verify checked every event and found the log clean.
fn check_verified(m: &Measured, events: usize, what: &str) -> anyhow::Result<()> {
    let expected = format!("checked {events} events");
    ensure!(m.stderr.contains(&expected), "{what} did not report `{expected}`: {}", m.stderr.trim());
    Ok(())
}

fn count_lines(file: &Path) -> anyhow::Result<usize> {
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
    let mut lines = 0;
    for line in reader.split(b'\n') {
        if !line?.is_empty() {
            lines += 1;
        }
    }
    Ok(lines)
}

/// Writes the log as an export file with the library's own record type, for
/// `verify --file` while the `export` command does not exist. Returns the seconds taken.
async fn write_export(scratch: &Scratch, file: &PathBuf) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(file)?);
    let mut after = LogCursor::START;
    loop {
        let events = scratch.store.read_after(after, 5_000).await?;
        let Some(last) = events.last() else { break };
        after = last.cursor;
        for event in &events {
            serde_json::to_writer(&mut out, &ExportRecord::of(event))?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(started.elapsed().as_secs_f64())
}

/// Where offline verification spends its time, one thread, cumulative phases over the
/// same file: reading lines, + parsing records, + canonical form, + hashing (the whole
/// verifier).
fn phases(file: &Path) -> anyhow::Result<()> {
    let open = || -> anyhow::Result<_> {
        Ok(std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(file)?))
    };
    let mut timings = Vec::new();

    let t = Instant::now();
    let mut n = 0usize;
    for line in open()?.lines() {
        n += line?.len().min(1);
    }
    timings.push(("read lines", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    for line in open()?.lines() {
        let record: ExportRecord = serde_json::from_str(&line?)?;
        std::hint::black_box(&record);
    }
    timings.push(("+ parse records", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let mut bytes = 0usize;
    for line in open()?.lines() {
        let record: ExportRecord = serde_json::from_str(&line?)?;
        let parts = record.parts().map_err(anyhow::Error::msg)?;
        bytes += chain::canonical(&parts, record.commitments.as_ref(), Secrets::Committed)?.len();
    }
    timings.push(("+ canonical form", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let mut digest = ZERO;
    for line in open()?.lines() {
        let record: ExportRecord = serde_json::from_str(&line?)?;
        let parts = record.parts().map_err(anyhow::Error::msg)?;
        let canonical = chain::canonical(&parts, record.commitments.as_ref(), Secrets::Committed)?;
        digest = chain::event_hash(&digest, &canonical);
    }
    std::hint::black_box(digest);
    timings.push(("+ hash (SHA-256)", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let report = verify_export(open()?, AuditKeys::default())?;
    ensure!(report.failure.is_none(), "the export does not verify: {:?}", report.failure);
    timings.push(("whole verifier (verify_export)", t.elapsed().as_secs_f64()));

    println!(
        "audit: phases of offline verification, one thread, {n} events, canonical forms {:.0} B on average:",
        bytes as f64 / n.max(1) as f64
    );
    for (phase, seconds) in timings {
        println!("audit:   {phase:<32} {seconds:>6.2} s = {:>9.0} events/s", n as f64 / seconds);
    }
    Ok(())
}

/// Appends with and without the chain.
struct AppendCost {
    /// (chained, events/s, p50 ms, p99 ms) per run, in run order.
    commands: Vec<(bool, f64, f64, f64)>,
    /// (chained, events/s) per bulk fill, in run order.
    bulk: Vec<(bool, f64)>,
}

impl AppendCost {
    fn print(&self, args: &AuditArgs) {
        println!(
            "append cost of the chain: {} writers x {} s per run, alternating; bulk fills of {} realistic events \
             in appends of ~1,000",
            args.append_concurrency, args.append_duration, args.bulk_events
        );
        println!("| run | chain | command appends/s | p50 | p99 |");
        println!("|---|---|---|---|---|");
        for (i, (chained, rate, p50, p99)) in self.commands.iter().enumerate() {
            println!(
                "| {} | {} | {rate:.0} | {p50:.1} ms | {p99:.1} ms |",
                i + 1,
                if *chained { "with" } else { "without" }
            );
        }
        let mean = |list: Vec<f64>| list.iter().sum::<f64>() / list.len().max(1) as f64;
        let with = mean(self.commands.iter().filter(|c| c.0).map(|c| c.1).collect());
        let without = mean(self.commands.iter().filter(|c| !c.0).map(|c| c.1).collect());
        println!(
            "command appends: with {with:.0}/s, without {without:.0}/s: the chain costs {:.1}%",
            cost(with, without)
        );
        if !self.bulk.is_empty() {
            for (chained, rate) in &self.bulk {
                println!(
                    "bulk fill {}: {rate:.0} events/s",
                    if *chained { "with chain   " } else { "without chain" }
                );
            }
            let with = mean(self.bulk.iter().filter(|c| c.0).map(|c| c.1).collect());
            let without = mean(self.bulk.iter().filter(|c| !c.0).map(|c| c.1).collect());
            println!(
                "bulk appends: with {with:.0}/s, without {without:.0}/s: the chain costs {:.1}%",
                cost(with, without)
            );
        }
    }
}

fn cost(with: f64, without: f64) -> f64 {
    if without > 0.0 { (1.0 - with / without) * 100.0 } else { 0.0 }
}

async fn append_cost(args: &AuditArgs) -> anyhow::Result<AppendCost> {
    let mut commands = Vec::new();
    let mut bulk = Vec::new();
    for round in 0..args.append_rounds {
        // Alternate which goes first, so a drift of the machine hits both sides.
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for chained in order {
            let (latencies, elapsed): (Latencies, f64) =
                append_run(&args.target, args.append_concurrency, args.append_duration, chained).await?;
            let rate = latencies.count() as f64 / elapsed;
            println!(
                "audit: append {} the chain: {} commands in {elapsed:.1} s = {rate:.0} events/s; latency {}",
                if chained { "with" } else { "without" },
                latencies.count(),
                latencies.summary()
            );
            commands.push((chained, rate, latencies.quantile_ms(0.5), latencies.quantile_ms(0.99)));
        }
        if args.bulk_events == 0 {
            continue;
        }
        for chained in order {
            let scratch = Scratch::open_with(&args.target, 8, chained).await?;
            let started = Instant::now();
            let filled = fill_realistic_from(&scratch, 0, args.bulk_events).await;
            let seconds = started.elapsed().as_secs_f64();
            let checked = match (&filled, scratch.store.db()) {
                (Ok((written, _)), Db::Postgres(pool)) => {
                    let unhashed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE hash IS NULL")
                        .fetch_one(pool)
                        .await?;
                    let expected = if chained { 0 } else { i64::try_from(*written)? };
                    ensure!(unhashed == expected, "{unhashed} events without hash, expected {expected}");
                    Ok(*written)
                }
                (Ok(_), Db::Sqlite { .. }) => Err(anyhow::anyhow!("PostgreSQL only")),
                (Err(e), _) => Err(anyhow::anyhow!("{e}")),
            };
            scratch.close().await?;
            let written = checked?;
            let rate = written as f64 / seconds;
            println!(
                "audit: bulk fill {} the chain: {written} events in {seconds:.1} s = {rate:.0} events/s",
                if chained { "with" } else { "without" }
            );
            bulk.push((chained, rate));
        }
    }
    Ok(AppendCost { commands, bulk })
}
