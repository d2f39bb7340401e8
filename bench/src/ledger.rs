//! The double-entry ledger: the `ledger_postings` projection's catch-up alone over a
//! realistic log, then the trial balance (now, and at a cursor halfway through) and a
//! usage report over the million or more postings it wrote, each checked before its time
//! counts (total 0, one account per user plus the system's, every spend counted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mana_core_auth::clock::SystemClock;
use mana_core_auth::credits::analytics;
use mana_core_auth::credits::input::Point;
use mana_core_auth::db::Db;
use mana_core_auth::domain::Credits;
use mana_core_auth::events::LogCursor;
use mana_core_auth::events::mix::SPENDS_PER_USER;
use mana_core_auth::projections::ledger_postings::{GroupBy, LedgerPostings, UsageFilter};
use mana_core_auth::projections::{Projector, ProjectorSettings};
use sqlx::Row;

use super::foundation::{Scratch, machine};
use super::{Latencies, LedgerArgs};

/// Postings per user of the realistic mix: the signup bonus and each spend, two each.
const POSTINGS_PER_USER: usize = 2 * (1 + SPENDS_PER_USER as usize);

pub(super) async fn ledger(args: LedgerArgs) -> anyhow::Result<()> {
    let users = args.postings.div_ceil(POSTINGS_PER_USER);
    println!(
        "ledger: {users} users of the realistic mix ({} postings), engine {}, {}",
        users * POSTINGS_PER_USER,
        args.target.engine,
        machine()
    );
    let scratch = Scratch::open(&args.target, 8).await?;
    let filled = Instant::now();
    let events = fill_users(&scratch, users).await?;
    println!("ledger: log filled with {events} events in {:.1} s", filled.elapsed().as_secs_f64());

    let settings =
        ProjectorSettings { batch_size: args.batch_size, poll_interval: Duration::from_millis(200) };
    let projector = Projector::new(
        scratch.store.clone(),
        Arc::new(SystemClock),
        settings,
        vec![Arc::new(LedgerPostings)],
    );
    projector.init().await?;
    let started = Instant::now();
    projector.catch_up().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (postings, sum) = count_and_sum(scratch.store.db()).await?;
    anyhow::ensure!(postings == i64::try_from(users * POSTINGS_PER_USER)?, "{postings} postings written");
    anyhow::ensure!(sum == 0, "the postings sum to {sum}");
    println!(
        "ledger: ledger_postings alone applied {events} events ({postings} postings) in {elapsed:.2} s = {:.0} events/s",
        events as f64 / elapsed
    );

    let (store, wait) = (&scratch.store, Duration::ZERO);
    let accounts = users + 3; // each user's free pool, the signup bonus, two apps
    let mut now = Latencies::default();
    for _ in 0..args.runs {
        let t = Instant::now();
        let balance = analytics::trial_balance(store, &projector, Point::Now, wait).await?;
        now.record(t.elapsed());
        anyhow::ensure!(balance.total == Credits::ZERO, "total {}", balance.total);
        anyhow::ensure!(balance.accounts.len() == accounts, "{} accounts", balance.accounts.len());
    }
    let half = halfway(store.db(), postings / 2).await?;
    let mut then = Latencies::default();
    for _ in 0..args.runs {
        let t = Instant::now();
        let balance = analytics::trial_balance(store, &projector, Point::Cursor(half), wait).await?;
        then.record(t.elapsed());
        anyhow::ensure!(balance.total == Credits::ZERO && balance.cursor == half.to_string(), "at {half}");
    }
    let mut usage = Latencies::default();
    let spends = i64::try_from(users)? * SPENDS_PER_USER;
    for _ in 0..args.runs {
        let filter = UsageFilter { app_id: None, from: None, to: None, group_by: GroupBy::App };
        let t = Instant::now();
        let report = analytics::usage(store, &projector, filter).await?;
        usage.record(t.elapsed());
        anyhow::ensure!(report.total.spends == spends, "{} spends counted", report.total.spends);
    }
    for (what, latencies) in [
        ("trial balance now", &now),
        ("trial balance at a cursor halfway", &then),
        ("usage grouped by app, all time", &usage),
    ] {
        let (min, median, max) =
            (latencies.quantile_ms(0.0), latencies.quantile_ms(0.5), latencies.quantile_ms(1.0));
        println!(
            "ledger: {what}: min {min:.1} ms, median {median:.1} ms, max {max:.1} ms ({} runs)",
            latencies.count()
        );
    }
    println!("ledger: verified: total 0, {accounts} accounts, {spends} spends counted");
    scratch.close().await
}

/// Appends the realistic mix of users `0..users`, a thousand-odd events per append;
/// returns the events written.
async fn fill_users(scratch: &Scratch, users: usize) -> anyhow::Result<usize> {
    let (mut written, mut chunk) = (0, Vec::new());
    for user in 0..users {
        chunk.extend(mana_core_auth::events::mix::user_events(user, chrono::Utc::now()));
        if chunk.len() >= 1000 || user + 1 == users {
            scratch.store.append(&chunk).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            written += chunk.len();
            chunk.clear();
        }
    }
    Ok(written)
}

async fn count_and_sum(db: &Db) -> anyhow::Result<(i64, i64)> {
    let sql = "SELECT count(*), CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger_postings";
    let row = match db {
        Db::Postgres(pool) => sqlx::query(sql).fetch_one(pool).await?,
        Db::Sqlite { reader, .. } => {
            let row = sqlx::query(sql).fetch_one(reader).await?;
            return Ok((row.try_get(0)?, row.try_get(1)?));
        }
    };
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// The cursor of the `n`th posting in global order.
async fn halfway(db: &Db, n: i64) -> anyhow::Result<LogCursor> {
    let sql = "SELECT txid, position FROM ledger_postings ORDER BY txid, position LIMIT 1 OFFSET $1";
    let (txid, position) = match db {
        Db::Postgres(pool) => {
            let row = sqlx::query(sql).bind(n).fetch_one(pool).await?;
            (row.try_get(0)?, row.try_get(1)?)
        }
        Db::Sqlite { reader, .. } => {
            let row = sqlx::query(sql).bind(n).fetch_one(reader).await?;
            (row.try_get(0)?, row.try_get(1)?)
        }
    };
    Ok(LogCursor { txid, position })
}
