//! Old logs keep replaying (issue 11). `tests/fixtures/log-v1` holds a log written by
//! release 0.x, on both engines, with every event type, and the read models it
//! produced. Every later build must migrate it, serve from it, and rebuild the same read
//! models from it.
//!
//! * `the_fixture_log_...` (always runs) loads the fixture into a fresh database, starts
//!   the application on it (which applies the migrations added since), and compares the
//!   read models with the stored ones, then again after every projection replayed the
//!   log from position 0; then it works with the fixture's aggregates through the
//!   command layer.
//! * `generate_fixture` (ignored) wrote the fixture, once. Never run it again: the
//!   fixture stands for logs that exist; a newer format gets its own `log-v2` (see
//!   `tests/fixtures/log-v1/README.md`).

mod common;
#[path = "fixture_log/legacy.rs"]
mod legacy;
#[path = "fixture_log/read_models.rs"]
mod read_models;
#[path = "fixture_log/scenario.rs"]
mod scenario;
#[path = "fixture_log/variants.rs"]
mod variants;

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use common::api::Api;
use common::{ENGINES, Engine, TestApp, TestDb, catch_up_to};
use mana_core_auth::audit::verify::verify_live;
use mana_core_auth::clock::ManualClock;
use mana_core_auth::commands::{Aggregates, CommandBus};
use mana_core_auth::config::rate_limits::{Limit, Rule};
use mana_core_auth::config::{Config, DatabaseConfig, Secret};
use mana_core_auth::db::Db;
use read_models::ReadModels;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// When the story starts (the manual clock of the run that wrote the fixture).
pub const START: DateTime<Utc> = at(START_SECS);
/// When it ends (two days and two hours later): the last event's time, and every
/// checkpoint's `updated_at`.
pub const END: DateTime<Utc> = at(START_SECS + 2 * 86_400 + 2 * 3600);
/// 2026-11-02T08:00:00Z, a Monday.
const START_SECS: i64 = 1_793_606_400;

const fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).expect("a valid instant")
}

/// The `KEY_ENCRYPTION_SECRET` the fixture's signing keys are sealed under.
const SECRET: &str = "log-v1 fixture secret: test data only, never a real deployment's";

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1")
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "pg",
        Engine::Sqlite => "sqlite",
    }
}

fn models_path(engine: Engine) -> PathBuf {
    fixture_dir().join(format!("read-models.{}.json", engine_name(engine)))
}

/// The configuration every run on the fixture uses (its own server secret).
fn config(db: &TestDb) -> Config {
    let mut config = db.app_config();
    config.key_encryption_secret = Some(Secret::new(SECRET));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_log_of_release_0_x_migrates_and_replays_into_the_same_read_models() {
    let credentials: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("credentials.json")).expect("credentials"),
    )
    .expect("credentials JSON");
    for engine in ENGINES {
        let stored: ReadModels =
            serde_json::from_str(&std::fs::read_to_string(models_path(engine)).expect("stored read models"))
                .expect("read-model JSON");
        let db = load_fixture(engine).await;
        let clock = ManualClock::new(END);
        let app = TestApp::spawn_with_clock(config(&db), clock.clone()).await;
        let projector = app.state.projector();
        catch_up_to(projector, app.state.store().committed_head().await.expect("head")).await;
        let tables: Vec<&str> = stored.keys().map(String::as_str).collect();
        if engine == Engine::Postgres {
            // Migration 0009 moved the read models of this pre-existing database to `read`.
            let moved = common::count(
                app.state.db(),
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'read' \
                 AND tablename IN ('users', 'sessions', 'balances', 'credit_transactions', 'projection_checkpoints')",
            )
            .await;
            assert_eq!(moved, 5, "the read models of release 0.x moved to the schema read");
        }
        let context = format!("{engine:?}, after migrating");
        read_models::assert_same_but_later_streams(
            &stored,
            read_models::export(app.state.db(), &tables).await,
            &context,
        );

        // The operator's rebuild (`replay --apply`), then the auditor's proof (`--verify`).
        let replay_clock: mana_core_auth::clock::SharedClock = std::sync::Arc::new(clock.clone());
        let settings = mana_core_auth::audit::replay::ReplaySettings { batch_size: 50 };
        mana_core_auth::audit::replay::apply(app.state.store(), replay_clock.clone(), settings)
            .await
            .expect("replay --apply");
        let proof = mana_core_auth::audit::replay::verify(app.state.store(), replay_clock, settings)
            .await
            .expect("replay --verify");
        assert!(proof.clean(), "{engine:?}: {:?} {:?}", proof.differences, proof.findings);
        let context = format!("{engine:?}, after replaying the log from position 0");
        read_models::assert_same_but_later_streams(
            &stored,
            read_models::export(app.state.db(), &tables).await,
            &context,
        );

        // The log written before the hash chain got its chain from the backfill at start-up,
        // and every personal value matches its commitment.
        // Its first seal (servers seal at start-up; tests turn the interval off and seal here).
        let clock_service: mana_core_auth::clock::SharedClock = std::sync::Arc::new(clock.clone());
        mana_core_auth::audit::seal::seal_now(app.state.store(), app.state.audit_keys(), &clock_service)
            .await
            .expect("seal");
        let keys = mana_core_auth::audit::published_keys(app.state.store()).await.expect("audit keys");
        wait_readable(&app).await;
        let report = verify_live(app.state.store(), keys, 1000).await.expect("verify");
        assert_eq!(report.failure, None, "{engine:?}: the fixture log verifies");
        assert_eq!(report.seals, 1, "{engine:?}: {report:?}");
        assert!(report.events >= 196 && report.personal_checked > 0, "{engine:?}: {report:?}");

        every_aggregate_loads(&app, &stored).await;
        let refresh_token = credentials[engine_name(engine)]["bobRefreshToken"].as_str().expect("token");
        fixture_aggregates_take_commands(&app, &clock, refresh_token).await;
        app.stop().await;
    }
}

/// A fresh database holding the fixture of `engine`.
async fn load_fixture(engine: Engine) -> TestDb {
    let db = TestDb::new(engine).await;
    match &db.config {
        DatabaseConfig::Postgres { url } => {
            let dump = std::fs::read_to_string(fixture_dir().join("log.pg.sql")).expect("the dump");
            read_models::load_postgres_dump(url.expose(), &dump).await;
        }
        DatabaseConfig::Sqlite { path } => {
            std::fs::create_dir_all(path.parent().expect("folder")).expect("folder");
            std::fs::copy(fixture_dir().join("log.sqlite"), path).expect("copy the SQLite fixture");
        }
    }
    db
}

async fn loaded<A>(bus: &CommandBus<A>, id: &str) -> usize
where
    A: cqrs_es::Aggregate + 'static,
    A::Command: Clone + Send + 'static,
    A::Error: Send + 'static,
    A::Services: 'static,
{
    bus.load(id).await.unwrap_or_else(|e| panic!("{} {id} does not load: {e}", A::TYPE)).1
}

/// Every stream of the log loads through the command layer, to its last event.
async fn every_aggregate_loads(app: &TestApp, stored: &ReadModels) {
    let buses = Aggregates::new(app.state.store());
    for stream in &stored["event_streams"] {
        let (kind, id) =
            (stream["aggregate_type"].as_str().expect("type"), stream["aggregate_id"].as_str().expect("id"));
        let head = match kind {
            "user" => loaded(&buses.users, id).await,
            "email_claim" => loaded(&buses.claims, id).await,
            "session" => loaded(&buses.sessions, id).await,
            "login_attempts" => loaded(&buses.attempts, id).await,
            "credit_account" => loaded(&buses.credits, id).await,
            "operator_key" => loaded(&buses.operator_keys, id).await,
            "security_notice" => loaded(&buses.notices, id).await,
            "keyring" => loaded(&buses.keyring, id).await,
            other => panic!("a stream of an unknown aggregate type: {other}"),
        };
        assert_eq!(Some(head as u64), stream["version"].as_u64(), "{kind} {id}");
    }
}

/// Every fixture user signs in with the password they ended with (on streams holding
/// legacy events, a changed and a reset password), bob refreshes the phone session the
/// fixture left live, and spends from an account with grants, refunds and adjustments.
async fn fixture_aggregates_take_commands(app: &TestApp, clock: &ManualClock, refresh_token: &str) {
    for person in scenario::PEOPLE {
        clock.advance(Duration::seconds(1));
        let api = common::api_from(&app.base, std::net::IpAddr::from([127, 0, 1, person.ip]));
        let answer = api.login(person.email, person.password).await;
        assert_eq!(answer.status, StatusCode::OK, "{} signs in: {}", person.email, answer.body);
    }
    let bob = Api::new(&app.base);
    let refreshed = bob.refresh(refresh_token).await;
    assert_eq!(refreshed.status, StatusCode::OK, "bob's phone session refreshes: {}", refreshed.body);
    let token = refreshed.text("accessToken");
    let before = bob.get_auth("/api/v1/credits/balance", &token).await.body;
    let body = json!({"amount": 1, "appId": "chat", "description": "After the upgrade"});
    let spent = bob.post_auth("/api/v1/credits/use", &token, body).await;
    assert_eq!(spent.status, StatusCode::CREATED, "bob spends: {}", spent.body);
    let total =
        |b: &Value| b["balance"].as_i64().unwrap_or(0) + b["freeCreditsRemaining"].as_i64().unwrap_or(0);
    assert_eq!(total(&spent.body["newBalance"]), total(&before) - 1, "{before} then {}", spent.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "wrote tests/fixtures/log-v1 once; never regenerate it (see its README)"]
async fn generate_fixture() {
    let dir = fixture_dir();
    std::fs::create_dir_all(&dir).expect("fixture folder");
    let mut credentials = BTreeMap::new();
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(START);
        let mut config = config(&db);
        config.rate_limits.enabled = true;
        // The story signs bob in more often than 5 times in a real minute from one
        // address; the guesser still trips this limit.
        let login_limit = Limit { max: 20, window: std::time::Duration::from_secs(60) };
        config.rate_limits.rules.insert(Rule::LoginIpEmail, login_limit);
        config.lockout_threshold = 5;
        config.key_rotation_interval = std::time::Duration::from_secs(2 * 86_400);
        let app = TestApp::spawn_with_clock(config, clock.clone()).await;
        let outcome = scenario::run(&app, &clock).await;
        catch_up_to(app.state.projector(), app.state.store().committed_head().await.expect("head")).await;
        let counts = variants::assert_every_variant(app.state.store()).await;
        println!("{engine:?}: {} events: {counts:#?}", counts.values().sum::<usize>());
        app.stop().await;

        let handle = Db::connect(&db.config, 2).await.expect("connect");
        let tables = read_models::tables();
        let models = read_models::export(&handle, &tables).await;
        match &handle {
            Db::Postgres(pool) => {
                read_models::assert_normal_forms_match(pool, &tables).await;
                write_pg_dump(&db, pool).await;
            }
            Db::Sqlite { writer, .. } => write_sqlite_file(writer).await,
        }
        handle.close().await;
        let json = serde_json::to_string_pretty(&models).expect("JSON") + "\n";
        std::fs::write(models_path(engine), json).expect("write the read models");
        // The files just written load, and hold these read models.
        let copy = load_fixture(engine).await;
        let loaded = Db::connect(&copy.config, 2).await.expect("connect");
        read_models::assert_same(
            &models,
            &read_models::export(&loaded, &tables).await,
            "the written fixture",
        );
        loaded.close().await;
        credentials.insert(engine_name(engine), json!({"bobRefreshToken": outcome.bob_refresh_token}));
    }
    let json = serde_json::to_string_pretty(&credentials).expect("JSON") + "\n";
    std::fs::write(dir.join("credentials.json"), json).expect("write the credentials");
}

/// `pg_dump --inserts` of the database, by the `pg_dump` of the server's own version,
/// without the `\restrict` lines newer `pg_dump`s add (psql meta-commands, which
/// `sqlx::raw_sql` cannot run; they only guard psql against a malicious dump).
async fn write_pg_dump(db: &TestDb, pool: &sqlx::PgPool) {
    let server: String = sqlx::query_scalar("SHOW server_version").fetch_one(pool).await.expect("version");
    let tool = std::process::Command::new("pg_dump").arg("--version").output().expect("pg_dump is installed");
    let tool = String::from_utf8_lossy(&tool.stdout).to_string();
    let server_version = server.split_whitespace().next().unwrap_or_default();
    assert!(tool.contains(&format!(" {server_version} ")), "pg_dump ({tool}) is not the server's {server}");
    let dump = std::process::Command::new("pg_dump")
        .args(["--inserts", "--no-owner", "--no-privileges", "--dbname", &db.url()])
        .output()
        .expect("run pg_dump");
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    let text = String::from_utf8(dump.stdout).expect("UTF-8 dump");
    let kept: Vec<&str> =
        text.lines().filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")).collect();
    assert!(kept.iter().all(|l| !l.starts_with('\\')), "another psql meta-command in the dump");
    std::fs::write(fixture_dir().join("log.pg.sql"), kept.join("\n") + "\n").expect("write the dump");
}

/// The SQLite database as one checkpointed file (`VACUUM INTO`: no WAL beside it).
async fn write_sqlite_file(pool: &sqlx::SqlitePool) {
    let path = fixture_dir().join("log.sqlite");
    let _ = std::fs::remove_file(&path);
    sqlx::query("VACUUM INTO ?").bind(path.display().to_string()).execute(pool).await.expect("VACUUM INTO");
    for side in ["log.sqlite-wal", "log.sqlite-shm"] {
        assert!(!fixture_dir().join(side).exists(), "{side} next to the fixture");
    }
}

/// Waits until everything committed is readable: on PostgreSQL a new event (the seal) is
/// readable only once no older transaction is open anywhere in the cluster.
async fn wait_readable(app: &TestApp) {
    let store = app.state.store();
    let readable = common::eventually(std::time::Duration::from_secs(10), || async {
        matches!((store.head().await, store.committed_head().await), (Ok(a), Ok(b)) if a == b)
    })
    .await;
    assert!(readable, "the log never became readable up to its last event");
}

/// Text values a query returns, on either engine.
async fn texts(db: &Db, sql: &str) -> Vec<String> {
    match db {
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.expect(sql),
        Db::Sqlite { reader, .. } => sqlx::query_scalar(sql).fetch_all(reader).await.expect(sql),
    }
}

/// A person whose whole history predates sealing (plaintext version-1 events, an unkeyed
/// claim stream, legacy sign-in attempts with a guesser's address) is erased after the
/// upgrade: nothing of theirs remains in the database, the log verifies with its seal,
/// the read models replay, and everyone else keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_of_the_fixture_log_is_erased_with_the_plaintext_they_left_before_sealing() {
    use mana_core_auth::auth::ClientInfo;
    use mana_core_auth::auth::erasure::EraseTarget;
    for engine in ENGINES {
        let db = load_fixture(engine).await;
        let clock = ManualClock::new(END);
        let app = TestApp::spawn_with_clock(config(&db), clock.clone()).await;
        catch_up_to(app.state.projector(), app.state.store().committed_head().await.expect("head")).await;
        let olga = &texts(app.state.db(), "SELECT id FROM users WHERE email = 'olga@example.com'").await[0];
        let hash_sql = match engine {
            Engine::Postgres => format!(
                "SELECT payload -> 'UserRegistered' ->> 'password_hash' FROM events \
                 WHERE aggregate_id = '{olga}' AND event_type = 'UserRegistered'"
            ),
            Engine::Sqlite => format!(
                "SELECT json_extract(payload, '$.UserRegistered.password_hash') FROM events \
                 WHERE aggregate_id = '{olga}' AND event_type = 'UserRegistered'"
            ),
        };
        let password_hash = texts(app.state.db(), &hash_sql).await.remove(0);
        let hers = ["olga@example.com", "Olga Olsen", "127.0.1.6", "127.0.2.40", password_hash.as_str()];
        let before = common::whole_database(&db);
        for plain in hers {
            assert!(before.contains(plain), "{engine:?}: the fixture holds {plain:?} before the erasure");
        }

        let erased = app
            .state
            .auth()
            .erase_user(EraseTarget::Email(scenario::OLGA.email), &ClientInfo::default(), "system")
            .await
            .expect("erase olga");
        assert!(
            erased.plaintext_events > 0 && erased.scrubbed.events >= erased.plaintext_events,
            "{erased:?}"
        );
        assert!(erased.scrubbed.key_destroyed, "{engine:?}: her data key is gone");
        catch_up_to(app.state.projector(), app.state.store().committed_head().await.expect("head")).await;
        app.state.store().checkpoint().await.expect("checkpoint");
        let after = common::whole_database(&db);
        for plain in hers {
            assert!(!after.contains(plain), "{engine:?}: {plain:?} survived the erasure");
        }

        // The chain verifies (the renamed legacy streams are accounted for by her
        // UserErased), and the read models rebuild as they are.
        let clock_service: mana_core_auth::clock::SharedClock = std::sync::Arc::new(clock.clone());
        mana_core_auth::audit::seal::seal_now(app.state.store(), app.state.audit_keys(), &clock_service)
            .await
            .expect("seal");
        let keys = mana_core_auth::audit::published_keys(app.state.store()).await.expect("audit keys");
        wait_readable(&app).await;
        let report = verify_live(app.state.store(), keys, 1000).await.expect("verify");
        assert_eq!(report.failure, None, "{engine:?}: the log verifies after the erasure");
        assert!(report.redacted > 0, "{engine:?}: her legacy streams were renamed: {report:?}");
        let settings = mana_core_auth::audit::replay::ReplaySettings { batch_size: 50 };
        let proof = mana_core_auth::audit::replay::verify(app.state.store(), clock_service, settings)
            .await
            .expect("replay --verify");
        assert!(proof.clean(), "{engine:?}: {:?} {:?}", proof.differences, proof.findings);

        // Her address is free again; the others sign in as before.
        let api = Api::new(&app.base);
        assert_eq!(
            api.login(scenario::OLGA.email, scenario::OLGA.password).await.status,
            StatusCode::UNAUTHORIZED
        );
        api.register(scenario::OLGA.email).await;
        for person in scenario::PEOPLE.iter().filter(|p| p.email != scenario::OLGA.email) {
            clock.advance(Duration::seconds(1));
            let api = common::api_from(&app.base, std::net::IpAddr::from([127, 0, 1, person.ip]));
            assert_eq!(
                api.login(person.email, person.password).await.status,
                StatusCode::OK,
                "{}",
                person.email
            );
        }
        app.stop().await;
    }
}
