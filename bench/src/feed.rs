//! The change feed on NATS JetStream (docs/FEED.md): catch-up throughput over a
//! pre-filled log, and the lag from commit to a consumer's delivery under a steady append
//! rate. The service's own `Feed` publisher runs in this process on a scratch database,
//! against a stream of its own (deleted at the end); both results are checked against
//! the log (every event in the stream once, in order).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use chrono::Utc;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::foundation::{Scratch, fill_realistic_from, machine};
use super::{FeedArgs, Latencies};
use mana_core_auth::clock::SystemClock;
use mana_core_auth::config::{EventStreamConfig, Secret};
use mana_core_auth::db::Db;
use mana_core_auth::events::auth::EmailClaimEvent;
use mana_core_auth::events::{EventStore, LogCursor, mix, signal};
use mana_core_auth::feed::checkpoint::FeedRow;
use mana_core_auth::feed::{CURSOR_HEADER, Feed};

pub(super) async fn feed(args: FeedArgs) -> anyhow::Result<()> {
    println!(
        "feed: catch-up over {} events, then {} events/s for {} s; engine {}, NATS {}, batch {}, {}",
        args.events,
        args.rate,
        args.duration,
        args.target.engine,
        args.nats_url,
        args.batch_size,
        machine()
    );
    let scratch = Scratch::open(&args.target, 16).await?;
    let name = format!("MCA_BENCH_{}", uuid::Uuid::new_v4().simple());
    let settings = EventStreamConfig {
        url: Secret::new(args.nats_url.clone()),
        name: name.clone(),
        subject_prefix: format!("mca-bench.{}", uuid::Uuid::new_v4().simple()),
        required: false,
        duplicate_window: Duration::from_secs(120),
        lease: Duration::from_secs(10),
        batch_size: args.batch_size,
    };
    let js = jetstream::new(async_nats::connect(&args.nats_url).await.context("connect to NATS")?);
    let result = run(&args, &scratch, settings, &js).await;
    let _ = js.delete_stream(&name).await;
    scratch.close().await?;
    result
}

async fn run(
    args: &FeedArgs,
    scratch: &Scratch,
    settings: EventStreamConfig,
    js: &jetstream::Context,
) -> anyhow::Result<()> {
    let store = &scratch.store;
    let filled = Instant::now();
    let (events, _) = fill_realistic_from(scratch, 0, args.events).await?;
    println!("feed: filled {events} events in {:.1} s", filled.elapsed().as_secs_f64());
    let head = store.head().await?;

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    if let Db::Postgres(pool) = store.db() {
        tasks.spawn(signal::run_pg_notifier(pool.clone(), store.signal().clone(), shutdown.clone()));
    }
    let name = settings.name.clone();
    let feed = Arc::new(Feed::new(settings, store.clone(), Arc::new(SystemClock)).await?);
    let row = FeedRow::new(store.db().clone(), &name);
    let started = Instant::now();
    feed.spawn(&mut tasks, &shutdown);
    while row.point().await?.cursor < head {
        ensure!(started.elapsed() < Duration::from_secs(1800), "catch-up did not finish in 30 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut stream = js.get_stream(&name).await?;
    let info = stream.info().await?.clone();
    ensure!(
        info.state.messages == events as u64,
        "the stream holds {} of {events} events",
        info.state.messages
    );
    let last = stream.get_raw_message(info.state.last_sequence).await?;
    ensure!(cursor_of(&last.headers) == Some(head), "the stream's last message is not the log's head");
    println!(
        "feed catch-up: {events} events published and acknowledged in {seconds:.2} s = {:.0} events/s",
        events as f64 / seconds
    );

    let lags = lag(args, store, &mut stream).await?;
    println!(
        "feed lag at {} events/s: {} events, commit-to-consumer {}",
        args.rate,
        lags.count(),
        lags.summary()
    );
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn cursor_of(headers: &async_nats::HeaderMap) -> Option<LogCursor> {
    headers.get(CURSOR_HEADER).and_then(|v| v.as_str().parse().ok())
}

/// Appends one event at a time at the rate and measures, per event, the time from its
/// append's return (committed) to its delivery by an ordered consumer on the stream.
async fn lag(
    args: &FeedArgs,
    store: &EventStore,
    stream: &mut jetstream::stream::Stream,
) -> anyhow::Result<Latencies> {
    let total = usize::try_from(args.rate * args.duration)?;
    let consumer = stream
        .create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::New, ..Default::default() })
        .await?;
    let mut messages = consumer.messages().await?;
    let receiver = tokio::spawn(async move {
        let mut received = HashMap::with_capacity(total);
        while received.len() < total {
            let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(30), messages.next()).await
            else {
                break;
            };
            let at = Instant::now();
            let message = message?;
            let record: serde_json::Value = serde_json::from_slice(&message.payload)?;
            let id = record["aggregateId"].as_str().unwrap_or_default().to_owned();
            if id.starts_with("feed-lag-") {
                received.insert(id, at);
            }
        }
        Ok::<_, anyhow::Error>(received)
    });

    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut appends = JoinSet::new();
    let started = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let store = store.clone();
        appends.spawn(async move {
            let id = format!("feed-lag-{i}");
            let event = EmailClaimEvent::EmailClaimed { user_id: id.clone(), claimed_at: Utc::now() };
            store.append(&[mix::event("email_claim", &id, 1, &event, Utc::now())]).await?;
            Ok::<_, anyhow::Error>((id, Instant::now()))
        });
    }
    let mut committed = HashMap::with_capacity(total);
    while let Some(done) = appends.join_next().await {
        let (id, at) = done??;
        committed.insert(id, at);
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    let received = receiver.await??;
    ensure!(received.len() == total, "the consumer received {} of {total} events", received.len());
    println!("feed lag: appended {total} events at {achieved:.0}/s");
    let mut lags = Latencies::default();
    for (id, at) in &committed {
        let delivered = received.get(id).context("an event was not delivered")?;
        lags.record(delivered.saturating_duration_since(*at));
    }
    Ok(lags)
}
