//! Authentication across several server processes on one PostgreSQL: spawned binaries,
//! not routers in this test process.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::api::{Api, PASSWORD, unique_email};
use common::{ServerProcess, TestDb, binary};
use reqwest::StatusCode;
use serde_json::json;

fn env(db: &TestDb) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("KEY_ENCRYPTION_SECRET".to_owned(), db.secret()),
        // The register limit of the protection issue would stop this volume from one IP.
        ("RATE_LIMITS".to_owned(), "off".to_owned()),
    ])
}

/// Polls `/auth/validate` on `api` until the token is refused; returns how long it took.
async fn refused_within(api: &Api, token: &str, deadline: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if api.validate(token).await["valid"] == false {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_registrations_of_one_address_across_two_processes_give_one_account() {
    let db = TestDb::postgres().await;
    let servers = [ServerProcess::spawn(&env(&db)), ServerProcess::spawn(&env(&db))];
    let apis = [Api::new(&servers[0].base), Api::new(&servers[1].base)];
    let email = unique_email("race");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let api = apis[i % 2].clone();
        let email = if i % 3 == 0 { email.to_uppercase() } else { email.clone() };
        tasks.spawn(async move {
            api.post("/api/v1/auth/register", json!({"email": email, "password": PASSWORD})).await
        });
    }
    let mut statuses = HashMap::new();
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.expect("task");
        if answer.status == StatusCode::CONFLICT {
            assert_eq!(answer.body["error"], "EMAIL_TAKEN");
        }
        *statuses.entry(answer.status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, HashMap::from([(201, 1), (409, 49)]), "logs:\n{}", servers[0].log_text());
    // The one account is complete: it can sign in on either process.
    for api in &apis {
        assert_eq!(api.login(&email, PASSWORD).await.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_process_is_refused_on_the_other_within_a_second() {
    let db = TestDb::postgres().await;
    let servers = [ServerProcess::spawn(&env(&db)), ServerProcess::spawn(&env(&db))];
    let (a, b) = (Api::new(&servers[0].base), Api::new(&servers[1].base));
    let signed = a.register(&unique_email("logout")).await;
    let token = signed.text("accessToken");
    assert_eq!(b.validate(&token).await["valid"], true);
    assert_eq!(b.get_auth("/api/v1/auth/sessions", &token).await.status, StatusCode::OK);

    assert_eq!(a.post_auth("/api/v1/auth/logout", &token, json!({})).await.status, StatusCode::OK);
    let took = refused_within(&b, &token, Duration::from_secs(1)).await;
    assert!(took.is_some(), "the other process still accepts the token after 1 s");
    eprintln!("revocation reached the other process after {took:?}");
    assert_eq!(b.get_auth("/api/v1/auth/sessions", &token).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_cli_changes_roles_and_disables_users_for_every_process() {
    let db = TestDb::postgres().await;
    let servers = [ServerProcess::spawn(&env(&db)), ServerProcess::spawn(&env(&db))];
    let (a, b) = (Api::new(&servers[0].base), Api::new(&servers[1].base));
    let email = unique_email("cli");
    let token = a.register(&email).await.text("accessToken");

    let cli = |args: &[&str]| {
        let output = std::process::Command::new(binary())
            .args(args)
            .env_clear()
            .envs(env(&db))
            .env("LOG_FORMAT", "json")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run cli");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, text) = cli(&["user", "set-role", &email, "admin"]);
    assert!(ok, "{text}");
    assert!(
        refused_within(&b, &token, Duration::from_secs(1)).await.is_some(),
        "old-role token still accepted"
    );
    let admin = b.login(&email, PASSWORD).await.text("accessToken");
    assert_eq!(a.validate(&admin).await["payload"]["role"], "admin");

    let (ok, text) = cli(&["user", "disable", &email]);
    assert!(ok, "{text}");
    assert!(refused_within(&a, &admin, Duration::from_secs(1)).await.is_some());
    assert_eq!(b.login(&email, PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    let (ok, _) = cli(&["user", "enable", &email]);
    assert!(ok);
    // The refused login above counts as a failure: the address waits a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(a.login(&email, PASSWORD).await.status, StatusCode::OK);

    let (ok, text) = cli(&["user", "set-role", "nobody@example.com", "admin"]);
    assert!(!ok && text.contains("no user"), "{text}");
    let (ok, text) = cli(&["user", "set-role", &email, "root"]);
    assert!(!ok && text.contains("root"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_on_one_process_refuses_the_old_token_on_the_other_within_a_second() {
    let db = TestDb::postgres().await;
    let servers = [ServerProcess::spawn(&env(&db)), ServerProcess::spawn(&env(&db))];
    let (a, b) = (Api::new(&servers[0].base), Api::new(&servers[1].base));
    let email = unique_email("erased");
    let token = a.register(&email).await.text("accessToken");
    assert_eq!(b.validate(&token).await["valid"], true);
    let erased = a
        .send(
            a.http
                .delete(format!("{}/api/v1/auth/account", a.base))
                .bearer_auth(&token)
                .json(&json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.body);
    let took = refused_within(&b, &token, Duration::from_secs(1)).await;
    assert!(took.is_some(), "the other process still accepts the erased user's token after 1 s");
    eprintln!("the erasure reached the other process after {took:?}");
    assert_eq!(b.get_auth("/api/v1/credits/balance", &token).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(b.login(&email, PASSWORD).await.status, StatusCode::UNAUTHORIZED);
}
