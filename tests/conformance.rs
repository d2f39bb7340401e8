//! Conformance of the HTTP surface, read from the OpenAPI document itself so that every
//! route added later is covered: request bodies are JSON objects only, error messages
//! speak JSON rather than Rust, metric labels stay bounded whatever clients send, and a
//! CORS preflight to a path that does not exist answers 404.

mod common;

use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb};
use mana_core_auth::auth::UserChange;
use mana_core_auth::events::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Words of Rust's type vocabulary that must never reach a client.
const RUST_WORDS: [&str; 12] =
    ["struct", "enum ", "Option", "String", "Vec<", "u64", "i64", "u32", "i32", "f64", "usize", "Body"];

/// An admin's access token (an admin may call every route of the document).
async fn admin_token(app: &TestApp, api: &Api) -> String {
    let email = unique_email("admin");
    api.register(&email).await;
    app.state.auth().change_user(&email, UserChange::SetRole(Role::Admin)).await.expect("role");
    // A role change revokes sessions started up to its instant.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    api.login(&email, PASSWORD).await.text("accessToken")
}

async fn openapi(api: &Api) -> Value {
    api.get("/api/v1/openapi.json").await.body
}

/// Every operation of the document with a JSON request body: method, path with its
/// parameters filled in, and the body's schema with references resolved.
/// Routes whose body is read as raw bytes: Stripe's webhook is verified against its
/// signature before anything is parsed, and answers 400 `INVALID_SIGNATURE` (or 503 without
/// a webhook secret) to anything unsigned, whatever its shape (tests/purchases.rs).
const RAW_BODY_ROUTES: [&str; 1] = ["/api/v1/webhooks/stripe"];

fn body_operations(doc: &Value) -> Vec<(Method, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if RAW_BODY_ROUTES.contains(&path.as_str()) {
            continue;
        }
        for (method, operation) in item.as_object().expect("path item") {
            let Ok(method) = method.to_uppercase().parse::<Method>() else { continue };
            let Some(schema) = operation.pointer("/requestBody/content/application~1json/schema") else {
                continue;
            };
            let filled = path
                .split('/')
                .map(|part| if part.starts_with('{') { "0190f0e4-7b7a-7000-8000-000000000001" } else { part })
                .collect::<Vec<_>>()
                .join("/");
            found.push((method, filled, resolve(doc, schema)));
        }
    }
    assert!(found.len() >= 5, "the document lists the JSON routes: {found:?}");
    found
}

fn resolve(doc: &Value, schema: &Value) -> Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            resolve(doc, doc.pointer(pointer).unwrap_or_else(|| panic!("{reference} resolves")))
        }
        None => schema.clone(),
    }
}

async fn send(api: &Api, token: &str, method: &Method, path: &str, body: &str) -> common::api::Answer {
    let request = api
        .http
        .request(method.clone(), format!("{}{path}", api.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned());
    api.send(request).await
}

fn message_text(body: &Value) -> String {
    match &body["message"] {
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "),
        other => other.as_str().unwrap_or_default().to_owned(),
    }
}

#[tokio::test]
async fn every_json_route_refuses_arrays_and_scalars_as_bodies_in_the_error_shape() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let token = admin_token(&app, &api).await;
        let doc = openapi(&api).await;
        for (method, path, _) in body_operations(&doc) {
            for body in
                [r#"["a@example.com","correct horse battery","A"]"#, r#"[1,"app","d",null,null]"#, "[]"]
                    .into_iter()
                    .chain([r#""text""#, "1", "true", "null", " [ {} ] "])
            {
                let answer = send(&api, &token, &method, &path, body).await;
                assert_eq!(
                    answer.status,
                    StatusCode::BAD_REQUEST,
                    "{method} {path} {body}: {:?}",
                    answer.body
                );
                assert_eq!(answer.body["error"], "VALIDATION_FAILED", "{method} {path} {body}");
                assert_eq!(answer.body["statusCode"], 400);
                assert_eq!(
                    message_text(&answer.body),
                    "The request body must be a JSON object",
                    "{method} {path} {body}"
                );
            }
        }
        // The array that registered an account on the old main registers nothing.
        let login = api.login("a@example.com", "correct horse battery").await;
        assert_eq!(login.status, StatusCode::UNAUTHORIZED, "{:?}", login.body);
        app.stop().await;
    }
}

#[tokio::test]
async fn mistyped_fields_are_refused_in_json_words_without_rust_type_names() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.app_config()).await;
    let api = Api::new(&app.base);
    let token = admin_token(&app, &api).await;
    let doc = openapi(&api).await;
    let wrong_values =
        [json!([1, 2]), json!({"nested": [1]}), json!(1.5), json!(-1), json!("text"), json!(true)];
    let mut refused = 0;
    for (method, path, schema) in body_operations(&doc) {
        let properties = schema["properties"].as_object().cloned().unwrap_or_default();
        assert!(!properties.is_empty(), "{method} {path}: the body schema names its fields");
        for (name, _) in properties {
            for wrong in &wrong_values {
                let body = json!({ name.clone(): wrong }).to_string();
                let answer = send(&api, &token, &method, &path, &body).await;
                // A wrong value for one field may be a right one for another (`"text"`
                // for a string): what matters is no server error and JSON words.
                assert!(
                    !answer.status.is_server_error(),
                    "{method} {path} {body}: {} {:?}",
                    answer.status,
                    answer.body
                );
                if answer.status == StatusCode::BAD_REQUEST {
                    refused += 1;
                    let text = message_text(&answer.body);
                    for word in RUST_WORDS {
                        assert!(!text.contains(word), "{method} {path} {body}: {text:?} names {word:?}");
                    }
                }
            }
        }
    }
    assert!(refused > 50, "most wrong values are refused as bad requests ({refused})");
    let unknown = send(&api, &token, &Method::POST, "/api/v1/auth/login", r#"{"emial":"x"}"#).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(message_text(&unknown.body).contains("unknown field `emial`"), "{:?}", unknown.body);
    app.stop().await;
}

#[tokio::test]
async fn invented_methods_and_paths_add_no_metric_series() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.app_config()).await;
    let api = Api::new(&app.base);
    for (i, path) in ["/api/v1/health", "/api/v1/nowhere-1", "/api/v1/nowhere-2", "/x"].iter().enumerate() {
        let method = Method::from_bytes(format!("ZZTEST{i}").as_bytes()).expect("method");
        let answer = api.send(api.http.request(method, app.url(path))).await;
        assert!(matches!(answer.status.as_u16(), 404 | 405), "{path}: {}", answer.status);
        api.get(&format!("/api/v1/unknown-{i}")).await;
    }
    let text = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let http: Vec<_> =
        scrape.samples.iter().filter(|s| s.metric.starts_with("mana_core_auth_http_request")).collect();
    assert!(!http.is_empty(), "{text}");
    let standard = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other"];
    for sample in &http {
        let method = sample.labels.get("method").expect("a method label");
        assert!(standard.contains(&method), "method label {method:?}");
        let route = sample.labels.get("route").expect("a route label");
        assert!(route == "unmatched" || !route.contains("nowhere") && !route.contains("unknown-"), "{route}");
    }
    assert!(
        http.iter()
            .any(|s| s.labels.get("method") == Some("other")
                && s.labels.get("route") == Some("/api/v1/health")),
        "the invented method on a known route is counted as `other`"
    );
    assert!(http.iter().any(|s| s.labels.get("route") == Some("unmatched")));
    app.stop().await;
}

#[tokio::test]
async fn a_preflight_to_an_unknown_path_answers_404_and_to_a_known_path_204() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.app_config()).await;
    let preflight = |path: &str| {
        app.client
            .request(Method::OPTIONS, app.url(path))
            .header("origin", "http://localhost:3000")
            .header("access-control-request-method", "POST")
            .send()
    };
    let unknown = preflight("/api/v1/does-not-exist").await.expect("preflight");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let body: Value = unknown.json().await.expect("error body");
    assert_eq!(body["error"], "NOT_FOUND");
    assert_eq!(body["path"], "/api/v1/does-not-exist");

    let known = preflight("/api/v1/auth/login").await.expect("preflight");
    assert_eq!(known.status(), StatusCode::NO_CONTENT);
    assert_eq!(known.headers()["access-control-allow-origin"], "http://localhost:3000");
    app.stop().await;
}

/// The document is exact for every operation, whoever adds it: a unique operation id,
/// security stated (`[]` when public), 401 where a token is needed, 400/413/415 where a
/// JSON body is read, required fields listed, and a schema for every JSON answer.
#[test]
fn every_operation_of_the_document_states_its_security_statuses_and_schemas() {
    let doc = serde_json::to_value(mana_core_auth::api::openapi_document()).expect("json");
    assert_eq!(doc["servers"][0]["url"], "/");
    let mut ids = std::collections::HashSet::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            operations += 1;
            let name = format!("{method} {path}");
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{name}: no operationId"));
            assert!(ids.insert(id.to_owned()), "{name}: operationId {id} is used twice");
            let security = operation["security"].as_array().unwrap_or_else(|| panic!("{name}: no security"));
            let responses = operation["responses"].as_object().expect("responses");
            let has = |status: &str| responses.contains_key(status);
            if security.iter().any(|s| s.get("bearer").is_some()) {
                assert!(has("401"), "{name}: needs a token but does not document 401");
            } else {
                assert!(security.is_empty(), "{name}: public operations say `security: []`");
            }
            if let Some(body) = operation.pointer("/requestBody/content/application~1json/schema") {
                for status in ["400", "413", "415"] {
                    assert!(has(status), "{name}: reads a JSON body but does not document {status}");
                }
                let schema = resolve(&doc, body);
                if RAW_BODY_ROUTES.contains(&path.as_str()) {
                    continue;
                }
                assert_eq!(schema["type"], "object", "{name}: bodies are objects");
                assert_eq!(schema["additionalProperties"], false, "{name}: unknown fields are refused");
            }
            for (status, response) in responses {
                assert!(response["description"].is_string(), "{name} {status}: no description");
                if let Some(json) = response.pointer("/content/application~1json") {
                    assert!(json.get("schema").is_some(), "{name} {status}: JSON answer without a schema");
                }
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = response.pointer("/content/application~1json/schema/$ref");
                    assert_eq!(
                        schema.and_then(Value::as_str),
                        Some("#/components/schemas/ErrorBody"),
                        "{name} {status}: errors use the one error shape"
                    );
                }
            }
            assert!(has("503"), "{name}: every operation may answer 503");
        }
    }
    assert!(operations >= 30, "{operations} operations");
    let use_body = &doc["components"]["schemas"]["UseBody"];
    assert_eq!(use_body["required"], json!(["amount", "appId", "description"]));
    assert_eq!(use_body["properties"]["amount"]["minimum"], 1);
}
