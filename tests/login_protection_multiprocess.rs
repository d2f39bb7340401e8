//! Login protection across spawned server processes on one database: attempts queue
//! across processes, smart lockout holds on every process, and a process killed during a
//! password check blocks the address for a few seconds at most and counts nothing.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, Engine, ServerProcess, TestDb, api_from, count};
use mana_core_auth::db::Db;
use reqwest::StatusCode;
use serde_json::json;

fn env(db: &TestDb, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env = HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("KEY_ENCRYPTION_SECRET".to_owned(), db.secret()),
        ("RATE_LIMITS".to_owned(), "off".to_owned()),
    ]);
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

fn from(server: &ServerProcess, last: u8) -> Api {
    api_from(&server.base, IpAddr::from([127, 0, 3, last]))
}

async fn events_of_type(db: &TestDb, event_type: &str) -> i64 {
    let store = Db::connect(&db.config, 1).await.expect("db");
    let sql = format!("SELECT count(*) FROM events WHERE event_type = '{event_type}'");
    count(&store, &sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_correct_logins_over_two_processes_all_succeed() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        // A generous queue budget: debug builds on a loaded machine check passwords slowly.
        let wait = [("LOGIN_QUEUE_WAIT_MS", "10000")];
        let servers = [ServerProcess::spawn(&env(&db, &wait)), ServerProcess::spawn(&env(&db, &wait))];
        let email = unique_email("queue2");
        from(&servers[0], 1).register(&email).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16u8 {
            // Both client classes, both processes.
            let api = from(&servers[usize::from(i % 2)], if i % 4 < 2 { 1 } else { 2 });
            let email = email.clone();
            tasks.spawn(async move { api.login(&email, PASSWORD).await });
        }
        while let Some(answer) = tasks.join_next().await {
            let answer = answer.expect("task");
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{engine:?}: {}\n{}",
                answer.body,
                servers[1].log_text()
            );
        }
        assert_eq!(events_of_type(&db, "LoginCheckFailed").await, 0, "{engine:?}");
        assert_eq!(
            events_of_type(&db, "LoginCheckSucceeded").await,
            17,
            "{engine:?}: 16 checks and the registration"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_locked_out_on_one_process_are_locked_out_on_the_other_while_the_owner_signs_in() {
    for engine in ENGINES {
        lockout_across_processes(engine).await;
    }
}

async fn lockout_across_processes(engine: Engine) {
    let db = TestDb::new(engine).await;
    let settings = [("LOGIN_LOCKOUT_THRESHOLD", "2")];
    let servers = [ServerProcess::spawn(&env(&db, &settings)), ServerProcess::spawn(&env(&db, &settings))];
    let email = unique_email("smart2");
    // Registration from .1 makes that address familiar.
    from(&servers[0], 1).register(&email).await;
    assert_eq!(
        from(&servers[0], 10).login(&email, "wrong guess one!").await.status,
        StatusCode::UNAUTHORIZED
    );
    // The next guess may come after the 1 s delay; a refused one in between never counts.
    let early = from(&servers[1], 11).login(&email, "wrong guess two!").await;
    assert_eq!(early.body["error"], "LOGIN_THROTTLED", "{}", early.body);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        from(&servers[1], 11).login(&email, "wrong guess two!").await.status,
        StatusCode::UNAUTHORIZED
    );
    // Two failed checks: locked for unfamiliar clients on every process.
    for server in &servers {
        let stranger = from(server, 12).login(&email, PASSWORD).await;
        assert_eq!(
            (stranger.status, stranger.body["error"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("LOGIN_THROTTLED")),
            "{}",
            stranger.body
        );
        let owner = from(server, 1).login(&email, PASSWORD).await;
        assert_eq!(
            owner.status,
            StatusCode::OK,
            "{engine:?}: the owner on a familiar address: {}",
            owner.body
        );
    }
    assert_eq!(events_of_type(&db, "LoginLocked").await, 1, "{engine:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_during_a_password_check_holds_the_address_for_seconds_and_counts_nothing() {
    let db = TestDb::postgres().await;
    let one_thread = [("PASSWORD_HASH_THREADS", "1"), ("PASSWORD_HASH_QUEUE", "256")];
    let mut doomed = ServerProcess::spawn(&env(&db, &one_thread));
    let survivor = ServerProcess::spawn(&env(&db, &[]));
    let email = unique_email("crash");
    from(&doomed, 1).register(&email).await;

    // Fill the doomed process's hashing queue, so that the login below waits in it with
    // its attempt in flight.
    let mut fillers = tokio::task::JoinSet::new();
    for i in 0..40 {
        let api = from(&doomed, 50);
        fillers.spawn(async move {
            let body = json!({"email": unique_email(&format!("filler{i}")), "password": PASSWORD});
            api.post("/api/v1/auth/register", body).await
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let victim = from(&doomed, 7);
    let (mail, password) = (email.clone(), PASSWORD);
    let login = tokio::spawn(async move { victim.login(&mail, password).await });
    let started = Instant::now();
    while events_of_type(&db, "LoginCheckStarted").await == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the login never began");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.kill();
    let _ = login.await;
    fillers.abort_all();
    // The victim's stream is the only one with a login (the fillers only registered).
    let store = Db::connect(&db.config, 1).await.expect("db");
    let stream: String = match &store {
        Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT aggregate_id FROM events WHERE event_type = 'LoginCheckStarted'")
                .fetch_one(pool)
                .await
                .expect("stream")
        }
        Db::Sqlite { .. } => unreachable!("PostgreSQL test"),
    };
    let in_stream = |kind: &str| {
        format!("SELECT count(*) FROM events WHERE aggregate_id = '{stream}' AND event_type = '{kind}'")
    };
    assert_eq!(
        (
            count(&store, &in_stream("LoginCheckSucceeded")).await,
            count(&store, &in_stream("LoginAttemptAbandoned")).await
        ),
        (1, 0),
        "the attempt was in flight when the process died (only the registration succeeded)"
    );

    // The same client on the surviving process: 429 while the dead attempt's lease runs,
    // then in, with the right password, and no failure recorded.
    let killed_at = Instant::now();
    let client = from(&survivor, 7);
    let signed_in = loop {
        let answer = client.login(&email, PASSWORD).await;
        match answer.status {
            StatusCode::OK => break killed_at.elapsed(),
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(answer.body["error"], "LOGIN_THROTTLED"),
            other => panic!("the right password answered {other}: {}", answer.body),
        }
        assert!(killed_at.elapsed() < Duration::from_secs(20), "still blocked: {}", answer.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(signed_in < Duration::from_secs(20));
    assert_eq!(count(&store, &in_stream("LoginCheckFailed")).await, 0, "a crash never counts as a failure");
    assert_eq!(count(&store, &in_stream("LoginCheckSucceeded")).await, 2);
}
