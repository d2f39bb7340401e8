//! Token rules that need time to pass (a manual clock in-process) and forged tokens.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, Engine as DbEngine, TestApp, TestDb};
use mana_core_auth::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn app_at(db: &TestDb, clock: &ManualClock) -> (TestApp, Api) {
    let app = TestApp::spawn_with_clock(db.app_config(), clock.clone()).await;
    let api = Api::new(&app.base);
    (app, api)
}

fn part(token: &str, index: usize) -> Value {
    let segment = token.split('.').nth(index).expect("segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).expect("base64")).expect("json")
}

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"))
}

#[tokio::test]
async fn a_spent_token_after_the_grace_window_revokes_the_whole_session() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let email = unique_email("reuse");
        let first = api.register(&email).await.text("refreshToken");
        let rotated = api.refresh(&first).await;
        let (second, access) = (rotated.text("refreshToken"), rotated.text("accessToken"));

        clock.advance(Duration::seconds(11));
        let reused = api.refresh(&first).await;
        assert_eq!(
            (reused.status, reused.body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("INVALID_REFRESH_TOKEN"))
        );
        assert_eq!(
            api.refresh(&second).await.status,
            StatusCode::UNAUTHORIZED,
            "{engine:?}: every descendant is dead"
        );
        assert_eq!(api.validate(&access).await["error"], "session revoked");

        let fresh = api.login(&email, PASSWORD).await.text("accessToken");
        let events = api.get_auth("/api/v1/auth/security-events?limit=100", &fresh).await.body;
        let kinds: Vec<&str> =
            events.as_array().expect("list").iter().filter_map(|e| e["eventType"].as_str()).collect();
        for kind in ["refresh_token_reuse_detected", "session_revoked", "token_refreshed"] {
            assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn access_tokens_and_refresh_tokens_expire_by_the_clock_service() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let signed = api.register(&unique_email("expiry")).await;
        clock.advance(Duration::minutes(14));
        assert_eq!(api.validate(&signed.text("accessToken")).await["valid"], true, "{engine:?}");
        clock.advance(Duration::minutes(2));
        assert_eq!(api.validate(&signed.text("accessToken")).await["error"], "token expired");
        let refreshed = api.refresh(&signed.text("refreshToken")).await;
        assert_eq!(refreshed.status, StatusCode::OK, "a refresh slides the 7-day window");
        clock.advance(Duration::days(7) + Duration::seconds(1));
        assert_eq!(api.refresh(&refreshed.text("refreshToken")).await.status, StatusCode::UNAUTHORIZED);
        app.stop().await;
    }
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let db = TestDb::new(DbEngine::Postgres).await;
    let clock = ManualClock::new(Utc::now());
    let (app, api) = app_at(&db, &clock).await;
    let token = api.register(&unique_email("forge")).await.text("accessToken");
    let (header, claims) = (part(&token, 0), part(&token, 1));
    let signature = token.rsplit('.').next().expect("signature");

    let none = format!(
        "{}.{}.",
        encode(&json!({"alg": "none", "typ": "JWT", "kid": header["kid"]})),
        encode(&claims)
    );
    assert_eq!(api.validate(&none).await["error"], "unsupported algorithm");

    let jwks = api.get("/api/v1/auth/jwks").await.body;
    let x = jwks["keys"][0]["x"].as_str().expect("x");
    let public = URL_SAFE_NO_PAD.decode(x).expect("x bytes");
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = header["kid"].as_str().map(str::to_owned);
    for secret in [public.as_slice(), x.as_bytes()] {
        let forged = jsonwebtoken::encode(&hs, &claims, &jsonwebtoken::EncodingKey::from_secret(secret))
            .expect("sign");
        assert_eq!(api.validate(&forged).await["error"], "unsupported algorithm");
    }

    let mut admin = claims.clone();
    admin["role"] = json!("admin");
    let tampered = format!("{}.{}.{signature}", token.split('.').next().expect("header"), encode(&admin));
    assert_eq!(api.validate(&tampered).await["error"], "invalid signature");

    // A stranger's Ed25519 key, whatever kid it claims.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&stranger).expect("der");
    let key = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
    for kid in ["unknown-kid", header["kid"].as_str().expect("kid")] {
        let mut ed = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        ed.kid = Some(kid.to_owned());
        let forged = jsonwebtoken::encode(&ed, &claims, &key).expect("sign");
        let expected = if kid == "unknown-kid" { "unknown signing key" } else { "invalid signature" };
        assert_eq!(api.validate(&forged).await["error"], expected);
    }
    for garbage in ["", "a.b", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30.AAAA"] {
        assert_eq!(api.validate(garbage).await["valid"], false, "{garbage:?}");
    }
    app.stop().await;

    // Tokens from another issuer or for another audience, signed by the same keys.
    for (issuer, audience, error) in
        [("someone-else", "manacore", "invalid issuer"), ("manacore", "other-app", "invalid audience")]
    {
        let mut config = db.app_config();
        config.jwt_issuer = issuer.to_owned();
        config.jwt_audience = audience.to_owned();
        let other = TestApp::spawn_with_clock(config, clock.clone()).await;
        let foreign = Api::new(&other.base).register(&unique_email("foreign")).await.text("accessToken");
        other.stop().await;
        let (app, api) = app_at(&db, &clock).await;
        assert_eq!(api.validate(&foreign).await["error"], error);
        app.stop().await;
    }
}

#[tokio::test]
async fn rotation_publishes_ahead_keeps_old_tokens_valid_and_removes_retired_keys() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let keys = app.state.auth().tokens().keys().clone();
        let email = unique_email("rotate");
        api.register(&email).await;
        let kid_of = |token: &str| part(token, 0)["kid"].as_str().expect("kid").to_owned();
        let jwks_kids = |body: Value| -> Vec<String> {
            body["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| k["kid"].as_str().expect("kid").to_owned())
                .collect()
        };
        let first_kid = jwks_kids(api.get("/.well-known/jwks.json").await.body)[0].clone();

        clock.advance(Duration::days(30));
        keys.rotate().await.expect("rotate");
        let published = jwks_kids(api.get("/api/v1/auth/jwks").await.body);
        assert_eq!(published.len(), 2, "{engine:?}: the next key is published before it signs");
        let old = api.login(&email, PASSWORD).await.text("accessToken");
        assert_eq!(kid_of(&old), first_kid, "still signing with the old key");

        clock.advance(Duration::minutes(11));
        keys.rotate().await.expect("activate");
        let new = api.login(&email, PASSWORD).await.text("accessToken");
        assert_ne!(kid_of(&new), first_kid, "the new key signs");
        assert_eq!(
            api.validate(&old).await["valid"],
            true,
            "a retired key's token stays valid until it expires"
        );

        clock.advance(Duration::minutes(17));
        keys.rotate().await.expect("remove");
        let published = jwks_kids(api.get("/api/v1/auth/jwks").await.body);
        assert_eq!(published, vec![kid_of(&new)], "the retired key is no longer published");
        assert_eq!(api.validate(&old).await["error"], "unknown signing key");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_in_two_processes_publish_one_key() {
    let db = TestDb::new(DbEngine::Postgres).await;
    let clock = ManualClock::new(Utc::now());
    let (a, api) = app_at(&db, &clock).await;
    let (b, _) = app_at(&db, &clock).await;
    clock.advance(Duration::days(31));
    let (ka, kb) = (a.state.auth().tokens().keys().clone(), b.state.auth().tokens().keys().clone());
    let (ra, rb) = tokio::join!(ka.rotate(), kb.rotate());
    ra.expect("rotation a");
    rb.expect("rotation b");
    let keys = api.get("/api/v1/auth/jwks").await.body;
    assert_eq!(keys["keys"].as_array().expect("keys").len(), 2, "{keys}");
    // The audit keys' sealed secrets share the table; count the signing keys' only.
    let orphans = common::count(
        a.state.db(),
        "SELECT count(*) FROM signing_key_secrets WHERE kid NOT IN (SELECT payload->'SigningKeyCreated'->>'kid' \
         FROM events WHERE aggregate_type = 'keyring' AND aggregate_id = 'audit-keys' \
         AND event_type = 'SigningKeyCreated')",
    )
    .await;
    assert_eq!(orphans, 2, "a declined key leaves no sealed secret behind");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_fresh_access_token_is_typed_at_jwt_and_other_types_and_claims_are_refused() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let clock = ManualClock::new(Utc::now());
        let (app, api) = app_at(&db, &clock).await;
        let token = api.register(&unique_email("typed")).await.text("accessToken");
        let (header, claims) = (part(&token, 0), part(&token, 1));
        assert_eq!(header["typ"], "at+jwt", "{engine:?}");
        assert_eq!(api.validate(&token).await["valid"], true, "{engine:?}");
        assert_eq!(api.get_auth("/api/v1/auth/session", &token).await.status, StatusCode::OK);

        // The same claims signed again with the server's own key, one property changed.
        let keys = app.state.auth().tokens().keys().keys();
        let (kid, key) = keys.signing.as_ref().expect("signing key");
        assert_eq!(header["kid"], kid.as_str());
        let sign = |typ: Option<&str>, claims: &Value| {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            header.kid = Some(kid.clone());
            header.typ = typ.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, key).expect("sign")
        };
        let with = |field: &str, value: Value| {
            let mut changed = claims.clone();
            changed[field] = value;
            changed
        };
        let iat = claims["iat"].as_i64().expect("iat");
        let cases = [
            (sign(Some("at+jwt"), &claims), None),
            (sign(Some("JWT"), &claims), None),
            (sign(Some("JWT+x"), &claims), Some("invalid token type")),
            (sign(None, &claims), Some("invalid token type")),
            (sign(Some("at+jwt"), &with("nbf", json!(iat + 120))), Some("token not yet valid")),
            (sign(Some("at+jwt"), &with("exp", json!(iat + 86_400))), Some("token lifetime too long")),
            (sign(Some("JWT"), &with("exp", json!(iat + 86_400))), Some("token lifetime too long")),
            (sign(Some("at+jwt"), &with("sid", json!("not-a-uuid"))), Some("malformed token")),
        ];
        for (token, refusal) in cases {
            let answer = api.validate(&token).await;
            let route = api.get_auth("/api/v1/auth/session", &token).await.status;
            match refusal {
                None => assert_eq!((answer["valid"].clone(), route), (json!(true), StatusCode::OK)),
                Some(reason) => {
                    assert_eq!(answer["error"], reason, "{engine:?}: {}", part(&token, 0));
                    assert_eq!(route, StatusCode::UNAUTHORIZED, "{engine:?}: {reason}");
                }
            }
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn a_token_checked_before_is_still_checked_for_its_session_and_its_expiry_on_every_request() {
    let db = TestDb::sqlite();
    let clock = ManualClock::new(Utc::now());
    let (app, api) = app_at(&db, &clock).await;
    let first = api.register(&unique_email("cached")).await.text("accessToken");
    let second = api.register(&unique_email("cached-2")).await.text("accessToken");
    for _ in 0..3 {
        assert_eq!(api.validate(&first).await["valid"], true, "checked, then found in the cache");
        assert_eq!(api.validate(&second).await["valid"], true);
    }
    let out = api.post_auth("/api/v1/auth/logout", &first, json!({})).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(api.validate(&first).await["error"], "session revoked", "revocation is checked every time");
    assert_eq!(api.validate(&second).await["valid"], true, "another session is untouched");
    clock.advance(Duration::minutes(16));
    assert_eq!(api.validate(&second).await["error"], "token expired", "expiry is checked every time");
    app.stop().await;
}
