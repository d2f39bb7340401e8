//! Stripe's side of a purchase: creating a PaymentIntent over its REST API, checking a
//! webhook's `Stripe-Signature`, and reading the few fields of its events the ledger
//! needs (ids, amounts, currency, type; never billing details).

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::config::Secret;

/// How far a signature's timestamp may be from now (Stripe's default tolerance).
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// Why Stripe could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error("Stripe could not be reached or was too slow: {0}")]
    Unreachable(String),
    #[error("Stripe answered {status}")]
    Refused { status: u16 },
    #[error("Stripe's answer was not understood: {0}")]
    BadAnswer(String),
}

/// A PaymentIntent as created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedIntent {
    pub id: String,
    pub client_secret: String,
}

/// What a PaymentIntent is created with.
pub struct IntentRequest<'a> {
    pub amount: i64,
    pub currency: &'a str,
    pub purchase_id: &'a str,
    pub user_id: &'a str,
    pub package_id: &'a str,
}

/// Stripe's REST API at a base URL.
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
}

impl StripeClient {
    /// A client with the secret key, giving up on a request after `timeout`.
    pub fn new(base: &str, key: Secret, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), key })
    }

    /// `POST /v1/payment_intents` under `idempotency_key`: a retry with the same key gets
    /// the same intent back from Stripe, never a second one.
    pub async fn create_payment_intent(
        &self,
        request: &IntentRequest<'_>,
        idempotency_key: &str,
    ) -> Result<CreatedIntent, StripeError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("amount", &request.amount.to_string())
            .append_pair("currency", request.currency)
            .append_pair("metadata[purchase_id]", request.purchase_id)
            .append_pair("metadata[user_id]", request.user_id)
            .append_pair("metadata[package_id]", request.package_id)
            .append_pair("automatic_payment_methods[enabled]", "true")
            .finish();
        let answer = self
            .http
            .post(format!("{}/v1/payment_intents", self.base))
            .bearer_auth(self.key.expose())
            .header("Idempotency-Key", idempotency_key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| StripeError::Unreachable(e.without_url().to_string()))?;
        let status = answer.status();
        if !status.is_success() {
            return Err(StripeError::Refused { status: status.as_u16() });
        }
        let json: Value =
            answer.json().await.map_err(|e| StripeError::BadAnswer(e.without_url().to_string()))?;
        let text = |field: &str| json.get(field).and_then(Value::as_str).map(str::to_owned);
        match (text("id"), text("client_secret")) {
            (Some(id), Some(client_secret)) if id.starts_with("pi_") => {
                Ok(CreatedIntent { id, client_secret })
            }
            _ => Err(StripeError::BadAnswer("no PaymentIntent id or client secret".to_owned())),
        }
    }
}

/// Why a webhook's signature was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// Checks `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]` as Stripe specifies: an
/// HMAC-SHA256 under the whole `whsec_...` secret over `<t>.<raw body>`, any `v1` may match
/// (secret rotation), compared in constant time, `t` within the tolerance of `now`.
pub fn verify_signature(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (name, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match name {
            "t" if timestamp.is_none() => {
                timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?);
            }
            "v1" => signatures.push(decode_hex(value).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - timestamp).abs() > SIGNATURE_TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    // `ct_eq` on every candidate, without stopping at the first match.
    let matched = signatures.iter().fold(subtle::Choice::from(0), |any, candidate| {
        any | subtle::ConstantTimeEq::ct_eq(expected.as_slice(), candidate)
    });
    if bool::from(matched) { Ok(()) } else { Err(SignatureError::Mismatch) }
}

/// The signature header for `body` at `timestamp` (tests, the benchmark and the fake).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// What a handled Stripe event asks for, from its `type` and `data.object`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Succeeded {
        payment_intent_id: String,
        amount_received: i64,
        currency: String,
        purchase_id: Option<String>,
    },
    PaymentFailed {
        payment_intent_id: String,
        canceled: bool,
        purchase_id: Option<String>,
    },
    Refunded {
        payment_intent_id: String,
        amount: i64,
        amount_refunded: i64,
    },
    DisputeWithdrawn {
        payment_intent_id: String,
        dispute_id: String,
        amount: i64,
    },
    DisputeReinstated {
        payment_intent_id: String,
        dispute_id: String,
        amount: i64,
    },
    /// A type this service does not handle.
    Ignored,
}

impl Action {
    /// The PaymentIntent the event is about.
    pub fn payment_intent_id(&self) -> Option<&str> {
        match self {
            Self::Succeeded { payment_intent_id, .. }
            | Self::PaymentFailed { payment_intent_id, .. }
            | Self::Refunded { payment_intent_id, .. }
            | Self::DisputeWithdrawn { payment_intent_id, .. }
            | Self::DisputeReinstated { payment_intent_id, .. } => Some(payment_intent_id),
            Self::Ignored => None,
        }
    }

    /// The purchase id the PaymentIntent's metadata names (its own events carry it).
    pub fn metadata_purchase(&self) -> Option<&str> {
        match self {
            Self::Succeeded { purchase_id, .. } | Self::PaymentFailed { purchase_id, .. } => {
                purchase_id.as_deref()
            }
            _ => None,
        }
    }
}

/// A Stripe event, reduced to what the ledger needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeEvent {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    pub action: Action,
}

/// Reads a Stripe event (`{id, object: "event", type, created, data: {object}}`); `None`
/// when it is not one or a handled type lacks a field it needs.
pub fn parse_event(body: &[u8]) -> Option<StripeEvent> {
    let event: Value = serde_json::from_slice(body).ok()?;
    let text = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).map(str::to_owned);
    let number = |v: &Value, field: &str| v.get(field).and_then(Value::as_i64);
    if event.get("object").and_then(Value::as_str) != Some("event") {
        return None;
    }
    let id = text(&event, "id").filter(|id| !id.is_empty() && id.len() <= 255)?;
    let event_type = text(&event, "type").filter(|t| t.len() <= 255)?;
    let created = number(&event, "created")?;
    let object = event.get("data")?.get("object")?;
    if !object.is_object() {
        return None;
    }
    let metadata_purchase = || object.get("metadata").and_then(|m| text(m, "purchase_id"));
    let intent_of = |v: &Value| match v.get("payment_intent") {
        Some(Value::String(id)) => Some(id.clone()),
        // An expanded PaymentIntent.
        Some(Value::Object(map)) => map.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    let action = match event_type.as_str() {
        "payment_intent.succeeded" => Action::Succeeded {
            payment_intent_id: text(object, "id")?,
            amount_received: number(object, "amount_received")?,
            currency: text(object, "currency")?.to_ascii_lowercase(),
            purchase_id: metadata_purchase(),
        },
        "payment_intent.payment_failed" | "payment_intent.canceled" => Action::PaymentFailed {
            payment_intent_id: text(object, "id")?,
            canceled: event_type == "payment_intent.canceled",
            purchase_id: metadata_purchase(),
        },
        "charge.refunded" => Action::Refunded {
            payment_intent_id: intent_of(object)?,
            amount: number(object, "amount")?,
            amount_refunded: number(object, "amount_refunded")?,
        },
        "charge.dispute.funds_withdrawn" => Action::DisputeWithdrawn {
            payment_intent_id: intent_of(object)?,
            dispute_id: text(object, "id")?,
            amount: number(object, "amount")?,
        },
        "charge.dispute.funds_reinstated" => Action::DisputeReinstated {
            payment_intent_id: intent_of(object)?,
            dispute_id: text(object, "id")?,
            amount: number(object, "amount")?,
        },
        _ => Action::Ignored,
    };
    Some(StripeEvent { id, event_type, created, action })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    #[test]
    fn a_signature_made_with_the_secret_verifies_and_any_v1_may_match() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(SECRET, 1_000, body);
        assert_eq!(verify_signature(SECRET, Some(&header), body, 1_100), Ok(()));
        let rotated = format!("{},{}", sign("whsec_old", 1_000, body), header.replace("t=1000,", ""));
        assert_eq!(verify_signature(SECRET, Some(&rotated), body, 1_000), Ok(()));
    }

    #[test]
    fn wrong_stale_tampered_and_malformed_signatures_are_refused() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(SECRET, 1_000, body);
        assert_eq!(
            verify_signature("whsec_other", Some(&header), body, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify_signature(SECRET, Some(&header), body, 1_301), Err(SignatureError::Stale));
        assert_eq!(
            verify_signature(SECRET, Some(&header), br#"{"id":"evt_2"}"#, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify_signature(SECRET, None, body, 1_000), Err(SignatureError::Missing));
        assert_eq!(
            verify_signature(SECRET, Some("t=abc,v1=00"), body, 1_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(verify_signature(SECRET, Some("t=1000"), body, 1_000), Err(SignatureError::Malformed));
    }

    #[test]
    fn a_refund_event_names_its_intent_and_cumulative_amount() {
        let body = br#"{"id":"evt_r","object":"event","type":"charge.refunded","created":1,
            "data":{"object":{"id":"ch_1","object":"charge","payment_intent":"pi_1","amount":1000,"amount_refunded":250,
            "billing_details":{"name":"Someone","email":"a@b.c"}}}}"#;
        let event = parse_event(body).expect("an event");
        assert_eq!(
            event.action,
            Action::Refunded { payment_intent_id: "pi_1".into(), amount: 1_000, amount_refunded: 250 }
        );
    }
}
