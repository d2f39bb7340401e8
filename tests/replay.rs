//! Replay (`mana-core-auth replay`): a rebuild of every read model aside proves the live
//! ones after a realistic run, names the table and key of a row edited by hand, finds a
//! falsified amount and a stream whose first event is gone; `--apply` repairs the live
//! tables while a server in another process keeps answering, and keeps their grants and
//! row-level-security policies.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, Engine, ServerProcess, TestApp, TestDb, run_cli, tamper};
use mana_core_auth::audit::replay::{self, ReplaySettings, RowDifference, VerifyReport};
use mana_core_auth::auth::UserChange;
use mana_core_auth::clock::SystemClock;
use mana_core_auth::events::auth::Role;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

const SETTINGS: ReplaySettings = ReplaySettings { batch_size: 7 };

/// Registrations, logins, refreshes, a logout and a revocation of every session,
/// spends, and admin grants, adjustments and refunds. Returns the users' ids.
async fn realistic(app: &TestApp) -> Vec<String> {
    let api = Api::new(&app.base);
    let admin_email = unique_email("admin");
    api.register(&admin_email).await;
    app.state.auth().change_user(&admin_email, UserChange::SetRole(Role::Admin)).await.expect("role");
    let admin = api.login(&admin_email, PASSWORD).await.text("accessToken");
    let mut ids = Vec::new();
    for n in 0..3i64 {
        let email = unique_email(&format!("replay{n}"));
        let signed = api.register(&email).await;
        ids.push(signed.body["user"]["id"].as_str().expect("id").to_owned());
        let login = api.login(&email, PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let access = login.text("accessToken");
        let refreshed = api.refresh(&login.text("refreshToken")).await;
        assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
        let key = format!("grant-{n}");
        let grant = json!({"userId": ids[n as usize], "amount": 500 + n, "pool": "paid", "reason": "welcome", "idempotencyKey": key});
        let granted = api.post_auth("/api/v1/admin/credits/grant", &admin, grant).await;
        assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.body);
        let mut spends = Vec::new();
        for amount in [3 + n, 170 + n] {
            let body = json!({"amount": amount, "appId": "chat", "description": "a message"});
            let spent = api.post_auth("/api/v1/credits/use", &access, body).await;
            assert_eq!(spent.status, StatusCode::CREATED, "{}", spent.body);
            spends.push(spent.body["transaction"]["id"].clone());
        }
        let refund = json!({"transactionId": spends[1], "amount": 20, "reason": "failed", "idempotencyKey": format!("refund-{n}")});
        let refunded = api.post_auth("/api/v1/admin/credits/refund", &admin, refund).await;
        assert_eq!(refunded.status, StatusCode::CREATED, "{}", refunded.body);
        let adjust = json!({"userId": ids[n as usize], "amount": -(1 + n), "pool": "paid", "reason": "fix", "idempotencyKey": format!("adjust-{n}")});
        let adjusted = api.post_auth("/api/v1/admin/credits/adjust", &admin, adjust).await;
        assert_eq!(adjusted.status, StatusCode::CREATED, "{}", adjusted.body);
        if n == 1 {
            let out = api.post_auth("/api/v1/auth/logout", &refreshed.text("accessToken"), json!({})).await;
            assert!(out.status.is_success(), "{}", out.body);
        }
        if n == 2 {
            app.state.auth().change_user(&email, UserChange::Disable).await.expect("disable");
        }
    }
    ids
}

async fn verify(app: &TestApp) -> VerifyReport {
    replay::verify(app.state.store(), Arc::new(SystemClock), SETTINGS).await.expect("replay runs")
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    match db.engine {
        Engine::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url()).await.expect("connect");
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.expect(sql)
        }
        Engine::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url()).await.expect("connect");
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.expect(sql)
        }
    }
}

/// No scratch schema or file is left behind.
async fn no_scratch_left(db: &TestDb) {
    match db.engine {
        Engine::Postgres => {
            let left = scalar(db, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'replay_%'").await;
            assert_eq!(left, 0, "scratch schemas left behind");
        }
        Engine::Sqlite => {
            let mana_core_auth::config::DatabaseConfig::Sqlite { path } = &db.config else { unreachable!() };
            let folder = path.parent().expect("folder");
            let left: Vec<_> = std::fs::read_dir(folder)
                .expect("folder")
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains("replay_"))
                .collect();
            assert!(left.is_empty(), "scratch files left behind: {left:?}");
        }
    }
}

#[tokio::test]
async fn a_replay_after_a_realistic_run_equals_the_live_read_models_and_every_check_holds() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        realistic(&app).await;
        let report = verify(&app).await;
        assert!(report.clean(), "{engine:?}: {:?} {:?}", report.differences, report.findings);
        let rows: HashMap<&str, u64> = report.rows.iter().copied().collect();
        for table in
            ["users", "sessions", "security_events", "balances", "credit_transactions", "event_streams"]
        {
            assert!(rows[table] > 0, "{engine:?}: {table} was compared with rows in it: {rows:?}");
        }
        let t = &report.totals;
        assert_eq!(t.accounts, 4, "{engine:?}");
        assert!(t.granted > 0 && t.spent > 0 && t.refunded == 60 && t.adjusted == -6, "{engine:?}: {t:?}");
        assert_eq!(t.held, t.granted - t.spent + t.refunded + t.adjusted, "{engine:?}");
        let events = scalar(&db, "SELECT count(*) FROM events").await;
        assert_eq!(
            report.events,
            u64::try_from(events).expect("count"),
            "{engine:?}: the whole log was checked"
        );
        no_scratch_left(&db).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_projection_row_edited_by_hand_is_named_by_table_and_key() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let ids = realistic(&app).await;
        assert!(verify(&app).await.clean(), "{engine:?}: clean before");
        tamper(
            &db,
            &[
                format!("UPDATE balances SET balance = balance + 1 WHERE user_id = '{}'", ids[0]),
                format!("DELETE FROM sessions WHERE user_id = '{}'", ids[1]),
                "INSERT INTO usage_stats (user_id, app_id, day, credits_used, spends) VALUES ('ghost', 'chat', '2026-01-01', 1, 1)".to_owned(),
            ],
        )
        .await;
        let report = verify(&app).await;
        assert!(!report.clean(), "{engine:?}");
        assert_eq!(report.finding_count, 0, "{engine:?}: the log itself is sound: {:?}", report.findings);
        let by_table: HashMap<&str, &replay::TableDifferences> =
            report.differences.iter().map(|d| (d.table, d)).collect();
        assert_eq!(
            by_table["balances"].rows,
            vec![(format!("\"user_id\"={}", ids[0]), RowDifference::Differs)],
            "{engine:?}"
        );
        let sessions = &by_table["sessions"].rows;
        assert!(!sessions.is_empty(), "{engine:?}");
        assert!(
            sessions.iter().all(|(_, how)| *how == RowDifference::MissingFromLive),
            "{engine:?}: {sessions:?}"
        );
        assert_eq!(by_table["usage_stats"].rows.len(), 1, "{engine:?}");
        let (key, how) = &by_table["usage_stats"].rows[0];
        assert!(key.contains("\"user_id\"=ghost") && key.contains("\"app_id\"=chat"), "{engine:?}: {key}");
        assert_eq!(*how, RowDifference::OnlyInLive, "{engine:?}");
        assert_eq!(report.differences.len(), 3, "{engine:?}: only those tables: {:?}", report.differences);
        no_scratch_left(&db).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_falsified_amount_is_found_by_the_arithmetic_and_by_the_ledger() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        realistic(&app).await;
        let position =
            scalar(&db, "SELECT min(position) FROM events WHERE event_type = 'CreditsSpent'").await;
        let falsify = match engine {
            Engine::Postgres => format!(
                "UPDATE events SET payload = jsonb_set(payload, '{{CreditsSpent,amount}}', '1') WHERE position = {position}"
            ),
            Engine::Sqlite => format!(
                "UPDATE events SET payload = json_set(payload, '$.CreditsSpent.amount', 1) WHERE position = {position}"
            ),
        };
        tamper(&db, &[falsify]).await;
        let report = verify(&app).await;
        assert!(!report.clean(), "{engine:?}");
        let at: Vec<String> = report
            .findings
            .iter()
            .filter(|f| f.cursor.position == position)
            .map(|f| f.problem.clone())
            .collect();
        assert!(at.iter().any(|p| p.contains("is not a positive 1")), "{engine:?}: {:?}", report.findings);
        assert!(at.iter().any(|p| p.contains("total spent after")), "{engine:?}: {:?}", report.findings);
        let tables: Vec<&str> = report.differences.iter().map(|d| d.table).collect();
        assert!(tables.contains(&"credit_transactions"), "{engine:?}: the ledger row differs: {tables:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_stream_whose_first_event_is_deleted_is_found() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let ids = realistic(&app).await;
        let first = scalar(
            &db,
            &format!(
                "SELECT position FROM events WHERE aggregate_type = 'credit_account' AND aggregate_id = '{}' AND sequence = 1",
                ids[2]
            ),
        )
        .await;
        tamper(&db, &[format!("DELETE FROM events WHERE position = {first}")]).await;
        let report = verify(&app).await;
        assert!(!report.clean(), "{engine:?}");
        let stream = format!("credit_account/{}", ids[2]);
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.stream == stream && f.sequence == 2 && f.problem.contains("starts at sequence 2")),
            "{engine:?}: {:?}",
            report.findings
        );
        app.stop().await;
    }
}

/// `mana-core-auth replay` as an operator runs it: exit code, standard output and error.
/// The wait for it leaves this runtime's other tasks (the in-process server) running: a
/// server frozen in the middle of a projector batch would hold the very locks `--apply`
/// waits for.
fn replay_binary(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    tokio::task::block_in_place(|| run_cli(db, &[&["replay"], args].concat()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_command_exits_0_when_equal_1_with_the_differences_and_2_on_a_usage_error() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let ids = realistic(&app).await;
        let (code, out, err) = replay_binary(&db, &["--verify"]);
        assert_eq!(code, 0, "{engine:?}: {out} {err}");
        assert!(out.contains("ok: the read models equal"), "{engine:?}: {out}");

        tamper(&db, &[format!("UPDATE users SET name = 'Mallory' WHERE id = '{}'", ids[1])]).await;
        let (code, out, err) = replay_binary(&db, &["--verify"]);
        assert_eq!(code, 1, "{engine:?}: {out} {err}");
        assert!(out.contains(&format!("users: \"id\"={}: differs", ids[1])), "{engine:?}: {out}");

        for args in [vec![], vec!["--verify", "--apply"], vec!["--bogus"]] {
            let (code, _, err) = replay_binary(&db, &args);
            assert_eq!(code, 2, "{engine:?} {args:?}: {err}");
        }

        // --apply repairs the row; the next verify is clean.
        let (code, out, err) = replay_binary(&db, &["--apply"]);
        assert_eq!(code, 0, "{engine:?}: {out} {err}");
        assert!(verify(&app).await.clean(), "{engine:?}: repaired");
        no_scratch_left(&db).await;
        app.stop().await;
    }
}

fn server_env(db: &TestDb) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("KEY_ENCRYPTION_SECRET".to_owned(), db.secret()),
        ("RATE_LIMITS".to_owned(), "off".to_owned()),
        ("AUDIT_SEAL_INTERVAL_SECS".to_owned(), "0".to_owned()),
    ])
}

/// Reads and writes against a server in another process until told to stop, as one
/// user: spends, then reads of the balance, the history and the sessions. Counts every
/// answer and keeps every one that was not the expected success.
async fn load(
    base: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    spans: Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>,
) {
    let api = Api::new(&base);
    let signed = api.register(&unique_email("load")).await;
    assert!(signed.status.is_success(), "{}", signed.body);
    let token = signed.text("accessToken");
    let mut spent = 0;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let body = json!({"amount": 1, "appId": "chat", "description": "load"});
        let spend = api.post_auth("/api/v1/credits/use", &token, body).await;
        let mut answers = vec![("spend", spend.status, spend.body.clone())];
        if spend.status.is_success() {
            spent += 1;
        }
        let balance = api.get_auth("/api/v1/credits/balance", &token).await;
        if balance.status.is_success() && balance.body["totalSpent"] != json!(spent) {
            failed
                .lock()
                .expect("failures")
                .push(format!("the balance missed a spend ({spent}): {}", balance.body));
        }
        answers.push(("balance", balance.status, balance.body));
        let history = api.get_auth("/api/v1/credits/transactions?limit=100", &token).await;
        answers.push(("history", history.status, history.body));
        let sessions = api.get_auth("/api/v1/auth/sessions", &token).await;
        answers.push(("sessions", sessions.status, sessions.body));
        spans.lock().expect("spans").push((started, Instant::now()));
        for (what, status, body) in answers {
            done.fetch_add(1, Ordering::Relaxed);
            if !status.is_success() {
                failed.lock().expect("failures").push(format!("{what}: {status} {body}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_apply_under_load_loses_no_request_and_keeps_grants_and_policies() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let mut server = ServerProcess::spawn(&server_env(&db));
        {
            let app = TestApp::spawn(db.app_config()).await;
            realistic(&app).await;
            app.stop().await;
        }
        let role = format!("mca_reader_{}", uuid::Uuid::new_v4().simple());
        if engine == Engine::Postgres {
            tamper(
                &db,
                &[
                    format!("CREATE ROLE {role} NOLOGIN"),
                    format!("GRANT SELECT ON balances, credit_transactions TO {role}"),
                    "ALTER TABLE balances ENABLE ROW LEVEL SECURITY".to_owned(),
                    format!("CREATE POLICY own_rows ON balances FOR SELECT TO {role} USING (user_id = current_user)"),
                ],
            )
            .await;
        }
        // A hand-edited row the apply must repair.
        tamper(&db, &["UPDATE balances SET total_earned = total_earned + 7".to_owned()]).await;

        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let spans = Arc::new(std::sync::Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let load =
                    load(server.base.clone(), stop.clone(), done.clone(), failed.clone(), spans.clone());
                tokio::spawn(load)
            })
            .collect();
        assert!(
            common::eventually(Duration::from_secs(30), || async { done.load(Ordering::Relaxed) > 20 }).await,
            "{engine:?}: the load runs"
        );
        let replay_started = Instant::now();
        // The load's tasks keep running on the runtime's other threads meanwhile.
        let (code, out, err) = tokio::task::block_in_place(|| run_cli(&db, &["replay", "--apply"]));
        let replay_ended = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.expect("load");
        }
        assert_eq!(code, 0, "{engine:?}: {out} {err}");
        let overlapping = spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|(start, end)| *start < replay_ended && *end > replay_started)
            .count();
        assert!(overlapping > 0, "{engine:?}: requests were in flight while the replay ran");
        let failures = failed.lock().expect("failures").clone();
        assert!(
            failures.is_empty(),
            "{engine:?}: {} of {} requests failed: {failures:?}",
            failures.len(),
            done.load(Ordering::Relaxed)
        );

        let app = TestApp::spawn(db.app_config()).await;
        let report = verify(&app).await;
        assert!(report.clean(), "{engine:?}: {:?} {:?}", report.differences, report.findings);
        if engine == Engine::Postgres {
            let grants = scalar(
                &db,
                &format!(
                    "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = '{role}'"
                ),
            )
            .await;
            assert_eq!(grants, 2, "{engine:?}: the grants survive the swap");
            let policies = scalar(
                &db,
                "SELECT count(*) FROM pg_policies WHERE tablename = 'balances' AND policyname = 'own_rows'",
            )
            .await;
            assert_eq!(policies, 1, "{engine:?}: the policy survives the swap");
            let secured =
                scalar(&db, "SELECT count(*) FROM pg_class WHERE relname = 'balances' AND relrowsecurity")
                    .await;
            assert_eq!(secured, 1, "{engine:?}: row-level security is still on");
            tamper(&db, &[format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")]).await;
        }
        no_scratch_left(&db).await;
        app.stop().await;
        server.terminate();
    }
}
