//! The people, the story and the readers the ledger tests share: a realistic mix of
//! credit operations over two days on a manual clock, through the HTTP API, and typed
//! reads of the tables and the log on either engine.

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use mana_core_auth::auth::UserChange;
use mana_core_auth::clock::{Clock, ManualClock};
use mana_core_auth::db::Db;
use mana_core_auth::events::auth::Role;
use mana_core_auth::events::credits::CreditEvent;
use mana_core_auth::events::{LogCursor, RecordedEvent};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

use crate::common::api::{Api, PASSWORD, unique_email};
use crate::common::{TestApp, catch_up_to};

/// 2026-11-02T08:00:00Z, a Monday.
pub fn day_one() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).single().expect("a time")
}

/// A signed-in account.
pub struct Person {
    pub email: String,
    pub id: String,
    pub token: String,
}

impl Person {
    /// Registers someone (the signup bonus) and keeps their first token.
    pub async fn register(api: &Api, tag: &str) -> Self {
        let email = unique_email(tag);
        let answer = api.register(&email).await;
        Self {
            id: answer.body["user"]["id"].as_str().expect("id").to_owned(),
            token: answer.text("accessToken"),
            email,
        }
    }

    /// Registers someone with a role (given through the library, as `user set-role` does).
    pub async fn with_role(app: &TestApp, api: &Api, clock: &ManualClock, role: Role) -> Self {
        let mut person = Self::register(api, role.as_str()).await;
        person.promote(app, api, clock, role).await;
        person
    }

    /// Gives the person a role and signs in again (the change revoked their sessions).
    pub async fn promote(&mut self, app: &TestApp, api: &Api, clock: &ManualClock, role: Role) {
        app.state.auth().change_user(&self.email, UserChange::SetRole(role)).await.expect("role");
        clock.advance(Duration::milliseconds(5));
        self.sign_in(api).await;
    }

    /// A fresh token (access tokens last 15 minutes of the manual clock).
    pub async fn sign_in(&mut self, api: &Api) {
        self.token = api.login(&self.email, PASSWORD).await.text("accessToken");
    }

    /// Spends `amount` in `app`; the spend's transaction id.
    pub async fn spend(&self, api: &Api, amount: i64, app: &str) -> String {
        let body = json!({"amount": amount, "appId": app, "description": "ledger test"});
        let answer = api.post_auth("/api/v1/credits/use", &self.token, body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "spend: {}", answer.body);
        answer.body["transaction"]["id"].as_str().expect("id").to_owned()
    }

    /// Reads the balance (which grants the day's free credits when due).
    pub async fn balance(&self, api: &Api) -> Value {
        let answer = api.get_auth("/api/v1/credits/balance", &self.token).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }

    /// The whole history, newest first.
    pub async fn history(&self, api: &Api) -> Vec<Value> {
        let answer = api.get_auth("/api/v1/credits/transactions?limit=100", &self.token).await;
        answer.body.as_array().expect("a list").clone()
    }

    /// An admin operation (`grant`, `adjust` or `refund`) with a fresh key.
    pub async fn operate(&self, api: &Api, operation: &str, mut body: Value) -> Value {
        body["reason"] = json!("ledger test");
        body["idempotencyKey"] = json!(uuid::Uuid::new_v4().to_string());
        let answer = api.post_auth(&format!("/api/v1/admin/credits/{operation}"), &self.token, body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{operation}: {}", answer.body);
        answer.body["transaction"].clone()
    }
}

/// The story's accounts and the instants the tests look back at.
pub struct Story {
    pub admin: Person,
    pub people: Vec<Person>,
    /// An hour after day one's spends, before its refunds and adjustments.
    pub mid_day_one: DateTime<Utc>,
    /// Bob's spend across both pools, refunded in part.
    pub bob_chat: String,
}

/// Signup bonuses; an operator's paid and free grants; spends in three apps, one across
/// both pools; refunds (in part and whole) and adjustments both ways; then a day later the
/// daily grants (on a balance read and before spends), more spends and a refund.
pub async fn realistic(app: &TestApp, api: &Api, clock: &ManualClock) -> Story {
    let mut admin = Person::with_role(app, api, clock, Role::Admin).await;
    let mut people = Vec::new();
    for tag in ["ann", "bob", "cid"] {
        people.push(Person::register(api, tag).await);
    }
    let (ann, bob, cid) = (&people[0], &people[1], &people[2]);
    admin.operate(api, "grant", json!({"userId": bob.id, "amount": 500, "pool": "paid"})).await;
    admin.operate(api, "grant", json!({"userId": ann.id, "amount": 100, "pool": "free"})).await;
    ann.spend(api, 30, "chat").await;
    let ann_picture = ann.spend(api, 20, "picture").await;
    let bob_chat = bob.spend(api, 160, "chat").await;
    cid.spend(api, 40, "calendar").await;

    clock.advance(Duration::hours(1));
    let mid_day_one = clock.now();
    clock.advance(Duration::hours(1));
    admin.sign_in(api).await;
    admin.operate(api, "refund", json!({"transactionId": bob_chat, "amount": 12})).await;
    admin.operate(api, "refund", json!({"transactionId": ann_picture})).await;
    admin.operate(api, "adjust", json!({"userId": ann.id, "amount": 20, "pool": "paid"})).await;
    admin.operate(api, "adjust", json!({"userId": bob.id, "amount": -1, "pool": "free"})).await;

    clock.advance(Duration::days(1));
    admin.sign_in(api).await;
    for person in &mut people {
        person.sign_in(api).await;
    }
    let (ann, bob, cid) = (&people[0], &people[1], &people[2]);
    ann.balance(api).await;
    bob.spend(api, 10, "calendar").await;
    let cid_chat = cid.spend(api, 7, "chat").await;
    admin.operate(api, "refund", json!({"transactionId": cid_chat, "amount": 3})).await;
    settle(app).await;
    Story { admin, people, mid_day_one, bob_chat }
}

/// Waits until every projection has applied everything committed.
pub async fn settle(app: &TestApp) {
    let head = app.state.store().committed_head().await.expect("head");
    catch_up_to(app.state.projector(), head).await;
}

/// Every event of the log, in global order.
pub async fn log(app: &TestApp) -> Vec<RecordedEvent> {
    app.state.store().read_after(LogCursor::START, 100_000).await.expect("read the log")
}

/// The credit events of the log: (event, its decoded form).
pub fn credit_events(events: &[RecordedEvent]) -> Vec<(&RecordedEvent, CreditEvent)> {
    events
        .iter()
        .filter(|e| e.aggregate_type == "credit_account")
        .map(|e| (e, e.decode::<CreditEvent>().expect("a credit event")))
        .collect()
}

/// The transaction id of a credit event that moves credits.
pub fn transaction_id(event: &CreditEvent) -> Option<&str> {
    match event {
        CreditEvent::CreditAccountOpened { .. } => None,
        CreditEvent::CreditsGranted { transaction_id, .. }
        | CreditEvent::CreditsSpent { transaction_id, .. }
        | CreditEvent::CreditsRefunded { transaction_id, .. }
        | CreditEvent::CreditsAdjusted { transaction_id, .. }
        | CreditEvent::CreditsPurchased { transaction_id, .. }
        | CreditEvent::PurchaseCreditsReversed { transaction_id, .. } => Some(transaction_id),
    }
}

/// A posting as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPosting {
    pub transaction_id: String,
    pub line: i64,
    pub account: String,
    pub amount: i64,
    pub kind: String,
    pub app_id: Option<String>,
    pub cursor: LogCursor,
}

macro_rules! fetch_all {
    ($db:expr, $sql:expr, $map:expr) => {
        match $db {
            Db::Postgres(pool) => {
                sqlx::query($sql).fetch_all(pool).await.expect("query").iter().map($map).collect::<Vec<_>>()
            }
            Db::Sqlite { reader, .. } => {
                sqlx::query($sql).fetch_all(reader).await.expect("query").iter().map($map).collect::<Vec<_>>()
            }
        }
    };
}

/// Every posting, by transaction and line.
pub async fn postings(db: &Db) -> Vec<StoredPosting> {
    let sql = "SELECT transaction_id, CAST(line AS BIGINT), account, amount, type, app_id, txid, position \
               FROM ledger_postings ORDER BY transaction_id, line";
    fetch_all!(db, sql, |r| StoredPosting {
        transaction_id: r.get(0),
        line: r.get(1),
        account: r.get(2),
        amount: r.get(3),
        kind: r.get(4),
        app_id: r.get(5),
        cursor: LogCursor { txid: r.get(6), position: r.get(7) },
    })
}

/// The `balances` projection: user id → (free, paid).
pub async fn balances(db: &Db) -> HashMap<String, (i64, i64)> {
    let sql = "SELECT user_id, free_credits_remaining, balance FROM balances";
    fetch_all!(db, sql, |r| (r.get::<String, _>(0), (r.get::<i64, _>(1), r.get::<i64, _>(2))))
        .into_iter()
        .collect()
}

/// `credit_transactions`: id → type.
pub async fn transaction_types(db: &Db) -> HashMap<String, String> {
    fetch_all!(db, "SELECT id, type FROM credit_transactions", |r| (
        r.get::<String, _>(0),
        r.get::<String, _>(1)
    ))
    .into_iter()
    .collect()
}
