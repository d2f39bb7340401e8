//! Admin idempotency keys are scoped to the operator, on both engines: the same request
//! again (also many at once, also after a restart, also over two processes) answers the
//! first result with `Idempotent-Replayed: true` and moves credits once; the key for
//! another target, another amount or another operation is refused with 409; another
//! operator's identical key is unrelated.

mod common;

use std::collections::{HashMap, HashSet};

use common::api::{Answer, Api, PASSWORD, unique_email};
use common::{ENGINES, ServerProcess, TestApp, TestDb, count};
use mana_core_auth::auth::UserChange;
use mana_core_auth::events::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

const GRANT: &str = "/api/v1/admin/credits/grant";

/// A signed-in user with the given role.
async fn operator(app: &TestApp, api: &Api, role: Role) -> String {
    let email = unique_email("operator");
    api.register(&email).await;
    app.state.auth().change_user(&email, UserChange::SetRole(role)).await.expect("role");
    api.login(&email, PASSWORD).await.text("accessToken")
}

/// A new user: (token, user id).
async fn user(api: &Api) -> (String, String) {
    let signed = api.register(&unique_email("target")).await;
    (signed.text("accessToken"), signed.body["user"]["id"].as_str().expect("id").to_owned())
}

async fn paid_balance(api: &Api, token: &str) -> i64 {
    api.get_auth("/api/v1/credits/balance", token).await.body["balance"].as_i64().expect("balance")
}

async fn events(app: &TestApp) -> i64 {
    count(app.state.db(), "SELECT count(*) FROM events").await
}

fn grant(user_id: &str, amount: i64, key: &str) -> Value {
    json!({"userId": user_id, "amount": amount, "pool": "paid", "reason": "support", "idempotencyKey": key})
}

fn assert_key_reused(answer: &Answer, what: &str) {
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("IDEMPOTENCY_KEY_REUSED")),
        "{what}: {}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_identical_grants_at_once_move_credits_once_and_nine_answer_as_replays() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let admin = operator(&app, &api, Role::Admin).await;
        let (token, user_id) = user(&api).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (api, admin, body) = (api.clone(), admin.clone(), grant(&user_id, 25, "once"));
            tasks.spawn(async move { api.post_auth(GRANT, &admin, body).await });
        }
        let mut ids = HashSet::new();
        let mut replays = 0;
        let mut bodies = Vec::new();
        while let Some(answer) = tasks.join_next().await {
            let answer = answer.expect("task");
            assert_eq!(answer.status, StatusCode::CREATED, "{engine:?}: {}", answer.body);
            ids.insert(answer.body["transaction"]["id"].as_str().expect("id").to_owned());
            replays += usize::from(answer.headers.get("idempotent-replayed").is_some_and(|v| v == "true"));
            bodies.push(answer.body);
        }
        assert_eq!(ids.len(), 1, "{engine:?}: every answer is the one transaction");
        assert_eq!(replays, 9, "{engine:?}: all but the first are replays");
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{engine:?}: the same body every time");
        assert_eq!(paid_balance(&api, &token).await, 25, "{engine:?}: granted once");

        let later = api.post_auth(GRANT, &admin, grant(&user_id, 25, "once")).await;
        assert_eq!(later.headers["idempotent-replayed"], "true");
        assert_eq!(later.body, bodies[0], "{engine:?}: a later retry answers the first result");
        let adjustments = api.get_auth("/api/v1/credits/transactions", &token).await.body;
        let granted =
            adjustments.as_array().expect("list").iter().filter(|t| t["type"] == "adjustment").count();
        assert_eq!(granted, 1, "{engine:?}: one ledger line");
        app.stop().await;
    }
}

#[tokio::test]
async fn an_operators_key_used_for_another_user_amount_or_operation_is_refused_and_writes_nothing() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let admin = operator(&app, &api, Role::Service).await;
        let (first_token, first) = user(&api).await;
        let (second_token, second) = user(&api).await;
        let granted = api.post_auth(GRANT, &admin, grant(&first, 10, "k")).await;
        assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.body);
        let spent = api
            .post_auth(
                "/api/v1/credits/use",
                &second_token,
                json!({"amount": 3, "appId": "chat", "description": "x"}),
            )
            .await;
        assert_eq!(spent.status, StatusCode::CREATED, "{}", spent.body);
        let before = events(&app).await;

        assert_key_reused(&api.post_auth(GRANT, &admin, grant(&second, 10, "k")).await, "another user");
        assert_key_reused(&api.post_auth(GRANT, &admin, grant(&first, 11, "k")).await, "another amount");
        let adjust = api.post_auth("/api/v1/admin/credits/adjust", &admin, grant(&first, 10, "k")).await;
        assert_key_reused(&adjust, "the same body as an adjustment");
        let refund = json!({"transactionId": spent.body["transaction"]["id"], "reason": "support", "idempotencyKey": "k"});
        assert_key_reused(&api.post_auth("/api/v1/admin/credits/refund", &admin, refund).await, "a refund");

        assert_eq!(events(&app).await, before, "{engine:?}: a refused request writes nothing");
        assert_eq!(paid_balance(&api, &second_token).await, 0, "{engine:?}: the second user got nothing");
        assert_eq!(paid_balance(&api, &first_token).await, 10, "{engine:?}: the first grant only");

        // The key still answers its own request.
        let again = api.post_auth(GRANT, &admin, grant(&first, 10, "k")).await;
        assert_eq!(again.headers["idempotent-replayed"], "true");
        assert_eq!(again.body, granted.body);
        app.stop().await;
    }
}

#[tokio::test]
async fn two_operators_using_the_same_key_act_independently() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let (one, two) = (operator(&app, &api, Role::Admin).await, operator(&app, &api, Role::Service).await);
        let (token, user_id) = user(&api).await;
        let first = api.post_auth(GRANT, &one, grant(&user_id, 7, "shared")).await;
        let second = api.post_auth(GRANT, &two, grant(&user_id, 7, "shared")).await;
        for answer in [&first, &second] {
            assert_eq!(answer.status, StatusCode::CREATED, "{engine:?}: {}", answer.body);
            assert!(!answer.headers.contains_key("idempotent-replayed"), "{engine:?}");
        }
        assert_ne!(first.body["transaction"]["id"], second.body["transaction"]["id"]);
        assert_eq!(paid_balance(&api, &token).await, 14, "{engine:?}: both grants");
        // Each operator may also reuse the key for nothing else.
        assert_key_reused(&api.post_auth(GRANT, &two, grant(&user_id, 8, "shared")).await, "operator two");
        app.stop().await;
    }
}

#[tokio::test]
async fn an_operators_key_holds_across_a_restart() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let admin = operator(&app, &api, Role::Admin).await;
        let (token, first) = user(&api).await;
        let (_, second) = user(&api).await;
        let granted = api.post_auth(GRANT, &admin, grant(&first, 5, "restart")).await;
        assert_eq!(granted.status, StatusCode::CREATED);
        app.stop().await;

        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let again = api.post_auth(GRANT, &admin, grant(&first, 5, "restart")).await;
        assert_eq!((again.status, &again.body), (StatusCode::CREATED, &granted.body), "{engine:?}");
        assert_eq!(again.headers["idempotent-replayed"], "true");
        assert_key_reused(&api.post_auth(GRANT, &admin, grant(&second, 5, "restart")).await, "after restart");
        assert_eq!(paid_balance(&api, &token).await, 5, "{engine:?}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_over_two_processes_grant_once_and_refuse_another_target() {
    let db = TestDb::postgres().await;
    let app = TestApp::spawn(db.app_config()).await;
    let env = HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("KEY_ENCRYPTION_SECRET".to_owned(), db.secret()),
        ("RATE_LIMITS".to_owned(), "off".to_owned()),
    ]);
    let server = ServerProcess::spawn(&env);
    let apis = [Api::new(&app.base), Api::new(&server.base)];
    let admin = operator(&app, &apis[0], Role::Admin).await;
    let (token, first) = user(&apis[0]).await;
    let (_, second) = user(&apis[0]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        // Most retry the grant to the first user; every fifth targets the second user.
        let target = if i % 5 == 4 { second.clone() } else { first.clone() };
        let (api, admin) = (apis[i % 2].clone(), admin.clone());
        tasks.spawn(async move {
            (target.clone(), api.post_auth(GRANT, &admin, grant(&target, 9, "multi")).await)
        });
    }
    let mut outcomes: HashMap<(bool, u16, bool), usize> = HashMap::new();
    while let Some(outcome) = tasks.join_next().await {
        let (target, answer) = outcome.expect("task");
        let replayed = answer.headers.contains_key("idempotent-replayed");
        *outcomes.entry((target == first, answer.status.as_u16(), replayed)).or_default() += 1;
    }
    // Whichever target the key met first wins; the other target is refused every time.
    let first_won = outcomes.contains_key(&(true, 201, false));
    let expected = if first_won {
        HashMap::from([((true, 201, false), 1), ((true, 201, true), 15), ((false, 409, false), 4)])
    } else {
        HashMap::from([((false, 201, false), 1), ((false, 201, true), 3), ((true, 409, false), 16)])
    };
    assert_eq!(outcomes, expected, "logs:\n{}", server.log_text());
    assert_eq!(paid_balance(&apis[1], &token).await, if first_won { 9 } else { 0 });
    app.stop().await;
}
