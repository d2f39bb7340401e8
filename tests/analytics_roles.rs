//! Analytics roles (`mana-core-auth analytics-role`, PostgreSQL): a role reads the read
//! models (schema `read`) and nothing in `public`, writes nowhere, and a role limited to
//! an app sees only that app's rows and no purchase (purchases belong to no app), while an
//! unrestricted role sees every purchase; the service itself still sees everything; a replay's
//! swap keeps every grant and policy; drop removes the role; other roles are left alone.

mod common;

use std::sync::Arc;

use common::api::{Api, unique_email};
use common::stripe::{self as fake, FakeStripe};
use common::{TestApp, TestDb, run_cli};
use mana_core_auth::audit::replay::{self, ReplaySettings};
use mana_core_auth::auth::UserChange;
use mana_core_auth::clock::SystemClock;
use mana_core_auth::events::auth::Role;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, PgConnection};

/// `mana-core-auth analytics-role ...`: exit code, standard output and error.
fn role_binary(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    run_cli(db, &[&["analytics-role"], args].concat())
}

/// A connection as `role` (the test server trusts local connections).
async fn connect_as(db: &TestDb, role: &str) -> PgConnection {
    let url = db.url();
    let (scheme, rest) = url.split_once("://").expect("url");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    PgConnection::connect(&format!("{scheme}://{role}@{host}")).await.expect("connect as the role")
}

/// Runs `sql` and says whether PostgreSQL refused it for lack of privilege.
async fn denied(conn: &mut PgConnection, sql: &str) -> bool {
    match sqlx::query(sql).execute(&mut *conn).await {
        Ok(_) => false,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => true,
        Err(other) => panic!("{sql}: {other}"),
    }
}

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A purchase completed through a signed webhook, and a webhook for an unknown intent.
async fn purchase(app: &TestApp, stripe: &FakeStripe) {
    let api = Api::new(&app.base);
    let token = api.register(&unique_email("buyer")).await.text("accessToken");
    let started =
        api.post_auth("/api/v1/credits/purchase", &token, json!({"packageId": "credits-100"})).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let intent = stripe.created().pop().expect("an intent");
    for body in [
        fake::succeeded("evt_paid", &intent, 100, "eur"),
        fake::succeeded(
            "evt_stranger",
            &json!({"id": "pi_unknown", "amount": 100, "metadata": {}}),
            100,
            "eur",
        ),
    ] {
        let answer = api
            .send(
                api.http
                    .post(format!("{}/api/v1/webhooks/stripe", api.base))
                    .header("stripe-signature", fake::signature(&body))
                    .body(body.clone()),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
}

/// Spends in two apps.
async fn usage(app: &TestApp) {
    let api = Api::new(&app.base);
    for n in 0..2 {
        let token = api.register(&unique_email(&format!("analytics{n}"))).await.text("accessToken");
        for app_id in ["chat", "pic", "chat"] {
            let body = json!({"amount": 2, "appId": app_id, "description": "x"});
            let spent = api.post_auth("/api/v1/credits/use", &token, body).await;
            assert_eq!(spent.status, StatusCode::CREATED, "{}", spent.body);
        }
    }
    let admin = unique_email("admin");
    api.register(&admin).await;
    app.state.auth().change_user(&admin, UserChange::SetRole(Role::Admin)).await.expect("role");
    let head = app.state.store().committed_head().await.expect("head");
    assert!(app.state.projector().wait_for(head, std::time::Duration::from_secs(10)).await);
}

#[tokio::test]
async fn analytics_roles_read_the_read_models_only_and_app_roles_only_their_apps_rows() {
    let db = TestDb::postgres().await;
    let stripe = FakeStripe::start().await;
    let mut config = db.app_config();
    stripe.configure(&mut config);
    let app = TestApp::spawn(config).await;
    purchase(&app, &stripe).await;
    usage(&app).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (all, chat) = (format!("bi_{}", &tag[..12]), format!("chat_{}", &tag[..12]));
    let password = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(password.path(), "s3cret-for-the-job\n").expect("write");

    let (code, out, err) = role_binary(&db, &["create", &all]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("created"), "{out}");
    let path = password.path().to_str().expect("path");
    let (code, out, err) = role_binary(&db, &["create", &chat, "--app", "pic", "--password-file", path]);
    assert_eq!(code, 0, "{out} {err}");
    // A second run updates: now limited to chat.
    let (code, out, err) = role_binary(&db, &["create", &chat, "--app", "chat"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("updated"), "{out}");

    let mut owner = PgConnection::connect(&db.url()).await.expect("owner");
    let read_tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'read' ORDER BY tablename",
    )
    .fetch_all(&mut owner)
    .await
    .expect("read tables");
    let public_tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .fetch_all(&mut owner)
    .await
    .expect("public tables");
    for table in
        ["users", "sessions", "balances", "credit_transactions", "usage_stats", "projection_checkpoints"]
    {
        assert!(read_tables.iter().any(|t| t == table), "{table} is a read model in `read`: {read_tables:?}");
    }
    for table in ["events", "outbox", "signing_key_secrets", "personal_keys"] {
        assert!(public_tables.iter().any(|t| t == table), "{table} stays in `public`: {public_tables:?}");
    }

    for role in [&all, &chat] {
        let mut conn = connect_as(&db, role).await;
        for table in &read_tables {
            // Unqualified names resolve through the database's search_path.
            count(&mut conn, &format!("SELECT count(*) FROM {table}")).await;
            assert!(denied(&mut conn, &format!("DELETE FROM read.{table}")).await, "{role}: delete {table}");
        }
        assert!(
            denied(&mut conn, "INSERT INTO read.usage_stats VALUES ('u', 'chat', '2026-01-01', 1, 1)").await
        );
        assert!(denied(&mut conn, "UPDATE read.balances SET balance = 0").await, "{role}");
        assert!(denied(&mut conn, "TRUNCATE read.credit_transactions").await, "{role}");
        assert!(denied(&mut conn, "CREATE TABLE read.mine (x int)").await, "{role}");
        assert!(denied(&mut conn, "CREATE TABLE public.mine (x int)").await, "{role}");
        for table in &public_tables {
            assert!(
                denied(&mut conn, &format!("SELECT 1 FROM public.{table} LIMIT 1")).await,
                "{role}: {table}"
            );
        }
        let position =
            count(&mut conn, "SELECT count(*) FROM projection_checkpoints WHERE position > 0").await;
        assert!(position > 0, "{role}: the projections' positions are readable");
    }

    let mut as_all = connect_as(&db, &all).await;
    let mut as_chat = connect_as(&db, &chat).await;
    let every = count(&mut owner, "SELECT count(*) FROM credit_transactions").await;
    let chat_rows = count(&mut owner, "SELECT count(*) FROM credit_transactions WHERE app_id = 'chat'").await;
    assert!(chat_rows > 0 && chat_rows < every);
    assert_eq!(count(&mut as_all, "SELECT count(*) FROM credit_transactions").await, every);
    assert_eq!(count(&mut as_chat, "SELECT count(*) FROM credit_transactions").await, chat_rows);
    assert_eq!(
        count(&mut as_chat, "SELECT count(*) FROM credit_transactions WHERE app_id <> 'chat'").await,
        0
    );
    assert_eq!(count(&mut as_chat, "SELECT count(*) FROM usage_stats WHERE app_id <> 'chat'").await, 0);
    assert!(count(&mut as_chat, "SELECT count(*) FROM usage_stats").await > 0);
    assert!(count(&mut as_chat, "SELECT count(*) FROM ledger_postings").await > 0);
    assert_eq!(
        count(&mut as_chat, "SELECT count(*) FROM ledger_postings WHERE app_id IS DISTINCT FROM 'chat'")
            .await,
        0
    );
    assert_eq!(
        count(&mut as_all, "SELECT count(*) FROM ledger_postings").await,
        count(&mut owner, "SELECT count(*) FROM ledger_postings").await
    );
    assert_eq!(
        count(&mut as_all, "SELECT count(*) FROM usage_stats").await,
        count(&mut owner, "SELECT count(*) FROM usage_stats").await
    );

    // Purchases belong to no app: an app-limited role sees none, an unrestricted one all.
    for table in ["purchases", "stripe_events"] {
        let every = count(&mut owner, &format!("SELECT count(*) FROM {table}")).await;
        assert!(every > 0, "{table} has rows");
        assert_eq!(count(&mut as_all, &format!("SELECT count(*) FROM {table}")).await, every, "{table}");
        assert_eq!(count(&mut as_chat, &format!("SELECT count(*) FROM {table}")).await, 0, "{table}");
    }

    // The service (the tables' owner) is not subject to the policies.
    let api = Api::new(&app.base);
    let token = api.register(&unique_email("after")).await.text("accessToken");
    let spent = api
        .post_auth("/api/v1/credits/use", &token, json!({"amount": 1, "appId": "pic", "description": "x"}))
        .await;
    assert_eq!(spent.status, StatusCode::CREATED, "{}", spent.body);
    let history = api.get_auth("/api/v1/credits/transactions", &token).await;
    assert_eq!(history.body.as_array().map(Vec::len), Some(2), "bonus and the pic spend: {}", history.body);

    // A replay's swap keeps every grant and policy.
    let settings = ReplaySettings { batch_size: 100 };
    replay::apply(app.state.store(), Arc::new(SystemClock), settings).await.expect("replay --apply");
    let mut as_chat = connect_as(&db, &chat).await;
    assert_eq!(
        count(&mut as_chat, "SELECT count(*) FROM credit_transactions").await,
        count(&mut owner, "SELECT count(*) FROM credit_transactions WHERE app_id = 'chat'").await
    );
    assert!(denied(&mut as_chat, "SELECT 1 FROM public.events").await);
    assert_eq!(count(&mut as_chat, "SELECT count(*) FROM purchases").await, 0);
    let mut as_all = connect_as(&db, &all).await;
    assert_eq!(
        count(&mut as_all, "SELECT count(*) FROM purchases").await,
        count(&mut owner, "SELECT count(*) FROM purchases").await
    );

    // Usage errors, and roles that are not ours.
    let (code, _, err) = role_binary(&db, &["create", "Bad-Name"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = role_binary(&db, &["create", "ok_name", "--app", "x'; DROP TABLE users; --"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = role_binary(&db, &["drop", "postgres"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not an analytics role"), "{err}");
    let (code, _, err) = role_binary(&db, &["create", "postgres"]);
    assert_eq!(code, 1, "{err}");

    drop((as_all, as_chat));
    for role in [&all, &chat] {
        let (code, out, err) = role_binary(&db, &["drop", role]);
        assert_eq!(code, 0, "{out} {err}");
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut owner)
            .await
            .expect("roles");
        assert_eq!(left, 0, "{role} dropped");
    }
    let policies =
        count(&mut owner, "SELECT count(*) FROM pg_policies WHERE policyname LIKE 'analytics_%'").await;
    assert_eq!(policies, 0, "the policies went with the roles");
    let (code, _, _) = role_binary(&db, &["drop", &all]);
    assert_eq!(code, 1, "dropping it again: not found");
    app.stop().await;
}

#[tokio::test]
async fn on_sqlite_the_analytics_role_command_is_a_usage_error() {
    let db = TestDb::sqlite();
    let (code, _, err) = role_binary(&db, &["create", "reader"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("PostgreSQL"), "{err}");
}
