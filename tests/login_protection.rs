//! Login protection that stops attackers without locking out the owner, on both engines:
//! refusals answer 429 `LOGIN_THROTTLED` and never count, concurrent attempts queue,
//! smart lockout keeps familiar and unfamiliar clients apart, change-password is judged
//! per session, and a completed reset unlocks the address.

mod common;

use std::net::IpAddr;

use chrono::{Duration, Utc};
use common::api::{Answer, Api, PASSWORD, unique_email};
use common::{ENGINES, Engine, TestApp, TestDb, api_from, count, mail_to, token_in};
use mana_core_auth::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{Value, json};

const WRONG: &str = "a wrong password, surely";
const NEW_PASSWORD: &str = "an entirely new passphrase";

/// The in-process app with a manual clock and a lockout threshold of 5.
async fn app_at(db: &TestDb, clock: &ManualClock) -> (TestApp, Api) {
    let mut config = db.app_config();
    config.lockout_threshold = 5;
    let app = TestApp::spawn_with_clock(config, clock.clone()).await;
    let api = Api::new(&app.base);
    (app, api)
}

fn attacker(api: &Api, n: u8) -> Api {
    api_from(&api.base, IpAddr::from([127, 0, 2, n]))
}

/// Asserts a 429 `LOGIN_THROTTLED` with a whole-second `Retry-After` of at least 1.
fn assert_throttled(answer: &Answer, context: &str) -> u64 {
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("LOGIN_THROTTLED")),
        "{context}: {}",
        answer.body
    );
    let retry = answer.headers.get("retry-after").and_then(|v| v.to_str().ok()).expect("Retry-After");
    let seconds: u64 = retry.parse().expect("whole seconds");
    assert!(seconds >= 1, "{context}: Retry-After {seconds}");
    assert!(answer.body["message"].as_str().is_some_and(|m| m.contains("wait")), "{}", answer.body);
    seconds
}

fn assert_invalid(answer: &Answer, context: &str) {
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("INVALID_CREDENTIALS")),
        "{context}: {}",
        answer.body
    );
}

/// Drives the unfamiliar class of `email` to its lock (5 failed checks from attackers),
/// moving the clock through each delay.
async fn lock_unfamiliar(api: &Api, clock: &ManualClock, email: &str) {
    fail_unfamiliar(api, clock, email, 5).await;
}

/// `n` checked wrong guesses from attackers, each after the previous one's delay.
async fn fail_unfamiliar(api: &Api, clock: &ManualClock, email: &str, n: u8) {
    for i in 0..n {
        assert_invalid(&attacker(api, i + 1).login(email, WRONG).await, "a checked wrong guess");
        clock.advance(Duration::seconds(11));
    }
}

fn security_events(body: &Value, kind: &str) -> Vec<Value> {
    body.as_array().expect("list").iter().filter(|e| e["eventType"] == kind).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_correct_logins_of_one_account_all_succeed() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let mut config = db.app_config();
        // Debug builds on a loaded CI machine check passwords slower than a release
        // server; the queue is what is tested here, not the default budget.
        config.login_queue_wait = std::time::Duration::from_secs(10);
        let app = TestApp::spawn_with_clock(config, clock.clone()).await;
        let api = Api::new(&app.base);
        let email = unique_email("queue");
        api.register(&email).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16u8 {
            // Familiar and unfamiliar clients alike.
            let client = if i % 2 == 0 { api.clone() } else { attacker(&api, i) };
            let email = email.clone();
            tasks.spawn(async move { client.login(&email, PASSWORD).await });
        }
        while let Some(answer) = tasks.join_next().await {
            let answer = answer.expect("task");
            assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
        }
        app.state.projector().catch_up().await.expect("project");
        let failures =
            count(app.state.db(), "SELECT count(*) FROM security_events WHERE event_type = 'login_failure'")
                .await;
        assert_eq!(failures, 0, "{engine:?}: nothing counted as a failure");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_refused_attempt_answers_429_with_retry_after_never_counts_and_the_right_password_gets_in_after_it()
{
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("retype");
        api.register(&email).await;
        let pool = app.state.auth().passwords().clone();

        assert_invalid(&api.login(&email, WRONG).await, "a mistyped password");
        let checks = pool.jobs_started();
        // A client retrying every 0.5 s with the right password: refused inside the 1 s
        // delay, without a check, and let in once it passes.
        clock.advance(Duration::milliseconds(500));
        let early = api.login(&email, PASSWORD).await;
        assert_eq!(assert_throttled(&early, "inside the delay"), 1);
        assert_eq!(pool.jobs_started(), checks, "{engine:?}: refused without a password check");
        clock.advance(Duration::milliseconds(500));
        let signed = api.login(&email, PASSWORD).await;
        assert_eq!(
            signed.status,
            StatusCode::OK,
            "{engine:?}: the refusal did not restart the delay: {}",
            signed.body
        );

        // An unknown address answers exactly alike.
        let unknown = unique_email("nobody");
        assert_invalid(&api.login(&unknown, WRONG).await, "unknown address");
        let refused = api.login(&unknown, WRONG).await;
        assert_eq!(assert_throttled(&refused, "unknown address inside the delay"), 1);
        assert_eq!(refused.body["message"], early.body["message"], "no enumeration");

        app.state.projector().catch_up().await.expect("project");
        let failures =
            count(app.state.db(), "SELECT count(*) FROM security_events WHERE event_type = 'login_failure'")
                .await;
        assert_eq!(failures, 2, "{engine:?}: only the two checked wrong passwords count");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_from_unfamiliar_addresses_locks_them_out_while_the_owner_signs_in_from_a_familiar_one() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("storm");
        // Registration signs the owner in from 127.0.0.1: that address is familiar.
        let owner_token = api.register(&email).await.text("accessToken");
        let pool = app.state.auth().passwords().clone();
        let before = pool.jobs_started();

        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..40u8 {
            let client = attacker(&api, i + 1);
            let email = email.clone();
            tasks.spawn(async move { client.login(&email, WRONG).await });
        }
        let (mut invalid, mut throttled) = (0, 0);
        while let Some(answer) = tasks.join_next().await {
            let answer = answer.expect("task");
            if answer.status == StatusCode::UNAUTHORIZED {
                assert_invalid(&answer, "storm");
                invalid += 1;
            } else {
                assert_throttled(&answer, "storm");
                throttled += 1;
            }
        }
        assert_eq!((invalid, throttled), (1, 39), "{engine:?}: one check, then the delay refuses the rest");
        assert_eq!(pool.jobs_started() - before, 1, "{engine:?}: one password check for 40 guesses");
        // The owner signs in at once, in the middle of the delay.
        assert_eq!(
            api.login(&email, PASSWORD).await.status,
            StatusCode::OK,
            "{engine:?}: owner during the storm"
        );

        clock.advance(Duration::seconds(2));
        fail_unfamiliar(&api, &clock, &email, 4).await;
        // Locked for unfamiliar clients: even the right password is refused, never 401.
        let stranger = attacker(&api, 200).login(&email, PASSWORD).await;
        assert!(assert_throttled(&stranger, "locked") > 800, "{engine:?}: the lock lasts 15 minutes");
        // The owner on the familiar address signs in at once, with the right password.
        let owner = api.login(&email, PASSWORD).await;
        assert_eq!(owner.status, StatusCode::OK, "{engine:?}: {}", owner.body);
        let wrong_owner = api.login(&email, WRONG).await;
        assert_invalid(&wrong_owner, "the owner's own mistake is checked");

        let events = api.get_auth("/api/v1/auth/security-events?limit=100", &owner_token).await;
        let locked = security_events(&events.body, "account_locked");
        assert_eq!(locked.len(), 1, "{engine:?}: {}", events.body);
        assert_eq!(locked[0]["metadata"]["familiar"], false);
        assert!(
            locked[0]["ipAddress"].as_str().is_some_and(|ip| ip.starts_with("127.0.2.")),
            "{}",
            locked[0]
        );
        let throttles = security_events(&events.body, "login_throttled");
        assert!(!throttles.is_empty(), "{engine:?}: throttles are visible to the owner");
        assert!(throttles.iter().all(|e| e["metadata"]["familiar"] == false && e["ipAddress"].is_string()));
        app.stop().await;
    }
}

#[tokio::test]
async fn the_owners_own_wrong_guesses_on_a_familiar_client_are_delayed_and_locked_apart() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("owner");
        let token = api.register(&email).await.text("accessToken");
        for _ in 0..5 {
            assert_invalid(&api.login(&email, WRONG).await, "owner's wrong guess");
            clock.advance(Duration::seconds(11));
        }
        let locked = api.login(&email, PASSWORD).await;
        assert!(assert_throttled(&locked, "familiar class locked") > 800);
        // The unfamiliar class was never touched.
        let elsewhere = attacker(&api, 9).login(&email, PASSWORD).await;
        assert_eq!(elsewhere.status, StatusCode::OK, "{engine:?}: {}", elsewhere.body);
        let events = api.get_auth("/api/v1/auth/security-events?limit=100", &token).await;
        let locks = security_events(&events.body, "account_locked");
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0]["metadata"]["familiar"], true);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_device_that_signed_in_is_familiar_from_a_new_address() {
    for engine in ENGINES {
        device_familiarity(engine).await;
    }
}

async fn device_familiarity(engine: Engine) {
    let db = TestDb::new(engine).await;
    let clock = ManualClock::new(Utc::now());
    let (app, api) = app_at(&db, &clock).await;
    let email = unique_email("device");
    api.register(&email).await;
    let phone = attacker(&api, 77);
    let with_device = |password: &str| json!({"email": email, "password": password, "deviceId": "phone-7", "deviceName": "Phone"});
    assert_eq!(phone.post("/api/v1/auth/login", with_device(PASSWORD)).await.status, StatusCode::OK);
    clock.advance(Duration::seconds(1));
    lock_unfamiliar(&api, &clock, &email).await;
    // The phone moved to another network: a new address, the same device.
    let moved = attacker(&api, 78);
    let answer = moved.post("/api/v1/auth/login", with_device(PASSWORD)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    // That sign-in made the new address familiar too; a third one without the device is not.
    assert_eq!(moved.login(&email, PASSWORD).await.status, StatusCode::OK);
    let third = attacker(&api, 79);
    assert_throttled(&third.login(&email, PASSWORD).await, "without the device id it is unfamiliar");
    app.stop().await;
}

#[tokio::test]
async fn change_password_is_judged_on_its_own_session_and_throttled_after_five_wrong_current_passwords() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("change");
        let token = api.register(&email).await.text("accessToken");
        let change = |current: &str| {
            let (api, token) = (api.clone(), token.clone());
            let body = json!({"currentPassword": current, "newPassword": NEW_PASSWORD});
            async move { api.post_auth("/api/v1/auth/change-password", &token, body).await }
        };
        // A wrong current password does not touch the address: the right login follows.
        assert_eq!(change(WRONG).await.body["error"], "INVALID_CURRENT_PASSWORD");
        assert_eq!(api.login(&email, PASSWORD).await.status, StatusCode::OK, "{engine:?}");
        for _ in 0..4 {
            assert_eq!(change(WRONG).await.body["error"], "INVALID_CURRENT_PASSWORD");
        }
        // Five wrong in a row: throttled on the login delay schedule, the right one too.
        assert_throttled(&change(WRONG).await, "sixth try");
        assert_throttled(&change(PASSWORD).await, "right password inside the delay");
        clock.advance(Duration::seconds(11));
        // Attackers lock the address meanwhile; the owner's session is not blocked by it.
        lock_unfamiliar(&api, &clock, &email).await;
        let changed = change(PASSWORD).await;
        assert_eq!(changed.status, StatusCode::OK, "{engine:?}: {}", changed.body);
        let events = api.get_auth("/api/v1/auth/security-events?limit=100", &token).await;
        let throttles = security_events(&events.body, "login_throttled");
        assert!(
            throttles
                .iter()
                .any(|e| e["metadata"]["context"] == "change_password" && e["sessionId"].is_string())
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_completed_password_reset_unlocks_the_address_for_every_client_class() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("unlock");
        api.register(&email).await;
        lock_unfamiliar(&api, &clock, &email).await;
        for _ in 0..5 {
            assert_invalid(&api.login(&email, WRONG).await, "owner's wrong guess");
            clock.advance(Duration::seconds(11));
        }
        assert_throttled(&api.login(&email, PASSWORD).await, "familiar locked");
        assert_throttled(&attacker(&api, 50).login(&email, PASSWORD).await, "unfamiliar locked");

        api.post("/api/v1/auth/forgot-password", json!({"email": email})).await;
        let reset_token = token_in(&mail_to(app.state.db(), &email, "password_reset", 0).await);
        let reset = api
            .post("/api/v1/auth/reset-password", json!({"token": reset_token, "newPassword": NEW_PASSWORD}))
            .await;
        assert_eq!(reset.status, StatusCode::OK, "{engine:?}: {}", reset.body);
        assert_eq!(attacker(&api, 50).login(&email, NEW_PASSWORD).await.status, StatusCode::OK, "{engine:?}");
        assert_eq!(api.login(&email, NEW_PASSWORD).await.status, StatusCode::OK, "{engine:?}");
        app.state.projector().catch_up().await.expect("project");
        let unlocked = count(
            app.state.db(),
            "SELECT count(*) FROM security_events WHERE event_type = 'account_unlocked'",
        )
        .await;
        assert_eq!(unlocked, 1);
        app.stop().await;
    }
}

#[tokio::test]
async fn refusals_are_recorded_at_most_once_per_client_and_minute() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("coalesce");
        api.register(&email).await;
        lock_unfamiliar(&api, &clock, &email).await;
        let (one, two) = (attacker(&api, 101), attacker(&api, 102));
        for _ in 0..30 {
            assert_throttled(&one.login(&email, WRONG).await, "locked");
            clock.advance(Duration::seconds(1));
        }
        assert_throttled(&two.login(&email, WRONG).await, "locked");
        clock.advance(Duration::seconds(31));
        assert_throttled(&one.login(&email, WRONG).await, "a minute later");
        app.state.projector().catch_up().await.expect("project");
        let per_ip = |ip: &'static str| {
            let sql = format!(
                "SELECT count(*) FROM security_events WHERE event_type = 'login_throttled' AND ip_address = '{ip}'"
            );
            let db = app.state.db().clone();
            async move { count(&db, &sql).await }
        };
        assert_eq!(per_ip("127.0.2.101").await, 2, "{engine:?}: one for the first minute, one after");
        assert_eq!(per_ip("127.0.2.102").await, 1, "{engine:?}: another client is recorded apart");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_login_records_its_success_and_starts_its_session_in_one_append_after_the_attempt_began() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let email = unique_email("one-append");
        api.register(&email).await;
        let login = api.login(&email, PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{engine:?}");
        let store = common::open_store(&db).await;
        let events = common::read_all(&store, 1).await;
        let last_of = |event_type: &str| {
            events.iter().rev().find(|e| e.event_type == event_type).map(|e| e.cursor).expect(event_type)
        };
        let began = last_of("LoginCheckStarted");
        let succeeded = last_of("LoginCheckSucceeded");
        let started = last_of("SessionStarted");
        assert!(began < succeeded, "{engine:?}: the attempt began before the check's success");
        assert_eq!(started.position.abs_diff(succeeded.position), 1, "{engine:?}: adjacent in the log");
        // One append is one transaction: PostgreSQL shows it (SQLite has no transaction ids).
        if engine == Engine::Postgres {
            assert_eq!(succeeded.txid, started.txid, "success and session in one transaction");
            assert_ne!(began.txid, succeeded.txid, "the attempt began in an earlier transaction");
        }
        app.stop().await;
    }
}
