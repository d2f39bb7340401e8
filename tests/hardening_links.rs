//! Reset and verification links on both engines: a `redirectTo` cannot carry text into a
//! message, and a reset link stops working once the password changed, a newer link was
//! requested or a reset completed.

mod common;

use chrono::{Duration, Utc};
use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb, count, mail_to, token_in};
use mana_core_auth::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::json;

const NEW_PASSWORD: &str = "an entirely new passphrase";

async fn app_at(db: &TestDb, clock: &ManualClock) -> (TestApp, Api) {
    let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
    let api = Api::new(&app.base);
    (app, api)
}

/// Messages queued and messages delivered so far.
async fn mail_rows(app: &TestApp) -> (i64, i64) {
    let queued = count(app.state.db(), "SELECT count(*) FROM outbox").await;
    let delivered = count(app.state.db(), "SELECT count(*) FROM dev_mailbox").await;
    (queued, delivered)
}

async fn forgot(api: &Api, email: &str, redirect_to: &str) -> common::api::Answer {
    api.post("/api/v1/auth/forgot-password", json!({"email": email, "redirectTo": redirect_to})).await
}

async fn reset(api: &Api, token: &str, password: &str) -> common::api::Answer {
    api.post("/api/v1/auth/reset-password", json!({"token": token, "newPassword": password})).await
}

/// Requests a reset link for `email` and returns its token (the `n`-th reset mail).
async fn reset_link(app: &TestApp, api: &Api, email: &str, n: usize) -> String {
    let asked = api.post("/api/v1/auth/forgot-password", json!({"email": email})).await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.body);
    token_in(&mail_to(app.state.db(), email, "password_reset", n).await)
}

fn assert_invalid_reset_token(answer: &common::api::Answer, what: &str) {
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_RESET_TOKEN")),
        "{what}: {}",
        answer.body
    );
}

#[tokio::test]
async fn a_redirect_to_with_injected_text_or_a_foreign_origin_is_refused_and_queues_no_mail() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let known = unique_email("inject");
        api.register(&known).await;
        mail_to(app.state.db(), &known, "email_verification", 0).await;
        let before = mail_rows(&app).await;

        for bad in [
            "http://localhost:3000/app\n\nYour account was compromised. Call +1 555 0100 now.\n",
            "http://localhost:3000/\0",
            "http://localhost:3000/a b",
            "http://localhost:3000/a\tb",
            "http://localhost:3000/a\rb",
            "http://localhost:3000/a\u{7f}b",
            "javascript:alert(document.cookie)//http://localhost:3000",
            "http://localhost:3001/app",
            "https://localhost:3000.evil.example",
            "http://user@localhost:3000",
            "http://localhost:3000/#@evil.example",
        ] {
            for email in [known.as_str(), "nobody@example.com"] {
                let answer = forgot(&api, email, bad).await;
                assert_eq!(
                    (answer.status, answer.body["error"].as_str()),
                    (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")),
                    "{engine:?}: {bad:?} for {email}: {}",
                    answer.body
                );
                // Only the fields that could carry input: the request id and timestamp are
                // random and may contain "555" by chance.
                let details = format!("{} {}", answer.body["message"], answer.body["path"]);
                assert!(!details.contains("evil") && !details.contains("555"), "input echoed: {details}");
            }
        }
        // A good request afterwards is delivered: anything a refused one had queued would
        // be delivered before it.
        assert_eq!(forgot(&api, &known, "http://localhost:3000").await.status, StatusCode::OK);
        mail_to(app.state.db(), &known, "password_reset", 0).await;
        let (queued, delivered) = mail_rows(&app).await;
        assert_eq!((queued, delivered), (before.0 + 1, before.1 + 1), "{engine:?}: only the good one");
        app.stop().await;
    }
}

#[tokio::test]
async fn an_allowed_redirect_to_with_path_and_query_lands_in_the_mail_re_serialised() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("redirect");
        api.register(&email).await;

        let answer = forgot(&api, &email, "HTTP://LocalHost:8081/app/./welcome/?lang=de&next=%2Fhome").await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
        let body = mail_to(app.state.db(), &email, "password_reset", 0).await;
        let token = token_in(&body);
        let link =
            format!("http://localhost:8081/app/welcome/reset-password?lang=de&next=%2Fhome&token={token}");
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(
            lines,
            [
                "Someone asked to reset the password of your Mana account.",
                "",
                "To choose a new password, open this link within one hour:",
                link.as_str(),
                "",
                "If it was not you, ignore this message; your password stays as it is.",
            ],
            "{engine:?}"
        );
        assert_eq!(reset(&api, &token, NEW_PASSWORD).await.status, StatusCode::OK, "the link works");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_password_change_voids_a_reset_link_taken_before_it() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("changed");
        let access = api.register(&email).await.text("accessToken");
        let token = reset_link(&app, &api, &email, 0).await;

        let changed = api
            .post_auth(
                "/api/v1/auth/change-password",
                &access,
                json!({"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{engine:?}: {}", changed.body);
        assert_invalid_reset_token(&reset(&api, &token, "an attacker's passphrase").await, "after a change");
        clock.advance(Duration::seconds(5));
        assert_eq!(api.login(&email, NEW_PASSWORD).await.status, StatusCode::OK, "{engine:?}: unchanged");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_newer_reset_request_voids_the_earlier_link() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("newer");
        api.register(&email).await;
        let first = reset_link(&app, &api, &email, 0).await;
        let second = reset_link(&app, &api, &email, 1).await;
        assert_ne!(first, second);

        assert_invalid_reset_token(&reset(&api, &first, "an old link's passphrase").await, "older link");
        assert_eq!(reset(&api, &second, NEW_PASSWORD).await.status, StatusCode::OK, "{engine:?}");
        assert_invalid_reset_token(&reset(&api, &first, "an old link's passphrase").await, "after reset");
        clock.advance(Duration::seconds(5));
        assert_eq!(api.login(&email, NEW_PASSWORD).await.status, StatusCode::OK, "{engine:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_completed_reset_voids_the_link_it_used() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("completed");
        api.register(&email).await;
        let token = reset_link(&app, &api, &email, 0).await;
        assert_eq!(reset(&api, &token, NEW_PASSWORD).await.status, StatusCode::OK, "{engine:?}");
        assert_invalid_reset_token(&reset(&api, &token, "a second passphrase").await, "used link");

        clock.advance(Duration::seconds(5));
        let signed = api.login(&email, NEW_PASSWORD).await;
        assert_eq!(signed.status, StatusCode::OK, "{engine:?}: the reset password holds");
        app.stop().await;
    }
}
