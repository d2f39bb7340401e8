//! Credit requests as clients send them (the bodies, with their OpenAPI schemas), their
//! validation into typed inputs by `TryFrom` (the error lists every problem, each naming
//! its field), and the fingerprints that identify a request under its idempotency key:
//! every fingerprint of a spend or an admin operation is computed by [`fingerprint`].

mod admin;
mod analytics;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::domain::{Credits, valid_app_id};

pub use admin::{
    AdjustBody, AdminAdjust, AdminGrant, AdminOperation, AdminRefund, AdminRequest, GrantBody, RefundBody,
};
pub use analytics::Point;

/// The largest amount one request may move.
pub const MAX_AMOUNT: i64 = 1_000_000;
/// The largest serialized `metadata` object.
pub const MAX_METADATA_BYTES: usize = 4096;

/// `POST /credits/use` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UseBody {
    /// Integer from 1 to 1,000,000.
    #[schema(value_type = i64, required = true, minimum = 1, maximum = 1_000_000)]
    amount: Option<Value>,
    /// 1 to 64 characters of `[A-Za-z0-9._-]`.
    #[schema(value_type = String, required = true, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    app_id: Option<String>,
    /// At most 500 characters.
    #[schema(value_type = String, required = true, max_length = 500)]
    description: Option<String>,
    /// A JSON object of at most 4 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// 1 to 255 printable ASCII characters; also accepted as the `Idempotency-Key` header
    /// (both must then agree).
    #[schema(pattern = "^[!-~]{1,255}$")]
    idempotency_key: Option<String>,
}

/// A validated `POST /credits/use`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpendRequest {
    pub amount: Credits,
    pub app_id: String,
    pub description: String,
    pub metadata: Option<Value>,
    pub idempotency_key: Option<String>,
}

/// A spend is its body and its `Idempotency-Key` header, which must agree with a key in
/// the body. The error lists each problem.
impl TryFrom<(UseBody, Option<&str>)> for SpendRequest {
    type Error = Vec<String>;

    fn try_from((body, header_key): (UseBody, Option<&str>)) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let amount = parse_amount(body.amount.as_ref(), "amount", &mut problems);
        let app_id = match body.app_id {
            None => {
                problems.push("appId is required".into());
                None
            }
            Some(id) if valid_app_id(&id) => Some(id),
            Some(_) => {
                problems.push("appId must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'".into());
                None
            }
        };
        let description = match body.description {
            None => {
                problems.push("description is required".into());
                None
            }
            Some(text) if text.chars().count() <= 500 => Some(text),
            Some(_) => {
                problems.push("description must be at most 500 characters".into());
                None
            }
        };
        let metadata = match body.metadata {
            None | Some(Value::Null) => None,
            Some(Value::Object(map))
                if serde_json::to_vec(&map).is_ok_and(|b| b.len() <= MAX_METADATA_BYTES) =>
            {
                Some(Value::Object(map))
            }
            Some(Value::Object(_)) => {
                problems.push(format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"));
                None
            }
            Some(_) => {
                problems.push("metadata must be a JSON object".into());
                None
            }
        };
        let idempotency_key = match (body.idempotency_key.as_deref(), header_key) {
            (Some(a), Some(b)) if a != b => {
                problems.push("idempotencyKey and the Idempotency-Key header differ".into());
                None
            }
            (key, header) => key.or(header).and_then(|k| match parse_key(k) {
                Ok(key) => Some(key),
                Err(message) => {
                    problems.push(message);
                    None
                }
            }),
        };
        match (amount, app_id, description) {
            (Some(amount), Some(app_id), Some(description)) if problems.is_empty() => {
                Ok(Self { amount, app_id, description, metadata, idempotency_key })
            }
            _ => Err(problems),
        }
    }
}

impl SpendRequest {
    /// What identifies the request for idempotency: `amount`, `appId`, `description` and
    /// `metadata` compared as JSON values (object keys in any order).
    pub fn fingerprint(&self) -> String {
        fingerprint(&serde_json::json!({
            "amount": self.amount,
            "appId": self.app_id,
            "description": self.description,
            "metadata": self.metadata,
        }))
    }
}

/// An integer amount from 1 to [`MAX_AMOUNT`]; strings, floats, zero and negatives are
/// refused (no coercion of `"3"`).
fn parse_amount(value: Option<&Value>, field: &str, problems: &mut Vec<String>) -> Option<Credits> {
    match value.and_then(Value::as_i64) {
        Some(n) if (1..=MAX_AMOUNT).contains(&n) && value.is_some_and(Value::is_i64) => Some(Credits::new(n)),
        _ if value.is_none() => {
            problems.push(format!("{field} is required"));
            None
        }
        _ => {
            problems.push(format!("{field} must be an integer from 1 to {MAX_AMOUNT}"));
            None
        }
    }
}

/// A signed, non-zero integer amount within ±[`MAX_AMOUNT`] (adjustments).
fn parse_signed_amount(value: Option<&Value>, problems: &mut Vec<String>) -> Option<Credits> {
    match value.filter(|v| v.is_i64()).and_then(Value::as_i64) {
        Some(n) if n != 0 && n.abs() <= MAX_AMOUNT => Some(Credits::new(n)),
        _ if value.is_none() => {
            problems.push("amount is required".into());
            None
        }
        _ => {
            problems.push(format!("amount must be a non-zero integer from -{MAX_AMOUNT} to {MAX_AMOUNT}"));
            None
        }
    }
}

/// An idempotency key: 1 to 255 printable ASCII characters.
fn parse_key(raw: &str) -> Result<String, String> {
    let ok = (1..=255).contains(&raw.len()) && raw.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("idempotencyKey must be 1 to 255 printable ASCII characters".into())
    }
}

/// The fingerprint of a request: the SHA-256 of the canonical form (object keys sorted,
/// recursively) of the JSON value of what identifies it. The same request with its
/// fields in another order has the same fingerprint. Fingerprints are stored in the log
/// with their keys: what goes into each must never change.
fn fingerprint(value: &Value) -> String {
    let digest = Sha256::digest(canonical(value).to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut sorted = Map::new();
            for key in keys {
                sorted.insert(key.clone(), canonical(&map[key]));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(body: Value, header: Option<&str>) -> Result<SpendRequest, Vec<String>> {
        let body: UseBody = serde_json::from_value(body).expect("a spend body");
        SpendRequest::try_from((body, header))
    }

    #[test]
    fn amounts_must_be_integers_in_range() {
        for bad in [json!("3"), json!(1.5), json!(0), json!(-5), json!(1_000_001)] {
            let errors = parse(json!({"amount": bad, "appId": "chat", "description": ""}), None).unwrap_err();
            assert_eq!(errors, ["amount must be an integer from 1 to 1000000"], "{bad}");
        }
        assert_eq!(
            parse(json!({"amount": 1_000_000, "appId": "chat", "description": ""}), None).unwrap().amount,
            Credits::new(1_000_000)
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = parse(
            json!({"amount": 0, "appId": "bad id!", "description": "d".repeat(501), "metadata": [1]}),
            None,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        let too_big =
            json!({"amount": 1, "appId": "a", "description": "", "metadata": {"x": "y".repeat(5000)}});
        assert_eq!(parse(too_big, None).unwrap_err().len(), 1);
    }

    #[test]
    fn header_and_body_keys_must_agree() {
        let body = json!({"amount": 1, "appId": "a", "description": "", "idempotencyKey": "k1"});
        assert!(parse(body.clone(), Some("k2")).is_err());
        assert_eq!(parse(body, Some("k1")).unwrap().idempotency_key.as_deref(), Some("k1"));
        let header_only = json!({"amount": 1, "appId": "a", "description": ""});
        assert_eq!(parse(header_only, Some("k3")).unwrap().idempotency_key.as_deref(), Some("k3"));
    }

    #[test]
    fn fingerprints_ignore_key_order_but_not_values() {
        let a = parse(
            json!({"amount": 1, "appId": "a", "description": "", "metadata": {"x": 1, "y": [1, {"b": 2, "a": 1}]}}),
            None,
        );
        let b = parse(
            json!({"amount": 1, "appId": "a", "description": "", "metadata": {"y": [1, {"a": 1, "b": 2}], "x": 1}}),
            None,
        );
        assert_eq!(a.unwrap().fingerprint(), b.unwrap().fingerprint());
        let c = parse(json!({"amount": 2, "appId": "a", "description": ""}), None).unwrap();
        let d = parse(json!({"amount": 1, "appId": "a", "description": ""}), None).unwrap();
        assert_ne!(c.fingerprint(), d.fingerprint());
    }

    #[test]
    fn spend_fingerprints_stay_what_the_log_already_holds() {
        // Computed before spends were parsed from their body type: a retry after an
        // upgrade must still match the fingerprint stored with its key.
        let body = json!({"amount": 5, "appId": "chat", "description": "d",
            "metadata": {"b": 1, "a": [1, {"y": 2, "x": 1}]}, "idempotencyKey": "k"});
        assert_eq!(
            parse(body, None).unwrap().fingerprint(),
            "d9401c4d313931033ed78b215c65b858f73977372415799e417c02a6bc4506bf"
        );
    }
}
