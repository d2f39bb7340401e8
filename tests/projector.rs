//! The projector: atomic batches, resumption, rebuild, and exclusivity across instances.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::counter::{Counter, CounterCommand};
use common::{ENGINES, Engine, TestDb, ctx, open_store};
use mana_core_auth::clock::SystemClock;
use mana_core_auth::commands::CommandBus;
use mana_core_auth::db::{Db, DbTx};
use mana_core_auth::events::{EventStore, LogCursor, RecordedEvent};
use mana_core_auth::exec;
use mana_core_auth::projections::{BatchOutcome, Projection, Projector, ProjectorSettings, Streams};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

/// Writes one row per event; fails on the event at `fail_at` (a position) if set.
struct RowPerEvent {
    fail_at: Arc<AtomicI64>,
}

#[async_trait]
impl Projection for RowPerEvent {
    fn name(&self) -> &'static str {
        "row_per_event"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["test_rows"]
    }
    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for event in events {
            exec!(
                tx,
                "INSERT INTO test_rows (position, aggregate_id) VALUES ($1, $2)",
                event.cursor.position,
                &event.aggregate_id
            )?;
            anyhow::ensure!(event.cursor.position != self.fail_at.load(Ordering::SeqCst), "planned failure");
        }
        Ok(())
    }
}

async fn create_rows_table(store: &EventStore) {
    let sql = "CREATE TABLE IF NOT EXISTS test_rows (position BIGINT NOT NULL, aggregate_id TEXT NOT NULL)";
    match store.db() {
        Db::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        Db::Sqlite { writer, .. } => sqlx::query(sql).execute(writer).await.map(drop),
    }
    .expect("create test_rows");
}

/// Every position in `test_rows` with how often it appears.
async fn rows(store: &EventStore) -> HashMap<i64, i64> {
    let sql = "SELECT position, count(*) AS n FROM test_rows GROUP BY position";
    match store.db() {
        Db::Postgres(pool) => sqlx::query(sql)
            .fetch_all(pool)
            .await
            .expect("rows")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
        Db::Sqlite { reader, .. } => sqlx::query(sql)
            .fetch_all(reader)
            .await
            .expect("rows")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
    }
}

fn settings(batch_size: usize) -> ProjectorSettings {
    ProjectorSettings { batch_size, poll_interval: Duration::from_millis(50) }
}

fn projector(store: &EventStore, batch_size: usize, projections: Vec<Arc<dyn Projection>>) -> Projector {
    Projector::new(store.clone(), Arc::new(SystemClock), settings(batch_size), projections)
}

async fn append(store: &EventStore, count: usize) -> LogCursor {
    let bus = CommandBus::<Counter>::new(store.clone(), ());
    let mut last = LogCursor::START;
    for i in 0..count {
        let committed =
            bus.execute(&format!("agg-{}", i % 4), CounterCommand::Add(1), &ctx()).await.expect("append");
        last = committed.cursor.expect("cursor");
    }
    last
}

#[tokio::test]
async fn a_failing_apply_rolls_back_the_rows_and_the_checkpoint() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        create_rows_table(&store).await;
        let last = append(&store, 10).await;
        let events = common::read_all(&store, 10).await;
        let fail_at = Arc::new(AtomicI64::new(events[5].cursor.position));
        let projection = Arc::new(RowPerEvent { fail_at: Arc::clone(&fail_at) });
        let projector = projector(&store, 100, vec![projection]);
        projector.init().await.expect("init");

        let failed = projector.run_batch(projector.projections()[0].as_ref()).await;
        assert!(failed.is_err(), "{engine:?}: the batch must fail");
        assert!(rows(&store).await.is_empty(), "{engine:?}: rows of a failed batch leaked");
        assert_eq!(projector.checkpoint("row_per_event").await.expect("checkpoint"), LogCursor::START);

        fail_at.store(-1, Ordering::SeqCst);
        let outcome = projector.run_batch(projector.projections()[0].as_ref()).await.expect("batch");
        assert_eq!(outcome, BatchOutcome::Applied(10, last), "{engine:?}");
        assert_eq!(rows(&store).await.len(), 10);
        assert_eq!(projector.checkpoint("row_per_event").await.expect("checkpoint"), last);
    }
}

#[tokio::test]
async fn a_restarted_projector_resumes_where_it_stopped() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        create_rows_table(&store).await;
        let last = append(&store, 10).await;
        common::read_all(&store, 10).await;
        let never = || Arc::new(RowPerEvent { fail_at: Arc::new(AtomicI64::new(-1)) }) as Arc<dyn Projection>;

        let first = projector(&store, 4, vec![never()]);
        first.init().await.expect("init");
        first.run_batch(first.projections()[0].as_ref()).await.expect("batch 1");
        first.run_batch(first.projections()[0].as_ref()).await.expect("batch 2");
        drop(first);
        assert_eq!(rows(&store).await.len(), 8);

        // A new process (new pool) starts from the stored checkpoint.
        let other_store = open_store(&db).await;
        let second = projector(&other_store, 4, vec![never()]);
        second.init().await.expect("init again");
        common::catch_up_to(&second, last).await;
        let rows = rows(&store).await;
        assert_eq!(rows.len(), 10, "{engine:?}");
        assert!(rows.values().all(|n| *n == 1), "{engine:?}: an event was applied twice");
        assert_eq!(second.checkpoint("row_per_event").await.expect("checkpoint"), last);
    }
}

async fn dump_streams(store: &EventStore) -> Vec<String> {
    let sql = "SELECT aggregate_type, aggregate_id, version, events FROM event_streams ORDER BY aggregate_type, aggregate_id";
    let to_text = |r: &dyn Fn(usize) -> String| format!("{}/{}/{}/{}", r(0), r(1), r(2), r(3));
    match store.db() {
        Db::Postgres(pool) => sqlx::query(sql)
            .fetch_all(pool)
            .await
            .expect("dump")
            .iter()
            .map(|r| {
                to_text(&|i| {
                    if i < 2 { r.get::<String, _>(i) } else { r.get::<i64, _>(i).to_string() }
                })
            })
            .collect(),
        Db::Sqlite { reader, .. } => sqlx::query(sql)
            .fetch_all(reader)
            .await
            .expect("dump")
            .iter()
            .map(|r| {
                to_text(&|i| {
                    if i < 2 { r.get::<String, _>(i) } else { r.get::<i64, _>(i).to_string() }
                })
            })
            .collect(),
    }
}

#[tokio::test]
async fn a_rebuild_from_zero_yields_exactly_the_live_tables() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        let last = append(&store, 25).await;
        let projector = projector(&store, 7, vec![Arc::new(Streams)]);
        projector.init().await.expect("init");
        common::catch_up_to(&projector, last).await;
        let live = dump_streams(&store).await;
        assert_eq!(live.len(), 4, "{engine:?}: {live:?}");
        assert!(live.contains(&"counter/agg-0/7/7".to_owned()), "{live:?}");

        projector.rebuild("streams").await.expect("rebuild");
        assert_eq!(dump_streams(&store).await, live, "{engine:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_projector_instances_never_apply_an_event_twice() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let writer_store = open_store(&db).await;
        create_rows_table(&writer_store).await;
        let instances: Vec<Arc<Projector>> = vec![
            Arc::new(projector(
                &open_store(&db).await,
                50,
                vec![Arc::new(RowPerEvent { fail_at: Arc::new(AtomicI64::new(-1)) })],
            )),
            Arc::new(projector(
                &open_store(&db).await,
                50,
                vec![Arc::new(RowPerEvent { fail_at: Arc::new(AtomicI64::new(-1)) })],
            )),
        ];
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for instance in &instances {
            instance.init().await.expect("init");
            instance.spawn(&mut tasks, &shutdown);
        }
        // Writers append while both instances follow the log.
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..8 {
            let bus = CommandBus::<Counter>::new(writer_store.clone(), ());
            writers.spawn(async move {
                for i in 0..100 {
                    bus.execute(&format!("w{w}-{}", i % 5), CounterCommand::Add(1), &ctx())
                        .await
                        .expect("append");
                }
            });
        }
        while writers.join_next().await.is_some() {}
        // The newest committed event: `head()` would stop short of it while a projector
        // batch (an older open transaction) is still running.
        let head = writer_store.committed_head().await.expect("head");
        for instance in &instances {
            let caught_up = common::eventually(Duration::from_secs(20), || async {
                instance.checkpoint("row_per_event").await.expect("checkpoint") >= head
            })
            .await;
            assert!(caught_up, "{engine:?}: projection did not catch up");
        }
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
        let rows = rows(&writer_store).await;
        assert_eq!(rows.len(), 800, "{engine:?}");
        let twice: Vec<_> = rows.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "{engine:?}: applied more than once: {twice:?}");
    }
}

#[tokio::test]
async fn wait_for_returns_once_the_projections_pass_a_position() {
    let db = TestDb::new(Engine::Sqlite).await;
    let store = open_store(&db).await;
    let projector = Arc::new(projector(&store, 100, vec![Arc::new(Streams)]));
    projector.init().await.expect("init");
    let cursor = append(&store, 3).await;
    assert!(!projector.wait_for(cursor, Duration::from_millis(100)).await, "nothing is projecting yet");

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    projector.spawn(&mut tasks, &shutdown);
    assert!(projector.wait_for(cursor, Duration::from_secs(5)).await);
    let next = append(&store, 1).await;
    assert!(projector.wait_for(next, Duration::from_secs(5)).await, "woken by the commit");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}
