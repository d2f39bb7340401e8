//! Paid credits bought through Stripe, black-box over HTTP on both engines against a fake
//! Stripe on loopback: packages, purchases, signed webhooks in any order and any number
//! of times, refunds (into debt), Stripe down or slow, catalogue changes, expiry, and the
//! replay's ledger checks over all of it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::api::{Api, PASSWORD, unique_email};
use common::stripe::{self as fake, FakeStripe, Mode};
use common::{ENGINES, TestApp, TestDb, count, eventually};
use mana_core_auth::audit::replay::{self, ReplaySettings};
use mana_core_auth::auth::UserChange;
use mana_core_auth::clock::{Clock, ManualClock, SystemClock};
use mana_core_auth::config::Config;
use mana_core_auth::events::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

async fn start(db: &TestDb, stripe: &FakeStripe) -> (TestApp, Api) {
    let mut config = db.app_config();
    stripe.configure(&mut config);
    let app = TestApp::spawn(config).await;
    let api = Api::new(&app.base);
    (app, api)
}

async fn user(api: &Api) -> String {
    api.register(&unique_email("buyer")).await.text("accessToken")
}

async fn buy(api: &Api, token: &str, package: &str) -> Value {
    let answer = api.post_auth("/api/v1/credits/purchase", token, json!({"packageId": package})).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body
}

/// Delivers a webhook body with the given signature header (none when `None`).
async fn deliver_with(api: &Api, body: &str, signature: Option<&str>) -> (StatusCode, Value) {
    let mut request = api
        .http
        .post(format!("{}/api/v1/webhooks/stripe", api.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    let answer = api.send(request).await;
    (answer.status, answer.body)
}

async fn deliver(api: &Api, body: &str) -> Value {
    let (status, answer) = deliver_with(api, body, Some(&fake::signature(body))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

fn intent_of(stripe: &FakeStripe, purchase: &Value) -> Value {
    stripe
        .created()
        .into_iter()
        .find(|i| i["metadata"]["purchase_id"] == purchase["purchaseId"])
        .expect("the purchase's PaymentIntent")
}

async fn balance(api: &Api, token: &str) -> Value {
    api.get_auth("/api/v1/credits/balance", token).await.body
}

async fn purchase_status(api: &Api, token: &str, id: &str) -> Value {
    api.get_auth(&format!("/api/v1/credits/purchases/{id}"), token).await.body
}

/// Waits until the purchase read model shows `status`.
async fn wait_status(api: &Api, token: &str, id: &str, status: &str) -> Value {
    let seen = eventually(WAIT, || async { purchase_status(api, token, id).await["status"] == status }).await;
    let last = purchase_status(api, token, id).await;
    assert!(seen, "purchase {id} never became {status}: {last}");
    last
}

async fn assert_replay_clean(app: &TestApp) {
    let report = replay::verify(app.state.store(), Arc::new(SystemClock), ReplaySettings { batch_size: 7 })
        .await
        .expect("replay runs");
    assert!(report.clean(), "{report:?}");
}

#[tokio::test]
async fn a_purchase_completes_with_a_signed_success_and_grants_paid_credits() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let packages = api.get("/api/v1/credits/packages").await.body;
        assert_eq!(packages.as_array().map(Vec::len), Some(3), "{packages}");
        assert_eq!(
            packages[2],
            json!({"id": "credits-1200", "name": "1,200 credits", "description": "1,000 credits and 200 bonus for €10",
                   "credits": 1200, "priceEuroCents": 1000, "currency": "eur", "active": true, "sortOrder": 3})
        );
        let token = user(&api).await;
        let started = buy(&api, &token, "credits-1200").await;
        assert_eq!((started["amount"].clone(), started["credits"].clone()), (json!(1000), json!(1200)));
        assert_eq!(
            (started["currency"].clone(), started["status"].clone()),
            (json!("eur"), json!("pending"))
        );
        let intent = intent_of(&stripe, &started);
        assert_eq!(started["clientSecret"], intent["client_secret"]);
        assert!(stripe.refused().is_empty(), "{:?}", stripe.refused());
        let id = started["purchaseId"].as_str().expect("id");
        wait_status(&api, &token, id, "pending").await;

        let answer = deliver(&api, &fake::succeeded("evt_ok", &intent, 1000, "eur")).await;
        assert_eq!(answer, json!({"received": true, "outcome": "applied"}));
        let purchase = wait_status(&api, &token, id, "completed").await;
        assert_eq!(purchase["stripePaymentIntentId"], intent["id"]);
        assert_eq!(purchase["creditsRefunded"], 0);
        let balance = balance(&api, &token).await;
        assert_eq!((balance["balance"].clone(), balance["totalEarned"].clone()), (json!(1200), json!(1350)));
        let lines = api.get_auth("/api/v1/credits/transactions", &token).await.body;
        assert_eq!(lines[0]["type"], "purchase", "{lines}");
        assert_eq!((lines[0]["amount"].clone(), lines[0]["appId"].clone()), (json!(1200), json!("stripe")));
        let events = api.get_auth("/api/v1/auth/security-events", &token).await.body;
        assert!(events.to_string().contains("purchase_completed"), "{events}");
        assert_replay_clean(&app).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn missing_wrong_stale_and_tampered_signatures_are_refused_and_a_rotated_secret_is_accepted() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let token = user(&api).await;
        let started = buy(&api, &token, "credits-100").await;
        let intent = intent_of(&stripe, &started);
        let body = fake::succeeded("evt_sig", &intent, 100, "eur");
        let now = chrono::Utc::now().timestamp();
        let wrong = mana_core_auth::credits::stripe::sign("whsec_not_ours", now, body.as_bytes());
        let stale = mana_core_auth::credits::stripe::sign(fake::WEBHOOK_SECRET, now - 301, body.as_bytes());
        let tampered = body.replace("\"amount_received\":100", "\"amount_received\":101");
        assert_ne!(tampered, body);
        for (case, body, signature) in [
            ("missing", body.as_str(), None),
            ("malformed", body.as_str(), Some("garbage".to_owned())),
            ("wrong", body.as_str(), Some(wrong.clone())),
            ("stale", body.as_str(), Some(stale)),
            ("tampered", tampered.as_str(), Some(fake::signature(&body))),
        ] {
            let (status, answer) = deliver_with(&api, body, signature.as_deref()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {answer}");
            assert_eq!(answer["error"], "INVALID_SIGNATURE", "{case}: {answer}");
        }
        let kinds = "SELECT COUNT(*) FROM events WHERE aggregate_type IN ('stripe_event', 'credit_account') \
                     AND event_type IN ('StripeEventReceived', 'CreditsPurchased')";
        assert_eq!(count(app.state.db(), kinds).await, 0, "a refused webhook changed nothing");
        // Secret rotation: the old secret's signature first, ours as a second v1.
        let ours = fake::signature(&body);
        let (t, v1) = ours.split_once(",v1=").expect("t and v1");
        let rotated = format!("{t},v1={},v1={v1}", wrong.split_once(",v1=").expect("v1").1);
        let (status, answer) = deliver_with(&api, &body, Some(&rotated)).await;
        assert_eq!((status, answer["outcome"].clone()), (StatusCode::OK, json!("applied")), "{answer}");
        app.stop().await;
    }
}

#[tokio::test]
async fn duplicate_and_out_of_order_deliveries_converge() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let token = user(&api).await;
        let started = buy(&api, &token, "credits-1200").await;
        let id = started["purchaseId"].as_str().expect("id").to_owned();
        let intent = intent_of(&stripe, &started);
        // A partial refund before the success: applied once the purchase completes.
        assert_eq!(deliver(&api, &fake::refunded("evt_r1", &intent, 250)).await["outcome"], "applied");
        let success = fake::succeeded("evt_s", &intent, 1000, "eur");
        assert_eq!(deliver(&api, &success).await["outcome"], "applied");
        assert_eq!(deliver(&api, &success).await["outcome"], "no_change", "the same event id twice");
        let late_failure = deliver(&api, &fake::payment_failed("evt_f", &intent)).await;
        assert_eq!(late_failure["outcome"], "no_change", "a failure after the success");
        let purchase = wait_status(&api, &token, &id, "partially_refunded").await;
        assert_eq!(purchase["creditsRefunded"], 300);
        // A larger cumulative refund takes the difference; an older, smaller one nothing.
        assert_eq!(deliver(&api, &fake::refunded("evt_r2", &intent, 500)).await["outcome"], "applied");
        assert_eq!(deliver(&api, &fake::refunded("evt_r0", &intent, 100)).await["outcome"], "no_change");
        let purchase =
            eventually(WAIT, || async { purchase_status(&api, &token, &id).await["creditsRefunded"] == 600 })
                .await;
        assert!(purchase, "600 credits taken back in total");
        assert_eq!(balance(&api, &token).await["balance"], 600);
        assert_replay_clean(&app).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_refund_of_spent_credits_leaves_a_debt_that_limits_spends_to_free_credits_until_a_purchase_fills_it()
 {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let registered = api.register(&unique_email("debtor")).await;
        let token = registered.text("accessToken");
        let user_id = registered.body["user"]["id"].as_str().expect("user id").to_owned();
        let first = buy(&api, &token, "credits-100").await;
        let intent = intent_of(&stripe, &first);
        deliver(&api, &fake::succeeded("evt_a", &intent, 100, "eur")).await;
        let spend = |amount: i64| {
            let (api, token) = (api.clone(), token.clone());
            async move {
                let body = json!({"amount": amount, "appId": "chat", "description": "reply"});
                api.post_auth("/api/v1/credits/use", &token, body).await
            }
        };
        // 150 free, then 80 of the 100 paid.
        assert_eq!(spend(230).await.status, StatusCode::CREATED);
        deliver(&api, &fake::refunded("evt_full", &intent, 100)).await;
        let id = first["purchaseId"].as_str().expect("id");
        wait_status(&api, &token, id, "refunded").await;
        let debt = balance(&api, &token).await;
        assert_eq!((debt["balance"].clone(), debt["freeCreditsRemaining"].clone()), (json!(-80), json!(0)));
        // Free credits only while in debt.
        let operator_email = unique_email("operator");
        api.register(&operator_email).await;
        app.state.auth().change_user(&operator_email, UserChange::SetRole(Role::Admin)).await.expect("role");
        let operator = api.login(&operator_email, PASSWORD).await.text("accessToken");
        let grant = json!({"userId": user_id, "pool": "free", "amount": 10, "reason": "goodwill", "idempotencyKey": "g1"});
        assert_eq!(
            api.post_auth("/api/v1/admin/credits/grant", &operator, grant).await.status,
            StatusCode::CREATED
        );
        let refused = spend(11).await;
        assert_eq!(
            (refused.status, refused.body["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("INSUFFICIENT_CREDITS"))
        );
        assert_eq!(spend(10).await.status, StatusCode::CREATED);
        // The next purchase fills the debt first.
        let second = buy(&api, &token, "credits-500").await;
        deliver(&api, &fake::succeeded("evt_b", &intent_of(&stripe, &second), 500, "eur")).await;
        assert_eq!(balance(&api, &token).await["balance"], 420);
        assert_replay_clean(&app).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn stripe_down_or_slow_answers_502_and_the_purchase_is_failed() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let token = user(&api).await;
        for mode in [Mode::Down, Mode::Slow(Duration::from_secs(3))] {
            stripe.set_mode(mode);
            let answer =
                api.post_auth("/api/v1/credits/purchase", &token, json!({"packageId": "credits-100"})).await;
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{mode:?}: {}", answer.body);
            assert_eq!(answer.body["error"], "PAYMENT_PROVIDER_UNAVAILABLE");
        }
        let failed = eventually(WAIT, || async {
            let list = api.get_auth("/api/v1/credits/purchases", &token).await.body;
            list.as_array().is_some_and(|l| {
                l.len() == 2
                    && l.iter()
                        .all(|p| p["status"] == "failed" && p["failureReason"] == "provider_unavailable")
            })
        })
        .await;
        assert!(failed, "both purchases failed, none left pending");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_retry_under_the_same_key_answers_the_same_purchase_and_another_users_purchase_is_not_visible() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let token = user(&api).await;
        let keyed = |package: &'static str| {
            let (api, token) = (api.clone(), token.clone());
            async move {
                let request = api
                    .http
                    .post(format!("{}/api/v1/credits/purchase", api.base))
                    .bearer_auth(&token)
                    .header("idempotency-key", "buy-1")
                    .json(&json!({"packageId": package}));
                api.send(request).await
            }
        };
        let first = keyed("credits-500").await;
        let again = keyed("credits-500").await;
        assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
        assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
        assert_eq!(first.body, again.body);
        assert_eq!(stripe.created().len(), 1, "one PaymentIntent for both");
        assert_eq!(keyed("credits-100").await.status, StatusCode::CONFLICT);
        let unknown = api.post_auth("/api/v1/credits/purchase", &token, json!({"packageId": "nope"})).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);

        let other = user(&api).await;
        let id = first.body["purchaseId"].as_str().expect("id");
        wait_status(&api, &token, id, "pending").await;
        let answer = api.get_auth(&format!("/api/v1/credits/purchases/{id}"), &other).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(api.get_auth("/api/v1/credits/purchases", &other).await.body, json!([]));
        app.stop().await;
    }
}

#[tokio::test]
async fn fifty_concurrent_deliveries_of_the_same_success_grant_once() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let token = user(&api).await;
        let started = buy(&api, &token, "credits-500").await;
        let body = fake::succeeded("evt_many", &intent_of(&stripe, &started), 500, "eur");
        let deliveries = (0..50).map(|_| {
            let (api, body) = (api.clone(), body.clone());
            tokio::spawn(async move { deliver_with(&api, &body, Some(&fake::signature(&body))).await })
        });
        let answers = futures::future::join_all(deliveries).await;
        let mut applied = 0;
        for answer in answers {
            let (status, body) = answer.expect("delivery task");
            assert_eq!(status, StatusCode::OK, "{body}");
            applied += usize::from(body["outcome"] == "applied");
        }
        assert_eq!(applied, 1);
        let sql = "SELECT COUNT(*) FROM events WHERE event_type = 'CreditsPurchased'";
        assert_eq!(count(app.state.db(), sql).await, 1);
        assert_eq!(balance(&api, &token).await["balance"], 500);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_catalogue_change_does_not_alter_past_purchases() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("packages.json");
        let write = |credits: i64, cents: i64| {
            let text =
                json!([{"id": "p", "name": "P", "credits": credits, "priceEuroCents": cents}]).to_string();
            std::fs::write(&file, text).expect("write");
        };
        let config = |db: &TestDb| -> Config {
            let mut config = db.app_config();
            stripe.configure(&mut config);
            config.payments.packages = mana_core_auth::config::payments::parse_packages(
                &std::fs::read_to_string(&file).expect("read"),
            )
            .expect("packages");
            config
        };
        write(100, 100);
        let app = TestApp::spawn(config(&db)).await;
        let api = Api::new(&app.base);
        let token = user(&api).await;
        let started = buy(&api, &token, "p").await;
        app.stop().await;

        write(150, 200);
        let app = TestApp::spawn(config(&db)).await;
        let api = Api::new(&app.base);
        let packages = api.get("/api/v1/credits/packages").await.body;
        assert_eq!(
            (packages[0]["credits"].clone(), packages[0]["priceEuroCents"].clone()),
            (json!(150), json!(200))
        );
        let published = "SELECT COUNT(*) FROM events WHERE event_type = 'PackagesPublished'";
        assert_eq!(count(app.state.db(), published).await, 2);
        let id = started["purchaseId"].as_str().expect("id");
        let intent = intent_of(&stripe, &started);
        deliver(&api, &fake::succeeded("evt_old", &intent, 100, "eur")).await;
        let purchase = wait_status(&api, &token, id, "completed").await;
        assert_eq!(
            (purchase["credits"].clone(), purchase["priceEuroCents"].clone()),
            (json!(100), json!(100))
        );
        assert_eq!(balance(&api, &token).await["balance"], 100);
        app.stop().await;
    }
}

#[tokio::test]
async fn mismatched_amounts_and_unknown_intents_are_kept_for_review_and_grant_nothing() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let token = user(&api).await;
        let started = buy(&api, &token, "credits-500").await;
        let intent = intent_of(&stripe, &started);
        assert_eq!(
            deliver(&api, &fake::succeeded("evt_m", &intent, 499, "eur")).await["outcome"],
            "mismatch"
        );
        let stranger = json!({"id": "pi_unknown", "amount": 100, "metadata": {}});
        let unknown = deliver(&api, &fake::succeeded("evt_u", &stranger, 100, "eur")).await;
        assert_eq!(unknown["outcome"], "unknown_payment_intent");
        let ignored = deliver(&api, &fake::event("evt_i", "customer.created", json!({"id": "cus_1"}))).await;
        assert_eq!(ignored["outcome"], "ignored");
        assert_eq!(balance(&api, &token).await["balance"], 0);

        let operator_email = unique_email("auditor");
        api.register(&operator_email).await;
        app.state
            .auth()
            .change_user(&operator_email, UserChange::SetRole(Role::Auditor))
            .await
            .expect("role");
        let auditor = api.login(&operator_email, PASSWORD).await.text("accessToken");
        let path = "/api/v1/admin/credits/purchases?status=needs_review";
        let listed = eventually(WAIT, || async {
            let review = api.get_auth(path, &auditor).await.body;
            review["purchases"].as_array().is_some_and(|p| p.len() == 1)
                && review["unknownPaymentIntents"].as_array().is_some_and(|u| u.len() == 1)
        })
        .await;
        let review = api.get_auth(path, &auditor).await.body;
        assert!(listed, "{review}");
        assert_eq!(review["purchases"][0]["id"], started["purchaseId"]);
        assert_eq!(review["unknownPaymentIntents"][0]["stripePaymentIntentId"], "pi_unknown");
        let forbidden = api.get_auth("/api/v1/admin/credits/purchases", &token).await;
        assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_pending_purchase_expires_after_24_hours_and_a_late_success_still_completes_it() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let clock = ManualClock::new(chrono::Utc::now());
        let mut config = db.app_config();
        stripe.configure(&mut config);
        let app = TestApp::spawn_with_clock(config, clock.clone()).await;
        let api = Api::new(&app.base);
        let email = unique_email("late");
        let token = api.register(&email).await.text("accessToken");
        let started = buy(&api, &token, "credits-100").await;
        let id = started["purchaseId"].as_str().expect("id");
        wait_status(&api, &token, id, "pending").await;
        let purchases = app.state.purchases().expect("purchases").clone();
        assert_eq!(purchases.expire_pending().await.expect("expiry"), 0, "not yet due");
        clock.advance(chrono::Duration::hours(24));
        assert_eq!(purchases.expire_pending().await.expect("expiry"), 1);
        let token = api.login(&email, PASSWORD).await.text("accessToken");
        let failed = wait_status(&api, &token, id, "failed").await;
        assert_eq!(failed["failureReason"], "expired");
        // The webhook's signature is checked against the service's clock.
        let body = fake::succeeded("evt_late", &intent_of(&stripe, &started), 100, "eur");
        let signature = mana_core_auth::credits::stripe::sign(
            fake::WEBHOOK_SECRET,
            clock.now().timestamp(),
            body.as_bytes(),
        );
        let (status, answer) = deliver_with(&api, &body, Some(&signature)).await;
        assert_eq!((status, answer["outcome"].clone()), (StatusCode::OK, json!("applied")));
        wait_status(&api, &token, id, "completed").await;
        app.stop().await;
    }
}

#[tokio::test]
async fn without_stripe_keys_packages_are_listed_and_purchases_and_webhooks_answer_503() {
    let db = TestDb::new(ENGINES[1]).await;
    let app = TestApp::spawn(db.app_config()).await;
    let api = Api::new(&app.base);
    assert_eq!(api.get("/api/v1/credits/packages").await.status, StatusCode::OK);
    let token = user(&api).await;
    let answer = api.post_auth("/api/v1/credits/purchase", &token, json!({"packageId": "credits-100"})).await;
    assert_eq!(
        (answer.status, answer.body["error"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("PAYMENTS_NOT_CONFIGURED"))
    );
    let body = fake::event("evt_x", "customer.created", json!({"id": "cus_1"}));
    let (status, _) = deliver_with(&api, &body, Some(&fake::signature(&body))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    app.stop().await;
}

#[tokio::test]
async fn a_dispute_withdrawal_takes_back_its_share_and_a_reinstatement_returns_it_each_once() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let token = user(&api).await;
        let started = buy(&api, &token, "credits-1200").await;
        let id = started["purchaseId"].as_str().expect("id").to_owned();
        let intent = intent_of(&stripe, &started);
        deliver(&api, &fake::succeeded("evt_paid", &intent, 1000, "eur")).await;
        wait_status(&api, &token, &id, "completed").await;

        // Half of the €10 disputed: half of the 1,200 credits taken back, once.
        let withdrawn = fake::dispute("evt_dw", "charge.dispute.funds_withdrawn", "du_1", &intent, 500);
        assert_eq!(deliver(&api, &withdrawn).await["outcome"], "applied");
        assert_eq!(deliver(&api, &withdrawn).await["outcome"], "no_change", "the same event twice");
        let again = fake::dispute("evt_dw2", "charge.dispute.funds_withdrawn", "du_1", &intent, 500);
        assert_eq!(deliver(&api, &again).await["outcome"], "no_change", "the same dispute twice");
        let purchase = wait_status(&api, &token, &id, "partially_refunded").await;
        assert_eq!(purchase["creditsRefunded"], 600);
        let lines = api.get_auth("/api/v1/credits/transactions", &token).await.body;
        assert_eq!(lines[0]["amount"], -600, "{lines}");
        assert_eq!(balance(&api, &token).await["balance"], 600);

        // The dispute won: the credits come back, once; a late withdrawal changes nothing.
        let reinstated = fake::dispute("evt_dr", "charge.dispute.funds_reinstated", "du_1", &intent, 500);
        assert_eq!(deliver(&api, &reinstated).await["outcome"], "applied");
        assert_eq!(deliver(&api, &reinstated).await["outcome"], "no_change", "the same event twice");
        let reinstated_again =
            fake::dispute("evt_dr2", "charge.dispute.funds_reinstated", "du_1", &intent, 500);
        assert_eq!(deliver(&api, &reinstated_again).await["outcome"], "no_change", "reinstated once");
        let late = fake::dispute("evt_dw3", "charge.dispute.funds_withdrawn", "du_1", &intent, 500);
        assert_eq!(deliver(&api, &late).await["outcome"], "no_change", "withdrawn after reinstated");
        let purchase = wait_status(&api, &token, &id, "completed").await;
        assert_eq!(purchase["creditsRefunded"], 0);
        let settled = eventually(WAIT, || async { balance(&api, &token).await["balance"] == 1200 }).await;
        assert!(settled, "the 600 credits returned: {}", balance(&api, &token).await);
        let lines = api.get_auth("/api/v1/credits/transactions", &token).await.body;
        assert_eq!(lines[0]["amount"], 600, "{lines}");
        let sql = "SELECT COUNT(*) FROM events WHERE event_type = 'PurchaseCreditsReversed'";
        assert_eq!(count(app.state.db(), sql).await, 2, "one withdrawal, one reinstatement");
        assert_replay_clean(&app).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_failed_purchase_retried_under_its_key_answers_the_same_failure_and_a_new_key_buys() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let token = user(&api).await;
        let keyed = |key: &'static str| {
            let (api, token) = (api.clone(), token.clone());
            async move {
                let request = api
                    .http
                    .post(format!("{}/api/v1/credits/purchase", api.base))
                    .bearer_auth(&token)
                    .header("idempotency-key", key)
                    .json(&json!({"packageId": "credits-100"}));
                api.send(request).await
            }
        };
        stripe.set_mode(Mode::Down);
        let first = keyed("buy-down").await;
        assert_eq!(
            (first.status, first.body["error"].clone()),
            (StatusCode::BAD_GATEWAY, json!("PAYMENT_PROVIDER_UNAVAILABLE"))
        );
        // Stripe is back, but the key's outcome was a failure: the same failure again, no
        // PaymentIntent, still one failed purchase.
        stripe.set_mode(Mode::Normal);
        let retry = keyed("buy-down").await;
        assert_eq!(
            (retry.status, retry.body["error"].clone()),
            (StatusCode::BAD_GATEWAY, json!("PAYMENT_PROVIDER_UNAVAILABLE")),
            "{}",
            retry.body
        );
        assert!(stripe.created().is_empty(), "no PaymentIntent for a failed key");
        let failed = eventually(WAIT, || async {
            let list = api.get_auth("/api/v1/credits/purchases", &token).await.body;
            list.as_array().is_some_and(|l| l.len() == 1 && l[0]["status"] == "failed")
        })
        .await;
        assert!(failed, "{}", api.get_auth("/api/v1/credits/purchases", &token).await.body);
        // A new key is a new attempt.
        let fresh = keyed("buy-again").await;
        assert_eq!(fresh.status, StatusCode::CREATED, "{}", fresh.body);
        assert_eq!(stripe.created().len(), 1);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_for_an_erased_buyer_still_applies_to_the_books() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let stripe = FakeStripe::start().await;
        let (app, api) = start(&db, &stripe).await;
        let registered = api.register(&unique_email("leaver")).await;
        let token = registered.text("accessToken");
        let user_id = registered.body["user"]["id"].as_str().expect("user id").to_owned();
        let bought = buy(&api, &token, "credits-500").await;
        let intent = intent_of(&stripe, &bought);
        deliver(&api, &fake::succeeded("evt_buy", &intent, 500, "eur")).await;
        let id = bought["purchaseId"].as_str().expect("id").to_owned();
        wait_status(&api, &token, &id, "completed").await;

        // The buyer leaves (GDPR erasure); the paid balance stays on the books.
        let erased = api
            .send(
                api.http
                    .delete(format!("{}/api/v1/auth/account", api.base))
                    .bearer_auth(&token)
                    .json(&json!({"password": PASSWORD})),
            )
            .await;
        assert_eq!(erased.status, StatusCode::OK, "{engine:?}: {}", erased.body);
        let operator_email = unique_email("auditor");
        api.register(&operator_email).await;
        app.state.auth().change_user(&operator_email, UserChange::SetRole(Role::Admin)).await.expect("role");
        let operator = api.login(&operator_email, PASSWORD).await.text("accessToken");
        let balance_of = |api: Api, operator: String, user_id: String| async move {
            api.get_auth(&format!("/api/v1/admin/users/{user_id}/balance"), &operator).await.body["balance"]
                .clone()
        };
        assert_eq!(balance_of(api.clone(), operator.clone(), user_id.clone()).await, json!(500));

        // A partial refund arrives afterwards: it still takes back its share.
        deliver(&api, &fake::refunded("evt_late_refund", &intent, 200)).await;
        let taken = eventually(WAIT, || async {
            balance_of(api.clone(), operator.clone(), user_id.clone()).await == json!(300)
        })
        .await;
        assert!(taken, "{engine:?}: the refund did not apply to the erased buyer's account");
        assert_replay_clean(&app).await;
        app.stop().await;
    }
}
