//! Operators' reads of a user (`/api/v1/admin/users...`) on both engines: lookup by
//! e-mail, a balance at a past moment computed from the log (by time and by cursor) that
//! equals the transaction history at that point, and another user's transactions,
//! security events and sessions, paged like the user's own lists. Who may call which route
//! is tests/roles.rs's business.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::api::{Answer, Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb};
use mana_core_auth::auth::UserChange;
use mana_core_auth::clock::ManualClock;
use mana_core_auth::events::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Ten o'clock UTC of a fixed day, so that "tomorrow" is a clock move away.
fn morning() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).single().expect("time")
}

/// An operator with `role`, signed in: `(e-mail, access token)`.
async fn operator(app: &TestApp, api: &Api, clock: &ManualClock, role: Role) -> (String, String) {
    let email = unique_email(role.as_str());
    api.register(&email).await;
    app.state.auth().change_user(&email, UserChange::SetRole(role)).await.expect("role");
    // A role change revokes the sessions started up to its instant.
    clock.advance(Duration::seconds(1));
    let token = api.login(&email, PASSWORD).await.text("accessToken");
    (email, token)
}

fn user_id(registered: &Answer) -> String {
    registered.body["user"]["id"].as_str().expect("user id").to_owned()
}

fn list(answer: &Answer) -> Vec<Value> {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body.as_array().unwrap_or_else(|| panic!("a list: {}", answer.body)).clone()
}

fn time_of(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    DateTime::parse_from_rfc3339(text).expect("RFC 3339").with_timezone(&Utc)
}

fn credits(value: &Value) -> i64 {
    value.as_i64().unwrap_or_else(|| panic!("a number: {value}"))
}

/// `?at=` for a time (percent-encoded: the `+` of an offset would read as a space).
fn at_time(t: DateTime<Utc>) -> String {
    format!("?at={}", t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

#[tokio::test]
async fn an_operator_finds_a_user_by_email_written_any_way_registration_accepts() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(morning());
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let (_, admin) = operator(&app, &api, &clock, Role::Admin).await;
        let local = format!("Lookup-{}", uuid::Uuid::new_v4().simple());
        let registered = api
            .post(
                "/api/v1/auth/register",
                json!({"email": format!("{local}@Example.COM"), "password": PASSWORD, "name": "Ada"}),
            )
            .await;
        assert_eq!(registered.status, StatusCode::CREATED, "{}", registered.body);

        let typed = format!("  {}@EXAMPLE.com ", local.to_uppercase());
        let url =
            reqwest::Url::parse_with_params(&app.url("/api/v1/admin/users"), [("email", typed.as_str())])
                .expect("url");
        let found = api.send(api.http.get(url).bearer_auth(&admin)).await;
        assert_eq!(found.status, StatusCode::OK, "{engine:?}: {}", found.body);
        let created = morning() + Duration::seconds(1);
        assert_eq!(
            found.body,
            json!({"users": [{
                "id": user_id(&registered),
                "email": format!("{}@example.com", local.to_lowercase()),
                "name": "Ada",
                "role": "user",
                "emailVerified": false,
                "disabled": false,
                "createdAt": created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "updatedAt": created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }]}),
            "{engine:?}"
        );

        let unknown = api.get_auth("/api/v1/admin/users?email=nobody%40example.com", &admin).await;
        assert_eq!(
            (unknown.status, unknown.body.clone()),
            (StatusCode::OK, json!({"users": []})),
            "{engine:?}"
        );

        for bad in
            ["/api/v1/admin/users", "/api/v1/admin/users?email=", "/api/v1/admin/users?email=not-an-address"]
        {
            let answer = api.get_auth(bad, &admin).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{engine:?} {bad}: {}", answer.body);
            assert_eq!(answer.body["error"], "VALIDATION_FAILED", "{engine:?} {bad}");
        }
        app.stop().await;
    }
}

/// A ledger line of the history, ascending.
struct Line {
    id: String,
    at: DateTime<Utc>,
    balance_after: i64,
    earned: i64,
    spent: i64,
}

/// The history oldest first, each line with the totals of every line up to it.
fn lines(newest_first: &[Value]) -> Vec<Line> {
    let (mut earned, mut spent) = (0, 0);
    newest_first
        .iter()
        .rev()
        .map(|t| {
            let amount = credits(&t["amount"]);
            match t["type"].as_str().expect("type") {
                "bonus" | "adjustment" | "purchase" => earned += amount.max(0),
                "usage" => spent -= amount,
                "refund" => spent -= amount,
                other => panic!("unexpected type {other}"),
            }
            Line {
                id: t["id"].as_str().expect("id").to_owned(),
                at: time_of(&t["createdAt"]),
                balance_after: credits(&t["balanceAfter"]),
                earned,
                spent,
            }
        })
        .collect()
}

/// Asserts a point-in-time answer says what the history says after `upto` lines.
fn assert_matches_history(answer: &Answer, history: &[Line], upto: usize, what: &str) {
    assert_eq!(answer.status, StatusCode::OK, "{what}: {}", answer.body);
    let body = &answer.body;
    let total = credits(&body["balance"]) + credits(&body["freeCreditsRemaining"]);
    let (after, earned, spent) = match upto {
        0 => (0, 0, 0),
        n => (history[n - 1].balance_after, history[n - 1].earned, history[n - 1].spent),
    };
    assert_eq!(
        (total, credits(&body["totalEarned"]), credits(&body["totalSpent"])),
        (after, earned, spent),
        "{what}: {body}"
    );
    assert_eq!(body["dailyFreeCredits"], 5, "{what}");
}

/// The exported events of the log (`GET /admin/events`), once it shows the line
/// `last_transaction` (on PostgreSQL an event is readable once every older transaction of
/// the server has ended, which other tests can delay for a moment).
async fn exported(api: &Api, token: &str, last_transaction: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let url = format!("{}/api/v1/admin/events?limit=10000", api.base);
        let response = api.http.get(url).bearer_auth(token).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.expect("body");
        let events: Vec<Value> =
            text.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
        if events.iter().any(|e| e["payload"].to_string().contains(last_transaction)) {
            return events;
        }
        assert!(std::time::Instant::now() < deadline, "the export does not show {last_transaction}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_balance_at_a_moment_equals_the_transaction_history_at_that_moment_by_time_and_by_cursor() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(morning());
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let (admin_email, admin) = operator(&app, &api, &clock, Role::Admin).await;
        let minute = || clock.advance(Duration::minutes(1));

        minute();
        let opened_at = clock_now(&clock);
        let email = unique_email("history");
        let registered = api.register(&email).await;
        let (user, mut token) = (user_id(&registered), registered.text("accessToken"));
        let spend = |token: String, amount: i64| {
            let api = api.clone();
            async move {
                let answer = api
                    .post_auth(
                        "/api/v1/credits/use",
                        &token,
                        json!({"amount": amount, "appId": "chat", "description": "reply"}),
                    )
                    .await;
                assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
                answer.body["transaction"]["id"].as_str().expect("id").to_owned()
            }
        };
        let admin_op = |path: &'static str, body: Value| {
            let (api, admin) = (api.clone(), admin.clone());
            async move {
                let answer = api.post_auth(path, &admin, body).await;
                assert_eq!(answer.status, StatusCode::CREATED, "{path}: {}", answer.body);
            }
        };
        let key = || uuid::Uuid::new_v4().to_string();

        minute();
        spend(token.clone(), 30).await;
        minute();
        admin_op("/api/v1/admin/credits/grant", json!({"userId": user, "amount": 500, "pool": "paid", "reason": "purchase by hand", "idempotencyKey": key()})).await;
        minute();
        let big = spend(token.clone(), 200).await;
        minute();
        admin_op(
            "/api/v1/admin/credits/refund",
            json!({"transactionId": big, "amount": 50, "reason": "failed reply", "idempotencyKey": key()}),
        )
        .await;
        minute();
        admin_op("/api/v1/admin/credits/adjust", json!({"userId": user, "amount": -10, "pool": "paid", "reason": "correction", "idempotencyKey": key()})).await;
        minute();
        admin_op("/api/v1/admin/credits/grant", json!({"userId": user, "amount": 40, "pool": "free", "reason": "promotion", "idempotencyKey": key()})).await;
        // The next day: the spend first takes the day's free credits, at the same instant.
        clock.advance(Duration::days(1));
        token = api.login(&email, PASSWORD).await.text("accessToken");
        let last = spend(token.clone(), 15).await;
        let own_balance = api.get_auth("/api/v1/credits/balance", &token).await;
        assert_eq!(own_balance.status, StatusCode::OK, "{}", own_balance.body);
        assert_eq!(
            (own_balance.body["balance"].clone(), own_balance.body["freeCreditsRemaining"].clone()),
            (json!(460), json!(30)),
            "{engine:?}: the sequence left what its arithmetic says"
        );
        clock.advance(Duration::minutes(1));
        let admin = api.login(&admin_email, PASSWORD).await.text("accessToken");
        let base = format!("/api/v1/admin/users/{user}/balance");

        let history_page =
            list(&api.get_auth(&format!("/api/v1/admin/users/{user}/transactions?limit=100"), &admin).await);
        assert_eq!(
            history_page,
            list(&api.get_auth("/api/v1/credits/transactions?limit=100", &token).await),
            "{engine:?}"
        );
        let history = lines(&history_page);
        assert_eq!(
            history.len(),
            9,
            "{engine:?}: signup, spend, grant, spend, refund, adjust, grant, daily, spend"
        );
        assert_eq!(history.last().map(|l| l.id.as_str()), Some(last.as_str()));

        // By time: at each line's instant, half a minute after it, and before the account.
        let before =
            api.get_auth(&format!("{base}{}", at_time(opened_at - Duration::seconds(1))), &admin).await;
        assert_matches_history(&before, &history, 0, &format!("{engine:?} before the account opened"));
        assert_eq!(before.body["cursor"], Value::Null, "{engine:?}: no event yet");
        assert_eq!(
            (before.body["balance"].clone(), before.body["freeCreditsRemaining"].clone()),
            (json!(0), json!(0))
        );
        for moment in history.iter().flat_map(|l| [l.at, l.at + Duration::seconds(30)]) {
            let upto = history.iter().filter(|l| l.at <= moment).count();
            let answer = api.get_auth(&format!("{base}{}", at_time(moment)), &admin).await;
            assert_matches_history(&answer, &history, upto, &format!("{engine:?} at {moment}"));
            assert_eq!(time_of(&answer.body["asOf"]), moment, "{engine:?}: asOf is the moment asked for");
        }

        // By cursor: at every event of the log, the account as of its last event up to it.
        let events = exported(&api, &admin, &last).await;
        let mut account_events = 0;
        let mut upto = 0;
        let mut last_cursor = Value::Null;
        for event in &events {
            let cursor = event["cursor"].as_str().expect("cursor");
            if event["aggregateType"] == "credit_account" && event["aggregateId"] == user.as_str() {
                account_events += 1;
                last_cursor = event["cursor"].clone();
                if let Some(id) = event["payload"]
                    .as_object()
                    .and_then(|p| p.values().next())
                    .and_then(|e| e["transaction_id"].as_str())
                {
                    assert_eq!(history[upto].id, id, "{engine:?}: the history is in the stream's order");
                    upto += 1;
                }
            }
            let answer = api.get_auth(&format!("{base}?at={cursor}"), &admin).await;
            assert_matches_history(&answer, &history, upto, &format!("{engine:?} at cursor {cursor}"));
            assert_eq!(
                answer.body["cursor"], last_cursor,
                "{engine:?} at cursor {cursor}: the account's last event up to it"
            );
            assert_eq!(answer.body["asOf"], cursor, "{engine:?}");
        }
        assert_eq!((account_events, upto), (10, 9), "{engine:?}: the account opened, then nine lines");

        // Now: what the user's own balance says.
        let now = api.get_auth(&base, &admin).await;
        assert_eq!(now.status, StatusCode::OK, "{}", now.body);
        for field in ["balance", "freeCreditsRemaining", "totalEarned", "totalSpent", "dailyFreeCredits"] {
            assert_eq!(now.body[field], own_balance.body[field], "{engine:?} {field}");
        }
        assert_eq!(
            time_of(&now.body["asOf"]),
            clock_now(&clock),
            "{engine:?}: asOf is the time of the request"
        );
        assert_eq!(now.body["cursor"], last_cursor, "{engine:?}");

        for bad in ["yesterday", "12", "2026-11-20", "1:x", "2026-11-20T10:00:00"] {
            let answer = api.get_auth(&format!("{base}?at={bad}"), &admin).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{engine:?} at={bad}: {}", answer.body);
            assert_eq!(answer.body["error"], "VALIDATION_FAILED", "{engine:?} at={bad}");
            assert!(answer.body["message"].to_string().contains("at: expected a cursor"), "{}", answer.body);
        }
        app.stop().await;
    }
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use mana_core_auth::clock::Clock;
    clock.now()
}

/// An account of `grants` daily grants of one credit each, a second apart from `start`:
/// after the `k`-th grant the free pool holds `k`.
fn long_account(user: &str, start: DateTime<Utc>, grants: i64) -> Vec<mana_core_auth::events::NewEvent> {
    use mana_core_auth::domain::Credits;
    use mana_core_auth::events::credits::{Balances, CreditEvent, GrantSource, Pool};
    use mana_core_auth::events::mix::event;
    let opened = CreditEvent::CreditAccountOpened {
        user_id: user.to_owned(),
        granted_day: start.date_naive(),
        opened_at: start,
    };
    let mut events = vec![event("credit_account", user, 1, &opened, start)];
    for k in 1..=grants {
        let at = start + Duration::seconds(k);
        let grant = CreditEvent::CreditsGranted {
            transaction_id: format!("grant-{k}"),
            source: GrantSource::Daily { day: at.date_naive() },
            pool: Pool::Free,
            amount: Credits::new(1),
            before: Balances { free: Credits::new(k - 1), paid: Credits::ZERO },
            after: Balances { free: Credits::new(k), paid: Credits::ZERO },
            description: "Daily free credits".into(),
            key: None,
            granted_at: at,
        };
        events.push(event("credit_account", user, k + 1, &grant, at));
    }
    events
}

#[tokio::test]
async fn a_balance_over_a_stream_of_several_chunks_folds_every_event_up_to_the_moment() {
    use mana_core_auth::credits::history::{CHUNK, Moment, balance_at};
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = common::open_store(&db).await;
        let user = uuid::Uuid::new_v4().to_string();
        let grants = i64::try_from(2 * CHUNK + 345).expect("count");
        for batch in long_account(&user, morning(), grants).chunks(500) {
            store.append(batch).await.expect("append");
        }
        let stream = |after: i64| {
            let store = store.clone();
            let user = user.clone();
            async move { store.read_stream("credit_account", &user, after, 1).await.expect("read")[0].clone() }
        };

        for k in [0, 1, CHUNK as i64 - 1, CHUNK as i64, CHUNK as i64 + 1, 2 * CHUNK as i64 + 7, grants] {
            let event = stream(k).await;
            for moment in [Moment::Time(morning() + Duration::seconds(k)), Moment::Cursor(event.cursor)] {
                let point = balance_at(&store, &user, moment).await.expect("balance");
                assert_eq!(
                    (point.state.balances.free.get(), point.state.total_earned.get(), point.cursor),
                    (k, k, Some(event.cursor)),
                    "{engine:?} after grant {k}, at {moment:?}"
                );
            }
        }
        let before =
            balance_at(&store, &user, Moment::Time(morning() - Duration::seconds(1))).await.expect("balance");
        assert_eq!((before.state.balances.free.get(), before.cursor), (0, None), "{engine:?}");
        let unknown = balance_at(&store, "no-such-account", Moment::Time(Utc::now())).await.expect("balance");
        assert_eq!((unknown.state, unknown.cursor), (Default::default(), None), "{engine:?}");
    }
}

#[tokio::test]
async fn an_operator_pages_through_another_users_transactions_security_events_and_every_session() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(morning());
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let (_, auditor) = operator(&app, &api, &clock, Role::Auditor).await;
        let email = unique_email("watched");
        let registered = api.register(&email).await;
        let (user, token) = (user_id(&registered), registered.text("accessToken"));
        let mut tokens = vec![token.clone()];
        for device in ["phone", "tablet", "laptop"] {
            clock.advance(Duration::seconds(1));
            let login = api
                .post(
                    "/api/v1/auth/login",
                    json!({"email": email, "password": PASSWORD, "deviceName": device}),
                )
                .await;
            assert_eq!(login.status, StatusCode::OK, "{}", login.body);
            tokens.push(login.text("accessToken"));
        }
        clock.advance(Duration::seconds(1));
        assert_eq!(api.post_auth("/api/v1/auth/logout", &tokens[1], json!({})).await.status, StatusCode::OK);
        for amount in [3, 5, 7, 11, 13] {
            clock.advance(Duration::seconds(1));
            let body = json!({"amount": amount, "appId": "chat", "description": "reply"});
            assert_eq!(api.post_auth("/api/v1/credits/use", &token, body).await.status, StatusCode::CREATED);
        }
        let admin_list = |route: &str, query: &str| {
            let (api, auditor) = (api.clone(), auditor.clone());
            let path = format!("/api/v1/admin/users/{user}/{route}{query}");
            async move { list(&api.get_auth(&path, &auditor).await) }
        };

        // Transactions and security events: the user's own pages, page by page.
        for (route, own) in [
            ("transactions", "/api/v1/credits/transactions"),
            ("security-events", "/api/v1/auth/security-events"),
        ] {
            let all = list(&api.get_auth(&format!("{own}?limit=100"), &token).await);
            assert!(all.len() >= 6, "{engine:?} {route}: {all:?}");
            let mut paged = Vec::new();
            for offset in (0..all.len()).step_by(4) {
                let query = format!("?limit=4&offset={offset}");
                let page = admin_list(route, &query).await;
                assert_eq!(
                    page,
                    list(&api.get_auth(&format!("{own}{query}"), &token).await),
                    "{engine:?} {route}{query}"
                );
                paged.extend(page);
            }
            assert_eq!(paged, all, "{engine:?} {route}: the pages make up the whole list");
            assert_eq!(
                admin_list(route, "").await,
                all.iter().take(50).cloned().collect::<Vec<_>>(),
                "{engine:?}"
            );
        }

        // Sessions: every one, newest first, the logged-out one with when and why.
        let sessions = admin_list("sessions", "?limit=100").await;
        assert_eq!(sessions.len(), 4, "{engine:?}: registration and three logins: {sessions:?}");
        let names: Vec<&Value> = sessions.iter().map(|s| &s["deviceName"]).collect();
        assert_eq!(names, [&json!("laptop"), &json!("tablet"), &json!("phone"), &Value::Null], "{engine:?}");
        let phone = &sessions[2];
        assert_eq!(phone["revokedReason"], "logout", "{engine:?}: {phone}");
        assert_eq!(time_of(&phone["revokedAt"]), morning() + Duration::seconds(5), "{engine:?}");
        assert!(time_of(&phone["expiresAt"]) > morning() + Duration::days(6), "{engine:?}: {phone}");
        let live: Vec<&Value> = sessions.iter().filter(|s| s["revokedAt"].is_null()).collect();
        assert!(
            live.iter().all(|s| s["revokedReason"].is_null() && s["current"] == false),
            "{engine:?}: {live:?}"
        );
        let own = list(&api.get_auth("/api/v1/auth/sessions", &token).await);
        let fields = ["id", "deviceId", "deviceName", "ipAddress", "userAgent", "createdAt", "lastActiveAt"];
        let pick = |s: &Value| fields.iter().map(|f| s[*f].clone()).collect::<Vec<_>>();
        assert_eq!(
            live.iter().map(|s| pick(s)).collect::<Vec<_>>(),
            own.iter().map(pick).collect::<Vec<_>>(),
            "{engine:?}"
        );
        let mut paged = Vec::new();
        for offset in [0, 3, 6] {
            paged.extend(admin_list("sessions", &format!("?limit=3&offset={offset}")).await);
        }
        assert_eq!(paged, sessions, "{engine:?}: pages of three make up the whole list");

        // Unknown users and bad pages.
        let nobody = uuid::Uuid::now_v7();
        for route in ["balance", "transactions", "security-events", "sessions"] {
            let answer = api.get_auth(&format!("/api/v1/admin/users/{nobody}/{route}"), &auditor).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{engine:?} {route}: {}", answer.body);
            assert_eq!(answer.body["error"], "NOT_FOUND", "{engine:?} {route}");
            let bad =
                api.get_auth(&format!("/api/v1/admin/users/{user}/{route}?limit=0&at=x"), &auditor).await;
            assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{engine:?} {route}: {}", bad.body);
            assert_eq!(bad.body["error"], "VALIDATION_FAILED", "{engine:?} {route}");
        }
        app.stop().await;
    }
}
