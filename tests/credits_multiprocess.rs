//! Credits across two spawned server processes on one PostgreSQL: no double spend under
//! a flood, idempotency under concurrent retries, and across a restart. Rate limits are
//! off here (the flood comes from one address and would trip them); daily grants are off
//! so that a run crossing midnight cannot change the numbers.

mod common;

use std::collections::{HashMap, HashSet};

use common::api::{Api, unique_email};
use common::{ServerProcess, TestDb, count};
use reqwest::StatusCode;
use serde_json::json;

fn env(db: &TestDb) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("KEY_ENCRYPTION_SECRET".to_owned(), db.secret()),
        ("RATE_LIMITS".to_owned(), "off".to_owned()),
        ("CREDITS_DAILY_FREE".to_owned(), "0".to_owned()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_spends_over_two_processes_spend_exactly_the_balance() {
    let db = TestDb::postgres().await;
    let servers = [ServerProcess::spawn(&env(&db)), ServerProcess::spawn(&env(&db))];
    let apis = [Api::new(&servers[0].base), Api::new(&servers[1].base)];
    let token = apis[0].register(&unique_email("flood")).await.text("accessToken");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (api, token) = (apis[i % 2].clone(), token.clone());
        tasks.spawn(async move {
            let answer = api
                .post_auth(
                    "/api/v1/credits/use",
                    &token,
                    json!({"amount": 1, "appId": "flood", "description": "one"}),
                )
                .await;
            (answer.status, answer.body["error"].as_str().map(str::to_owned))
        });
    }
    let mut outcomes: HashMap<(u16, Option<String>), usize> = HashMap::new();
    while let Some(outcome) = tasks.join_next().await {
        let (status, error) = outcome.expect("task");
        *outcomes.entry((status.as_u16(), error)).or_default() += 1;
    }
    let expected = HashMap::from([((201, None), 150), ((400, Some("INSUFFICIENT_CREDITS".to_owned())), 850)]);
    assert_eq!(outcomes, expected, "logs:\n{}", servers[1].log_text());
    let balance = apis[1].get_auth("/api/v1/credits/balance", &token).await.body;
    assert_eq!(
        (balance["freeCreditsRemaining"].as_i64(), balance["totalSpent"].as_i64()),
        (Some(0), Some(150))
    );
    let lines = apis[0].get_auth("/api/v1/credits/transactions?limit=100", &token).await.body;
    let store = mana_core_auth::db::Db::connect(&db.config, 1).await.expect("db");
    let usage = count(&store, "SELECT count(*) FROM credit_transactions WHERE type = 'usage'").await;
    assert_eq!(usage, 150, "exactly 150 usage rows");
    assert_eq!(lines.as_array().expect("list").len(), 100, "a page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_identical_requests_debit_once_and_survive_a_restart() {
    let db = TestDb::postgres().await;
    let mut servers = vec![ServerProcess::spawn(&env(&db)), ServerProcess::spawn(&env(&db))];
    let token = Api::new(&servers[0].base).register(&unique_email("retry")).await.text("accessToken");
    let body = json!({"amount": 7, "appId": "chat", "description": "once", "metadata": {"n": 1}, "idempotencyKey": "same-key"});
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (api, token, body) = (Api::new(&servers[i % 2].base), token.clone(), body.clone());
        tasks.spawn(async move { api.post_auth("/api/v1/credits/use", &token, body).await });
    }
    let mut ids = HashSet::new();
    let mut replays = 0;
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.expect("task");
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        ids.insert(answer.body["transaction"]["id"].as_str().expect("id").to_owned());
        replays += usize::from(answer.headers.contains_key("idempotent-replayed"));
    }
    assert_eq!(ids.len(), 1, "every response carries the same transaction");
    assert_eq!(replays, 99);
    let api = Api::new(&servers[1].base);
    assert_eq!(
        api.get_auth("/api/v1/credits/balance", &token).await.body["freeCreditsRemaining"],
        143,
        "one debit"
    );

    // Restart both processes: the key still answers the same.
    for server in &mut servers {
        assert!(server.terminate().success());
    }
    let restarted = ServerProcess::spawn(&env(&db));
    let api = Api::new(&restarted.base);
    let again = api.post_auth("/api/v1/credits/use", &token, body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert!(ids.contains(again.body["transaction"]["id"].as_str().expect("id")));
    assert_eq!(api.get_auth("/api/v1/credits/balance", &token).await.body["freeCreditsRemaining"], 143);
}
