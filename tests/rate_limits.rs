//! Rate limits on Redis, shared by two spawned server processes; and what happens when
//! Redis goes away. Distinct clients use distinct loopback addresses (127.0.0.0/8).

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use common::api::{Api, PASSWORD, unique_email};
use common::{OwnRedis, RedisPrefix, ServerProcess, TestDb, api_from, redis_url};
use reqwest::StatusCode;
use serde_json::json;

fn env(db: &TestDb, redis: &str, prefix: &str) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("KEY_ENCRYPTION_SECRET".to_owned(), db.secret()),
        ("REDIS_URL".to_owned(), redis.to_owned()),
        ("REDIS_KEY_PREFIX".to_owned(), prefix.to_owned()),
    ])
}

fn ip(last: u8, block: u8) -> IpAddr {
    IpAddr::from([127, 0, block, last])
}

/// Sends `n + 1` requests alternating between the servers; asserts the first `n` pass
/// the limit and the last is refused in the error shape with the limit headers.
async fn trips_at<F, Fut>(n: usize, name: &str, mut send: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = common::api::Answer>,
{
    for i in 0..n {
        let answer = send(i).await;
        // A login refused by the brute-force guard (429 `LOGIN_THROTTLED`) passed the limit.
        assert_ne!(answer.body["error"], "RATE_LIMITED", "{name}: request {} of {n} was limited", i + 1);
        assert!(answer.status.as_u16() < 500, "{name}: {}", answer.body);
    }
    let over = send(n).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{name}: request {} passed: {}", n + 1, over.body);
    assert_eq!(over.body["error"], "RATE_LIMITED", "{name}");
    let retry: u64 = over.headers["retry-after"].to_str().expect("text").parse().expect("seconds");
    assert!(retry >= 1, "{name}");
    for header in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy"] {
        assert!(over.headers.contains_key(header), "{name}: {header}");
    }
    assert_eq!(over.headers["ratelimit-limit"], n.to_string().as_str(), "{name}");
    assert_eq!(over.headers["ratelimit-remaining"], "0", "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_trips_at_its_number_across_two_processes() {
    let db = TestDb::postgres().await;
    let prefix = RedisPrefix::new(&redis_url());
    prefix.ensure_reachable().await;
    let servers = [
        ServerProcess::spawn(&env(&db, &redis_url(), &prefix.prefix)),
        ServerProcess::spawn(&env(&db, &redis_url(), &prefix.prefix)),
    ];
    let on = |server: usize, source: IpAddr| api_from(&servers[server % 2].base, source);

    // Register: 10 per hour per address.
    trips_at(10, "register", |i| {
        let api = on(i, ip(1, 10));
        async move {
            api.post("/api/v1/auth/register", json!({"email": unique_email("reg"), "password": PASSWORD}))
                .await
        }
    })
    .await;

    // Login: 5 per minute per (address, e-mail).
    let email = unique_email("login");
    on(0, ip(2, 10)).register(&email).await;
    trips_at(5, "login per address and e-mail", |i| {
        let (api, email) = (on(i, ip(3, 10)), email.clone());
        async move { api.login(&email, "some wrong password").await }
    })
    .await;
    assert_ne!(
        on(0, ip(4, 10)).login(&email, PASSWORD).await.body["error"],
        "RATE_LIMITED",
        "another address is not limited"
    );

    // Login: 30 per minute per address, whatever the e-mail.
    trips_at(30, "login per address", |i| {
        let api = on(i, ip(5, 10));
        async move { api.login(&format!("nobody{i}@example.com"), "some wrong password").await }
    })
    .await;

    // Refresh: 60 per minute per session.
    let mut token = on(0, ip(6, 10)).register(&unique_email("refresh")).await.text("refreshToken");
    for i in 0..60 {
        let answer = on(i, ip(7, 10 + (i / 50) as u8)).refresh(&token).await;
        assert_eq!(answer.status, StatusCode::OK, "refresh {i}: {}", answer.body);
        token = answer.text("refreshToken");
    }
    let over = on(0, ip(8, 10)).refresh(&token).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "the 61st refresh of one session");

    // Forgot-password: 3 per 5 minutes per e-mail, 10 per hour per address.
    trips_at(3, "forgot-password per e-mail", |i| {
        let api = on(i, ip(9 + i as u8, 10));
        async move { api.post("/api/v1/auth/forgot-password", json!({"email": "someone@example.com"})).await }
    })
    .await;
    trips_at(10, "forgot-password per address", |i| {
        let api = on(i, ip(20, 10));
        async move {
            api.post("/api/v1/auth/forgot-password", json!({"email": format!("x{i}@example.com")})).await
        }
    })
    .await;

    // Every other route: 100 per minute per address, or per user with a token.
    trips_at(100, "default per address", |i| {
        let api = on(i, ip(21, 10));
        async move { api.get("/api/v1/openapi.json").await }
    })
    .await;
    let user = on(0, ip(22, 10)).register(&unique_email("user")).await.text("accessToken");
    trips_at(100, "default per user", |i| {
        let (api, user) = (on(i, ip(23 + (i % 5) as u8, 10)), user.clone());
        async move { api.get_auth("/api/v1/auth/sessions", &user).await }
    })
    .await;

    // Exempt routes.
    let api = on(0, ip(30, 10));
    for _ in 0..150 {
        assert_eq!(api.post("/api/v1/auth/validate", json!({"token": user})).await.status, StatusCode::OK);
    }
    for path in ["/api/v1/health", "/api/v1/auth/jwks"] {
        for _ in 0..110 {
            assert_eq!(api.get(path).await.status, StatusCode::OK, "{path}");
        }
    }

    // A flood is recorded once per window, not once per request.
    let events = common::count(
        &mana_core_auth::db::Db::connect(&db.config, 1).await.expect("db"),
        "SELECT count(*) FROM events WHERE event_type = 'RateLimitExceeded'",
    )
    .await;
    assert!((1..=9).contains(&events), "{events} rate_limited events for 9 tripped limits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_hits_on_two_processes_let_through_the_limit_and_no_more() {
    let db = TestDb::postgres().await;
    let prefix = RedisPrefix::new(&redis_url());
    prefix.ensure_reachable().await;
    let servers = [
        ServerProcess::spawn(&env(&db, &redis_url(), &prefix.prefix)),
        ServerProcess::spawn(&env(&db, &redis_url(), &prefix.prefix)),
    ];
    let email = unique_email("burst");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let api = api_from(&servers[i % 2].base, ip(1, 11));
        let email = email.clone();
        tasks.spawn(async move { api.login(&email, "a wrong password").await });
    }
    let mut passed = 0;
    while let Some(answer) = tasks.join_next().await {
        // Checked (401) or refused by the brute-force guard (429 `LOGIN_THROTTLED`): passed.
        if answer.expect("task").body["error"] != "RATE_LIMITED" {
            passed += 1;
        }
    }
    assert_eq!(passed, 5, "5 per (address, e-mail) across both processes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_dies_requests_keep_succeeding_and_shared_limits_return_with_it() {
    let db = TestDb::postgres().await;
    let mut redis = OwnRedis::start();
    let server = ServerProcess::spawn(&env(&db, &redis.url(), "outage:"));
    let api = Api::new(&server.base);
    let ready = |api: Api| async move {
        api.get("/api/v1/ready").await.body["rateLimiter"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(ready(api.clone()).await, "redis");
    let token = api.register(&unique_email("outage")).await.text("accessToken");

    redis.kill();
    for i in 0..20 {
        let answer = api.get_auth("/api/v1/auth/sessions", &token).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i} with Redis down: {}", answer.body);
    }
    assert_eq!(api.register(&unique_email("during")).await.status, StatusCode::CREATED);
    assert_eq!(ready(api.clone()).await, "degraded");
    let text =
        reqwest::get(format!("{}/metrics", server.base)).await.expect("metrics").text().await.expect("text");
    assert!(text.contains("mana_core_auth_rate_limiter_degraded 1"), "{text}");
    // The per-process limiter still limits.
    trips_at(5, "login with Redis down", |_| {
        let api = api_from(&server.base, ip(1, 12));
        async move { api.login("someone@example.com", "a wrong password").await }
    })
    .await;
    let warnings = server.log_text().matches("Redis unreachable").count();
    assert_eq!(warnings, 1, "the outage is logged once:\n{}", server.log_text());

    redis.restart();
    let back = common::eventually(Duration::from_secs(10), || {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let _ = api.get_auth("/api/v1/auth/sessions", &token).await;
            api.get("/api/v1/ready").await.body["rateLimiter"] == "redis"
        }
    })
    .await;
    assert!(back, "the limiter returns to Redis");
    // Shared counting again: a fresh Redis starts from zero for this subject.
    trips_at(5, "login after Redis is back", |_| {
        let api = api_from(&server.base, ip(2, 12));
        async move { api.login("someone-else@example.com", "a wrong password").await }
    })
    .await;
}

#[tokio::test]
async fn refresh_is_limited_per_address_whatever_the_token_on_both_engines() {
    use mana_core_auth::security::rate_limit::{Limit, Rule};
    use mana_core_auth::security::refresh::RefreshToken;
    for engine in common::ENGINES {
        let db = TestDb::new(engine).await;
        let prefix = RedisPrefix::new(&redis_url());
        prefix.ensure_reachable().await;
        let mut config = db.app_config();
        config.rate_limits.enabled = true;
        config.rate_limits.rules.insert(Rule::RefreshIp, Limit { max: 5, window: Duration::from_secs(60) });
        config.redis_url = Some(mana_core_auth::config::Secret::new(redis_url()));
        config.redis_key_prefix = prefix.prefix.clone();
        let app = common::TestApp::spawn(config).await;
        let owner = api_from(&app.base, ip(1, 13));
        let token = owner.register(&unique_email("refresh-ip")).await.text("refreshToken");
        let random = || RefreshToken::generate(uuid::Uuid::new_v4()).encode();

        // Five guesses from one address are tried, well-formed or not, whatever the body.
        let attacker = api_from(&app.base, ip(2, 13));
        for i in 0..3 {
            let answer = attacker.refresh(&random()).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{engine:?}: guess {i}: {}", answer.body);
            assert_eq!(answer.body["error"], "INVALID_REFRESH_TOKEN", "{engine:?}");
        }
        assert_eq!(attacker.refresh("not a token").await.status, StatusCode::UNAUTHORIZED, "{engine:?}");
        let malformed = attacker
            .send(
                attacker
                    .http
                    .post(format!("{}/api/v1/auth/refresh", attacker.base))
                    .header("content-type", "application/json")
                    .body("{\"refreshToken\":"),
            )
            .await;
        assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{engine:?}: {}", malformed.body);

        // The sixth is refused before any token is looked at, even a good one.
        for presented in [random(), "x".to_owned(), token.clone()] {
            let over = attacker.refresh(&presented).await;
            assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{engine:?}: {}", over.body);
            assert_eq!(over.body["error"], "RATE_LIMITED", "{engine:?}");
            let retry: u64 = over.headers["retry-after"].to_str().expect("text").parse().expect("seconds");
            assert!(retry >= 1, "{engine:?}");
            assert_eq!(over.headers["ratelimit-limit"], "5", "{engine:?}");
        }

        // Another address is not affected.
        let other = api_from(&app.base, ip(3, 13));
        let answer = other.refresh(&random()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{engine:?}: {}", answer.body);
        assert_eq!(answer.body["error"], "INVALID_REFRESH_TOKEN", "{engine:?}");
        let answer = owner.refresh(&token).await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: the owner's address: {}", answer.body);
        app.stop().await;
    }
}
