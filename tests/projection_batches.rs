//! Batching is an optimisation, never a change of meaning: every real projection leaves
//! exactly the same rows whether it applies the log one event per transaction or in
//! batches of any size, on both engines. The log holds the realistic benchmark mix plus the
//! cases batching could get wrong: refreshes of sessions started in the same batch and in
//! earlier ones, refreshes without an address, revocations, a user-wide cutoff with a kept
//! session, and a session whose start is written after a cutoff that covers it.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::{ENGINES, TestDb, open_store};
use mana_core_auth::clock::SystemClock;
use mana_core_auth::db::Db;
use mana_core_auth::events::auth::{
    RevokeReason, Role, SessionEvent, SessionOrigin, SessionPersonal, UserEvent,
};
use mana_core_auth::events::mix;
use mana_core_auth::events::{EventStore, NewEvent};
use mana_core_auth::exec;
use mana_core_auth::projections::{self, Projector, ProjectorSettings};
use mana_core_auth::security::refresh::TokenHash;
use sqlx::Row;

/// The edge cases, for user 0 of the mix (whose registration and first session, with
/// refreshes, come first in the log).
fn edge_cases(t0: DateTime<Utc>) -> Vec<Vec<NewEvent>> {
    let user = "user-00000000";
    let at = |ms: i64| t0 + TimeDelta::milliseconds(ms);
    let with_ip = |ip: Option<&str>| SessionPersonal {
        ip_address: ip.map(str::to_owned),
        user_agent: Some("edge/1".into()),
        ..Default::default()
    };
    let start = |id: &str, ms: i64| {
        mix::event(
            "session",
            id,
            1,
            &SessionEvent::SessionStarted {
                session_id: id.into(),
                user_id: user.into(),
                origin: SessionOrigin::Login,
                refresh_hash: TokenHash(format!("{id}-0")),
                refresh_expires_at: at(ms + 3_600_000),
                remember_me: ms % 2 == 0,
                personal: with_ip(Some("203.0.113.1")),
                started_at: at(ms),
            },
            at(ms),
        )
    };
    let refresh = |id: &str, sequence: i64, ms: i64, ip: Option<&str>| {
        mix::event(
            "session",
            id,
            sequence,
            &SessionEvent::SessionRefreshed {
                user_id: user.into(),
                previous_hash: TokenHash(format!("{id}-{}", sequence - 2)),
                refresh_hash: TokenHash(format!("{id}-{}", sequence - 1)),
                refresh_expires_at: at(ms + 3_600_000),
                personal: with_ip(ip),
                refreshed_at: at(ms),
            },
            at(ms),
        )
    };
    let revoke = |id: &str, sequence: i64, ms: i64| {
        mix::event(
            "session",
            id,
            sequence,
            &SessionEvent::SessionRevoked {
                user_id: user.into(),
                reason: RevokeReason::Logout,
                revoked_at: at(ms),
            },
            at(ms),
        )
    };
    let password_changed = mix::event(
        "user",
        user,
        3,
        &UserEvent::PasswordChanged {
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            sessions_revoked_before: at(5_000),
            kept_session: Some("edge-kept".into()),
        },
        at(5_000),
    );
    let role_changed = mix::event(
        "user",
        user,
        4,
        &UserEvent::UserRoleChanged {
            role: Role::Admin,
            previous: Role::User,
            sessions_revoked_before: at(9_000),
        },
        at(9_000),
    );
    vec![
        // Started, refreshed twice (the second without an address) and logged out.
        vec![
            start("edge-a", 1_000),
            refresh("edge-a", 2, 1_100, Some("203.0.113.2")),
            refresh("edge-a", 3, 1_200, None),
            revoke("edge-a", 4, 1_300),
        ],
        vec![start("edge-kept", 2_000), start("edge-cut", 2_100)],
        vec![refresh("edge-kept", 2, 3_000, None), refresh("edge-cut", 2, 3_100, Some("203.0.113.3"))],
        // The cutoff spares `edge-kept` and revokes `edge-cut`.
        vec![password_changed],
        // Started before the cutoff but written after it: covered at insert.
        vec![start("edge-late", 4_000)],
        // Started after the cutoff, refreshed.
        vec![start("edge-after", 6_000)],
        vec![refresh("edge-after", 2, 7_100, Some("203.0.113.4"))],
        vec![refresh("edge-after", 3, 8_000, None), refresh("edge-cut", 3, 8_100, None)],
        // A second cutoff sparing nothing: `edge-cut` keeps the first one's time, the
        // others get this one's.
        vec![role_changed],
        vec![start("edge-live", 10_000)],
        // Already revoked by the second cutoff: the logout changes nothing.
        vec![revoke("edge-kept", 3, 11_000)],
    ]
}

/// Every row of every table of the real projections, as text, in a stable order.
async fn snapshot(db: &Db) -> BTreeMap<&'static str, Vec<String>> {
    let mut tables = BTreeMap::new();
    for projection in projections::all() {
        for &table in projection.tables() {
            let rows: Vec<String> = match db {
                Db::Postgres(pool) => {
                    sqlx::query_scalar(&format!("SELECT to_jsonb(t)::text FROM {table} t ORDER BY 1"))
                        .fetch_all(pool)
                        .await
                        .expect("read table")
                }
                Db::Sqlite { reader, .. } => {
                    let columns: Vec<String> =
                        sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                            .fetch_all(reader)
                            .await
                            .expect("columns");
                    let row =
                        columns.iter().map(|c| format!("quote({c})")).collect::<Vec<_>>().join(" || '|' || ");
                    sqlx::query(&format!("SELECT {row} FROM {table} ORDER BY 1"))
                        .fetch_all(reader)
                        .await
                        .expect("read table")
                        .iter()
                        .map(|r| r.get::<String, _>(0))
                        .collect()
                }
            };
            tables.insert(table, rows);
        }
    }
    tables
}

/// Fails with only the rows that differ, table by table, instead of two whole snapshots.
fn assert_same(
    actual: &BTreeMap<&'static str, Vec<String>>,
    expected: &BTreeMap<&'static str, Vec<String>>,
    what: &str,
) {
    let mut differences = Vec::new();
    for (table, rows) in expected {
        let got = actual.get(table).cloned().unwrap_or_default();
        let missing: Vec<_> = rows.iter().filter(|r| !got.contains(r)).collect();
        let extra: Vec<_> = got.iter().filter(|r| !rows.contains(r)).collect();
        if !missing.is_empty() || !extra.is_empty() {
            differences.push(format!(
                "{table}: expected but missing {missing:#?}\nfound but not expected {extra:#?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{what}:\n{}", differences.join("\n"));
}

/// Empties every projection's tables and moves its checkpoint back to the start.
async fn reset_all(db: &Db) {
    let mut tx = db.begin_write().await.expect("begin");
    for projection in projections::all() {
        for table in projection.tables() {
            exec!(&mut tx, &format!("DELETE FROM {table}")).expect("empty table");
        }
    }
    exec!(&mut tx, "UPDATE projection_checkpoints SET txid = 0, position = 0").expect("reset checkpoints");
    tx.commit().await.expect("commit");
}

/// The mix's time: a fixed instant, so snapshots compare across runs.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-20T08:00:00Z").expect("time").with_timezone(&Utc)
}

fn projector(store: &EventStore, batch_size: usize) -> Projector {
    let settings = ProjectorSettings { batch_size, poll_interval: Duration::from_millis(50) };
    Projector::new(store.clone(), Arc::new(SystemClock), settings, projections::all())
}

#[tokio::test]
async fn every_projection_leaves_the_same_rows_whatever_the_batch_size() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        let t0 = t0();
        let users = 40;
        for n in 0..users {
            store.append(&mix::user_events(n, t0)).await.expect("append user");
        }
        for group in edge_cases(t0) {
            store.append(&group).await.expect("append edge case");
        }

        let one_by_one = projector(&store, 1);
        one_by_one.init().await.expect("init");
        one_by_one.catch_up().await.expect("catch up one by one");
        let expected = snapshot(store.db()).await;
        let sessions = &expected["sessions"];
        assert_eq!(sessions.len(), users + 6, "{engine:?}: one row per session");
        let row = |id: &str| sessions.iter().find(|r| r.contains(id)).cloned().unwrap_or_default();
        let (first_cutoff, second_cutoff) = ("08:00:05.000999", "08:00:09.000999");
        assert!(row("edge-a").contains("logout") && row("edge-a").contains("203.0.113.2"), "{engine:?}");
        let cut = row("edge-cut");
        assert!(cut.contains("user_changed") && cut.contains(first_cutoff) && cut.contains("203.0.113.3"));
        let late = row("edge-late");
        assert!(
            late.contains("user_changed") && late.contains(first_cutoff),
            "{engine:?}: covered at insert"
        );
        let kept = row("edge-kept");
        assert!(kept.contains("user_changed") && kept.contains(second_cutoff), "{engine:?}: {kept}");
        let after = row("edge-after");
        assert!(after.contains(second_cutoff) && after.contains("203.0.113.4"), "{engine:?}: {after}");
        let live = row("edge-live");
        assert!(!live.contains("user_changed") && !live.contains("logout"), "{engine:?}: {live}");

        for batch_size in [7, 64, 10_000] {
            // Each projection on its own, as `projections rebuild` runs it.
            let batched = projector(&store, batch_size);
            for projection in projections::all() {
                batched.rebuild(projection.name()).await.expect("rebuild");
            }
            assert_same(
                &snapshot(store.db()).await,
                &expected,
                &format!("{engine:?}: rebuilt, batch size {batch_size}"),
            );
            // All of them together, as the running service's group batches apply them.
            reset_all(store.db()).await;
            let grouped = projector(&store, batch_size);
            grouped.catch_up().await.expect("group catch up");
            assert_same(
                &snapshot(store.db()).await,
                &expected,
                &format!("{engine:?}: grouped, batch size {batch_size}"),
            );
        }
        store.db().close().await;
        drop(db);
    }
}

/// A batch larger than SQLite's bind limit (32,766 values) in one statement: 1,000 users'
/// 16,000 ledger lines at ~14 columns each are ~220,000 values. `PROJECTION_BATCH_SIZE`
/// allows 100,000 events, so the insert must split itself, not fail the projection.
#[tokio::test]
async fn a_batch_over_sqlites_bind_limit_is_applied_whole() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        let t0 = t0();
        let users = 1_000;
        let events: Vec<NewEvent> = (0..users).flat_map(|n| mix::user_events(n, t0)).collect();
        for chunk in events.chunks(2_400) {
            store.append(chunk).await.expect("append");
        }
        let projector = projector(&store, 100_000);
        projector.init().await.expect("init");
        projector.catch_up().await.expect("one batch over the bind limit");
        let count = |table: &str| {
            let sql = format!("SELECT count(*) FROM {table}");
            let db = store.db().clone();
            async move {
                match db {
                    Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(&sql).fetch_one(&pool).await,
                    Db::Sqlite { reader, .. } => sqlx::query_scalar::<_, i64>(&sql).fetch_one(&reader).await,
                }
                .expect("count")
            }
        };
        let users = i64::try_from(users).expect("users");
        assert_eq!(count("users").await, users, "{engine:?}");
        assert_eq!(count("credit_transactions").await, users * (1 + mix::SPENDS_PER_USER), "{engine:?}");
        assert_eq!(count("sessions").await, users, "{engine:?}");
        store.db().close().await;
        drop(db);
    }
}
