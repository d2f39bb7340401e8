//! Event store conformance: one body of tests run against PostgreSQL and SQLite.

mod common;

use common::counter::{CEILING, Counter, CounterCommand, CounterError, CounterEvent, Tally};
use common::{ENGINES, Engine, TestDb, ctx, open_store};
use cqrs_es::persist::{PersistedEventRepository, PersistedEventStore};
use cqrs_es::{AggregateError, CqrsFramework};
use mana_core_auth::commands::{CommandBus, CommandContext, UnitOfWork, commit_error, with_retries};
use mana_core_auth::events::{AppendError, LogCursor, NewEvent};
use serde_json::json;

fn new_event(kind: &str, id: &str, sequence: i64) -> NewEvent {
    NewEvent {
        aggregate_type: kind.to_owned(),
        aggregate_id: id.to_owned(),
        sequence,
        event_type: "CounterAdded".to_owned(),
        event_version: "1".to_owned(),
        payload: json!({"Added": {"by": 1, "total": sequence}}),
        metadata: json!({"actor": "system"}),
        recorded_at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn appended_events_load_back_in_order() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        let bus = CommandBus::<Counter>::new(store.clone(), ());
        for n in 1..=5 {
            bus.execute("c-1", CounterCommand::Add(n), &ctx()).await.expect("add");
        }
        bus.execute("c-2", CounterCommand::AddTwice(7), &ctx()).await.expect("add twice");

        let (counter, version) = bus.load("c-1").await.expect("load");
        assert_eq!((counter.total, counter.events, version), (15, 5, 5), "{engine:?}");
        let stored = store.load::<Counter>("c-2", 0).await.expect("load c-2");
        assert_eq!(stored.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2], "{engine:?}");
        let later = store.load::<Counter>("c-1", 3).await.expect("load after 3");
        assert_eq!(later.iter().map(|e| e.sequence).collect::<Vec<_>>(), [4, 5], "{engine:?}");
    }
}

#[tokio::test]
async fn a_stale_sequence_conflicts_and_writes_nothing() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        store.append(&[new_event("counter", "a", 1)]).await.expect("first append");

        let stale = store.append(&[new_event("counter", "a", 1)]).await;
        assert!(matches!(stale, Err(AppendError::Conflict)), "{engine:?}: {stale:?}");

        // A batch whose second event conflicts leaves no trace of its first.
        let mixed = store.append(&[new_event("counter", "b", 1), new_event("counter", "a", 1)]).await;
        assert!(matches!(mixed, Err(AppendError::Conflict)), "{engine:?}: {mixed:?}");
        assert!(store.load::<Counter>("b", 0).await.expect("load b").is_empty(), "{engine:?}");
        assert_eq!(common::read_all(&store, 1).await.len(), 1, "{engine:?}");
    }
}

#[tokio::test]
async fn metadata_round_trips() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        let bus = CommandBus::<Counter>::new(store.clone(), ());
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T10:00:00.123456Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let context = CommandContext {
            now,
            request_id: Some("req-42".to_owned()),
            actor: "user-7".to_owned(),
            client_ip: Some("203.0.113.9".to_owned()),
        };
        let committed = bus.execute("m", CounterCommand::Add(3), &context).await.expect("add");
        assert_eq!(committed.events, [CounterEvent::Added { by: 3, total: 3 }]);

        let events = common::read_all(&store, 1).await;
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(Some(event.cursor), committed.cursor, "{engine:?}");
        assert_eq!(event.recorded_at, now, "{engine:?}");
        let meta = event.event_metadata().expect("metadata decodes");
        assert_eq!(meta.request_id.as_deref(), Some("req-42"));
        assert_eq!(meta.actor, "user-7");
        assert_eq!(meta.client_ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(meta.recorded_at, now);
        assert_eq!(
            (event.aggregate_type.as_str(), event.aggregate_id.as_str(), event.sequence),
            ("counter", "m", 1)
        );
        assert_eq!(event.decode::<CounterEvent>().expect("payload"), CounterEvent::Added { by: 3, total: 3 });
    }
}

#[tokio::test]
async fn the_cqrs_es_framework_runs_on_the_store() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        let events = PersistedEventStore::<_, Counter>::new_event_store(store.clone());
        let framework = CqrsFramework::new(events, vec![], ());
        framework.execute("f", CounterCommand::Add(2)).await.expect("add");
        framework.execute("f", CounterCommand::AddTwice(3)).await.expect("add twice");
        let refused = framework.execute("f", CounterCommand::Add(CEILING)).await;
        assert!(matches!(refused, Err(AggregateError::UserError(CounterError::PastCeiling))));
        let events = PersistedEventRepository::get_events::<Counter>(&store, "f").await.expect("events");
        assert_eq!(events.len(), 3, "{engine:?}");
        assert_eq!(events[2].payload, json!({"Added": {"by": 3, "total": 8}}));
    }
}

#[tokio::test]
async fn postgres_es_reads_the_events_we_write() {
    let db = TestDb::new(Engine::Postgres).await;
    let store = open_store(&db).await;
    let bus = CommandBus::<Counter>::new(store.clone(), ());
    bus.execute("pg", CounterCommand::AddTwice(4), &ctx()).await.expect("add");
    let mana_core_auth::db::Db::Postgres(pool) = store.db() else { panic!("postgres") };
    let theirs = postgres_es::PostgresEventRepository::new(pool.clone());
    let events = theirs.get_events::<Counter>("pg").await.expect("postgres-es reads");
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(events[1].payload, json!({"Added": {"by": 4, "total": 8}}));
}

#[tokio::test]
async fn the_log_refuses_updates_and_deletes() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        store.append(&[new_event("counter", "x", 1)]).await.expect("append");
        let (update, delete) = match store.db() {
            mana_core_auth::db::Db::Postgres(pool) => (
                sqlx::query("UPDATE events SET payload = '{}'").execute(pool).await.map(drop),
                sqlx::query("DELETE FROM events").execute(pool).await.map(drop),
            ),
            mana_core_auth::db::Db::Sqlite { writer, .. } => (
                sqlx::query("UPDATE events SET payload = '{}'").execute(writer).await.map(drop),
                sqlx::query("DELETE FROM events").execute(writer).await.map(drop),
            ),
        };
        assert!(update.is_err() && delete.is_err(), "{engine:?}: the log must be append-only");
        assert_eq!(common::read_all(&store, 1).await.len(), 1);
    }
}

#[tokio::test]
async fn a_unit_of_work_appends_several_aggregates_all_or_nothing() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        let counters = CommandBus::<Counter>::new(store.clone(), ());
        let tallies = CommandBus::<Tally>::new(store.clone(), ());

        let mut unit = UnitOfWork::new(store.clone(), ctx());
        unit.execute(&counters, "u", CounterCommand::Add(1)).await.expect("stage counter");
        unit.execute(&tallies, "u", CounterCommand::Add(1)).await.expect("stage tally");
        let cursor = unit.commit().await.expect("commit").expect("a cursor");
        assert_eq!(common::read_all(&store, 2).await.len(), 2);

        // A unit staged on stale state conflicts as a whole.
        let mut stale = UnitOfWork::new(store.clone(), ctx());
        stale.execute(&tallies, "v", CounterCommand::Add(1)).await.expect("stage new tally");
        stale.execute(&counters, "u", CounterCommand::Add(1)).await.expect("stage counter");
        counters.execute("u", CounterCommand::Add(5), &ctx()).await.expect("concurrent writer");
        assert!(matches!(stale.commit().await, Err(AppendError::Conflict)), "{engine:?}");
        assert!(
            store.load::<Tally>("v", 0).await.expect("load").is_empty(),
            "{engine:?}: half a unit leaked"
        );

        // Retried as a whole, it goes through on fresh state.
        let outcome = with_retries(store.metrics(), "test", || async {
            let mut unit = UnitOfWork::new(store.clone(), ctx());
            unit.execute(&tallies, "v", CounterCommand::Add(1)).await?;
            unit.execute(&counters, "u", CounterCommand::Add(1)).await?;
            unit.commit().await.map_err(commit_error::<CounterError>)
        })
        .await
        .expect("retried unit commits");
        assert!(outcome.expect("cursor") > cursor);
        assert_eq!(counters.load("u").await.expect("load").0.total, 7, "{engine:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hot_aggregate_takes_concurrent_commands_from_two_pools_without_losing_any() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        // Two stores over two pools stand in for two processes; each has its own cache.
        let buses = [
            CommandBus::<Counter>::new(open_store(&db).await, ()),
            CommandBus::<Counter>::new(open_store(&db).await, ()),
        ];
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let bus = buses[i % 2].clone();
            tasks.spawn(
                async move { bus.execute("hot", CounterCommand::Add(1), &ctx()).await.map(|c| c.cursor) },
            );
        }
        let mut cursors = Vec::new();
        while let Some(result) = tasks.join_next().await {
            cursors.push(result.expect("task").expect("no command may fail").expect("cursor"));
        }
        let (counter, version) = buses[0].load("hot").await.expect("load");
        assert_eq!((counter.total, version), (200, 200), "{engine:?}");
        // Group commit: several commands may share one append (one cursor).
        let distinct: std::collections::HashSet<_> = cursors.iter().collect();
        assert!(distinct.len() <= 200);
    }
}

#[tokio::test]
async fn a_refusal_on_a_stale_cache_is_rechecked_against_the_store() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let here = CommandBus::<Counter>::new(open_store(&db).await, ());
        let elsewhere = CommandBus::<Counter>::new(open_store(&db).await, ());
        here.execute("s", CounterCommand::Add(CEILING), &ctx()).await.expect("fill");
        // Another process takes some back; `here` still caches the full counter.
        elsewhere.execute("s", CounterCommand::Add(-10), &ctx()).await.expect("drain");
        let accepted = here.execute("s", CounterCommand::Add(5), &ctx()).await;
        assert!(accepted.is_ok(), "{engine:?}: refused on stale state: {accepted:?}");
        let refused = here.execute("s", CounterCommand::Add(6), &ctx()).await;
        assert!(matches!(refused, Err(AggregateError::UserError(CounterError::PastCeiling))));
        assert_eq!(here.load("s").await.expect("load").0.total, CEILING - 5);
    }
}

#[tokio::test]
async fn no_op_commands_write_nothing() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        let bus = CommandBus::<Counter>::new(store.clone(), ());
        let committed = bus.execute("n", CounterCommand::Nothing, &ctx()).await.expect("no-op");
        assert!(committed.events.is_empty() && committed.cursor.is_none());
        assert!(store.read_after(LogCursor::START, 10).await.expect("read").is_empty(), "{engine:?}");
    }
}
