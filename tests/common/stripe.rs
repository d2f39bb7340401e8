//! A small fake of Stripe's API on loopback (port 0): `POST /v1/payment_intents` checked
//! as Stripe would (Bearer key, form fields, an `Idempotency-Key` whose retry with the
//! same parameters answers the same intent and with others is refused), and signed
//! webhook events in Stripe's shapes for the tests to deliver.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mana_core_auth::config::Secret;
use mana_core_auth::credits::stripe::sign;
use parking_lot::Mutex;
use serde_json::{Value, json};

pub const SECRET_KEY: &str = "sk_test_fake_key";
pub const WEBHOOK_SECRET: &str = "whsec_test_secret";

/// How the fake answers a creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// 500 to every request.
    Down,
    /// Answers after this long.
    Slow(Duration),
}

#[derive(Default)]
struct Inner {
    /// Idempotency key → (form fields, answer).
    idempotent: HashMap<String, (Vec<(String, String)>, Value)>,
    /// Intents created (not replays).
    created: Vec<Value>,
    /// Requests refused, with the reason (what Stripe would have said).
    refused: Vec<String>,
}

/// The fake server.
#[derive(Clone)]
pub struct FakeStripe {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
    mode: Arc<Mutex<Mode>>,
    next: Arc<AtomicU64>,
}

impl FakeStripe {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let fake = Self {
            base,
            inner: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Normal)),
            next: Arc::new(AtomicU64::new(1)),
        };
        let app = Router::new()
            .route("/v1/payment_intents", axum::routing::post(create_intent))
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    /// Intents created (each once, whatever the retries).
    pub fn created(&self) -> Vec<Value> {
        self.inner.lock().created.clone()
    }

    /// Requests the fake refused, with why.
    pub fn refused(&self) -> Vec<String> {
        self.inner.lock().refused.clone()
    }

    /// Points a configuration at this fake, with both secrets and a short timeout.
    pub fn configure(&self, config: &mut mana_core_auth::config::Config) {
        config.payments.stripe_api_base = self.base.clone();
        config.payments.stripe_secret_key = Some(Secret::new(SECRET_KEY));
        config.payments.stripe_webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
        config.payments.stripe_timeout = Duration::from_secs(1);
    }
}

fn refuse(fake: &FakeStripe, status: StatusCode, why: &str) -> Response {
    fake.inner.lock().refused.push(why.to_owned());
    (status, axum::Json(json!({"error": {"type": "invalid_request_error", "message": why}}))).into_response()
}

async fn create_intent(State(fake): State<FakeStripe>, headers: HeaderMap, body: String) -> Response {
    let mode = *fake.mode.lock();
    match mode {
        Mode::Down => return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::Normal => {}
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if header("authorization").as_deref() != Some(&format!("Bearer {SECRET_KEY}")) {
        return refuse(&fake, StatusCode::UNAUTHORIZED, "invalid API key");
    }
    if header("content-type").as_deref() != Some("application/x-www-form-urlencoded") {
        return refuse(&fake, StatusCode::BAD_REQUEST, "not form-encoded");
    }
    let Some(key) = header("idempotency-key") else {
        return refuse(&fake, StatusCode::BAD_REQUEST, "no Idempotency-Key");
    };
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let amount = field("amount").and_then(|a| a.parse::<i64>().ok()).filter(|a| *a > 0);
    let required = ["metadata[purchase_id]", "metadata[user_id]", "metadata[package_id]"];
    if amount.is_none()
        || field("currency").as_deref() != Some("eur")
        || field("automatic_payment_methods[enabled]").as_deref() != Some("true")
        || required.iter().any(|name| field(name).is_none_or(|v| v.is_empty()))
    {
        return refuse(&fake, StatusCode::BAD_REQUEST, "missing or bad fields");
    }
    let mut inner = fake.inner.lock();
    if let Some((earlier, answer)) = inner.idempotent.get(&key) {
        if *earlier != fields {
            drop(inner);
            return refuse(&fake, StatusCode::BAD_REQUEST, "idempotency key reused with other parameters");
        }
        return axum::Json(answer.clone()).into_response();
    }
    let n = fake.next.fetch_add(1, Ordering::Relaxed);
    let id = format!("pi_fake_{n}");
    let answer = json!({
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "currency": "eur",
        "client_secret": format!("{id}_secret_{}", uuid::Uuid::new_v4().simple()),
        "status": "requires_payment_method",
        "metadata": {
            "purchase_id": field("metadata[purchase_id]"),
            "user_id": field("metadata[user_id]"),
            "package_id": field("metadata[package_id]"),
        },
    });
    inner.idempotent.insert(key, (fields, answer.clone()));
    inner.created.push(answer.clone());
    axum::Json(answer).into_response()
}

/// A Stripe event body.
pub fn event(id: &str, event_type: &str, object: Value) -> String {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "type": event_type,
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "data": {"object": object},
    })
    .to_string()
}

/// `payment_intent.succeeded` for an intent the fake created.
pub fn succeeded(event_id: &str, intent: &Value, amount_received: i64, currency: &str) -> String {
    let object = json!({
        "id": intent["id"], "object": "payment_intent", "amount": intent["amount"],
        "amount_received": amount_received, "currency": currency, "status": "succeeded",
        "metadata": intent["metadata"],
        "shipping": {"name": "Jane Doe", "address": {"line1": "1 Main St"}},
    });
    event(event_id, "payment_intent.succeeded", object)
}

/// `payment_intent.payment_failed`.
pub fn payment_failed(event_id: &str, intent: &Value) -> String {
    let object = json!({"id": intent["id"], "object": "payment_intent", "amount": intent["amount"],
        "currency": "eur", "status": "requires_payment_method", "metadata": intent["metadata"]});
    event(event_id, "payment_intent.payment_failed", object)
}

/// `charge.refunded` with the cumulative `amount_refunded`.
pub fn refunded(event_id: &str, intent: &Value, amount_refunded: i64) -> String {
    let object = json!({"id": format!("ch_{}", intent["id"].as_str().unwrap_or_default()), "object": "charge",
        "payment_intent": intent["id"], "amount": intent["amount"], "amount_refunded": amount_refunded,
        "currency": "eur", "refunded": amount_refunded == intent["amount"].as_i64().unwrap_or_default(),
        "billing_details": {"name": "Jane Doe", "email": "jane@example.com"}});
    event(event_id, "charge.refunded", object)
}

/// A dispute event (`charge.dispute.funds_withdrawn` or `..._reinstated`).
pub fn dispute(event_id: &str, event_type: &str, dispute_id: &str, intent: &Value, amount: i64) -> String {
    let object = json!({"id": dispute_id, "object": "dispute", "payment_intent": intent["id"],
        "charge": "ch_x", "amount": amount, "currency": "eur"});
    event(event_id, event_type, object)
}

/// The `Stripe-Signature` header of `body`, now, with the test secret.
pub fn signature(body: &str) -> String {
    sign(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), body.as_bytes())
}
