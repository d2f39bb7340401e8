//! The role table of docs/API.md ("Roles and admin routes") is enforced on every admin
//! route, on both engines: each of admin, auditor, service and user gets exactly what
//! the document's table says for the route's family, and a request without a token gets
//! 401. The expectations are read from the document itself, so the behaviour is checked
//! against the contract, not against the code's copy of it.
//!
//! A new admin route is one line of [`routes`]; a test fails while an admin route of the
//! OpenAPI document is missing there or from the document's list of routes.

mod common;

use std::collections::HashMap;

use common::api::{Api, PASSWORD, unique_email};
use common::{ENGINES, TestApp, TestDb, binary};
use mana_core_auth::auth::UserChange;
use mana_core_auth::events::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The roles, as the table's columns name them.
const ROLES: [Role; 4] = [Role::Admin, Role::Auditor, Role::Service, Role::User];

/// What an admin route needs from the world: a user to act on (and their address) and a
/// spend of theirs.
struct Target {
    user_id: String,
    email: String,
    spend_id: String,
}

impl Target {
    /// The route's path (or query) with its parameters filled in.
    fn fill(&self, template: &str) -> String {
        template
            .replace("{userId}", &self.user_id)
            .replace("{email}", &self.email)
            .replace("{transactionId}", &self.spend_id)
    }
}

/// One admin route: its family (as docs/API.md names it), method, path template (as the
/// OpenAPI document writes it), the narrowed grant it applies (the document's cell text),
/// the status it answers when let in, and a valid query and request body.
struct AdminRoute {
    family: &'static str,
    method: Method,
    path: &'static str,
    query: &'static str,
    admits_narrowed: Option<&'static str>,
    success: StatusCode,
    body: fn(&Target) -> Option<Value>,
}

fn route(
    family: &'static str,
    method: Method,
    path: &'static str,
    success: StatusCode,
    body: fn(&Target) -> Option<Value>,
) -> AdminRoute {
    AdminRoute { family, method, path, query: "", admits_narrowed: None, success, body }
}

/// A fresh idempotency key, so that every call is a new operation and not a replay.
fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Every admin route today. Add new ones here (one line each) and in docs/API.md.
fn routes() -> Vec<AdminRoute> {
    use StatusCode as S;
    const CREDITS: &str = "Credit operations";
    const AUDIT: &str = "Audit log";
    const READS: &str = "Admin reads";
    vec![
        route(AUDIT, Method::GET, "/api/v1/admin/events", S::OK, |_| None),
        AdminRoute {
            query: "?email={email}",
            ..route(READS, Method::GET, "/api/v1/admin/users", S::OK, |_| None)
        },
        route(READS, Method::GET, "/api/v1/admin/users/{userId}/balance", S::OK, |_| None),
        AdminRoute {
            admits_narrowed: Some("transactions of a user only"),
            ..route(READS, Method::GET, "/api/v1/admin/users/{userId}/transactions", S::OK, |_| None)
        },
        route(READS, Method::GET, "/api/v1/admin/users/{userId}/security-events", S::OK, |_| None),
        route(READS, Method::GET, "/api/v1/admin/users/{userId}/sessions", S::OK, |_| None),
        route(READS, Method::GET, "/api/v1/admin/credits/purchases", S::OK, |_| None),
        route(CREDITS, Method::POST, "/api/v1/admin/credits/grant", S::CREATED, |t| {
            Some(
                json!({"userId": t.user_id, "amount": 5, "pool": "paid", "reason": "roles", "idempotencyKey": key()}),
            )
        }),
        route(CREDITS, Method::POST, "/api/v1/admin/credits/adjust", S::CREATED, |t| {
            Some(
                json!({"userId": t.user_id, "amount": 1, "pool": "free", "reason": "roles", "idempotencyKey": key()}),
            )
        }),
        route(CREDITS, Method::POST, "/api/v1/admin/credits/refund", S::CREATED, |t| {
            Some(
                json!({"transactionId": t.spend_id, "amount": 1, "reason": "roles", "idempotencyKey": key()}),
            )
        }),
        route("Admin reads", Method::GET, "/api/v1/admin/ledger/trial-balance", S::OK, |_| None),
        // The service is bound to `chat` (SERVICE_APPS) and asks for its own figures.
        AdminRoute {
            admits_narrowed: Some("its own app only"),
            ..route("Usage analytics", Method::GET, "/api/v1/admin/usage", S::OK, |_| None)
        },
        // Last: it erases the target (only an admin gets through).
        route("User administration", Method::POST, "/api/v1/admin/users/{userId}/erase", S::OK, |_| None),
    ]
}

/// The part of docs/API.md between `<!-- {name}:begin -->` and `<!-- {name}:end -->`.
fn doc_section(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md");
    let doc = std::fs::read_to_string(path).expect("docs/API.md");
    let start = doc.find(&format!("<!-- {name}:begin -->")).unwrap_or_else(|| panic!("{name}:begin marker"));
    let end = doc.find(&format!("<!-- {name}:end -->")).unwrap_or_else(|| panic!("{name}:end marker"));
    doc[start..end].to_owned()
}

/// The name in bold at the start of a text (`**Audit log**: ...` → `Audit log`).
fn bold_name(text: &str) -> Option<&str> {
    text.trim().strip_prefix("**")?.split_once("**").map(|(name, _)| name)
}

/// The document's role table: family → role name → cell.
fn documented_table() -> HashMap<String, HashMap<String, String>> {
    let section = doc_section("roles");
    let rows: Vec<Vec<String>> = section
        .lines()
        .filter(|line| line.trim_start().starts_with('|') && !line.contains("---"))
        .map(|line| line.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect())
        .collect();
    let (header, body) = rows.split_first().expect("a header row");
    body.iter()
        .map(|row| {
            let family = bold_name(&row[0]).unwrap_or_else(|| panic!("family in bold: {row:?}")).to_owned();
            let cells = header[1..].iter().cloned().zip(row[1..].iter().cloned()).collect();
            (family, cells)
        })
        .collect()
}

/// What the document says `role` gets on `route`.
fn expected(table: &HashMap<String, HashMap<String, String>>, route: &AdminRoute, role: Role) -> StatusCode {
    let family =
        table.get(route.family).unwrap_or_else(|| panic!("no row {:?} in docs/API.md", route.family));
    let cell = family.get(role.as_str()).unwrap_or_else(|| panic!("no column {role:?} in docs/API.md"));
    match cell.as_str() {
        "✔" => route.success,
        "403" => StatusCode::FORBIDDEN,
        narrowed if route.admits_narrowed == Some(narrowed) => route.success,
        _ => StatusCode::FORBIDDEN,
    }
}

/// A signed-in user with `role`, made through the library's user administration.
async fn signed_in(app: &TestApp, api: &Api, role: Role) -> String {
    let email = unique_email(role.as_str());
    api.register(&email).await;
    if role != Role::User {
        app.state.auth().change_user(&email, UserChange::SetRole(role)).await.expect("role");
        // A role change revokes sessions started up to its instant.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let token = api.login(&email, PASSWORD).await.text("accessToken");
    assert_eq!(api.validate(&token).await["payload"]["role"], role.as_str(), "the token carries the role");
    token
}

async fn call(
    api: &Api,
    route: &AdminRoute,
    target: &Target,
    token: Option<&str>,
    body: Option<Value>,
) -> common::api::Answer {
    let url = format!("{}{}{}", api.base, target.fill(route.path), target.fill(route.query));
    let mut request = api.http.request(route.method.clone(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    api.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_answers_each_role_exactly_what_the_documented_table_says() {
    let table = documented_table();
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let email = unique_email("target");
        let registered = api.register(&email).await;
        let spend = api
            .post_auth(
                "/api/v1/credits/use",
                &registered.text("accessToken"),
                json!({"amount": 20, "appId": "chat", "description": "roles"}),
            )
            .await;
        assert_eq!(spend.status, StatusCode::CREATED, "{}", spend.body);
        let target = Target {
            user_id: registered.body["user"]["id"].as_str().expect("id").to_owned(),
            email,
            spend_id: spend.body["transaction"]["id"].as_str().expect("id").to_owned(),
        };
        let mut tokens = Vec::new();
        for role in ROLES {
            tokens.push((role, signed_in(&app, &api, role).await));
        }
        // The service speaks for `chat` (usage analytics: its own app only).
        let service = &tokens.iter().find(|(role, _)| *role == Role::Service).expect("a service").1;
        let service_id = api.validate(service).await["payload"]["sub"].as_str().expect("sub").to_owned();
        app.stop().await;
        let mut config = db.app_config();
        config.service_apps.insert(service_id, "chat".to_owned());
        let app = TestApp::spawn(config).await;
        let api = Api::new(&app.base);

        for route in routes() {
            let what = format!("{engine:?} {} {}", route.method, route.path);
            let anonymous = call(&api, &route, &target, None, (route.body)(&target)).await;
            assert_eq!(
                (anonymous.status, anonymous.body["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")),
                "{what} without a token: {}",
                anonymous.body
            );
            for (role, token) in &tokens {
                let want = expected(&table, &route, *role);
                let answer = call(&api, &route, &target, Some(token), (route.body)(&target)).await;
                assert_eq!(answer.status, want, "{what} as {role:?}: {}", answer.body);
                if want == StatusCode::FORBIDDEN {
                    assert_eq!(answer.body["error"], "FORBIDDEN", "{what} as {role:?}: the one error shape");
                    assert!(answer.body["message"].as_str().is_some_and(|m| m.contains(role.as_str())));
                    // The role is refused before the body is read: a bad body changes nothing.
                    let garbage =
                        call(&api, &route, &target, Some(token), Some(json!(["not", "a", "body"]))).await;
                    assert_eq!(garbage.status, StatusCode::FORBIDDEN, "{what} as {role:?} with a bad body");
                }
            }
        }
        app.stop().await;
    }
}

#[test]
fn every_admin_route_of_the_openapi_document_is_in_the_role_test_table_and_the_document() {
    let (_, openapi) = mana_core_auth::api::api_routes().split_for_parts();
    let openapi = serde_json::to_value(&openapi).expect("openapi as json");
    let mut served = Vec::new();
    for (path, operations) in openapi["paths"].as_object().expect("paths") {
        if path.starts_with("/api/v1/admin/") {
            for method in operations.as_object().expect("operations").keys() {
                served.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    served.sort();
    let mut tested: Vec<String> = routes().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    tested.sort();
    assert_eq!(served, tested, "every admin route is one line of routes() in tests/roles.rs, and only those");

    let listed = doc_section("role-routes");
    let families = documented_table();
    for route in routes() {
        assert!(families.contains_key(route.family), "{:?} is a family of the table", route.family);
        let line = listed
            .lines()
            .find(|line| line.trim_start_matches("- ").starts_with(&format!("**{}**", route.family)))
            .unwrap_or_else(|| panic!("docs/API.md lists the routes of {:?}", route.family));
        let name = format!("`{} {}`", route.method, route.path);
        assert!(line.contains(&name), "docs/API.md lists {name} under {:?}", route.family);
    }
}

#[tokio::test]
async fn the_user_cli_makes_an_auditor_whose_token_says_so() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let app = TestApp::spawn(db.app_config()).await;
        let email = unique_email("auditor");
        Api::new(&app.base).register(&email).await;
        app.stop().await;

        let output = std::process::Command::new(binary())
            .args(["user", "set-role", &email, "auditor"])
            .env_clear()
            .env("DATABASE_URL", db.url())
            .env("KEY_ENCRYPTION_SECRET", db.secret())
            .env("RATE_LIMITS", "off")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run the cli");
        assert!(output.status.success(), "{engine:?}: {}", String::from_utf8_lossy(&output.stderr));

        let app = TestApp::spawn(db.app_config()).await;
        let api = Api::new(&app.base);
        let token = api.login(&email, PASSWORD).await.text("accessToken");
        assert_eq!(api.validate(&token).await["payload"]["role"], "auditor", "{engine:?}");
        let session = api.get_auth("/api/v1/auth/session", &token).await;
        assert_eq!(session.body["user"]["role"], "auditor", "{engine:?}: {}", session.body);
        app.stop().await;
    }
}
