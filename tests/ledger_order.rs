//! The transaction history follows the ledger, on both engines: listed newest first in the
//! order the account applied its events, so each row's balance before is the next older
//! row's balance after, also after hundreds of concurrent spends; and the recorded time
//! of an aggregate's events never goes backwards, even when a clock does.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb, count};
use mana_core_auth::auth::UserChange;
use mana_core_auth::clock::ManualClock;
use mana_core_auth::events::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Every row of the caller's history, newest first, paged 100 at a time.
async fn history(api: &Api, token: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    loop {
        let path = format!("/api/v1/credits/transactions?limit=100&offset={}", rows.len());
        let page = api.get_auth(&path, token).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let page = page.body.as_array().expect("list").clone();
        if page.is_empty() {
            return rows;
        }
        rows.extend(page);
    }
}

fn created_at(row: &Value) -> DateTime<Utc> {
    row["createdAt"].as_str().and_then(|t| t.parse().ok()).expect("createdAt")
}

/// Asserts the history chains (balance before = the next older row's balance after) and
/// that its times never increase going down.
fn assert_chained(rows: &[Value], what: &str) {
    for (i, pair) in rows.windows(2).enumerate() {
        let (newer, older) = (&pair[0], &pair[1]);
        assert_eq!(
            newer["balanceBefore"],
            older["balanceAfter"],
            "{what}: row {i} ({newer}) does not follow row {} ({older})",
            i + 1
        );
        assert!(created_at(newer) >= created_at(older), "{what}: row {i} is older than the row below it");
    }
}

/// Pairs of consecutive events of one stream whose recorded time goes backwards.
async fn backward_steps(app: &TestApp) -> i64 {
    count(
        app.state.db(),
        "SELECT count(*) FROM events a JOIN events b \
           ON b.aggregate_type = a.aggregate_type AND b.aggregate_id = a.aggregate_id \
          AND b.sequence = a.sequence + 1 \
        WHERE b.recorded_at < a.recorded_at",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_spends_leave_a_history_whose_balances_chain() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let mut config = db.app_config();
        config.credits_signup_bonus = 300;
        // No daily grant: a run crossing midnight would add a line.
        config.credits_daily_free = 0;
        let app = TestApp::spawn(config).await;
        let api = Api::new(&app.base);
        let token = api.register(&unique_email("chain")).await.text("accessToken");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..300 {
            let (api, token) = (api.clone(), token.clone());
            tasks.spawn(async move {
                let body = json!({"amount": 1, "appId": "chat", "description": format!("spend {i}")});
                api.post_auth("/api/v1/credits/use", &token, body).await.status
            });
        }
        while let Some(status) = tasks.join_next().await {
            assert_eq!(status.expect("task"), StatusCode::CREATED, "{engine:?}");
        }
        let rows = history(&api, &token).await;
        assert_eq!(rows.len(), 301, "{engine:?}: the bonus and 300 spends");
        assert_eq!((rows[0]["balanceAfter"].as_i64(), rows[300]["type"].as_str()), (Some(0), Some("bonus")));
        assert_chained(&rows, &format!("{engine:?}"));
        assert_eq!(backward_steps(&app).await, 0, "{engine:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn events_are_never_recorded_before_their_streams_last_event_when_the_clock_goes_back() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let noon = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).single().expect("time");
        let clock = ManualClock::new(noon);
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let admin_email = unique_email("admin");
        api.register(&admin_email).await;
        app.state.auth().change_user(&admin_email, UserChange::SetRole(Role::Admin)).await.expect("role");
        // A role change ends the sessions it precedes: sign in after it.
        clock.advance(Duration::milliseconds(5));
        let admin = api.login(&admin_email, PASSWORD).await.text("accessToken");
        let signed = api.register(&unique_email("clock")).await;
        let (token, user_id) = (signed.text("accessToken"), signed.body["user"]["id"].clone());
        let spend = |description: &'static str| {
            let (api, token) = (api.clone(), token.clone());
            async move {
                let body = json!({"amount": 1, "appId": "chat", "description": description});
                let answer = api.post_auth("/api/v1/credits/use", &token, body).await;
                assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
            }
        };

        clock.advance(Duration::seconds(10));
        let ahead = noon + Duration::milliseconds(5) + Duration::seconds(10);
        spend("ahead").await;
        // This process's clock goes back (as another process's clock may be behind).
        clock.set(noon + Duration::seconds(1));
        spend("cached stream").await;
        let grant =
            json!({"userId": user_id, "amount": 5, "pool": "paid", "reason": "r", "idempotencyKey": "g"});
        assert_eq!(
            api.post_auth("/api/v1/admin/credits/grant", &admin, grant).await.status,
            StatusCode::CREATED
        );
        app.stop().await;

        // A new process behind the clock loads the stream from the store.
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let body = json!({"amount": 1, "appId": "chat", "description": "loaded stream"});
        let answer = api.post_auth("/api/v1/credits/use", &token, body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);

        let rows = history(&api, &token).await;
        let descriptions: Vec<&str> = rows.iter().filter_map(|r| r["description"].as_str()).collect();
        assert_eq!(
            descriptions,
            ["loaded stream", "r", "cached stream", "ahead", "Signup bonus"],
            "{engine:?}"
        );
        assert_chained(&rows, &format!("{engine:?}"));
        assert!(
            rows[..4].iter().all(|r| created_at(r) == ahead),
            "{engine:?}: decided at the stream's last time: {rows:?}"
        );
        assert_eq!(backward_steps(&app).await, 0, "{engine:?}");
        let stream = format!(
            "SELECT count(*) FROM events WHERE aggregate_type = 'credit_account' AND aggregate_id = '{}'",
            user_id.as_str().expect("id")
        );
        assert_eq!(count(app.state.db(), &stream).await, 6, "{engine:?}: opened, bonus, four moves");
        app.stop().await;
    }
}
