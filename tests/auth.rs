//! Authentication over real HTTP on both engines: registration, login, refresh rotation
//! and reuse, logout, sessions, security events, roles, and every input rejection.

mod common;

use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb};
use mana_core_auth::auth::UserChange;
use mana_core_auth::clock::ManualClock;
use mana_core_auth::events::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn app(db: &TestDb) -> (TestApp, Api) {
    let app = TestApp::spawn(db.app_config()).await;
    let api = Api::new(&app.base);
    (app, api)
}

fn event_types(events: &Value) -> Vec<String> {
    events
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["eventType"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn registration_signs_the_user_in_with_a_normalised_address() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let (app, api) = app(&db).await;
        let email = unique_email("Reg");
        let answer = api
            .post("/api/v1/auth/register", json!({"email": format!("  {}  ", email.to_uppercase()), "password": PASSWORD, "name": "Ada"}))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{engine:?}: {}", answer.body);
        let user = &answer.body["user"];
        assert_eq!(user["email"], email.to_lowercase());
        assert_eq!((user["name"].as_str(), user["role"].as_str()), (Some("Ada"), Some("user")));
        chrono::DateTime::parse_from_rfc3339(user["createdAt"].as_str().expect("createdAt"))
            .expect("RFC 3339");
        assert_eq!(
            (answer.body["expiresIn"].as_i64(), answer.body["tokenType"].as_str()),
            (Some(900), Some("Bearer"))
        );
        let token = answer.text("accessToken");
        let validated = api.validate(&token).await;
        assert_eq!(validated["valid"], true, "{validated}");
        let claims = &validated["payload"];
        assert_eq!(claims["sub"], user["id"]);
        assert_eq!(claims["email"], email.to_lowercase());
        for claim in ["sid", "role", "iss", "aud", "iat", "exp", "jti"] {
            assert!(!claims[claim].is_null(), "claim {claim} missing: {claims}");
        }
        let session = api.get_auth("/api/v1/auth/session", &token).await;
        assert_eq!(session.status, StatusCode::OK, "{}", session.body);
        assert_eq!(session.body["session"]["id"], claims["sid"]);

        // Any letter case of a registered address is taken.
        let again = api
            .post("/api/v1/auth/register", json!({"email": email.to_uppercase(), "password": PASSWORD}))
            .await;
        assert_eq!(again.status, StatusCode::CONFLICT);
        assert_eq!(again.body["error"], "EMAIL_TAKEN");
        app.stop().await;
    }
}

#[tokio::test]
async fn registration_names_every_bad_field_and_writes_nothing() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let (app, api) = app(&db).await;
        let bad = api
            .post(
                "/api/v1/auth/register",
                json!({"email": "not-an-address", "password": "short", "name": "n".repeat(256)}),
            )
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.body["error"], "VALIDATION_FAILED");
        let messages: Vec<&str> =
            bad.body["message"].as_array().expect("array").iter().filter_map(Value::as_str).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(
            messages.iter().any(|m| m.starts_with("email"))
                && messages.iter().any(|m| m.starts_with("password"))
        );
        assert!(messages.iter().any(|m| m.starts_with("name")));

        let missing = api.post("/api/v1/auth/register", json!({})).await;
        assert_eq!(missing.body["message"], json!(["email is required", "password is required"]));
        let unknown = api
            .post(
                "/api/v1/auth/register",
                json!({"email": unique_email("x"), "password": PASSWORD, "role": "admin"}),
            )
            .await;
        assert_eq!(
            (unknown.status, unknown.body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED"))
        );
        assert!(unknown.body["message"][0].as_str().expect("text").contains("role"));
        let too_long = api
            .post(
                "/api/v1/auth/register",
                json!({"email": format!("{}@example.com", "a".repeat(250)), "password": PASSWORD}),
            )
            .await;
        assert_eq!(too_long.status, StatusCode::BAD_REQUEST);

        // Twelve characters are twelve scalar values, not bytes.
        let email = unique_email("unicode");
        let eleven =
            api.post("/api/v1/auth/register", json!({"email": email, "password": "ü".repeat(11)})).await;
        assert_eq!(eleven.status, StatusCode::BAD_REQUEST);
        let twelve =
            api.post("/api/v1/auth/register", json!({"email": email, "password": "ü".repeat(12)})).await;
        assert_eq!(twelve.status, StatusCode::CREATED, "{}", twelve.body);
        // Nothing of the refused attempts reached the log: one user exists.
        let users: i64 = common::count(app.state.db(), "SELECT count(*) FROM users").await;
        assert_eq!(users, 1, "{engine:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn unknown_email_wrong_password_and_disabled_account_answer_alike() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(chrono::Utc::now());
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let email = unique_email("login");
        api.register(&email).await;
        let disabled = unique_email("disabled");
        api.register(&disabled).await;
        app.state.auth().change_user(&disabled, UserChange::Disable).await.expect("disable");

        let pool = app.state.auth().passwords();
        let mut answers = Vec::new();
        for (address, password) in [
            (email.as_str(), "wrong password here"),
            ("nobody@example.com", "wrong password here"),
            (disabled.as_str(), PASSWORD),
        ] {
            let before = pool.jobs_started();
            let answer = api.login(address, password).await;
            assert_eq!(pool.jobs_started() - before, 1, "{address}: exactly one argon2 verification");
            answers.push(answer);
        }
        for answer in &answers {
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
            assert_eq!(answer.body["error"], "INVALID_CREDENTIALS");
            assert_eq!(answer.body["message"], "Invalid credentials");
            let mut keys: Vec<_> = answer.body.as_object().expect("object").keys().cloned().collect();
            keys.sort();
            assert_eq!(keys, ["error", "message", "path", "requestId", "statusCode", "timestamp"]);
        }
        // A failure delays the next attempt on the address by a second.
        clock.advance(chrono::Duration::seconds(2));
        let ok = api.login(&email, PASSWORD).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
        assert_eq!(ok.body["tokenType"], "Bearer");
        assert!(ok.body["user"].get("createdAt").is_none(), "login's user has id, email, name, role");

        let token = ok.text("accessToken");
        let events = api.get_auth("/api/v1/auth/security-events", &token).await;
        let kinds = event_types(&events.body);
        assert_eq!(kinds.iter().filter(|k| *k == "login_failure").count(), 1, "{kinds:?}");
        assert_eq!(kinds[0], "login_success", "newest first: {kinds:?}");
        let failure = events
            .body
            .as_array()
            .expect("list")
            .iter()
            .find(|e| e["eventType"] == "login_failure")
            .expect("failure");
        assert_eq!(failure["metadata"]["reason"], "bad_password");
        let unknown: i64 = common::count(
            app.state.db(),
            "SELECT count(*) FROM security_events WHERE event_type = 'login_failure' AND user_id IS NULL",
        )
        .await;
        assert_eq!(unknown, 1, "the unknown address's failure is recorded without a user");
        app.stop().await;
    }
}

#[tokio::test]
async fn refresh_rotates_and_two_refreshes_at_once_share_the_successor() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let (app, api) = app(&db).await;
        let email = unique_email("refresh");
        let first = api.register(&email).await.text("refreshToken");
        let (a, b) = tokio::join!(api.refresh(&first), api.refresh(&first));
        assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK), "{} {}", a.body, b.body);
        let successor = a.text("refreshToken");
        assert_eq!(successor, b.text("refreshToken"), "{engine:?}: the same successor");
        assert_ne!(successor, first);
        assert_ne!(a.text("accessToken"), b.text("accessToken"), "fresh access tokens");
        assert_eq!(a.body["user"]["email"], email);
        let next = api.refresh(&successor).await;
        assert_eq!(next.status, StatusCode::OK, "the successor works");
        for garbage in ["", "nope", &"A".repeat(64)] {
            let answer = api.refresh(garbage).await;
            assert_eq!(
                (answer.status, answer.body["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("INVALID_REFRESH_TOKEN")),
                "{garbage:?}"
            );
        }
        let missing = api.post("/api/v1/auth/refresh", json!({})).await;
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        app.stop().await;
    }
}

#[tokio::test]
async fn answers_that_carry_tokens_forbid_caching() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let (app, api) = app(&db).await;
        let email = unique_email("nostore");
        let registered = api.register(&email).await;
        let login = api.login(&email, PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{engine:?}: {}", login.body);
        let refreshed = api.refresh(&login.text("refreshToken")).await;
        assert_eq!(refreshed.status, StatusCode::OK, "{engine:?}: {}", refreshed.body);
        for (route, answer) in [("register", &registered), ("login", &login), ("refresh", &refreshed)] {
            assert_eq!(answer.headers["cache-control"], "no-store", "{engine:?}: {route}");
            assert_eq!(answer.headers["pragma"], "no-cache", "{engine:?}: {route}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn logout_revokes_the_session_for_validate_and_protected_routes() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let (app, api) = app(&db).await;
        let signed = api.register(&unique_email("logout")).await;
        let (access, refresh) = (signed.text("accessToken"), signed.text("refreshToken"));
        let out = api.post_auth("/api/v1/auth/logout", &access, json!({})).await;
        assert_eq!(out.status, StatusCode::OK);
        assert_eq!(out.body, json!({"success": true, "message": "Logged out successfully"}));
        let validated = api.validate(&access).await;
        assert_eq!(validated, json!({"valid": false, "error": "session revoked"}));
        let session = api.get_auth("/api/v1/auth/session", &access).await;
        assert_eq!(session.status, StatusCode::UNAUTHORIZED);
        assert!(session.headers["www-authenticate"].to_str().expect("text").starts_with("Bearer"));
        assert_eq!(
            api.refresh(&refresh).await.status,
            StatusCode::UNAUTHORIZED,
            "its refresh token is dead too"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn protected_routes_want_a_bearer_token() {
    let db = TestDb::sqlite();
    let (app, api) = app(&db).await;
    let token = api.register(&unique_email("bearer")).await.text("accessToken");
    let none = api.send(api.http.get(format!("{}/api/v1/auth/sessions", api.base))).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    assert_eq!(none.body["error"], "UNAUTHORIZED");
    let lower = api
        .send(
            api.http
                .get(format!("{}/api/v1/auth/sessions", api.base))
                .header("authorization", format!("bearer {token}")),
        )
        .await;
    assert_eq!(lower.status, StatusCode::OK, "the scheme is case-insensitive");
    let basic = api
        .send(
            api.http
                .get(format!("{}/api/v1/auth/sessions", api.base))
                .header("authorization", format!("Basic {token}")),
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    let garbage = api.get_auth("/api/v1/auth/sessions", "not.a.jwt").await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    assert_eq!(garbage.headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    app.stop().await;
}

#[tokio::test]
async fn sessions_are_listed_and_revoked_by_their_owner_only() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let (app, api) = app(&db).await;
        let email = unique_email("sessions");
        api.register(&email).await;
        let body = json!({"email": email, "password": PASSWORD, "deviceId": "p1", "deviceName": "Phone", "rememberMe": true});
        let phone = api
            .send(
                api.http
                    .post(format!("{}/api/v1/auth/login", api.base))
                    .header("user-agent", "PhoneApp/1.0")
                    .json(&body),
            )
            .await;
        let laptop = api.login(&email, PASSWORD).await;
        let (phone_token, laptop_token) = (phone.text("accessToken"), laptop.text("accessToken"));

        let listed = api.get_auth("/api/v1/auth/sessions", &laptop_token).await;
        let sessions = listed.body.as_array().expect("list").clone();
        assert_eq!(sessions.len(), 3, "{engine:?}: registration, phone, laptop: {}", listed.body);
        assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
        let phone_row = sessions.iter().find(|s| s["deviceName"] == "Phone").expect("phone session");
        assert_eq!(
            (phone_row["deviceId"].as_str(), phone_row["ipAddress"].as_str()),
            (Some("p1"), Some("127.0.0.1"))
        );
        assert_eq!(phone_row["userAgent"], "PhoneApp/1.0");
        for field in ["id", "createdAt", "lastActiveAt"] {
            assert!(!phone_row[field].is_null(), "{field}");
        }
        let current = api.get_auth("/api/v1/auth/session", &phone_token).await;
        let expires = chrono::DateTime::parse_from_rfc3339(
            current.body["session"]["expiresAt"].as_str().expect("expiresAt"),
        )
        .expect("time");
        assert!(expires > chrono::Utc::now() + chrono::Duration::days(29), "rememberMe keeps 30 days");

        // Another user cannot see or revoke them.
        let stranger = api.register(&unique_email("stranger")).await.text("accessToken");
        let phone_id = phone_row["id"].as_str().expect("id");
        let theirs = api.delete_auth(&format!("/api/v1/auth/sessions/{phone_id}"), &stranger).await;
        assert_eq!(
            (theirs.status, theirs.body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
        );
        assert_eq!(
            api.delete_auth("/api/v1/auth/sessions/not-a-session", &stranger).await.status,
            StatusCode::NOT_FOUND
        );

        let revoked = api.delete_auth(&format!("/api/v1/auth/sessions/{phone_id}"), &laptop_token).await;
        assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
        assert_eq!(api.validate(&phone_token).await["valid"], false);
        let after = api.get_auth("/api/v1/auth/sessions", &laptop_token).await;
        assert_eq!(after.body.as_array().expect("list").len(), 2);

        let others = api.post_auth("/api/v1/auth/sessions/revoke-others", &laptop_token, json!({})).await;
        assert_eq!(others.body, json!({"success": true, "revoked": 1}));
        let last = api.get_auth("/api/v1/auth/sessions", &laptop_token).await;
        assert_eq!(last.body.as_array().expect("list").len(), 1);
        assert_eq!(last.body[0]["current"], true);

        let kinds =
            event_types(&api.get_auth("/api/v1/auth/security-events?limit=100", &laptop_token).await.body);
        assert_eq!(kinds.iter().filter(|k| *k == "session_revoked").count(), 2, "{kinds:?}");
        for kind in ["account_created", "login_success"] {
            assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
        }
        let page = api.get_auth("/api/v1/auth/security-events?limit=2&offset=1", &laptop_token).await;
        assert_eq!(event_types(&page.body), kinds[1..3].to_vec());
        for bad in ["limit=0", "limit=101", "offset=-1", "limit=x"] {
            let answer = api.get_auth(&format!("/api/v1/auth/security-events?{bad}"), &laptop_token).await;
            assert_eq!(
                (answer.status, answer.body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")),
                "{bad}"
            );
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn a_role_change_or_a_disable_revokes_every_session() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(chrono::Utc::now());
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let email = unique_email("roles");
        let signed = api.register(&email).await;
        let (old_access, old_refresh) = (signed.text("accessToken"), signed.text("refreshToken"));
        assert!(
            app.state.auth().change_user(&email, UserChange::SetRole(Role::Admin)).await.expect("set role")
        );
        assert_eq!(api.validate(&old_access).await["error"], "session revoked");
        assert_eq!(api.refresh(&old_refresh).await.status, StatusCode::UNAUTHORIZED);
        // The clock stands still in this test; sessions from the cutoff's millisecond are revoked too.
        clock.advance(chrono::Duration::seconds(1));
        let admin = api.login(&email, PASSWORD).await;
        assert_eq!(admin.status, StatusCode::OK);
        assert_eq!(api.validate(&admin.text("accessToken")).await["payload"]["role"], "admin");
        assert!(
            !app.state.auth().change_user(&email, UserChange::SetRole(Role::Admin)).await.expect("same role")
        );

        assert!(app.state.auth().change_user(&email, UserChange::Disable).await.expect("disable"));
        assert_eq!(api.validate(&admin.text("accessToken")).await["valid"], false);
        assert_eq!(api.login(&email, PASSWORD).await.status, StatusCode::UNAUTHORIZED);
        app.state.auth().change_user(&email, UserChange::Enable).await.expect("enable");
        clock.advance(chrono::Duration::seconds(2));
        let back = api.login(&email, PASSWORD).await;
        assert_eq!(back.status, StatusCode::OK);
        assert_eq!(api.validate(&back.text("accessToken")).await["valid"], true);
        let kinds = event_types(
            &api.get_auth("/api/v1/auth/security-events?limit=100", &back.text("accessToken")).await.body,
        );
        for kind in ["role_changed", "account_disabled", "account_enabled"] {
            assert!(kinds.iter().any(|k| k == kind), "{kind}: {kinds:?}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn bad_bodies_use_the_error_shape() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let (app, api) = app(&db).await;
        let url = format!("{}/api/v1/auth/login", api.base);
        let path = "/api/v1/auth/login";
        let malformed = api
            .send(api.http.post(&url).header("content-type", "application/json").body("{\"email\":"))
            .await;
        assert_eq!(
            (malformed.status.as_u16(), malformed.body["error"].as_str()),
            (400, Some("INVALID_JSON"))
        );
        assert_eq!(malformed.body["path"], path);
        let wrong_type = api.send(api.http.post(&url).header("content-type", "text/plain").body("{}")).await;
        assert_eq!(
            (wrong_type.status.as_u16(), wrong_type.body["error"].as_str()),
            (415, Some("UNSUPPORTED_MEDIA_TYPE"))
        );
        let mistyped = api.post(path, json!({"email": 5, "password": PASSWORD})).await;
        assert_eq!(
            (mistyped.status.as_u16(), mistyped.body["error"].as_str()),
            (400, Some("VALIDATION_FAILED"))
        );
        assert!(mistyped.body["message"][0].as_str().expect("text").contains("email"));
        let huge = api.post(path, json!({"email": "a@example.com", "password": "x".repeat(70_000)})).await;
        assert_eq!((huge.status.as_u16(), huge.body["error"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")));
        for answer in [&malformed, &wrong_type, &mistyped, &huge] {
            assert!(
                answer.body["timestamp"].is_string() && answer.body["requestId"].is_string(),
                "{}",
                answer.body
            );
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn the_client_address_comes_from_forwarded_for_only_behind_a_trusted_proxy() {
    let db = TestDb::sqlite();
    let mut config = db.app_config();
    config.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    let app = TestApp::spawn(config).await;
    let api = Api::new(&app.base);
    let email = unique_email("proxy");
    let registered = api
        .send(
            api.http
                .post(format!("{}/api/v1/auth/register", api.base))
                .header("x-forwarded-for", "198.51.100.7, 127.0.0.1")
                .json(&json!({"email": email, "password": PASSWORD})),
        )
        .await;
    let token = registered.text("accessToken");
    let session = api.get_auth("/api/v1/auth/session", &token).await;
    assert_eq!(session.body["session"]["ipAddress"], "198.51.100.7");
    app.stop().await;

    let app = TestApp::spawn(db.app_config()).await;
    let api = Api::new(&app.base);
    let spoofed = api
        .send(
            api.http
                .post(format!("{}/api/v1/auth/login", api.base))
                .header("x-forwarded-for", "198.51.100.7")
                .json(&json!({"email": email, "password": PASSWORD})),
        )
        .await;
    let session = api.get_auth("/api/v1/auth/session", &spoofed.text("accessToken")).await;
    assert_eq!(session.body["session"]["ipAddress"], "127.0.0.1", "no trusted proxy: the header is ignored");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hashing_queue_answers_503_with_retry_after() {
    let db = TestDb::sqlite();
    let mut config = db.app_config();
    config.password_hash_threads = 1;
    config.password_hash_queue = 1;
    let app = TestApp::spawn(config).await;
    let api = Api::new(&app.base);
    // Distinct addresses: one address admits one password check at a time.
    let mut emails = Vec::new();
    for i in 0..12 {
        let email = unique_email(&format!("flood{i}"));
        api.register(&email).await;
        emails.push(email);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for email in emails {
        let api = api.clone();
        tasks.spawn(async move { api.login(&email, PASSWORD).await });
    }
    let (mut ok, mut busy) = (0, 0);
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.expect("task");
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.body["error"], "SERVICE_UNAVAILABLE");
                assert_eq!(answer.headers["retry-after"], "1");
                busy += 1;
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    app.stop().await;
}

#[tokio::test]
async fn password_and_token_requests_name_their_missing_fields_first() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let (app, api) = app(&db).await;
        let token = api.register(&unique_email("fields")).await.text("accessToken");
        let change = |body: Value| {
            let api = api.clone();
            let token = token.clone();
            async move { api.post_auth("/api/v1/auth/change-password", &token, body).await }
        };
        let cases = [
            (change(json!({})).await, json!(["currentPassword is required", "newPassword is required"])),
            (
                change(json!({"currentPassword": PASSWORD, "newPassword": "short"})).await,
                json!(["newPassword must be 12 to 128 characters long"]),
            ),
            (
                api.post("/api/v1/auth/reset-password", json!({})).await,
                json!(["token is required", "newPassword is required"]),
            ),
            (
                api.post("/api/v1/auth/forgot-password", json!({"email": "nope"})).await,
                json!(["email must be a valid e-mail address"]),
            ),
            (api.post("/api/v1/auth/verify-email", json!({})).await, json!(["token is required"])),
            (api.post("/api/v1/auth/refresh", json!({})).await, json!(["refreshToken is required"])),
        ];
        for (answer, messages) in cases {
            assert_eq!(
                (answer.status, answer.body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")),
                "{engine:?}: {}",
                answer.body
            );
            assert_eq!(answer.body["message"], messages, "{engine:?}");
        }
        app.stop().await;
    }
}
