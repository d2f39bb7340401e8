//! Account protection in-process on both engines: brute-force lockout, password change
//! and reset through the outbox, e-mail verification.

mod common;

use chrono::{Duration, Utc};
use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb, count, mail_to, token_in};
use mana_core_auth::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{Value, json};

const NEW_PASSWORD: &str = "an entirely new passphrase";

async fn app_at(db: &TestDb, clock: &ManualClock) -> (TestApp, Api) {
    let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
    let api = Api::new(&app.base);
    (app, api)
}

fn kinds(events: &Value) -> Vec<String> {
    events
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["eventType"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_wrong_password_storm_checks_one_password_at_a_time_and_the_threshold_locks_strangers_out()
{
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("storm");
        let user_id = api.register(&email).await.body["user"]["id"].as_str().expect("id").to_owned();
        let stranger = |i: u8| common::api_from(&api.base, std::net::IpAddr::from([127, 0, 1, i]));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50u8 {
            let api = stranger(i + 1);
            let email = email.clone();
            tasks.spawn(async move { api.login(&email, "a wrong password!").await });
        }
        while let Some(answer) = tasks.join_next().await {
            let answer = answer.expect("task");
            // Checked and wrong, or refused without a check (never counted).
            let expected = match answer.status {
                StatusCode::UNAUTHORIZED => "INVALID_CREDENTIALS",
                _ => "LOGIN_THROTTLED",
            };
            assert_eq!(answer.body["error"].as_str(), Some(expected), "{engine:?}: {}", answer.body);
        }
        app.state.projector().catch_up().await.expect("project");
        let checked_sql = "SELECT count(*) FROM security_events WHERE event_type = 'login_failure' \
                           AND CAST(metadata AS TEXT) LIKE '%bad_password%'";
        assert_eq!(
            count(app.state.db(), checked_sql).await,
            1,
            "{engine:?}: one check for 50 parallel guesses"
        );
        // Each later guess waits out the delay; the 20th failed check locks strangers out.
        for i in 0..19u8 {
            clock.advance(Duration::seconds(11));
            let answer = stranger(100 + i).login(&email, "wrong again!").await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{engine:?}: {}", answer.body);
        }
        let right = stranger(200).login(&email, PASSWORD).await;
        assert_eq!(
            (right.status, right.body["error"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("LOGIN_THROTTLED")),
            "{engine:?}: the right password of a stranger is refused while locked, never 401"
        );
        app.state.projector().catch_up().await.expect("project");
        let locked = count(app.state.db(), &format!("SELECT count(*) FROM security_events WHERE event_type = 'account_locked' AND user_id = '{user_id}'")).await;
        assert_eq!(locked, 1);

        clock.advance(Duration::minutes(16));
        let after = stranger(200).login(&email, PASSWORD).await;
        assert_eq!(after.status, StatusCode::OK, "{engine:?}: the lock expires: {}", after.body);
        let failures = stranger(201).login(&email, "wrong again, one").await;
        assert_eq!(failures.status, StatusCode::UNAUTHORIZED);
        app.stop().await;
    }
}

#[tokio::test]
async fn failed_logins_add_a_growing_delay_and_a_success_resets_it() {
    let db = TestDb::sqlite();
    let clock = ManualClock::new(Utc::now());
    let (app, api) = app_at(&db, &clock).await;
    let email = unique_email("delay");
    api.register(&email).await;
    let pool = app.state.auth().passwords().clone();
    assert_eq!(api.login(&email, "wrong password 1").await.status, StatusCode::UNAUTHORIZED);
    let before = pool.jobs_started();
    let early = api.login(&email, PASSWORD).await;
    assert_eq!(
        (early.status, early.body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("LOGIN_THROTTLED")),
        "within the 1 s delay"
    );
    assert_eq!(pool.jobs_started(), before, "refused without checking the password");
    clock.advance(Duration::seconds(1));
    assert_eq!(api.login(&email, "wrong password 2").await.status, StatusCode::UNAUTHORIZED);
    clock.advance(Duration::seconds(2));
    assert_eq!(
        api.login(&email, PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "3 s after 2 failures"
    );
    clock.advance(Duration::seconds(1));
    assert_eq!(api.login(&email, PASSWORD).await.status, StatusCode::OK, "after the delay");
    assert_eq!(api.login(&email, PASSWORD).await.status, StatusCode::OK, "a success reset the count");
    app.stop().await;
}

#[tokio::test]
async fn changing_the_password_keeps_only_the_asking_session() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("change");
        let other = api.register(&email).await.text("accessToken");
        let mine = api.login(&email, PASSWORD).await.text("accessToken");

        let wrong = api
            .post_auth(
                "/api/v1/auth/change-password",
                &mine,
                json!({"currentPassword": "not it at all", "newPassword": NEW_PASSWORD}),
            )
            .await;
        assert_eq!(
            (wrong.status, wrong.body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("INVALID_CURRENT_PASSWORD"))
        );
        let short = api
            .post_auth(
                "/api/v1/auth/change-password",
                &mine,
                json!({"currentPassword": PASSWORD, "newPassword": "short"}),
            )
            .await;
        assert_eq!(short.body["error"], "VALIDATION_FAILED");
        clock.advance(Duration::seconds(5));
        let changed = api
            .post_auth(
                "/api/v1/auth/change-password",
                &mine,
                json!({"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{engine:?}: {}", changed.body);
        assert_eq!(api.validate(&other).await["error"], "session revoked");
        assert_eq!(api.validate(&mine).await["valid"], true, "the asking session stays");
        let sessions = api.get_auth("/api/v1/auth/sessions", &mine).await;
        assert_eq!(sessions.body.as_array().expect("list").len(), 1);
        assert_eq!(api.login(&email, PASSWORD).await.status, StatusCode::UNAUTHORIZED);
        clock.advance(Duration::seconds(5));
        assert_eq!(api.login(&email, NEW_PASSWORD).await.status, StatusCode::OK);
        let events = api.get_auth("/api/v1/auth/security-events?limit=100", &mine).await;
        assert!(kinds(&events.body).contains(&"password_changed".to_owned()));
        app.stop().await;
    }
}

#[tokio::test]
async fn a_password_reset_goes_through_the_outbox_once_and_expires() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("reset");
        let old = api.register(&email).await.text("accessToken");

        let asked = api.post("/api/v1/auth/forgot-password", json!({"email": email})).await;
        assert_eq!(asked.status, StatusCode::OK);
        let body = mail_to(app.state.db(), &email, "password_reset", 0).await;
        assert!(body.contains("http://localhost:3000/reset-password?token="), "{body}");
        let token = token_in(&body);

        let bogus = api
            .post("/api/v1/auth/reset-password", json!({"token": "bogus", "newPassword": NEW_PASSWORD}))
            .await;
        assert_eq!(
            (bogus.status, bogus.body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("INVALID_RESET_TOKEN"))
        );
        let reset = api
            .post("/api/v1/auth/reset-password", json!({"token": token, "newPassword": NEW_PASSWORD}))
            .await;
        assert_eq!(reset.status, StatusCode::OK, "{engine:?}: {}", reset.body);
        assert_eq!(reset.body["message"], "Password has been reset successfully");
        assert_eq!(api.validate(&old).await["error"], "session revoked", "every session is revoked");
        let again = api
            .post(
                "/api/v1/auth/reset-password",
                json!({"token": token, "newPassword": "yet another passphrase"}),
            )
            .await;
        assert_eq!(again.body["error"], "INVALID_RESET_TOKEN", "single use");
        clock.advance(Duration::seconds(1));
        let signed = api.login(&email, NEW_PASSWORD).await;
        assert_eq!(signed.status, StatusCode::OK);

        // Delivered messages no longer hold their token.
        let kept = count(app.state.db(), "SELECT count(*) FROM outbox WHERE body IS NOT NULL").await;
        assert_eq!(kept, 0, "{engine:?}: a delivered message's body is erased");

        // A token older than an hour is refused.
        api.post("/api/v1/auth/forgot-password", json!({"email": email})).await;
        let body = mail_to(app.state.db(), &email, "password_reset", 1).await;
        clock.advance(Duration::minutes(61));
        let late = api
            .post(
                "/api/v1/auth/reset-password",
                json!({"token": token_in(&body), "newPassword": "too late passphrase"}),
            )
            .await;
        assert_eq!(late.body["error"], "INVALID_RESET_TOKEN");

        let now = api.login(&email, NEW_PASSWORD).await.text("accessToken");
        let events = api.get_auth("/api/v1/auth/security-events?limit=100", &now).await;
        for kind in ["password_reset_requested", "password_reset_completed"] {
            assert!(kinds(&events.body).contains(&kind.to_owned()), "{kind}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn forgot_password_answers_alike_for_known_and_unknown_addresses() {
    let db = TestDb::postgres().await;
    let clock = ManualClock::new(Utc::now());
    let (app, api) = app_at(&db, &clock).await;
    let known = unique_email("known");
    api.register(&known).await;
    let a = api.post("/api/v1/auth/forgot-password", json!({"email": known})).await;
    let b = api.post("/api/v1/auth/forgot-password", json!({"email": unique_email("unknown")})).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(a.body, b.body);
    assert_eq!(
        a.body["message"],
        "If an account with that email exists, a password reset link has been sent"
    );
    mail_to(app.state.db(), &known, "password_reset", 0).await;
    app.state.projector().catch_up().await.expect("project");
    let requests = count(
        app.state.db(),
        "SELECT count(*) FROM security_events WHERE event_type = 'password_reset_requested'",
    )
    .await;
    assert_eq!(requests, 2, "both requests are recorded");
    let mailed =
        count(app.state.db(), "SELECT count(*) FROM dev_mailbox WHERE kind = 'password_reset'").await;
    assert_eq!(mailed, 1, "only the known address gets mail");

    let evil = api
        .post("/api/v1/auth/forgot-password", json!({"email": known, "redirectTo": "https://evil.example"}))
        .await;
    assert_eq!(
        (evil.status, evil.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED"))
    );
    let fine = api
        .post(
            "/api/v1/auth/forgot-password",
            json!({"email": known, "redirectTo": "http://localhost:8081/app"}),
        )
        .await;
    assert_eq!(fine.status, StatusCode::OK);
    let body = mail_to(app.state.db(), &known, "password_reset", 1).await;
    assert!(body.contains("http://localhost:8081/app/reset-password?token="), "{body}");
    let malformed = api.post("/api/v1/auth/forgot-password", json!({"email": "nope"})).await;
    assert_eq!(malformed.body["error"], "VALIDATION_FAILED");
    app.stop().await;
}

#[tokio::test]
async fn the_verification_flow_marks_the_address_and_the_tokens() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("verify");
        let signed = api.register(&email).await;
        assert_eq!(signed.body["user"]["emailVerified"], false);
        assert_eq!(api.validate(&signed.text("accessToken")).await["payload"]["emailVerified"], false);
        let first = token_in(&mail_to(app.state.db(), &email, "email_verification", 0).await);

        let resent =
            api.post_auth("/api/v1/auth/resend-verification", &signed.text("accessToken"), json!({})).await;
        assert_eq!(resent.status, StatusCode::OK);
        let second = token_in(&mail_to(app.state.db(), &email, "email_verification", 1).await);
        let stale = api.post("/api/v1/auth/verify-email", json!({"token": first})).await;
        assert_eq!(
            (stale.status, stale.body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("INVALID_VERIFICATION_TOKEN"))
        );
        let verified = api.post("/api/v1/auth/verify-email", json!({"token": second})).await;
        assert_eq!(verified.status, StatusCode::OK, "{engine:?}: {}", verified.body);

        let fresh = api.login(&email, PASSWORD).await;
        assert_eq!(fresh.body["user"]["emailVerified"], true);
        assert_eq!(api.validate(&fresh.text("accessToken")).await["payload"]["emailVerified"], true);
        let session = api.get_auth("/api/v1/auth/session", &fresh.text("accessToken")).await;
        assert_eq!(session.body["user"]["emailVerified"], true);
        let events = api.get_auth("/api/v1/auth/security-events?limit=100", &fresh.text("accessToken")).await;
        assert!(kinds(&events.body).contains(&"email_verified".to_owned()));
        let done =
            api.post_auth("/api/v1/auth/resend-verification", &fresh.text("accessToken"), json!({})).await;
        assert_eq!(done.body["message"], "Email already verified");
        app.stop().await;
    }
}

#[tokio::test]
async fn with_required_verification_registration_gives_no_tokens_and_login_waits_for_it() {
    let db = TestDb::sqlite();
    let mut config = db.app_config();
    config.require_verified_email = true;
    let app = TestApp::spawn(config).await;
    let api = Api::new(&app.base);
    let email = unique_email("required");
    let registered = api.post("/api/v1/auth/register", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(registered.status, StatusCode::CREATED);
    assert_eq!(registered.body["emailVerificationRequired"], true);
    assert!(registered.body.get("accessToken").is_none() && registered.body["user"]["id"].is_string());
    let refused = api.login(&email, PASSWORD).await;
    assert_eq!(
        (refused.status, refused.body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("EMAIL_NOT_VERIFIED"))
    );
    let token = token_in(&mail_to(app.state.db(), &email, "email_verification", 0).await);
    assert_eq!(api.post("/api/v1/auth/verify-email", json!({"token": token})).await.status, StatusCode::OK);
    assert_eq!(api.login(&email, PASSWORD).await.status, StatusCode::OK);
    app.stop().await;
}
