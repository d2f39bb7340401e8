//! Verification of the log, live and offline (on an export): a clean log verifies; an
//! event changed, deleted, inserted or swapped with SQL by the table's owner (triggers
//! disabled) is found at the right position, live and in an export taken afterwards.

mod common;

use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, Engine, TestApp, TestDb, run_cli, tamper};
use mana_core_auth::audit::record::ExportRecord;
use mana_core_auth::audit::verify::{AuditKeys, Report, verify_export, verify_live};
use mana_core_auth::events::LogCursor;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

/// A log with users, sessions (refreshed twice), spends and a logout.
async fn populated(engine: Engine) -> (TestDb, TestApp) {
    let db = TestDb::new(engine).await;
    let app = TestApp::spawn(db.app_config()).await;
    let api = Api::new(&app.base);
    for n in 0..3 {
        let email = unique_email(&format!("audit{n}"));
        api.register(&email).await;
        let login = api.login(&email, PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let access = login.text("accessToken");
        let mut refresh = login.text("refreshToken");
        for _ in 0..2 {
            refresh = api.refresh(&refresh).await.text("refreshToken");
        }
        for amount in [3 + n, 11 + n] {
            let spent = api
                .post_auth(
                    "/api/v1/credits/use",
                    &access,
                    json!({"amount": amount, "appId": "chat", "description": "a message"}),
                )
                .await;
            assert_eq!(spent.status, StatusCode::CREATED, "{}", spent.body);
        }
    }
    (db, app)
}

async fn live(app: &TestApp) -> Report {
    verify_live(app.state.store(), AuditKeys::default(), 7).await.expect("verify runs")
}

/// An export of the whole log as it is now (the records `export` writes).
async fn export(app: &TestApp) -> String {
    let mut out = String::new();
    let mut after = LogCursor::ORIGIN;
    loop {
        let events = app.state.store().read_after(after, 50).await.expect("read");
        let Some(last) = events.last() else { break };
        after = last.cursor;
        for event in &events {
            out.push_str(&serde_json::to_string(&ExportRecord::of(event)).expect("json"));
            out.push('\n');
        }
    }
    out
}

async fn offline(app: &TestApp) -> Report {
    verify_export(export(app).await.as_bytes(), AuditKeys::default()).expect("verify runs")
}

async fn positions(db: &TestDb, sql: &str) -> Vec<i64> {
    match db.engine {
        Engine::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url()).await.expect("connect");
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.expect(sql)
        }
        Engine::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url()).await.expect("connect");
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.expect(sql)
        }
    }
}

/// Asserts that both live and offline verification fail first at `position`.
async fn found_at(app: &TestApp, position: i64, what: &str, engine: Engine) {
    // A row written by hand is readable once no older transaction is open anywhere in the
    // cluster (other tests' servers have some): wait for it, as every reader of the log does.
    let readable = common::eventually(std::time::Duration::from_secs(5), || async {
        app.state.store().head().await.is_ok_and(|head| head.position >= position)
    })
    .await;
    assert!(readable, "{engine:?}: the tampered row at {position} never became readable");
    for (mode, report) in [("live", live(app).await), ("export", offline(app).await)] {
        let failure = report.failure.unwrap_or_else(|| panic!("{engine:?} {mode}: {what} was not detected"));
        assert_eq!(failure.position, position, "{engine:?} {mode}: {what}: {failure}");
    }
}

#[tokio::test]
async fn a_clean_log_verifies_live_and_from_its_export() {
    for engine in ENGINES {
        let (_db, app) = populated(engine).await;
        let report = live(&app).await;
        assert_eq!(report.failure, None, "{engine:?}");
        assert!(report.events > 30, "{engine:?}: {report:?}");
        assert!(report.personal_checked > 0, "{engine:?}: personal values were checked");
        let offline = offline(&app).await;
        assert_eq!(offline.failure, None, "{engine:?}");
        assert_eq!(offline.events, report.events, "{engine:?}: the export holds every event");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_changed_event_is_found_at_its_position() {
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        let spends =
            positions(&db, "SELECT position FROM events WHERE event_type = 'CreditsSpent' ORDER BY position")
                .await;
        let target = spends[2];
        let update = match engine {
            Engine::Postgres => format!(
                "UPDATE events SET payload = jsonb_set(payload, '{{CreditsSpent,amount}}', '1') WHERE position = {target}"
            ),
            Engine::Sqlite => {
                format!(
                    "UPDATE events SET payload = json_set(payload, '$.CreditsSpent.amount', 1) WHERE position = {target}"
                )
            }
        };
        tamper(&db, &[update]).await;
        found_at(&app, target, "a changed amount", engine).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn an_event_deleted_from_the_middle_of_its_stream_is_found_at_the_next_one() {
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        let sql = "SELECT position FROM events WHERE event_type = 'SessionRefreshed' ORDER BY position";
        let refreshes = positions(&db, sql).await;
        let (deleted, next) = (refreshes[0], refreshes[1]);
        let same_stream = positions(
            &db,
            &format!(
                "SELECT b.position FROM events a JOIN events b ON a.aggregate_id = b.aggregate_id \
                 AND b.sequence = a.sequence + 1 WHERE a.position = {deleted}"
            ),
        )
        .await;
        assert_eq!(same_stream, vec![next], "the first two refreshes are one session's");
        tamper(&db, &[format!("DELETE FROM events WHERE position = {deleted}")]).await;
        found_at(&app, next, "a deleted refresh", engine).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn an_inserted_copy_of_an_event_is_found_where_it_was_inserted() {
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        let spends =
            positions(&db, "SELECT position FROM events WHERE event_type = 'CreditsSpent' ORDER BY position")
                .await;
        let original = spends[0];
        // A copy of a spend appended to its stream, with the original's hash.
        let columns = "aggregate_type, aggregate_id, event_type, event_version, payload, metadata, recorded_at, hash, commitments";
        let insert = format!(
            "INSERT INTO events (sequence, {columns}) SELECT (SELECT max(sequence) + 1 FROM events b \
             WHERE b.aggregate_type = a.aggregate_type AND b.aggregate_id = a.aggregate_id), {columns} \
             FROM events a WHERE position = {original}"
        );
        tamper(&db, &[insert]).await;
        let inserted = positions(&db, "SELECT max(position) FROM events").await[0];
        found_at(&app, inserted, "an inserted copy", engine).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn two_swapped_events_are_found_at_the_first() {
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        let spends =
            positions(&db, "SELECT position FROM events WHERE event_type = 'CreditsSpent' ORDER BY position")
                .await;
        let (a, b) = (spends[0], spends[1]);
        let swap = format!(
            "UPDATE events SET payload = CASE position WHEN {a} THEN (SELECT payload FROM events WHERE position = {b}) \
             ELSE (SELECT payload FROM events WHERE position = {a}) END WHERE position IN ({a}, {b})"
        );
        tamper(&db, &[swap]).await;
        found_at(&app, a, "two swapped spends", engine).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_changed_personal_value_is_found_live_while_its_key_exists() {
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        let target = positions(
            &db,
            "SELECT position FROM events WHERE event_type = 'UserRegistered' ORDER BY position",
        )
        .await[1];
        let update = match engine {
            Engine::Postgres => format!(
                "UPDATE events SET payload = jsonb_set(payload, '{{UserRegistered,personal,email}}', '\"evil@example.com\"') \
                 WHERE position = {target}"
            ),
            Engine::Sqlite => format!(
                "UPDATE events SET payload = json_set(payload, '$.UserRegistered.personal.email', 'evil@example.com') \
                 WHERE position = {target}"
            ),
        };
        tamper(&db, &[update]).await;
        let failure = live(&app).await.failure.expect("detected live");
        assert_eq!(failure.position, target, "{engine:?}: {failure}");
        assert!(failure.reason.contains("commitment"), "{engine:?}: {failure}");
        // Offline, without the key, the commitment still chains: the export verifies, and
        // docs/AUDIT.md says a personal value is checked only where its key is.
        assert_eq!(offline(&app).await.failure, None, "{engine:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn changed_commitments_are_found_at_their_event() {
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        let target =
            positions(&db, "SELECT position FROM events WHERE commitments IS NOT NULL ORDER BY position")
                .await[4];
        let update = match engine {
            Engine::Postgres => format!(
                "UPDATE events SET commitments = jsonb_set(commitments, '{{key}}', '\"day:2000-01-01\"') WHERE position = {target}"
            ),
            Engine::Sqlite => format!(
                "UPDATE events SET commitments = json_set(commitments, '$.key', 'day:2000-01-01') WHERE position = {target}"
            ),
        };
        tamper(&db, &[update]).await;
        found_at(&app, target, "a changed commitment key", engine).await;
        app.stop().await;
    }
}

/// `mana-core-auth verify` as a user runs it.
fn verify_binary(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    run_cli(db, &[&["verify"], args].concat())
}

#[tokio::test]
async fn the_verify_command_exits_0_when_clean_1_at_a_failure_and_2_on_a_usage_error() {
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), export(&app).await).expect("write export");
        let path = file.path().to_str().expect("utf-8 path");

        for args in [vec![], vec!["--file", path]] {
            let (code, out, err) = verify_binary(&db, &args);
            assert_eq!(code, 0, "{engine:?} {args:?}: {out} {err}");
            assert!(out.contains("ok"), "{engine:?}: {out}");
        }

        let target =
            positions(&db, "SELECT position FROM events WHERE event_type = 'CreditsSpent' ORDER BY position")
                .await[0];
        tamper(&db, &[format!("DELETE FROM events WHERE position = {target}")]).await;
        std::fs::write(file.path(), export(&app).await).expect("write export");
        for args in [vec![], vec!["--file", path]] {
            let (code, out, err) = verify_binary(&db, &args);
            assert_eq!(code, 1, "{engine:?} {args:?}: {out} {err}");
            assert!(err.contains("verification failed at position"), "{engine:?} {args:?}: {err}");
        }

        for args in [vec!["--file", "/nonexistent/export.ndjson"], vec!["--jwks", path], vec!["--bogus"]] {
            let (code, _, err) = verify_binary(&db, &args);
            assert_eq!(code, 2, "{engine:?} {args:?}: {err}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn personal_values_stay_where_the_stored_form_has_them_and_never_enter_a_hash() {
    use mana_core_auth::events::chain::{Commitments, Secrets, canonical};
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let email = unique_email("personal");
        let registered = api
            .post(
                "/api/v1/auth/register",
                json!({"email": email, "password": PASSWORD, "name": "Ada Lovelace"}),
            )
            .await;
        assert_eq!(registered.status, StatusCode::CREATED, "{}", registered.body);
        let login = api
            .post(
                "/api/v1/auth/login",
                json!({"email": email, "password": PASSWORD, "deviceId": "device-4711", "deviceName": "Ada's phone"}),
            )
            .await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let personal = [email.as_str(), "Ada Lovelace", "device-4711", "Ada's phone", "127.0.0.1"];

        let events = app.state.store().read_after(LogCursor::START, 1000).await.expect("read");
        let mut stored_with_personal = 0;
        for event in &events {
            let stored = format!("{} {}", event.payload, event.metadata);
            let commitments: Option<Commitments> =
                event.commitments.clone().map(|c| serde_json::from_value(c).expect("commitments"));
            let parts = event.parts();
            let form = canonical(&parts, commitments.as_ref(), Secrets::Stored).expect("canonical");
            let exported = serde_json::to_string(&ExportRecord::of(event)).expect("json");
            for value in personal {
                assert!(
                    !form.contains(value),
                    "{engine:?}: {value} in the hash input of {}",
                    event.event_type
                );
                // An export shows a personal value exactly where the stored event has it.
                assert_eq!(
                    exported.contains(value),
                    stored.contains(value),
                    "{engine:?}: {value} in the export of {}",
                    event.event_type
                );
            }
            if personal.iter().any(|v| stored.contains(v)) {
                stored_with_personal += 1;
                assert!(
                    commitments.is_some(),
                    "{engine:?}: {} has personal data but no commitments",
                    event.event_type
                );
            }
        }
        assert!(stored_with_personal >= 2, "{engine:?}: the registration and the session hold personal data");
        app.stop().await;
    }
}

/// Seals the log as it is now (tests run with the interval off) and returns the keys.
async fn seal(app: &TestApp) -> AuditKeys {
    let clock: mana_core_auth::clock::SharedClock = std::sync::Arc::new(mana_core_auth::clock::SystemClock);
    let outcome = mana_core_auth::audit::seal::seal_now(app.state.store(), app.state.audit_keys(), &clock)
        .await
        .expect("seal");
    assert!(matches!(outcome, mana_core_auth::audit::seal::SealOutcome::Sealed(_)), "{outcome:?}");
    mana_core_auth::audit::published_keys(app.state.store()).await.expect("keys")
}

async fn seal_position(db: &TestDb) -> i64 {
    positions(db, "SELECT max(position) FROM events WHERE event_type = 'LogSealed'").await[0]
}

/// Waits until the whole log is readable: on PostgreSQL an event (a seal) becomes readable
/// only once no older transaction is open anywhere in the cluster, and other tests' servers
/// hold some.
async fn wait_readable(app: &TestApp, engine: Engine) {
    let store = app.state.store();
    let readable = common::eventually(std::time::Duration::from_secs(10), || async {
        matches!((store.head().await, store.committed_head().await), (Ok(a), Ok(b)) if a == b)
    })
    .await;
    assert!(readable, "{engine:?}: the log never became readable up to its last event");
}

/// Asserts that verification with the seals' keys fails first at `position`, live and in
/// an export.
async fn sealed_found_at(app: &TestApp, keys: &AuditKeys, position: i64, what: &str, engine: Engine) {
    wait_readable(app, engine).await;
    let live = verify_live(app.state.store(), keys.clone(), 7).await.expect("verify");
    let live = live.failure;
    let offline = verify_export(export(app).await.as_bytes(), keys.clone()).expect("verify").failure;
    for (mode, failure) in [("live", live), ("export", offline)] {
        let failure = failure.unwrap_or_else(|| panic!("{engine:?} {mode}: {what} was not detected"));
        assert_eq!(failure.position, position, "{engine:?} {mode}: {what}: {failure}");
    }
}

#[tokio::test]
async fn a_sealed_log_verifies_and_a_seal_under_an_unknown_key_does_not() {
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        let keys = seal(&app).await;
        assert_eq!(keys.len(), 1, "{engine:?}: one audit key");
        let report = verify_live(app.state.store(), keys.clone(), 7).await.expect("verify");
        assert_eq!((report.failure.clone(), report.seals), (None, 1), "{engine:?}: {report:?}");
        assert_eq!(report.unsealed, 1, "{engine:?}: only the seal itself is after the seal");
        let offline = verify_export(export(&app).await.as_bytes(), keys).expect("verify");
        assert_eq!((offline.failure, offline.seals), (None, 1), "{engine:?}");
        // An auditor's JWKS without the key: the seal fails.
        let stranger = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "other",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]});
        let failure =
            verify_export(export(&app).await.as_bytes(), AuditKeys::from_jwks(&stranger).expect("jwks"))
                .expect("verify")
                .failure
                .expect("an unknown key fails");
        assert_eq!(failure.position, seal_position(&db).await, "{engine:?}: {failure}");
        assert!(failure.reason.contains("not among the audit keys"), "{engine:?}: {failure}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_streams_last_event_deleted_before_a_seal_is_found_at_the_seal() {
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        // The last event of the last credit account: nothing in its stream follows it.
        let last =
            positions(&db, "SELECT max(position) FROM events WHERE event_type = 'CreditsSpent'").await[0];
        let keys = seal(&app).await;
        tamper(&db, &[format!("DELETE FROM events WHERE position = {last}")]).await;
        sealed_found_at(&app, &keys, seal_position(&db).await, "a stream's deleted last event", engine).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_well_formed_event_inserted_before_a_seal_or_a_reordering_is_found_at_the_seal() {
    use mana_core_auth::events::chain::{self, EventParts, Secrets};
    for engine in ENGINES {
        let (db, app) = populated(engine).await;
        let keys = seal(&app).await;
        let sealed_at = seal_position(&db).await;
        // A forger with the table computes a valid hash for an extra refund-free grant at
        // the end of an account's stream, and places it before the seal in global order.
        let events = app.state.store().read_after(LogCursor::START, 1000).await.expect("read");
        // The first account's last spend: well inside what the seal covers.
        let model = events.iter().filter(|e| e.event_type == "CreditsSpent").nth(1).expect("a spend");
        assert!(
            !events.iter().any(|e| e.aggregate_id == model.aggregate_id && e.sequence > model.sequence),
            "the model ends its stream"
        );
        let next = model.sequence + 1;
        let previous = chain::parse_hex(model.hash.as_deref().expect("hash")).expect("hex");
        let commitments = model.commitments.clone().map(|c| serde_json::from_value(c).expect("commitments"));
        let parts = EventParts { sequence: next, ..model.parts() };
        let form = chain::canonical(&parts, commitments.as_ref(), Secrets::Stored).expect("form");
        let hash = chain::hex(&chain::event_hash(&previous, &form));
        // Its place: right after the spend it copies, well before the seal's horizon. On
        // PostgreSQL the order is (txid, position); SQLite's positions are dense, so it goes
        // first (and is found there, its stream's earlier events not yet seen).
        let (columns, place, expected) = match engine {
            Engine::Postgres => ("txid, position, ", format!("{}, 1000000, ", model.cursor.txid), sealed_at),
            Engine::Sqlite => ("position, ", "-5, ".to_owned(), -5),
        };
        let overriding = if engine == Engine::Postgres { "OVERRIDING SYSTEM VALUE" } else { "" };
        let insert = format!(
            "INSERT INTO events ({columns}aggregate_type, aggregate_id, sequence, event_type, event_version, \
             payload, metadata, recorded_at, hash, commitments) {overriding} \
             SELECT {place}aggregate_type, aggregate_id, {next}, event_type, event_version, payload, metadata, \
             recorded_at, '{hash}', commitments FROM events WHERE position = {}",
            model.position()
        );
        tamper(&db, &[insert]).await;
        // Without the data keys (an export), only the seal finds it. Live, the copy is found
        // at itself: its sealed fields are bound to the stream place they were sealed for
        // and do not open at another, so they fail their commitments.
        let what = "a well-formed event inserted before the seal";
        wait_readable(&app, engine).await;
        let offline = verify_export(export(&app).await.as_bytes(), keys.clone()).expect("verify").failure;
        let offline = offline.unwrap_or_else(|| panic!("{engine:?} export: {what} was not detected"));
        assert_eq!(offline.position, expected, "{engine:?} export: {what}: {offline}");
        let live = verify_live(app.state.store(), keys.clone(), 7).await.expect("verify").failure;
        let live = live.unwrap_or_else(|| panic!("{engine:?} live: {what} was not detected"));
        let forged_at = if engine == Engine::Postgres { 1_000_000 } else { -5 };
        assert_eq!(live.position, forged_at, "{engine:?} live: {what}: {live}");
        if engine == Engine::Postgres {
            assert!(live.reason.contains("does not match its commitment"), "{engine:?} live: {live}");
        }
        app.stop().await;

        // Reordering: two events of different streams trade places in the global order.
        let (db, app) = populated(engine).await;
        let keys = seal(&app).await;
        let sealed_at = seal_position(&db).await;
        let a = positions(&db, "SELECT min(position) FROM events WHERE event_type = 'CreditsSpent'").await[0];
        let b =
            positions(&db, "SELECT min(position) FROM events WHERE event_type = 'SessionRefreshed'").await[0];
        let swap = match engine {
            // Positions are an identity column: the order moves by the transaction ids.
            Engine::Postgres => vec![format!(
                "UPDATE events SET txid = CASE position \
                   WHEN {a} THEN (SELECT txid FROM events WHERE position = {b}) \
                   ELSE (SELECT txid FROM events WHERE position = {a}) END \
                 WHERE position IN ({a}, {b})"
            )],
            Engine::Sqlite => vec![
                format!("UPDATE events SET position = -1 WHERE position = {a}"),
                format!("UPDATE events SET position = {a} WHERE position = {b}"),
                format!("UPDATE events SET position = {b} WHERE position = -1"),
            ],
        };
        tamper(&db, &swap).await;
        let live = verify_live(app.state.store(), keys.clone(), 7).await.expect("verify").failure;
        let failure = live.expect("a reordering is detected");
        assert!(failure.position <= sealed_at, "{engine:?}: found at or before the seal: {failure}");
        app.stop().await;
    }
}
