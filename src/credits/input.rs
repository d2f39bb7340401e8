//! Validated credit requests and request fingerprints for idempotency.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The largest amount one request may move.
pub const MAX_AMOUNT: i64 = 1_000_000;
/// The largest serialized `metadata` object.
pub const MAX_METADATA_BYTES: usize = 4096;

/// A validated `POST /credits/use`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpendRequest {
    pub amount: i64,
    pub app_id: String,
    pub description: String,
    pub metadata: Option<Value>,
    pub idempotency_key: Option<String>,
}

impl SpendRequest {
    /// Validates every field; the error lists each problem. `header_key` is the
    /// `Idempotency-Key` header, which must agree with a key in the body.
    pub fn parse(
        amount: Option<&Value>,
        app_id: Option<&str>,
        description: Option<&str>,
        metadata: Option<&Value>,
        body_key: Option<&str>,
        header_key: Option<&str>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let amount = parse_amount(amount, "amount", &mut problems);
        let app_id = match app_id {
            None => {
                problems.push("appId is required".into());
                None
            }
            Some(id) if valid_app_id(id) => Some(id.to_owned()),
            Some(_) => {
                problems.push("appId must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'".into());
                None
            }
        };
        let description = match description {
            None => {
                problems.push("description is required".into());
                None
            }
            Some(text) if text.chars().count() <= 500 => Some(text.to_owned()),
            Some(_) => {
                problems.push("description must be at most 500 characters".into());
                None
            }
        };
        let metadata = match metadata {
            None | Some(Value::Null) => None,
            Some(Value::Object(map))
                if serde_json::to_vec(map).is_ok_and(|b| b.len() <= MAX_METADATA_BYTES) =>
            {
                Some(Value::Object(map.clone()))
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
        let idempotency_key = match (body_key, header_key) {
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

    /// What identifies the request for idempotency: `amount`, `appId`, `description` and
    /// `metadata` compared as JSON values (object keys in any order).
    pub fn fingerprint(&self) -> String {
        let value = serde_json::json!({
            "amount": self.amount,
            "appId": self.app_id,
            "description": self.description,
            "metadata": self.metadata,
        });
        fingerprint(&value)
    }
}

/// An integer amount from 1 to [`MAX_AMOUNT`]; strings, floats, zero and negatives are
/// refused (no coercion of `"3"`).
pub fn parse_amount(value: Option<&Value>, field: &str, problems: &mut Vec<String>) -> Option<i64> {
    match value.and_then(Value::as_i64) {
        Some(n) if (1..=MAX_AMOUNT).contains(&n) && value.is_some_and(Value::is_i64) => Some(n),
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
pub fn parse_signed_amount(value: Option<&Value>, problems: &mut Vec<String>) -> Option<i64> {
    match value.filter(|v| v.is_i64()).and_then(Value::as_i64) {
        Some(n) if n != 0 && n.abs() <= MAX_AMOUNT => Some(n),
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
pub fn parse_key(raw: &str) -> Result<String, String> {
    let ok = (1..=255).contains(&raw.len()) && raw.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("idempotencyKey must be 1 to 255 printable ASCII characters".into())
    }
}

fn valid_app_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The SHA-256 of a JSON value's canonical form (object keys sorted, recursively).
pub fn fingerprint(value: &Value) -> String {
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
        SpendRequest::parse(
            body.get("amount"),
            body.get("appId").and_then(Value::as_str),
            body.get("description").and_then(Value::as_str),
            body.get("metadata"),
            body.get("idempotencyKey").and_then(Value::as_str),
            header,
        )
    }

    #[test]
    fn amounts_must_be_integers_in_range() {
        for bad in [json!("3"), json!(1.5), json!(0), json!(-5), json!(1_000_001)] {
            let errors = parse(json!({"amount": bad, "appId": "chat", "description": ""}), None).unwrap_err();
            assert_eq!(errors, ["amount must be an integer from 1 to 1000000"], "{bad}");
        }
        assert_eq!(
            parse(json!({"amount": 1_000_000, "appId": "chat", "description": ""}), None).unwrap().amount,
            1_000_000
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
}
