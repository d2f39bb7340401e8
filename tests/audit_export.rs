//! The export of the log, on both engines: the library exporter (what `mana-core-auth
//! export` runs), the real binary, and `GET /api/v1/admin/events` all carry the log as it
//! is stored, in global order, one line per event, with secrets only as commitments.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb, count, eventually, read_all};
use mana_core_auth::audit::export::{Export, Until};
use mana_core_auth::audit::record::ExportRecord;
use mana_core_auth::auth::UserChange;
use mana_core_auth::events::auth::Role;
use mana_core_auth::events::chain::secret_commitment;
use mana_core_auth::events::{LogCursor, RecordedEvent};
use reqwest::StatusCode;
use serde_json::{Value, json};

const EVENTS: &str = "/api/v1/admin/events";

/// A signed-in user with the given role.
async fn signed_in(app: &TestApp, api: &Api, role: Role) -> String {
    let email = unique_email("auditor");
    api.register(&email).await;
    if role != Role::User {
        app.state.auth().change_user(&email, UserChange::SetRole(role)).await.expect("role");
    }
    api.login(&email, PASSWORD).await.text("accessToken")
}

/// A log with every kind of secret: registrations (password hashes), logins and a refresh
/// (refresh-token hashes), a reset request (reset-token hash). Returns the admin's token
/// and every readable event.
async fn populated(app: &TestApp, api: &Api) -> (String, Vec<RecordedEvent>) {
    let admin = signed_in(app, api, Role::Admin).await;
    let email = unique_email("member");
    let registered = api.register(&email).await;
    let refreshed = api.refresh(&registered.text("refreshToken")).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let reset = api.post("/api/v1/auth/forgot-password", json!({"email": email})).await;
    assert!(reset.status.is_success(), "{}", reset.body);
    let has_reset = eventually(Duration::from_secs(10), || async {
        count(app.state.db(), "SELECT count(*) FROM events WHERE event_type = 'PasswordResetRequested'").await
            > 0
    })
    .await;
    assert!(has_reset, "the reset request was not recorded");
    let stored = count(app.state.db(), "SELECT count(*) FROM events").await;
    let events = read_all(app.state.store(), usize::try_from(stored).expect("count")).await;
    assert_eq!(events.len() as i64, stored, "every stored event is readable");
    (admin, events)
}

/// Runs the library exporter into a file and returns its lines.
async fn export_lines(app: &TestApp, after: LogCursor, until: Option<Until>) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("export.ndjson");
    let file = std::fs::File::create(&path).expect("create");
    let export = Export::plan(app.state.store(), after, until).await.expect("plan");
    let summary = export.run(file, |_| {}).await.expect("export");
    let text = std::fs::read_to_string(&path).expect("read export");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(summary.events, lines.len() as u64, "the summary counts the lines written");
    lines
}

/// The lines the export must hold for these events.
fn expected(events: &[RecordedEvent]) -> Vec<String> {
    events.iter().map(|e| serde_json::to_string(&ExportRecord::of(e)).expect("json")).collect()
}

fn cursors(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| serde_json::from_str::<ExportRecord>(l).expect("an export record").cursor).collect()
}

async fn get_page(api: &Api, token: &str, query: &str) -> reqwest::Response {
    api.http.get(format!("{}{EVENTS}{query}", api.base)).bearer_auth(token).send().await.expect("request")
}

#[tokio::test]
async fn the_export_and_the_route_carry_the_whole_log_in_global_order() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let (admin, events) = populated(&app, &api).await;

        let lines = export_lines(&app, LogCursor::START, None).await;
        assert_eq!(lines, expected(&events), "{engine:?}: the export is the log, line for line");

        let response = get_page(&api, &admin, "?limit=10000").await;
        assert_eq!(response.status(), StatusCode::OK, "{engine:?}");
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let next = response.headers()["x-next-cursor"].to_str().expect("cursor").to_owned();
        let body = response.text().await.expect("body");
        let served: Vec<String> = body.lines().map(str::to_owned).collect();
        assert_eq!(served, lines, "{engine:?}: the route serves the same records");
        assert_eq!(next, events.last().expect("events").cursor.to_string(), "{engine:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn after_and_until_bound_the_export_and_until_is_inclusive() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let (_, events) = populated(&app, &api).await;
        assert!(events.len() >= 8, "{engine:?}: a log long enough to cut");

        let (after, until) = (events[2].cursor, events[5].cursor);
        let lines = export_lines(&app, after, Some(Until::Cursor(until))).await;
        assert_eq!(lines, expected(&events[3..=5]), "{engine:?}: after is exclusive, until inclusive");

        // A time: every event up to the first one recorded after it, in global order.
        let time = events[4].recorded_at;
        let stop = events.iter().position(|e| e.recorded_at > time).unwrap_or(events.len());
        let lines = export_lines(&app, LogCursor::START, Some(Until::Time(time))).await;
        assert_eq!(lines, expected(&events[..stop]), "{engine:?}: an event recorded at the time is in");
        assert!(stop >= 5, "{engine:?}");

        let last = events.last().expect("events").cursor;
        assert!(export_lines(&app, last, None).await.is_empty(), "{engine:?}: nothing after the head");
        app.stop().await;
    }
}

#[tokio::test]
async fn paging_through_the_route_with_x_next_cursor_reaches_every_event_once() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let (admin, events) = populated(&app, &api).await;

        let mut after = LogCursor::START.to_string();
        let mut seen = Vec::new();
        loop {
            let response = get_page(&api, &admin, &format!("?after={after}&limit=3")).await;
            assert_eq!(response.status(), StatusCode::OK, "{engine:?}");
            let next = response.headers()["x-next-cursor"].to_str().expect("cursor").to_owned();
            let body = response.text().await.expect("body");
            let page: Vec<String> = body.lines().map(str::to_owned).collect();
            assert!(page.len() <= 3, "{engine:?}: a page holds at most `limit` events");
            if page.is_empty() {
                assert_eq!(next, after, "{engine:?}: an empty page gives back the cursor it was asked for");
                break;
            }
            assert_eq!(Some(&next), cursors(&page).last(), "{engine:?}: the next cursor is the last line's");
            seen.extend(page);
            after = next;
        }
        assert_eq!(seen, expected(&events), "{engine:?}: every event once, in order");
        app.stop().await;
    }
}

#[tokio::test]
async fn the_route_refuses_bad_cursors_and_limits_outside_one_to_ten_thousand_with_400() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let admin = signed_in(&app, &api, Role::Admin).await;
        for query in
            ["?limit=0", "?limit=10001", "?limit=many", "?after=yesterday", "?after=12", "?after=1:x"]
        {
            let answer = api.get_auth(&format!("{EVENTS}{query}"), &admin).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{engine:?} {query}: {}", answer.body);
            assert_eq!(answer.body["error"], "VALIDATION_FAILED", "{engine:?} {query}");
        }
        for query in ["?limit=1", "?limit=10000", "?after=0:0"] {
            let response = get_page(&api, &admin, query).await;
            assert_eq!(response.status(), StatusCode::OK, "{engine:?} {query}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn users_and_services_get_403_and_no_token_gets_401() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        for role in [Role::User, Role::Service] {
            let token = signed_in(&app, &api, role).await;
            let answer = api.get_auth(EVENTS, &token).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{engine:?} {role:?}");
            assert_eq!(answer.body["error"], "FORBIDDEN", "{engine:?} {role:?}");
        }
        let answer = api.get(EVENTS).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{engine:?}");
        assert_eq!(answer.body["error"], "UNAUTHORIZED", "{engine:?}");
        app.stop().await;
    }
}

/// The stored secret values of one field of one event type.
fn stored_secrets(events: &[RecordedEvent], event_type: &str, field: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event_type == event_type)
        .filter_map(|e| e.payload[event_type][field].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn secrets_are_absent_from_the_export_and_only_their_commitments_appear() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let (admin, events) = populated(&app, &api).await;
        let secrets: Vec<String> = [
            stored_secrets(&events, "UserRegistered", "password_hash"),
            stored_secrets(&events, "SessionStarted", "refresh_hash"),
            stored_secrets(&events, "SessionRefreshed", "refresh_hash"),
            stored_secrets(&events, "PasswordResetRequested", "token_hash"),
        ]
        .into_iter()
        .inspect(|found| assert!(!found.is_empty(), "{engine:?}: the log holds each kind of secret"))
        .flatten()
        .collect();
        assert!(
            secrets.iter().any(|s| s.starts_with("$argon2")),
            "{engine:?}: a password hash is among them"
        );

        let exported = export_lines(&app, LogCursor::START, None).await.join("\n");
        let served = get_page(&api, &admin, "?limit=10000").await.text().await.expect("body");
        for secret in &secrets {
            let commitment = secret_commitment(&Value::String(secret.clone()));
            for (name, text) in [("export", &exported), ("route", &served)] {
                assert!(!text.contains(secret.as_str()), "{engine:?}: the {name} holds a secret");
                assert!(text.contains(&commitment), "{engine:?}: the {name} lacks a secret's commitment");
            }
        }
        app.stop().await;
    }
}

/// Runs the real binary with `args` on `db`; returns (exit code, stdout, stderr).
fn run_binary(db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    let cwd = tempfile::tempdir().expect("temp dir");
    let env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", db.url()),
        ("KEY_ENCRYPTION_SECRET", db.secret()),
        ("REDIS_URL", common::redis_url()),
        ("RUST_LOG", "info".to_owned()),
    ]);
    let output = std::process::Command::new(common::binary())
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(cwd.path())
        .output()
        .expect("run the binary");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test]
async fn the_binary_exports_the_log_to_a_file_or_standard_output_and_refuses_bad_cursors_with_exit_2() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let (_, events) = populated(&app, &api).await;
        let want = expected(&events);

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.ndjson");
        let out = path.to_str().expect("utf-8 path");
        let (code, stdout, stderr) = run_binary(&db, &["export", "--out", out]);
        assert_eq!(code, Some(0), "{engine:?}: {stderr}");
        assert!(stdout.is_empty(), "{engine:?}: with --out nothing goes to standard output");
        let file = std::fs::read_to_string(&path).expect("the export file");
        assert_eq!(file.lines().collect::<Vec<_>>(), want, "{engine:?}: the file is the log");
        assert!(
            stderr.contains(&format!("exported {} events in ", want.len())),
            "{engine:?}: the summary is on standard error: {stderr}"
        );

        let after = events[1].cursor.to_string();
        let until = events[3].cursor.to_string();
        let (code, stdout, stderr) = run_binary(&db, &["export", "--after", &after, "--until", &until]);
        assert_eq!(code, Some(0), "{engine:?}: {stderr}");
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            want[2..=3],
            "{engine:?}: only data on standard output"
        );

        for bad in [["--after", "nowhere"], ["--until", "last tuesday"]] {
            let (code, stdout, stderr) = run_binary(&db, &["export", bad[0], bad[1]]);
            assert_eq!(code, Some(2), "{engine:?} {bad:?}: {stderr}");
            assert!(stdout.is_empty(), "{engine:?}");
            assert!(stderr.contains(bad[0]), "{engine:?}: the message names the flag: {stderr}");
        }
        app.stop().await;
    }
}
