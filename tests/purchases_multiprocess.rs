//! Paid credits across two spawned server processes on one PostgreSQL, with a fake Stripe
//! on loopback: a purchase started on one process and its webhook delivered to both, many
//! times and concurrently (Stripe retries, and a load balancer spreads them), completes
//! once; the balance and the purchase are the same seen from either process.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::api::{Api, unique_email};
use common::stripe::{self as fake, FakeStripe};
use common::{ServerProcess, TestDb, count, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn env(db: &TestDb, stripe: &FakeStripe) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("KEY_ENCRYPTION_SECRET".to_owned(), db.secret()),
        ("RATE_LIMITS".to_owned(), "off".to_owned()),
        ("CREDITS_DAILY_FREE".to_owned(), "0".to_owned()),
        ("STRIPE_SECRET_KEY".to_owned(), fake::SECRET_KEY.to_owned()),
        ("STRIPE_WEBHOOK_SECRET".to_owned(), fake::WEBHOOK_SECRET.to_owned()),
        ("STRIPE_API_BASE".to_owned(), stripe.base.clone()),
    ])
}

async fn deliver(api: &Api, body: &str) -> (StatusCode, Value) {
    let request = api
        .http
        .post(format!("{}/api/v1/webhooks/stripe", api.base))
        .header("content-type", "application/json")
        .header("stripe-signature", fake::signature(body))
        .body(body.to_owned());
    let answer = api.send(request).await;
    (answer.status, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purchase_on_one_process_completes_once_under_concurrent_duplicate_webhooks_to_both() {
    let db = TestDb::postgres().await;
    let stripe = FakeStripe::start().await;
    let servers = [ServerProcess::spawn(&env(&db, &stripe)), ServerProcess::spawn(&env(&db, &stripe))];
    let apis = [Api::new(&servers[0].base), Api::new(&servers[1].base)];
    let token = apis[0].register(&unique_email("two-buyer")).await.text("accessToken");
    let started =
        apis[0].post_auth("/api/v1/credits/purchase", &token, json!({"packageId": "credits-500"})).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let id = started.body["purchaseId"].as_str().expect("id").to_owned();
    let intent = stripe.created().pop().expect("the PaymentIntent");

    // The same event 40 times and a second event for the same success 20 times, spread
    // over both processes, all at once.
    let first = fake::succeeded("evt_two_a", &intent, 500, "eur");
    let second = fake::succeeded("evt_two_b", &intent, 500, "eur");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let api = apis[i % 2].clone();
        let body = if i % 3 == 2 { second.clone() } else { first.clone() };
        tasks.spawn(async move { deliver(&api, &body).await });
    }
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    while let Some(answer) = tasks.join_next().await {
        let (status, body) = answer.expect("delivery task");
        assert_eq!(status, StatusCode::OK, "{body}\nlogs:\n{}", servers[1].log_text());
        *outcomes.entry(body["outcome"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    assert_eq!(outcomes, HashMap::from([("applied".to_owned(), 1), ("no_change".to_owned(), 59)]));
    let store = mana_core_auth::db::Db::connect(&db.config, 1).await.expect("db");
    let granted = count(&store, "SELECT count(*) FROM events WHERE event_type = 'CreditsPurchased'").await;
    assert_eq!(granted, 1, "granted once");
    let receipts = "SELECT count(*) FROM events WHERE event_type = 'StripeEventReceived'";
    assert_eq!(count(&store, receipts).await, 2, "each Stripe event recorded once");

    // Both processes see the completed purchase and the paid credits.
    for api in &apis {
        let completed = eventually(WAIT, || async {
            let purchase = api.get_auth(&format!("/api/v1/credits/purchases/{id}"), &token).await.body;
            let balance = api.get_auth("/api/v1/credits/balance", &token).await.body;
            purchase["status"] == "completed" && balance["balance"] == 500 && balance["totalEarned"] == 650
        })
        .await;
        let balance = api.get_auth("/api/v1/credits/balance", &token).await.body;
        assert!(completed, "{}: {balance}", api.base);
    }
    // The process that started the purchase spends the credits the other one granted.
    let spend = json!({"amount": 600, "appId": "chat", "description": "paid and free"});
    let spent = apis[0].post_auth("/api/v1/credits/use", &token, spend).await;
    assert_eq!(spent.status, StatusCode::CREATED, "{}", spent.body);
    assert_eq!(spent.body["newBalance"]["balance"], 50, "{}", spent.body);
}
