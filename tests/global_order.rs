//! The global log reader under many concurrent writers in two connection pools (a
//! stand-in for two processes): every event is read exactly once, and each aggregate's
//! events come in sequence order.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::counter::{Counter, CounterCommand};
use common::{ENGINES, TestDb, ctx, open_store};
use mana_core_auth::commands::CommandBus;
use mana_core_auth::events::{LogCursor, RecordedEvent};

const WRITERS: usize = 16;
const COMMANDS_PER_WRITER: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_are_read_exactly_once_in_a_commit_consistent_order() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stores = [open_store(&db).await, open_store(&db).await];
        let reader = open_store(&db).await;
        let buses = [
            CommandBus::<Counter>::new(stores[0].clone(), ()),
            CommandBus::<Counter>::new(stores[1].clone(), ()),
        ];

        // Each writer mixes its own aggregates with eight shared, contended ones.
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let bus = buses[w % 2].clone();
            writers.spawn(async move {
                let mut written = 0usize;
                for i in 0..COMMANDS_PER_WRITER {
                    let id =
                        if i % 3 == 0 { format!("shared-{}", i % 8) } else { format!("w{w}-{}", i % 10) };
                    let command =
                        if i % 5 == 0 { CounterCommand::AddTwice(1) } else { CounterCommand::Add(1) };
                    let committed = bus.execute(&id, command, &ctx()).await.expect("command");
                    written += committed.events.len();
                }
                written
            });
        }

        // Read concurrently with the writers, following the log as a projector would.
        let follower = tokio::spawn(async move {
            let mut seen: Vec<RecordedEvent> = Vec::new();
            let mut cursor = LogCursor::START;
            let mut idle_rounds = 0;
            loop {
                let page = reader.read_after(cursor, 97).await.expect("read");
                if let Some(last) = page.last() {
                    assert!(last.cursor > cursor);
                    cursor = last.cursor;
                    seen.extend(page);
                    idle_rounds = 0;
                } else {
                    idle_rounds += 1;
                    if idle_rounds > 100 {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });

        let mut expected = 0;
        while let Some(written) = writers.join_next().await {
            expected += written.expect("writer");
        }
        let seen = follower.await.expect("follower");

        assert_eq!(seen.len(), expected, "{engine:?}: every event exactly once");
        let keys: HashSet<_> = seen.iter().map(|e| (e.aggregate_id.clone(), e.sequence)).collect();
        assert_eq!(keys.len(), expected, "{engine:?}: no event twice");
        let positions: HashSet<_> = seen.iter().map(|e| e.cursor.position).collect();
        assert_eq!(positions.len(), expected, "{engine:?}: positions are unique");
        assert!(
            seen.windows(2).all(|w| w[0].cursor < w[1].cursor),
            "{engine:?}: strictly increasing cursors"
        );
        let mut next_sequence: HashMap<&str, i64> = HashMap::new();
        for event in &seen {
            let next = next_sequence.entry(&event.aggregate_id).or_insert(1);
            assert_eq!(event.sequence, *next, "{engine:?}: {} out of order", event.aggregate_id);
            *next += 1;
        }
    }
}
