//! Erasure by crypto-shredding (issue 15, docs/PRIVACY.md), black-box over HTTP on both
//! engines: a person with a full history is erased, then the whole database (`pg_dump`,
//! the raw SQLite files) and an export are searched for anything of theirs, the books are
//! compared, the address registers again, the log verifies and the read models replay.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::api::{Answer, Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb, api_from, eventually, run_cli, whole_database};
use mana_core_auth::auth::UserChange;
use mana_core_auth::events::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

const NEW_PASSWORD: &str = "a brand new passphrase for ada";
const ADA_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77));
const AGENT: &str = "ErasureProbe/9.1 (Ada Lovelace's laptop)";
const DEVICE_ID: &str = "device-ada-4242";
const DEVICE_NAME: &str = "Ada's Pixel 42";
const NAME: &str = "Ada Lovelace-Byron";
const DESCRIPTION: &str = "ada's secret diary entry";
const NOTE: &str = "ada-private-note-9931";
const KEY: &str = "ada-idempotency-key-777";

/// A person with everything the service can know about them.
struct Person {
    email: String,
    id: String,
    token: String,
    refresh: String,
}

/// Ada registers with a name, signs in from her device, spends with free text, asks for
/// a reset, and changes her password; all from her own address and user agent.
async fn ada(app: &TestApp) -> Person {
    let api = api_from(&app.base, ADA_IP);
    let email = unique_email("ada");
    let agent = |request: reqwest::RequestBuilder| request.header("user-agent", AGENT);
    let registered = api
        .send(agent(api.http.post(app.url("/api/v1/auth/register")).json(&json!({
            "email": email, "password": PASSWORD, "name": NAME
        }))))
        .await;
    assert_eq!(registered.status, StatusCode::CREATED, "{}", registered.body);
    let id = registered.body["user"]["id"].as_str().expect("id").to_owned();
    let login = api
        .send(agent(api.http.post(app.url("/api/v1/auth/login")).json(&json!({
            "email": email, "password": PASSWORD, "deviceId": DEVICE_ID, "deviceName": DEVICE_NAME
        }))))
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let token = login.text("accessToken");
    let spent = api
        .send(agent(api.http.post(app.url("/api/v1/credits/use")).bearer_auth(&token).json(&json!({
            "amount": 7, "appId": "chat", "description": DESCRIPTION, "metadata": {"note": NOTE},
            "idempotencyKey": KEY
        }))))
        .await;
    assert_eq!(spent.status, StatusCode::CREATED, "{}", spent.body);
    let forgot = api
        .send(agent(api.http.post(app.url("/api/v1/auth/forgot-password")).json(&json!({"email": email}))))
        .await;
    assert_eq!(forgot.status, StatusCode::OK, "{}", forgot.body);
    let changed = api
        .send(agent(api.http.post(app.url("/api/v1/auth/change-password")).bearer_auth(&token).json(
            &json!({
                "currentPassword": PASSWORD, "newPassword": NEW_PASSWORD
            }),
        )))
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    Person { email, id, token, refresh: login.text("refreshToken") }
}

async fn admin(app: &TestApp, api: &Api) -> String {
    let email = unique_email("admin");
    api.register(&email).await;
    app.state.auth().change_user(&email, UserChange::SetRole(Role::Admin)).await.expect("role");
    tokio::time::sleep(Duration::from_millis(5)).await;
    api.login(&email, PASSWORD).await.text("accessToken")
}

/// The figures an erasure must not change.
async fn books(api: &Api, admin: &str, user_id: &str) -> Value {
    let get = |path: String| async move {
        let answer = api.get_auth(&path, admin).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        answer.body
    };
    let mut transactions = get(format!("/api/v1/admin/users/{user_id}/transactions")).await;
    for t in transactions.as_array_mut().expect("list") {
        // The free text goes; amounts, types, apps and times stay.
        for field in ["description", "metadata", "idempotencyKey"] {
            t.as_object_mut().expect("object").remove(field);
        }
    }
    let mut figures = json!({
        "balance": get(format!("/api/v1/admin/users/{user_id}/balance")).await,
        "transactions": transactions,
        "trialBalance": get("/api/v1/admin/ledger/trial-balance".into()).await,
        "usage": get("/api/v1/admin/usage?groupBy=user".into()).await,
    });
    // Where in the log and when the figures were read moves on; the figures must not.
    for part in figures.as_object_mut().expect("object").values_mut() {
        if let Some(part) = part.as_object_mut() {
            for moving in ["cursor", "asOf", "at"] {
                part.remove(moving);
            }
        }
    }
    figures
}

/// Waits until every projection has applied everything committed so far.
async fn settled(app: &TestApp) {
    let head = app.state.store().committed_head().await.expect("head");
    common::catch_up_to(app.state.projector(), head).await;
}

fn assert_nothing_of_ada(text: &str, person: &Person, what: &str) {
    for plain in
        [person.email.as_str(), NAME, "127.0.0.77", AGENT, DEVICE_ID, DEVICE_NAME, DESCRIPTION, NOTE, KEY]
    {
        assert!(!text.contains(plain), "{what} still holds {plain:?}");
    }
    assert!(!text.contains("$argon2"), "{what} holds a password hash");
}

async fn erase(api: &Api, token: &str, password: &str) -> Answer {
    api.send(
        api.http
            .delete(format!("{}/api/v1/auth/account", api.base))
            .bearer_auth(token)
            .json(&json!({"password": password})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_person_is_nowhere_in_the_database_or_an_export_and_the_books_are_unchanged() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let admin = admin(&app, &api).await;
        let ada = ada(&app).await;
        let bob_email = unique_email("bob");
        let bob = api.register(&bob_email).await;
        let bob_token = bob.text("accessToken");
        let spend = json!({"amount": 3, "appId": "chat", "description": "bob's lunch"});
        assert_eq!(api.post_auth("/api/v1/credits/use", &bob_token, spend).await.status, StatusCode::CREATED);
        // The reset link was mailed: the development mailbox holds the address.
        assert!(common::count(app.state.db(), "SELECT count(*) FROM dev_mailbox").await > 0);
        settled(&app).await;
        let before = books(&api, &admin, &ada.id).await;

        // A wrong password changes nothing.
        let wrong = erase(&api, &ada.token, PASSWORD).await;
        assert_eq!(
            (wrong.status, wrong.body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("INVALID_CURRENT_PASSWORD")),
            "{engine:?}: {}",
            wrong.body
        );
        for bad in [json!({}), json!({"password": 42}), json!(["password"])] {
            let answer = api
                .send(
                    api.http
                        .delete(format!("{}/api/v1/auth/account", api.base))
                        .bearer_auth(&ada.token)
                        .json(&bad),
                )
                .await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{engine:?} {bad}: {}", answer.body);
        }
        assert_eq!(api.get_auth("/api/v1/credits/balance", &ada.token).await.status, StatusCode::OK);

        let erased = erase(&api, &ada.token, NEW_PASSWORD).await;
        assert_eq!(erased.status, StatusCode::OK, "{engine:?}: {}", erased.body);
        assert_eq!((erased.body["erased"].as_bool(), erased.text("userId")), (Some(true), ada.id.clone()));
        assert!(
            erased.body["kept"].as_array().is_some_and(|k| k
                .iter()
                .any(|k| k["data"].as_str().is_some_and(|d| d.contains("credit history")))),
            "{engine:?}: says what was kept: {}",
            erased.body
        );

        // The person cannot come back in, with anything they held.
        assert_eq!(
            api.get_auth("/api/v1/credits/balance", &ada.token).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(api.validate(&ada.token).await["valid"], false);
        assert_eq!(api.login(&ada.email, NEW_PASSWORD).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(api.refresh(&ada.refresh).await.status, StatusCode::UNAUTHORIZED);
        let again = erase(&api, &ada.token, NEW_PASSWORD).await;
        assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{engine:?}: {}", again.body);

        // The books did not move; only the free text went.
        settled(&app).await;
        assert_eq!(books(&api, &admin, &ada.id).await, before, "{engine:?}: the books changed");
        let transactions =
            api.get_auth(&format!("/api/v1/admin/users/{}/transactions", ada.id), &admin).await;
        assert!(transactions.body.as_array().is_some_and(|t| t.iter().all(|t| t["description"] == "")));

        // Nothing of hers in the database or an export; Bob is untouched.
        let export = api
            .http
            .get(format!("{}/api/v1/admin/events?limit=10000", api.base))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("export")
            .text()
            .await
            .expect("text");
        assert!(export.contains(&ada.id), "{engine:?}: the export has her events: {export:.200}");
        assert_nothing_of_ada(&export, &ada, &format!("{engine:?} export"));
        assert_nothing_of_ada(&whole_database(&db), &ada, &format!("{engine:?} database"));
        assert!(export.contains("bob's lunch"), "{engine:?}: other users keep their data");
        assert_eq!(api.login(&bob_email, PASSWORD).await.status, StatusCode::OK);
        let found = api.get_auth(&format!("/api/v1/admin/users?email={bob_email}"), &admin).await;
        assert_eq!(found.body["users"][0]["email"], bob_email.as_str());
        let users = api.get_auth(&format!("/api/v1/admin/users?email={}", ada.email), &admin).await;
        assert_eq!(users.body["users"], json!([]), "{engine:?}: the address names nobody");

        // The address registers again, as somebody new.
        let reborn = api.register(&ada.email).await;
        assert_ne!(reborn.body["user"]["id"], json!(ada.id));
        assert_eq!(reborn.body["user"]["name"], Value::Null);

        // Admin and CLI refuse to erase twice or someone unknown, changing nothing.
        let twice = api.post_auth(&format!("/api/v1/admin/users/{}/erase", ada.id), &admin, json!({})).await;
        assert_eq!(
            (twice.status, twice.body["error"].as_str()),
            (StatusCode::CONFLICT, Some("ALREADY_ERASED"))
        );
        let unknown = api.post_auth("/api/v1/admin/users/no-such-user/erase", &admin, json!({})).await;
        assert_eq!(
            (unknown.status, unknown.body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
        );
        // (The CLI starts the service's write path, which seals the log at start-up.)
        let not_seals = "SELECT count(*) FROM events WHERE aggregate_type <> 'audit_log'";
        let before_refusals = common::count(app.state.db(), not_seals).await;
        let (code, _, stderr) = tokio::task::block_in_place(|| run_cli(&db, &["user", "erase", &ada.id]));
        assert_eq!(code, 1, "{engine:?}: {stderr}");
        assert!(stderr.contains("already erased"), "{stderr}");
        let (code, _, stderr) =
            tokio::task::block_in_place(|| run_cli(&db, &["user", "erase", "nobody-here@example.com"]));
        assert_eq!(code, 1, "{engine:?}: {stderr}");
        assert_eq!(
            common::count(app.state.db(), not_seals).await,
            before_refusals,
            "refusals append nothing"
        );

        // The log still verifies, and a replay rebuilds the same, erased read models.
        let (code, stdout, stderr) = tokio::task::block_in_place(|| run_cli(&db, &["verify"]));
        assert_eq!(code, 0, "{engine:?}: verify: {stdout}{stderr}");
        let (code, stdout, stderr) = tokio::task::block_in_place(|| run_cli(&db, &["replay", "--verify"]));
        assert_eq!(code, 0, "{engine:?}: replay --verify: {stdout}{stderr}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_cli_erases_by_address_and_the_address_keeps_no_sign_in_protection_state() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let email = unique_email("carol");
        let carol = api.register(&email).await;
        // A wrong guess from elsewhere: the address has a failure on record.
        let guesser = api_from(&app.base, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 91)));
        assert_eq!(guesser.login(&email, "not the password at all").await.status, StatusCode::UNAUTHORIZED);
        let (code, stdout, stderr) = tokio::task::block_in_place(|| run_cli(&db, &["user", "erase", &email]));
        assert_eq!(code, 0, "{engine:?}: {stdout}{stderr}");
        assert!(stdout.contains(carol.body["user"]["id"].as_str().expect("id")), "{stdout}");
        // The old token dies on this process as soon as it reads the erasure from the log.
        let token = carol.text("accessToken");
        assert!(
            eventually(Duration::from_secs(10), || async {
                api.get_auth("/api/v1/credits/balance", &token).await.status == StatusCode::UNAUTHORIZED
            })
            .await,
            "{engine:?}: the erased user's token still works"
        );
        // Whoever registers the address next starts clean: the first wrong guess is
        // failure number one, not number two.
        let newcomer = api.register(&email).await;
        assert_ne!(newcomer.body["user"]["id"], carol.body["user"]["id"]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(guesser.login(&email, "still not the password").await.status, StatusCode::UNAUTHORIZED);
        settled(&app).await;
        let events = api.get_auth("/api/v1/auth/security-events", &newcomer.text("accessToken")).await;
        let failures: Vec<&Value> = events
            .body
            .as_array()
            .expect("list")
            .iter()
            .filter(|e| e["eventType"] == "login_failure")
            .map(|e| &e["metadata"]["consecutiveFailures"])
            .collect();
        assert_eq!(failures, vec![&json!(1)], "{engine:?}: the newcomer inherited the old failures");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_on_unknown_addresses_become_unreadable_after_thirty_days_and_the_read_models_agree() {
    use mana_core_auth::clock::{ManualClock, SharedClock};
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let start = chrono::DateTime::parse_from_rfc3339("2026-11-02T08:00:00Z").expect("time").to_utc();
        let clock = ManualClock::new(start);
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let stranger = api_from(&app.base, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 55)));
        let nobody = unique_email("nobody");
        let asked = stranger.post("/api/v1/auth/forgot-password", json!({"email": nobody})).await;
        assert_eq!(asked.status, StatusCode::OK);
        settled(&app).await;
        let rows = "SELECT count(*) FROM security_events WHERE ip_address = '127.0.0.55'";
        assert_eq!(common::count(app.state.db(), rows).await, 1, "{engine:?}: the attempt is on record");
        let shared: SharedClock = std::sync::Arc::new(clock.clone());

        // Thirty days on, the day's key still reads it.
        clock.advance(chrono::Duration::days(30));
        assert_eq!(mana_core_auth::jobs::expire_day_keys(app.state.store(), &shared).await.expect("job"), 0);
        assert_eq!(common::count(app.state.db(), rows).await, 1, "{engine:?}: kept for 30 days");

        // A day later it is gone from the log's readable form and from the read models.
        clock.advance(chrono::Duration::days(1));
        assert_eq!(mana_core_auth::jobs::expire_day_keys(app.state.store(), &shared).await.expect("job"), 1);
        assert_eq!(common::count(app.state.db(), rows).await, 0, "{engine:?}: the read model forgot it");
        assert!(!whole_database(&db).contains("127.0.0.55"), "{engine:?}: the address is still readable");
        let (code, stdout, stderr) = tokio::task::block_in_place(|| run_cli(&db, &["replay", "--verify"]));
        assert_eq!(code, 0, "{engine:?}: replay --verify: {stdout}{stderr}");
        let (code, stdout, stderr) = tokio::task::block_in_place(|| run_cli(&db, &["verify"]));
        assert_eq!(code, 0, "{engine:?}: verify: {stdout}{stderr}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_interrupted_after_its_append_is_completed_by_erasing_again() {
    use mana_core_auth::auth::ClientInfo;
    use mana_core_auth::auth::erasure::EraseTarget;
    use mana_core_auth::commands::user::UserCommand;
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let ada = ada(&app).await;
        // The process died right after the append: the user is erased in the log, but the
        // key, the plaintext of older releases and the mailed reset link are still there.
        let now = app.state.now();
        let erase = UserCommand::Erase { plaintext_events: 0, legacy_claim: false, at: now };
        let users = mana_core_auth::commands::Aggregates::new(app.state.store()).users;
        users.execute(&ada.id, erase, &common::ctx()).await.expect("the append alone");
        settled(&app).await;
        assert!(whole_database(&db).contains(&ada.email), "{engine:?}: the outbox still holds the address");

        let operator = ClientInfo::default();
        let completed = app
            .state
            .auth()
            .erase_user(EraseTarget::Id(&ada.id), &operator, "system")
            .await
            .expect("completed");
        assert!(
            completed.scrubbed.key_destroyed && completed.scrubbed.messages > 0,
            "{engine:?}: {completed:?}"
        );
        app.state.store().checkpoint().await.expect("checkpoint");
        assert_nothing_of_ada(&whole_database(&db), &ada, &format!("{engine:?} database"));
        let reborn = Api::new(&app.base).register(&ada.email).await;
        assert_ne!(reborn.body["user"]["id"], json!(ada.id), "{engine:?}: the address was released");
        let again = app.state.auth().erase_user(EraseTarget::Id(&ada.id), &operator, "system").await;
        assert!(
            matches!(again, Err(mana_core_auth::auth::AuthError::AlreadyErased)),
            "{engine:?}: {again:?}"
        );
        app.stop().await;
    }
}
