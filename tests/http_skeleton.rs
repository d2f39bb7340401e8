//! The HTTP envelope over real HTTP on both engines: health and readiness, the error
//! shape for routing errors, security headers, CORS, request ids, metrics, OpenAPI.

mod common;

use common::{ENGINES, Engine, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::Value;

const SECURITY_HEADERS: [&str; 12] = [
    "content-security-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "origin-agent-cluster",
    "referrer-policy",
    "strict-transport-security",
    "x-content-type-options",
    "x-dns-prefetch-control",
    "x-download-options",
    "x-frame-options",
    "x-permitted-cross-domain-policies",
    "x-xss-protection",
];

/// Asserts the one error shape and returns the body.
pub async fn assert_error_shape(response: reqwest::Response, status: u16, code: &str, path: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["statusCode"], status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].is_string() || body["message"].is_array(), "{body}");
    assert_eq!(body["path"], path, "{body}");
    let timestamp = body["timestamp"].as_str().expect("timestamp");
    chrono::DateTime::parse_from_rfc3339(timestamp).expect("RFC 3339 timestamp");
    assert!(body["requestId"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn health_answers_ok_with_a_timestamp() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let response = app.client.get(app.url("/api/v1/health")).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], "ok");
        chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().expect("timestamp"))
            .expect("RFC 3339");
        app.stop().await;
    }
}

#[tokio::test]
async fn readiness_reports_the_database_and_each_projection() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let response = app.client.get(app.url("/api/v1/ready")).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::OK, "{engine:?}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], "ready");
        assert_eq!(body["database"], if engine == Engine::Postgres { "postgres" } else { "sqlite" });
        let names: Vec<_> =
            body["projections"].as_array().expect("list").iter().map(|p| p["name"].clone()).collect();
        assert!(names.contains(&Value::from("streams")), "{body}");
        app.stop().await;
    }
}

#[tokio::test]
async fn readiness_answers_503_in_the_error_shape_when_the_database_is_gone() {
    let db = TestDb::postgres().await;
    let app = TestApp::spawn(db.app_config()).await;
    let name = db.url().rsplit('/').next().expect("name").to_owned();
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&common::admin_url()).await.expect("admin");
    sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)")).execute(&mut admin).await.expect("drop");

    let response = app.client.get(app.url("/api/v1/ready")).send().await.expect("request");
    let body = assert_error_shape(response, 503, "SERVICE_UNAVAILABLE", "/api/v1/ready").await;
    assert_eq!(body["message"][0], "database does not answer", "{body}");
    // Liveness is not readiness: the process still answers.
    let health = app.client.get(app.url("/api/v1/health")).send().await.expect("request");
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_use_the_error_shape() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let response = app.client.get(app.url("/api/v1/nope?x=1")).send().await.expect("request");
        assert_error_shape(response, 404, "NOT_FOUND", "/api/v1/nope").await;

        let response = app.client.delete(app.url("/api/v1/health")).send().await.expect("request");
        assert!(response.headers().contains_key("allow"));
        assert_error_shape(response, 405, "METHOD_NOT_ALLOWED", "/api/v1/health").await;
        app.stop().await;
    }
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.app_config()).await;
    for path in ["/api/v1/health", "/api/v1/missing"] {
        let response = app.client.get(app.url(path)).send().await.expect("request");
        for header in SECURITY_HEADERS {
            assert!(response.headers().contains_key(header), "{path}: {header} missing");
        }
        assert_eq!(response.headers()["x-frame-options"], "DENY");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(!response.headers().contains_key("x-powered-by"));
    }
    app.stop().await;
}

#[tokio::test]
async fn cors_allows_configured_origins_and_refuses_others() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.app_config()).await;
    let allowed = "http://localhost:3000";

    let simple =
        app.client.get(app.url("/api/v1/health")).header("origin", allowed).send().await.expect("request");
    assert_eq!(simple.headers()["access-control-allow-origin"], allowed);
    assert_eq!(simple.headers()["access-control-allow-credentials"], "true");
    let exposed = simple.headers()["access-control-expose-headers"].to_str().expect("text").to_owned();
    for header in ["x-request-id", "retry-after", "ratelimit-limit", "idempotent-replayed"] {
        assert!(exposed.contains(header), "{header} not exposed: {exposed}");
    }

    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/health"))
        .header("origin", allowed)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,idempotency-key,x-request-id")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(preflight.headers()["access-control-allow-origin"], allowed);
    let allowed_headers =
        preflight.headers()["access-control-allow-headers"].to_str().expect("text").to_owned();
    for header in ["authorization", "content-type", "idempotency-key", "x-request-id"] {
        assert!(allowed_headers.contains(header), "{header} not allowed: {allowed_headers}");
    }

    let evil = "https://evil.example";
    let refused =
        app.client.get(app.url("/api/v1/health")).header("origin", evil).send().await.expect("request");
    assert!(!refused.headers().contains_key("access-control-allow-origin"));
    let refused_preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/health"))
        .header("origin", evil)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(refused_preflight.status(), StatusCode::NO_CONTENT);
    assert!(!refused_preflight.headers().contains_key("access-control-allow-origin"));
    app.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.app_config()).await;
    let given = app
        .client
        .get(app.url("/api/v1/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("request");
    assert_eq!(given.headers()["x-request-id"], "abc-123");
    let unsafe_id = "line\tbreak";
    let replaced = app
        .client
        .get(app.url("/api/v1/nope"))
        .header("x-request-id", unsafe_id)
        .send()
        .await
        .expect("request");
    let id = replaced.headers()["x-request-id"].to_str().expect("text").to_owned();
    assert_ne!(id, unsafe_id);
    let body: Value = replaced.json().await.expect("json");
    assert_eq!(body["requestId"], id.as_str(), "the error body names the same request id");
    app.stop().await;
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        for _ in 0..3 {
            app.client.get(app.url("/api/v1/health")).send().await.expect("request");
        }
        app.client.get(app.url("/api/v1/missing")).send().await.expect("request");
        let response = app.client.get(app.url("/metrics")).send().await.expect("metrics");
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.expect("text");
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let value = |name: &str, labels: &[(&str, &str)]| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
                .map(|s| s.value.clone())
        };
        assert!(
            matches!(value("mana_core_auth_http_requests_total", &[("route", "/api/v1/health"), ("status", "200")]),
                Some(prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n)) if n >= 3.0),
            "{text}"
        );
        assert!(
            value("mana_core_auth_http_requests_total", &[("route", "unmatched"), ("status", "404")])
                .is_some()
        );
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| { s.metric.starts_with("mana_core_auth_http_request_duration_seconds") })
        );
        assert!(
            value("mana_core_auth_projection_lag_events", &[("projection", "streams")]).is_some(),
            "{text}"
        );
        assert!(
            value("mana_core_auth_projection_position", &[("projection", "streams")]).is_some(),
            "{text}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn the_openapi_document_describes_the_routes() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.app_config()).await;
    let doc: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    assert!(doc["paths"]["/api/v1/health"]["get"].is_object());
    assert!(doc["paths"]["/api/v1/ready"]["get"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    app.stop().await;
}
