//! A transaction that commits late is not skipped by the global log reader.
//!
//! This test holds a write transaction open; PostgreSQL's snapshot horizon is cluster-wide,
//! so while it is open every reader on the server is held back. It lives alone in its own
//! test binary, and `cargo test` runs test binaries one after another, so it never runs in
//! parallel with the other tests on the shared server.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::counter::{Counter, CounterCommand};
use common::{TestDb, ctx, open_store};
use mana_core_auth::commands::CommandBus;
use mana_core_auth::db::Db;
use mana_core_auth::events::LogCursor;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_waits_for_a_late_commit_and_then_returns_it_once() {
    let db = TestDb::postgres().await;
    let store = open_store(&db).await;
    let bus = CommandBus::<Counter>::new(store.clone(), ());
    let Db::Postgres(pool) = store.db() else { panic!("postgres") };

    bus.execute("before", CounterCommand::Add(1), &ctx()).await.expect("first");
    let mut cursor = LogCursor::START;
    let first = store.read_after(cursor, 100).await.expect("read");
    assert_eq!(first.len(), 1);
    cursor = first[0].cursor;

    // Open a transaction, append inside it, and keep it open.
    let mut late = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('counter', 'late', 1, 'CounterAdded', '1', $1, '{}')",
    )
    .bind(json!({"Added": {"by": 1, "total": 1}}))
    .execute(&mut *late)
    .await
    .expect("late insert");

    // Others commit meanwhile; their positions are higher than the open one's.
    let mut newest = None;
    for i in 0..20 {
        let committed =
            bus.execute(&format!("after-{i}"), CounterCommand::Add(1), &ctx()).await.expect("after");
        newest = committed.cursor;
    }
    let held_back = store.read_after(cursor, 100).await.expect("read while open");
    assert!(held_back.is_empty(), "read {} events past an open transaction", held_back.len());
    // What a "wait until everything committed is projected" must wait for: the newest
    // committed event, not the readable head, which stops at the open transaction.
    let committed = store.committed_head().await.expect("committed head");
    assert_eq!(Some(committed), newest, "the newest committed event");
    assert_eq!(store.head().await.expect("head"), cursor, "the readable head stops at the open transaction");

    tokio::time::sleep(Duration::from_millis(100)).await;
    late.commit().await.expect("late commit");

    let mut rest = Vec::new();
    loop {
        let page = store.read_after(cursor, 7).await.expect("read after commit");
        let Some(last) = page.last() else { break };
        cursor = last.cursor;
        rest.extend(page);
    }
    let ids: Vec<_> = rest.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(rest.len(), 21, "{ids:?}");
    assert_eq!(ids[0], "late", "the late transaction began first, so it comes first");
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 21, "no event twice");
}
