//! `balance-at` (issue 12): a balance at a past moment for one account with a long
//! history, computed from the log by `credits::history::balance_at` as the admin route does.
//! One account on a scratch database gets `--events` credit events through the store (with
//! the hash chain, as the service writes them): alternately a free grant of 2 and a spend
//! of 1. Then the balance is taken over the whole stream, at the middle by time and at the
//! middle by cursor, each the median of `--runs` runs, and checked against the arithmetic.

use std::time::{Duration, Instant};

use anyhow::ensure;
use chrono::{DateTime, TimeZone, Utc};

use super::BalanceAtArgs;
use super::foundation::{Scratch, machine};
use mana_core_auth::credits::history::{Moment, PointBalance, balance_at};
use mana_core_auth::domain::Credits;
use mana_core_auth::events::credits::{Balances, CreditEvent, GrantSource, Pool};
use mana_core_auth::events::mix::event;
use mana_core_auth::events::{LogCursor, NewEvent};

/// Events per append while filling.
const FILL_BATCH: usize = 1_000;

pub(super) async fn balance_at_bench(args: BalanceAtArgs) -> anyhow::Result<()> {
    ensure!(args.events >= 2 && args.runs >= 1, "--events must be at least 2 and --runs at least 1");
    let scratch = Scratch::open(&args.target, 4).await?;
    let result = run(&scratch, &args).await;
    scratch.close().await?;
    result
}

async fn run(scratch: &Scratch, args: &BalanceAtArgs) -> anyhow::Result<()> {
    println!(
        "balance-at: {}, {} engine, one account of {} events",
        machine(),
        args.target.engine,
        args.events
    );
    let user = uuid::Uuid::now_v7().to_string();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("a time");
    let filling = Instant::now();
    for first in (1..=args.events).step_by(FILL_BATCH) {
        let last = (first + FILL_BATCH - 1).min(args.events);
        let batch: Vec<NewEvent> = (first..=last).map(|n| nth_event(&user, start, n)).collect();
        scratch.store.append(&batch).await?;
    }
    let fill = filling.elapsed().as_secs_f64();
    println!("  filled in {fill:.1} s ({:.0} events/s)", args.events as f64 / fill);

    let middle = args.events / 2;
    let middle_cursor = cursor_of(scratch, &user, middle).await?;
    let everything = Moment::Cursor(LogCursor { txid: i64::MAX, position: i64::MAX });
    let cases = [
        ("whole stream", everything, args.events),
        ("middle by time", Moment::Time(time_of(start, middle)), middle),
        ("middle by cursor", Moment::Cursor(middle_cursor), middle),
    ];
    for (name, moment, events) in cases {
        let mut times = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let began = Instant::now();
            let point = balance_at(&scratch.store, &user, moment).await?;
            times.push(began.elapsed());
            check(&point, events)?;
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "  {name}: {events} events folded, median {:.1} ms of {} runs ({:.0} events/s; min {:.1} ms, max {:.1} ms)",
            ms(median),
            args.runs,
            events as f64 / median.as_secs_f64().max(1e-9),
            ms(times[0]),
            ms(times[times.len() - 1]),
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Event number `n` (1-based) of the account is recorded `n` seconds after `start`.
fn time_of(start: DateTime<Utc>, n: usize) -> DateTime<Utc> {
    start + chrono::Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Grants and spends after `n` events: the account opens, then grants (even `n`) and
/// spends (odd `n`, from 3 on) alternate.
fn moves(n: usize) -> (i64, i64) {
    let moved = i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX);
    let grants = (moved + 1) / 2;
    (grants, moved - grants)
}

/// The `n`-th event of the account, with the balances its predecessors left.
fn nth_event(user: &str, start: DateTime<Utc>, n: usize) -> NewEvent {
    let at = time_of(start, n);
    let sequence = i64::try_from(n).unwrap_or(i64::MAX);
    let (grants, spends) = moves(n - 1);
    let before = Balances { free: Credits::new(2 * grants - spends), paid: Credits::ZERO };
    let payload = if n == 1 {
        CreditEvent::CreditAccountOpened {
            user_id: user.to_owned(),
            granted_day: at.date_naive(),
            opened_at: at,
        }
    } else if n.is_multiple_of(2) {
        CreditEvent::CreditsGranted {
            transaction_id: format!("grant-{n}"),
            source: GrantSource::Admin { actor: "bench".into(), reason: "bench".into() },
            pool: Pool::Free,
            amount: Credits::new(2),
            before,
            after: Balances { free: before.free + Credits::new(2), ..before },
            description: "bench".into(),
            key: None,
            granted_at: at,
        }
    } else {
        CreditEvent::CreditsSpent {
            transaction_id: format!("spend-{n}"),
            amount: Credits::new(1),
            from_free: Credits::new(1),
            from_paid: Credits::ZERO,
            before,
            after: Balances { free: before.free - Credits::new(1), ..before },
            total_spent_after: Credits::new(spends + 1),
            app_id: "bench".into(),
            description: "bench".into(),
            metadata: None,
            key: None,
            spent_at: at,
        }
    };
    event("credit_account", user, sequence, &payload, at)
}

/// The balance after `events` events is what the arithmetic says.
fn check(point: &PointBalance, events: usize) -> anyhow::Result<()> {
    let (grants, spends) = moves(events);
    let got =
        (point.state.balances.free.get(), point.state.total_earned.get(), point.state.total_spent.get());
    let want = (2 * grants - spends, 2 * grants, spends);
    ensure!(got == want, "after {events} events the balance is {got:?}, expected {want:?}");
    Ok(())
}

/// The cursor of the account's `n`-th event.
async fn cursor_of(scratch: &Scratch, user: &str, n: usize) -> anyhow::Result<LogCursor> {
    let after = i64::try_from(n - 1).unwrap_or(i64::MAX);
    let events = scratch.store.read_stream("credit_account", user, after, 1).await?;
    events.first().map(|e| e.cursor).ok_or_else(|| anyhow::anyhow!("no event {n}"))
}
