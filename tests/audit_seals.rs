//! Signed seals over the global order (issue 11, tamper evidence): seals appear on
//! schedule, each covers exactly the events before it and verifies against the audit keys
//! published at `GET /api/v1/audit/keys` (old keys too, after a rotation), and two server
//! processes on one database append one seal at a time.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use common::api::Api;
use common::{ENGINES, Engine, ServerProcess, TestApp, TestDb, eventually, open_store};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use mana_core_auth::audit::seal::{SealOutcome, seal_now};
use mana_core_auth::clock::ManualClock;
use mana_core_auth::events::audit::{AuditEvent, SEALS_ID, SEALS_TYPE, seal_message};
use mana_core_auth::events::chain::{self, ZERO};
use mana_core_auth::events::{EventStore, LogCursor, RecordedEvent};
use mana_core_auth::security::secrets::ServerSecret;
use serde_json::Value;

/// A seal as the log holds it, checked against the events before it.
#[derive(Debug)]
struct CheckedSeal {
    through: LogCursor,
    count: u64,
    kid: String,
}

/// Everything in the log, in global order.
async fn whole_log(store: &EventStore) -> Vec<RecordedEvent> {
    store.read_after(LogCursor::START, 1_000_000).await.expect("read the log")
}

/// Recomputes every seal's count and root from the log, checks its signature with the
/// given JWKS, and returns the seals in order. Panics on the first seal that does not fit.
fn check_seals(log: &[RecordedEvent], jwks: &Value) -> Vec<CheckedSeal> {
    let keys: HashMap<String, VerifyingKey> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            assert_eq!(
                (k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()),
                (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
            );
            let x: [u8; 32] =
                URL_SAFE_NO_PAD.decode(k["x"].as_str().expect("x")).expect("x").try_into().expect("32 bytes");
            (k["kid"].as_str().expect("kid").to_owned(), VerifyingKey::from_bytes(&x).expect("key"))
        })
        .collect();
    let mut at: BTreeMap<LogCursor, (u64, String)> = BTreeMap::new();
    let (mut count, mut root) = (0u64, ZERO);
    let mut seals = Vec::new();
    for event in log {
        if event.aggregate_type == SEALS_TYPE && event.aggregate_id == SEALS_ID {
            let AuditEvent::LogSealed {
                through,
                count: sealed,
                root: sealed_root,
                kid,
                signature,
                sealed_at,
            } = event.decode().expect("a seal");
            let through_cursor: LogCursor = through.parse().expect("a cursor");
            assert!(through_cursor < event.cursor, "a seal lands after what it covers");
            let expected =
                at.get(&through_cursor).unwrap_or_else(|| panic!("seal through {through}: no such event"));
            assert_eq!(
                (sealed, &sealed_root),
                (expected.0, &expected.1),
                "seal through {through} does not match the log"
            );
            let key = keys.get(&kid).unwrap_or_else(|| panic!("seal by {kid}: key not published"));
            let signature: [u8; 64] =
                URL_SAFE_NO_PAD.decode(&signature).expect("b64").try_into().expect("64 bytes");
            key.verify(
                seal_message(&through, sealed, &sealed_root, &kid, sealed_at).as_bytes(),
                &Signature::from_bytes(&signature),
            )
            .unwrap_or_else(|e| panic!("seal through {through}: bad signature: {e}"));
            seals.push(CheckedSeal { through: through_cursor, count: sealed, kid });
        }
        let hash = event.hash.as_deref().expect("every event has a hash");
        root = chain::fold_root(&root, &chain::parse_hex(hash).expect("hex"));
        count += 1;
        at.insert(event.cursor, (count, chain::hex(&root)));
    }
    seals
}

/// Counts strictly increase and no two seals cover the same `through`.
fn assert_one_writer_at_a_time(seals: &[CheckedSeal]) {
    for pair in seals.windows(2) {
        assert!(pair[1].count > pair[0].count, "counts must increase: {pair:?}");
        assert!(pair[1].through > pair[0].through, "each seal covers more: {pair:?}");
    }
    let throughs: HashSet<LogCursor> = seals.iter().map(|s| s.through).collect();
    assert_eq!(throughs.len(), seals.len(), "two seals cover the same events");
}

async fn audit_jwks(base: &str) -> (Value, Option<String>) {
    let response = reqwest::get(format!("{base}/api/v1/audit/keys")).await.expect("GET audit keys");
    assert_eq!(response.status(), 200);
    let cache = response.headers().get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (response.json().await.expect("JSON"), cache)
}

async fn seal_count(store: &EventStore) -> usize {
    whole_log(store).await.iter().filter(|e| e.aggregate_type == SEALS_TYPE).count()
}

/// The private key's bytes in every encoding a leak would likely use.
fn encodings(key: &SigningKey) -> Vec<String> {
    let bytes = key.to_bytes();
    vec![
        URL_SAFE_NO_PAD.encode(bytes),
        base64::engine::general_purpose::STANDARD.encode(bytes),
        chain::hex(&bytes),
    ]
}

fn assert_not_leaked(key: &SigningKey, log: &[RecordedEvent], jwks: &Value) {
    let text: String = log.iter().map(|e| format!("{}{}", e.payload, e.metadata)).collect();
    for encoded in encodings(key) {
        assert!(!text.contains(&encoded), "the private audit key is in the log");
        assert!(!jwks.to_string().contains(&encoded), "the private audit key is in the JWKS");
    }
}

#[tokio::test]
async fn seals_appear_on_schedule_and_each_covers_exactly_the_events_before_it() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let mut config = db.app_config();
        config.audit_seal_interval = Duration::from_secs(1);
        let app = TestApp::spawn(config).await;
        let api = Api::new(&app.base);
        let store = app.state.store().clone();
        // Sealed at start-up; on PostgreSQL the start-up events become readable only once no
        // older transaction is open anywhere in the cluster (other tests'), so the first seal
        // may come with the first interval instead.
        assert!(
            eventually(Duration::from_secs(5), || async { seal_count(&store).await >= 1 }).await,
            "{engine:?}: the log is sealed at start-up or at the first interval"
        );
        for round in 0..3 {
            let before = seal_count(&store).await;
            let registered = api.register(&common::api::unique_email(&format!("seal{round}"))).await;
            assert_eq!(registered.status, 201, "{engine:?}: {registered:?}");
            let sealed =
                eventually(Duration::from_secs(5), || async { seal_count(&store).await > before }).await;
            assert!(sealed, "{engine:?}: no seal within 5 s of new events at a 1 s interval");
        }
        // An idle log gets no more seals (the last seal is the only new event).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let idle = seal_count(&store).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(seal_count(&store).await, idle, "{engine:?}: an idle log keeps growing");

        let (jwks, cache) = audit_jwks(&app.base).await;
        assert_eq!(cache.as_deref(), Some("public, max-age=300"));
        let openapi = api.get("/api/v1/openapi.json").await.body;
        assert!(openapi["paths"]["/api/v1/audit/keys"]["get"].is_object(), "{engine:?}: documented");
        let seals = check_seals(&whole_log(&store).await, &jwks);
        assert!(seals.len() >= 4, "{engine:?}: {seals:?}");
        assert_one_writer_at_a_time(&seals);
        app.stop().await;
    }
}

#[tokio::test]
async fn after_an_audit_key_rotation_old_seals_still_verify_against_the_published_keys() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let start: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().expect("time");
        let clock = ManualClock::new(start);
        let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
        let api = Api::new(&app.base);
        let (store, keys) = (app.state.store().clone(), app.state.audit_keys().clone());
        let shared: mana_core_auth::clock::SharedClock = std::sync::Arc::new(clock.clone());
        assert!(matches!(seal_now(&store, &keys, &shared).await.expect("seal"), SealOutcome::Sealed(_)));
        let first = keys.keys().active.clone().expect("an active audit key");

        // Rotate: the next key is published, then starts signing after the publish-ahead.
        clock.advance(chrono::Duration::days(31));
        keys.rotate().await.expect("prepare the rotation");
        api.register(&common::api::unique_email("before")).await;
        assert!(matches!(seal_now(&store, &keys, &shared).await.expect("seal"), SealOutcome::Sealed(_)));
        clock.advance(chrono::Duration::minutes(12));
        keys.rotate().await.expect("activate the next key");
        let second = keys.keys().active.clone().expect("an active audit key");
        assert_ne!(first.0, second.0, "{engine:?}: the audit key rotated");
        api.register(&common::api::unique_email("after")).await;
        assert!(matches!(seal_now(&store, &keys, &shared).await.expect("seal"), SealOutcome::Sealed(_)));
        assert_eq!(seal_now(&store, &keys, &shared).await.expect("seal"), SealOutcome::NothingNew);

        // Long after every token lifetime, and a further rotation: the first key stays.
        clock.advance(chrono::Duration::days(400));
        keys.rotate().await.expect("prepare");
        clock.advance(chrono::Duration::minutes(12));
        keys.rotate().await.expect("activate");

        let (jwks, _) = audit_jwks(&app.base).await;
        let kids: Vec<&str> =
            jwks["keys"].as_array().expect("keys").iter().filter_map(|k| k["kid"].as_str()).collect();
        assert_eq!(kids.len(), 3, "{engine:?}: every audit key stays published: {jwks}");
        assert!(kids.contains(&first.0.as_str()));
        let log = whole_log(&store).await;
        let seals = check_seals(&log, &jwks);
        let signers: Vec<&str> = seals.iter().map(|s| s.kid.as_str()).collect();
        assert_eq!(signers, [first.0.as_str(), first.0.as_str(), second.0.as_str()], "{engine:?}");
        assert_one_writer_at_a_time(&seals);
        // The signing keys' JWKS is a different set, and no audit rotation shows as a
        // signing-key rotation.
        let signing = Api::new(&app.base).get("/api/v1/auth/jwks").await.body;
        assert!(!signing.to_string().contains(&first.0));
        common::catch_up_to(app.state.projector(), store.head().await.expect("head")).await;
        let rotated = common::count(
            app.state.db(),
            "SELECT count(*) FROM security_events WHERE event_type = 'signing_key_rotated'",
        )
        .await;
        assert_eq!(rotated, 0, "{engine:?}: an audit-key rotation is not a signing-key rotation");
        for key in [&first.1, &second.1] {
            assert_not_leaked(key, &log, &jwks);
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn two_processes_sealing_every_second_append_one_seal_at_a_time_each_matching_the_log() {
    let db = TestDb::new(Engine::Postgres).await;
    let env = HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("KEY_ENCRYPTION_SECRET".to_owned(), db.secret()),
        ("RATE_LIMITS".to_owned(), "off".to_owned()),
        ("AUDIT_SEAL_INTERVAL_SECS".to_owned(), "1".to_owned()),
    ]);
    let mut servers = [ServerProcess::spawn(&env), ServerProcess::spawn(&env)];
    let apis = [Api::new(&servers[0].base), Api::new(&servers[1].base)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut round = 0;
    while tokio::time::Instant::now() < deadline {
        let emails = [0, 1].map(|p| common::api::unique_email(&format!("p{p}-{round}")));
        let (a, b) = tokio::join!(apis[0].register(&emails[0]), apis[1].register(&emails[1]));
        assert_eq!((a.status.as_u16(), b.status.as_u16()), (201, 201));
        round += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (jwks, _) = audit_jwks(&servers[1].base).await;
    for server in &mut servers {
        assert!(server.terminate().success(), "logs:\n{}", server.log_text());
    }

    let store = open_store(&db).await;
    let log = whole_log(&store).await;
    let seals = check_seals(&log, &jwks);
    assert!(seals.len() >= 4, "seals every second for 8 s of traffic: {seals:?}");
    assert_one_writer_at_a_time(&seals);
    let sequences: Vec<i64> =
        log.iter().filter(|e| e.aggregate_type == SEALS_TYPE).map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>(), "one seal stream, no gaps");

    // The private audit key (sealed at rest) is in neither the log nor the JWKS.
    let sealer = ServerSecret::from_text(&db.secret()).sealer();
    for kid in jwks["keys"].as_array().expect("keys").iter().filter_map(|k| k["kid"].as_str()) {
        let mana_core_auth::db::Db::Postgres(pool) = store.db() else { unreachable!() };
        let sealed: Vec<u8> = sqlx::query_scalar("SELECT sealed FROM signing_key_secrets WHERE kid = $1")
            .bind(kid)
            .fetch_one(pool)
            .await
            .expect("the sealed private key");
        let key = SigningKey::from_pkcs8_der(&sealer.open(&sealed, kid).expect("open")).expect("a key");
        assert_not_leaked(&key, &log, &jwks);
    }
}
