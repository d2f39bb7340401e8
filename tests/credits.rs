//! The credit ledger in-process on both engines: signup bonus, daily grants, spends,
//! idempotency, validation, admin operations, projections and their rebuild.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::api::{Answer, Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb, count};
use mana_core_auth::auth::UserChange;
use mana_core_auth::clock::ManualClock;
use mana_core_auth::events::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Noon UTC of a fixed day, so that "tomorrow" is a clock move away.
fn noon() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).single().expect("time")
}

async fn app_at(db: &TestDb, clock: &ManualClock) -> (TestApp, Api) {
    let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
    let api = Api::new(&app.base);
    (app, api)
}

async fn spend(api: &Api, token: &str, body: Value) -> Answer {
    api.post_auth("/api/v1/credits/use", token, body).await
}

async fn balance(api: &Api, token: &str) -> Value {
    let answer = api.get_auth("/api/v1/credits/balance", token).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

async fn transactions(api: &Api, token: &str) -> Vec<Value> {
    api.get_auth("/api/v1/credits/transactions?limit=100", token).await.body.as_array().expect("list").clone()
}

/// A signed-in user with the given role.
async fn operator(app: &TestApp, api: &Api, clock: &ManualClock, role: Role) -> String {
    let email = unique_email("operator");
    api.register(&email).await;
    app.state.auth().change_user(&email, UserChange::SetRole(role)).await.expect("role");
    clock.advance(Duration::milliseconds(5));
    api.login(&email, PASSWORD).await.text("accessToken")
}

#[tokio::test]
async fn registration_grants_the_signup_bonus_as_a_ledger_line() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(noon());
        let (app, api) = app_at(&db, &clock).await;
        let token = api.register(&unique_email("bonus")).await.text("accessToken");
        assert_eq!(
            balance(&api, &token).await,
            json!({"balance": 0, "freeCreditsRemaining": 150, "totalEarned": 150, "totalSpent": 0, "dailyFreeCredits": 5})
        );
        let lines = transactions(&api, &token).await;
        assert_eq!(lines.len(), 1, "{engine:?}: the registration day counts as granted: {lines:?}");
        let line = &lines[0];
        assert_eq!((line["type"].as_str(), line["amount"].as_i64()), (Some("bonus"), Some(150)));
        assert_eq!((line["balanceBefore"].as_i64(), line["balanceAfter"].as_i64()), (Some(0), Some(150)));
        assert_eq!(
            (line["appId"].as_str(), line["description"].as_str()),
            (Some("system"), Some("Signup bonus"))
        );
        assert_eq!(line["status"], "completed");
        app.stop().await;
    }
}

#[tokio::test]
async fn spending_takes_free_credits_before_paid_ones_with_exact_balances() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(noon());
        let (app, api) = app_at(&db, &clock).await;
        let admin = operator(&app, &api, &clock, Role::Admin).await;
        let signed = api.register(&unique_email("split")).await;
        let (token, user_id) = (signed.text("accessToken"), signed.body["user"]["id"].clone());
        let granted = api
            .post_auth("/api/v1/admin/credits/grant", &admin, json!({"userId": user_id, "amount": 20, "pool": "paid", "reason": "purchase fix", "idempotencyKey": "g1"}))
            .await;
        assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.body);
        assert_eq!(granted.body["transaction"]["type"], "adjustment");

        let spent = spend(
            &api,
            &token,
            json!({"amount": 160, "appId": "chat", "description": "AI chat", "metadata": {"model": "x"}}),
        )
        .await;
        assert_eq!(spent.status, StatusCode::CREATED, "{engine:?}: {}", spent.body);
        let t = &spent.body["transaction"];
        assert_eq!((t["type"].as_str(), t["amount"].as_i64()), (Some("usage"), Some(-160)));
        assert_eq!((t["balanceBefore"].as_i64(), t["balanceAfter"].as_i64()), (Some(170), Some(10)));
        assert_eq!((t["appId"].as_str(), t["metadata"]["model"].as_str()), (Some("chat"), Some("x")));
        assert_eq!(
            spent.body["newBalance"],
            json!({"balance": 10, "freeCreditsRemaining": 0, "totalSpent": 160})
        );
        assert_eq!(
            balance(&api, &token).await,
            json!({"balance": 10, "freeCreditsRemaining": 0, "totalEarned": 170, "totalSpent": 160, "dailyFreeCredits": 5})
        );
        let short = spend(&api, &token, json!({"amount": 11, "appId": "chat", "description": "x"})).await;
        assert_eq!(
            (short.status, short.body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("INSUFFICIENT_CREDITS"))
        );
        assert!(short.body["message"].as_str().expect("text").contains("10 available"), "{}", short.body);

        let lines = transactions(&api, &token).await;
        assert_eq!(lines[0]["type"], "usage", "newest first");
        assert_eq!(lines.len(), 3);
        let used = count(app.state.db(), "SELECT credits_used FROM usage_stats WHERE app_id = 'chat'").await;
        assert_eq!(used, 160);
        app.stop().await;
    }
}

#[tokio::test]
async fn an_idempotency_key_replays_its_request_and_refuses_others() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(noon());
        let (app, api) = app_at(&db, &clock).await;
        let token = api.register(&unique_email("idem")).await.text("accessToken");
        let body = json!({"amount": 10, "appId": "chat", "description": "d", "metadata": {"a": 1, "b": 2}, "idempotencyKey": "k-1"});
        let first = spend(&api, &token, body.clone()).await;
        assert_eq!(first.status, StatusCode::CREATED);
        assert!(!first.headers.contains_key("idempotent-replayed"));
        let reordered = json!({"idempotencyKey": "k-1", "metadata": {"b": 2, "a": 1}, "description": "d", "appId": "chat", "amount": 10});
        let again = spend(&api, &token, reordered).await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.headers["idempotent-replayed"], "true");
        assert_eq!(again.body, first.body, "{engine:?}: the original answer, exactly");
        assert_eq!(balance(&api, &token).await["freeCreditsRemaining"], 140, "moved once");

        for (field, value) in [
            ("amount", json!(11)),
            ("appId", json!("other")),
            ("description", json!("e")),
            ("metadata", json!({"a": 1})),
        ] {
            let mut changed = body.clone();
            changed[field] = value;
            let refused = spend(&api, &token, changed).await;
            assert_eq!(
                (refused.status, refused.body["error"].as_str()),
                (StatusCode::CONFLICT, Some("IDEMPOTENCY_KEY_REUSED")),
                "{field}"
            );
        }
        let header = api
            .send(
                api.http
                    .post(format!("{}/api/v1/credits/use", api.base))
                    .bearer_auth(&token)
                    .header("idempotency-key", "k-2")
                    .json(&json!({"amount": 1, "appId": "chat", "description": "h"})),
            )
            .await;
        assert_eq!(header.status, StatusCode::CREATED);
        assert_eq!(header.body["transaction"]["idempotencyKey"], "k-2");
        let both = api
            .send(
                api.http
                    .post(format!("{}/api/v1/credits/use", api.base))
                    .bearer_auth(&token)
                    .header("idempotency-key", "k-3")
                    .json(
                        &json!({"amount": 1, "appId": "chat", "description": "h", "idempotencyKey": "k-4"}),
                    ),
            )
            .await;
        assert_eq!(
            (both.status, both.body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED"))
        );

        // Another user's identical key is unrelated.
        let other = api.register(&unique_email("other")).await.text("accessToken");
        let theirs = spend(&api, &other, body.clone()).await;
        assert_eq!(theirs.status, StatusCode::CREATED);
        assert_ne!(theirs.body["transaction"]["id"], first.body["transaction"]["id"]);
        assert!(!theirs.headers.contains_key("idempotent-replayed"));

        // A refused request is not recorded against its key.
        let big = json!({"amount": 500, "appId": "chat", "description": "big", "idempotencyKey": "k-5"});
        assert_eq!(spend(&api, &token, big.clone()).await.body["error"], "INSUFFICIENT_CREDITS");
        let admin = operator(&app, &api, &clock, Role::Service).await;
        let user_id = api.get_auth("/api/v1/auth/session", &token).await.body["user"]["id"].clone();
        api.post_auth("/api/v1/admin/credits/grant", &admin, json!({"userId": user_id, "amount": 1000, "pool": "free", "reason": "promo", "idempotencyKey": "p"}))
            .await;
        let retried = spend(&api, &token, big).await;
        assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
        assert!(!retried.headers.contains_key("idempotent-replayed"));
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_grant_happens_once_a_day_under_concurrent_first_touches_without_catch_up() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(noon());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("daily");
        let token = api.register(&email).await.text("accessToken");
        spend(&api, &token, json!({"amount": 150, "appId": "a", "description": "all"})).await;
        assert_eq!(
            spend(&api, &token, json!({"amount": 1, "appId": "a", "description": "x"})).await.body["error"],
            "INSUFFICIENT_CREDITS"
        );

        clock.advance(Duration::days(1));
        // A day later the access token has expired: sign in again.
        let token = api.login(&email, PASSWORD).await.text("accessToken");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (api, token) = (api.clone(), token.clone());
            tasks.spawn(async move {
                if i % 2 == 0 {
                    api.get_auth("/api/v1/credits/balance", &token).await.status
                } else {
                    spend(&api, &token, json!({"amount": 1, "appId": "a", "description": "first touch"}))
                        .await
                        .status
                }
            });
        }
        while let Some(status) = tasks.join_next().await {
            let status = status.expect("task");
            assert!(status.is_success() || status == StatusCode::BAD_REQUEST, "{status}");
        }
        let grants = transactions(&api, &token)
            .await
            .into_iter()
            .filter(|t| t["description"] == "Daily free credits")
            .count();
        assert_eq!(grants, 1, "{engine:?}: exactly one grant for the day");
        let spent_today = transactions(&api, &token)
            .await
            .into_iter()
            .filter(|t| t["description"] == "first touch")
            .count();
        assert_eq!(spent_today, 5, "a user at zero spends today's credits, and no more");

        clock.advance(Duration::days(3));
        let token = api.login(&email, PASSWORD).await.text("accessToken");
        assert_eq!(balance(&api, &token).await["freeCreditsRemaining"], 5, "days missed are not caught up");
        assert_eq!(balance(&api, &token).await["freeCreditsRemaining"], 5);
        app.stop().await;
    }
}

#[tokio::test]
async fn every_validation_rule_answers_400_and_writes_nothing() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(noon());
        let (app, api) = app_at(&db, &clock).await;
        let token = api.register(&unique_email("rules")).await.text("accessToken");
        let before = count(app.state.db(), "SELECT count(*) FROM events").await;
        let base = json!({"amount": 1, "appId": "chat", "description": "d"});
        let cases = [
            ("amount", json!("3")),
            ("amount", json!(1.5)),
            ("amount", json!(0)),
            ("amount", json!(-1)),
            ("amount", json!(1_000_001)),
            ("appId", json!("")),
            ("appId", json!("has space")),
            ("appId", json!("x".repeat(65))),
            ("description", json!("d".repeat(501))),
            ("metadata", json!([1, 2])),
            ("metadata", json!({"big": "x".repeat(4100)})),
            ("idempotencyKey", json!("")),
            ("unknownField", json!(true)),
        ];
        for (field, value) in cases {
            let mut body = base.clone();
            body[field] = value;
            let answer = spend(&api, &token, body).await;
            assert_eq!(
                (answer.status, answer.body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")),
                "{field}: {}",
                answer.body
            );
            assert!(answer.body["message"].is_array());
        }
        for missing in ["amount", "appId", "description"] {
            let mut body = base.clone();
            body.as_object_mut().expect("object").remove(missing);
            assert_eq!(spend(&api, &token, body).await.status, StatusCode::BAD_REQUEST, "{missing}");
        }
        for bad in ["limit=0", "limit=101", "offset=-1", "limit=abc"] {
            let answer = api.get_auth(&format!("/api/v1/credits/transactions?{bad}"), &token).await;
            assert_eq!(answer.body["error"], "VALIDATION_FAILED", "{bad}");
        }
        assert_eq!(
            count(app.state.db(), "SELECT count(*) FROM events").await,
            before,
            "{engine:?}: nothing written"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn admin_operations_need_an_operator_and_refunds_never_exceed_the_spend() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(noon());
        let (app, api) = app_at(&db, &clock).await;
        let admin = operator(&app, &api, &clock, Role::Admin).await;
        let signed = api.register(&unique_email("refund")).await;
        let (token, user_id) = (signed.text("accessToken"), signed.body["user"]["id"].clone());
        let grant =
            json!({"userId": user_id, "amount": 50, "pool": "paid", "reason": "r", "idempotencyKey": "g"});
        let refused = api.post_auth("/api/v1/admin/credits/grant", &token, grant.clone()).await;
        assert_eq!(
            (refused.status, refused.body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("FORBIDDEN"))
        );
        assert_eq!(
            api.post_auth("/api/v1/admin/credits/grant", &admin, grant.clone()).await.status,
            StatusCode::CREATED
        );
        let replay = api.post_auth("/api/v1/admin/credits/grant", &admin, grant).await;
        assert_eq!(replay.headers["idempotent-replayed"], "true");
        let nobody =
            json!({"userId": "nobody", "amount": 5, "pool": "free", "reason": "r", "idempotencyKey": "n"});
        assert_eq!(
            api.post_auth("/api/v1/admin/credits/grant", &admin, nobody).await.status,
            StatusCode::NOT_FOUND
        );

        let below = json!({"userId": user_id, "amount": -51, "pool": "paid", "reason": "fix", "idempotencyKey": "a1"});
        assert_eq!(
            api.post_auth("/api/v1/admin/credits/adjust", &admin, below).await.body["error"],
            "INSUFFICIENT_CREDITS"
        );
        let down = json!({"userId": user_id, "amount": -10, "pool": "paid", "reason": "fix", "idempotencyKey": "a2"});
        let adjusted = api.post_auth("/api/v1/admin/credits/adjust", &admin, down).await;
        assert_eq!(
            (adjusted.status, adjusted.body["transaction"]["amount"].as_i64()),
            (StatusCode::CREATED, Some(-10))
        );

        // 150 free + 40 paid; spend 170 = 150 free + 20 paid.
        let spent =
            spend(&api, &token, json!({"amount": 170, "appId": "pic", "description": "render"})).await;
        let spend_id = spent.body["transaction"]["id"].clone();
        let refund = |amount: Value, key: &str| json!({"transactionId": spend_id, "amount": amount, "reason": "render failed", "idempotencyKey": key});
        let first = api.post_auth("/api/v1/admin/credits/refund", &admin, refund(json!(30), "r1")).await;
        assert_eq!(first.status, StatusCode::CREATED, "{engine:?}: {}", first.body);
        assert_eq!(first.body["transaction"]["type"], "refund");
        assert_eq!(balance(&api, &token).await["balance"], 40, "paid first: 20 back to paid, 10 to free");
        assert_eq!(balance(&api, &token).await["freeCreditsRemaining"], 10);
        let over = api.post_auth("/api/v1/admin/credits/refund", &admin, refund(json!(141), "r2")).await;
        assert_eq!(
            (over.status, over.body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("REFUND_EXCEEDS_SPEND"))
        );
        let rest = api.post_auth("/api/v1/admin/credits/refund", &admin, refund(Value::Null, "r3")).await;
        assert_eq!(rest.body["transaction"]["amount"], 140);
        let unknown = json!({"transactionId": "nope", "reason": "x", "idempotencyKey": "r4"});
        assert_eq!(
            api.post_auth("/api/v1/admin/credits/refund", &admin, unknown).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(balance(&api, &token).await["totalSpent"], 0);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_spend_older_than_ninety_days_cannot_be_refunded_even_when_its_account_was_quiet() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(noon());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("quiet");
        let token = api.register(&email).await.text("accessToken");
        let render = json!({"amount": 10, "appId": "pic", "description": "render"});
        let old = spend(&api, &token, render.clone()).await.body["transaction"]["id"].clone();
        clock.advance(Duration::days(2));
        let token = api.login(&email, PASSWORD).await.text("accessToken");
        let recent = spend(&api, &token, render).await.body["transaction"]["id"].clone();
        assert!(old.is_string() && recent.is_string(), "{engine:?}: two spends: {old} {recent}");
        // Nothing happens on the account from now on: the old spend ages out on the clock alone.
        clock.advance(Duration::days(89));
        let admin = operator(&app, &api, &clock, Role::Admin).await;
        let refund =
            |id: &Value, key: &str| json!({"transactionId": id, "reason": "late", "idempotencyKey": key});
        let late = api.post_auth("/api/v1/admin/credits/refund", &admin, refund(&old, "r1")).await;
        assert_eq!(late.status, StatusCode::NOT_FOUND, "{engine:?}: 91 days old: {}", late.body);
        let in_time = api.post_auth("/api/v1/admin/credits/refund", &admin, refund(&recent, "r2")).await;
        assert_eq!(in_time.status, StatusCode::CREATED, "{engine:?}: 89 days old: {}", in_time.body);
        let token = api.login(&email, PASSWORD).await.text("accessToken");
        assert_eq!(
            balance(&api, &token).await["totalSpent"],
            10,
            "{engine:?}: only the recent spend came back"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn rebuilding_the_credit_projections_yields_the_same_tables() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(noon());
        let (app, api) = app_at(&db, &clock).await;
        for i in 0..3 {
            let email = unique_email(&format!("rebuild{i}"));
            let token = api.register(&email).await.text("accessToken");
            for j in 0..4 {
                spend(&api, &token, json!({"amount": j + 1, "appId": format!("app{}", j % 2), "description": "x", "idempotencyKey": format!("k{j}")})).await;
            }
            clock.advance(Duration::days(1));
            balance(&api, &api.login(&email, PASSWORD).await.text("accessToken")).await;
        }
        let dump = |sql: &'static str| {
            let db = app.state.db().clone();
            async move {
                match &db {
                    mana_core_auth::db::Db::Postgres(pool) => {
                        sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await
                    }
                    mana_core_auth::db::Db::Sqlite { reader, .. } => {
                        sqlx::query_scalar::<_, String>(sql).fetch_all(reader).await
                    }
                }
                .expect("dump")
            }
        };
        let queries = [
            "SELECT user_id || '/' || balance || '/' || free_credits_remaining || '/' || total_earned || '/' || total_spent FROM balances ORDER BY user_id",
            "SELECT id || '/' || type || '/' || amount || '/' || balance_before || '/' || balance_after || '/' || app_id FROM credit_transactions ORDER BY id",
            "SELECT user_id || '/' || app_id || '/' || credits_used || '/' || spends FROM usage_stats ORDER BY user_id, app_id",
        ];
        let mut live = Vec::new();
        for sql in queries {
            live.push(dump(sql).await);
        }
        assert_eq!(live[1].len(), 3 * (1 + 4 + 1), "{engine:?}: bonus, four spends, a daily grant each");
        for name in ["balances", "credit_transactions", "usage_stats"] {
            app.state.projector().rebuild(name).await.expect("rebuild");
        }
        for (sql, before) in queries.iter().zip(live) {
            assert_eq!(dump(sql).await, before, "{engine:?}: {sql}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn admin_requests_name_every_bad_field_in_order_and_write_nothing() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(noon());
        let (app, api) = app_at(&db, &clock).await;
        let admin = operator(&app, &api, &clock, Role::Admin).await;
        let user = api.register(&unique_email("target")).await;
        let user_id = user.body["user"]["id"].clone();
        let before = count(app.state.db(), "SELECT count(*) FROM events").await;
        let cases = [
            (
                "grant",
                json!({}),
                json!([
                    "amount is required",
                    "userId is required",
                    "pool is required (free or paid)",
                    "reason is required (at most 500 characters)",
                    "idempotencyKey is required"
                ]),
            ),
            (
                "adjust",
                json!({"userId": user_id, "amount": 0, "pool": "paid", "reason": " ", "idempotencyKey": "k"}),
                json!([
                    "amount must be a non-zero integer from -1000000 to 1000000",
                    "reason is required (at most 500 characters)"
                ]),
            ),
            (
                "refund",
                json!({"amount": -1, "transactionId": "", "reason": "r", "idempotencyKey": " "}),
                json!([
                    "amount must be an integer from 1 to 1000000",
                    "transactionId is required",
                    "idempotencyKey must be 1 to 255 printable ASCII characters"
                ]),
            ),
        ];
        for (operation, body, messages) in cases {
            let answer = api.post_auth(&format!("/api/v1/admin/credits/{operation}"), &admin, body).await;
            assert_eq!(
                (answer.status, answer.body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")),
                "{engine:?} {operation}: {}",
                answer.body
            );
            assert_eq!(answer.body["message"], messages, "{engine:?} {operation}");
        }
        let good =
            json!({"userId": user_id, "amount": 5, "pool": "free", "reason": "r", "idempotencyKey": "k"});
        let refused = api.post_auth("/api/v1/admin/credits/grant", &user.text("accessToken"), good).await;
        assert_eq!(
            (refused.status, refused.body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("FORBIDDEN")),
            "{engine:?}: a user token is no operator"
        );
        assert_eq!(
            count(app.state.db(), "SELECT count(*) FROM events").await,
            before,
            "{engine:?}: nothing written"
        );
        app.stop().await;
    }
}
