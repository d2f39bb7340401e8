//! The hash chain: the canonical form of an event, the commitments that stand for its
//! secret and personal fields, the per-stream hash and the running root that seals fold.
//! docs/AUDIT.md defines all of it for auditors who verify without this code.
//!
//! - Canonical form: the JSON Canonicalization Scheme (RFC 8785) of the object
//!   `{aggregateId, aggregateType, eventType, eventVersion, metadata, payload,
//!   personalKey, recordedAt, sequence}`, where every secret field of the payload is
//!   replaced by `sha256:<hex>` of its value and every personal field (payload and
//!   metadata) by its stored `hmac-sha256:<hex>` commitment.
//! - `hash = SHA-256(previous hash of the stream ‖ canonical form)`; the first event of a
//!   stream follows 32 zero bytes.
//! - `root` after an event = `SHA-256(root before ‖ hash)`, over the global order from
//!   32 zero bytes: a seal signs it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::catalogue::{ClassifiedField, FieldClass, METADATA_FIELDS, classified_fields};

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

/// What the first event of a stream, and the first root, follow.
pub const ZERO: Digest32 = [0; 32];

const SECRET_PREFIX: &str = "sha256:";
const PERSONAL_PREFIX: &str = "hmac-sha256:";

/// Why an event does not fit its chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("personal field {0} has a value but no commitment")]
    Uncommitted(String),
    #[error("secret field {0} is not a commitment")]
    SecretNotCommitted(String),
    #[error("personal field {0} does not match its commitment")]
    PersonalMismatch(String),
    #[error("malformed hash {0:?}")]
    MalformedHash(String),
}

/// The commitments of an event's personal fields, stored beside it: the key's name and,
/// per field (a JSON pointer from the record: `/payload/...` or `/metadata/...`), the
/// `hmac-sha256:` commitment. They stay when the value or the key is erased.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitments {
    /// The subject's key (`user:<id>`, `day:<date>`); empty when the event has no
    /// personal field, only secrets committed by an erasure's scrub.
    pub key: String,
    pub fields: BTreeMap<String, String>,
    /// Whether the event's classified fields are stored sealed ([`super::sealing`]); not
    /// covered by the hash. Events written before sealing existed lack it: an erasure
    /// scrubs those of the erased person.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
}

/// How secret fields appear in the payload given to [`canonical`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// As stored: committed here.
    Stored,
    /// Already replaced by their commitment (an export).
    Committed,
}

/// The parts of an event the canonical form covers.
#[derive(Clone, Copy, Debug)]
pub struct EventParts<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub recorded_at: DateTime<Utc>,
    pub payload: &'a Value,
    pub metadata: &'a Value,
}

/// The recorded time as the canonical form writes it (microseconds, UTC): both engines
/// store microseconds, so an event's time reads back exactly as it was hashed.
pub fn canonical_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// `at` truncated to what the stores keep (microseconds).
pub fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// The bytes a commitment covers: a string's UTF-8 bytes, any other value's canonical JSON.
fn commitment_input(value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.as_bytes().to_vec(),
        other => {
            let mut out = String::new();
            write_jcs(other, &mut out);
            out.into_bytes()
        }
    }
}

/// `sha256:<hex>` of a secret value.
pub fn secret_commitment(value: &Value) -> String {
    format!("{SECRET_PREFIX}{}", hex(&Sha256::digest(commitment_input(value)).into()))
}

/// `hmac-sha256:<hex>` of a personal value under its subject's key.
pub fn personal_commitment(key: &[u8], value: &Value) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&commitment_input(value));
    format!("{PERSONAL_PREFIX}{}", hex(&mac.finalize().into_bytes().into()))
}

/// Every classified field of an event with its pointer from the record root.
pub(crate) fn record_fields(payload: &Value, event_type: &str) -> Vec<(String, ClassifiedField)> {
    let variant = match payload {
        Value::Object(map) if map.len() == 1 => map.keys().next().cloned(),
        _ => None,
    };
    let mut fields = Vec::new();
    if let Some(variant) = variant {
        let prefix = format!("/payload/{}", escape_pointer(&variant));
        for field in classified_fields(event_type) {
            fields.push((format!("{prefix}{}", field.pointer), *field));
        }
    }
    for field in METADATA_FIELDS {
        fields.push((format!("/metadata{}", field.pointer), *field));
    }
    fields
}

fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The record `{payload, metadata}` a pointer from the record root reads.
fn record(payload: &Value, metadata: &Value) -> Value {
    serde_json::json!({ "payload": payload, "metadata": metadata })
}

fn present(record: &Value, pointer: &str) -> Option<Value> {
    record.pointer(pointer).filter(|v| !v.is_null()).cloned()
}

/// The commitments of a new event's personal fields under `key` (named `key_name`), or
/// `None` when it holds no personal value. With `secrets`, its secret fields' `sha256:`
/// commitments are stored too: an event whose secrets are sealed (or were scrubbed) is
/// hashed with them instead of the stored value.
pub fn commit_fields(
    key_name: &str,
    key: &[u8],
    event_type: &str,
    payload: &Value,
    metadata: &Value,
    secrets: bool,
) -> Option<Commitments> {
    let whole = record(payload, metadata);
    let fields: BTreeMap<String, String> = record_fields(payload, event_type)
        .into_iter()
        .filter_map(|(pointer, field)| {
            let value = present(&whole, &pointer)?;
            match field.class {
                FieldClass::Personal => Some((pointer, personal_commitment(key, &value))),
                FieldClass::Secret if secrets => Some((pointer, secret_commitment(&value))),
                FieldClass::Secret => None,
            }
        })
        .collect();
    (!fields.is_empty()).then(|| Commitments { key: key_name.to_owned(), fields, sealed: secrets })
}

/// [`commit_fields`] without secrets (how the audit backfill commits old events).
pub fn commit_personal(
    key_name: &str,
    key: &[u8],
    event_type: &str,
    payload: &Value,
    metadata: &Value,
) -> Option<Commitments> {
    commit_fields(key_name, key, event_type, payload, metadata, false)
}

/// Checks each readable personal value against its commitment under `key`.
pub fn check_personal(
    key: &[u8],
    event_type: &str,
    payload: &Value,
    metadata: &Value,
    commitments: &Commitments,
) -> Result<(), ChainError> {
    let whole = record(payload, metadata);
    for (pointer, commitment) in &commitments.fields {
        if let Some(value) = present(&whole, pointer) {
            let expected = if commitment.starts_with(SECRET_PREFIX) {
                secret_commitment(&value)
            } else {
                personal_commitment(key, &value)
            };
            if !constant_time_eq(expected.as_bytes(), commitment.as_bytes()) {
                return Err(ChainError::PersonalMismatch(pointer.clone()));
            }
        }
    }
    let _ = event_type;
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The payload as exports carry it: secrets replaced by their commitment.
pub fn export_payload(event_type: &str, payload: &Value, commitments: Option<&Commitments>) -> Value {
    let mut whole = record(payload, &Value::Null);
    for (pointer, field) in record_fields(payload, event_type) {
        if field.class != FieldClass::Secret {
            continue;
        }
        let stored = commitments.and_then(|c| c.fields.get(&pointer)).cloned();
        if let Some(commitment) = stored.or_else(|| present(&whole, &pointer).map(|v| secret_commitment(&v)))
            && let Some(slot) = whole.pointer_mut(&pointer)
        {
            *slot = Value::String(commitment);
        }
    }
    match whole {
        Value::Object(mut map) => map.remove("payload").unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// The canonical form of an event, written straight from the stored values (nothing is
/// cloned): JCS of the fixed members, with each classified field replaced on the way.
pub fn canonical(
    event: &EventParts<'_>,
    commitments: Option<&Commitments>,
    secrets: Secrets,
) -> Result<String, ChainError> {
    let mut replacements: Vec<(String, String)> = Vec::new();
    for (pointer, field) in record_fields(event.payload, event.event_type) {
        let value = lookup(event.payload, event.metadata, &pointer);
        let replacement = match field.class {
            FieldClass::Secret => match (value, secrets) {
                _ if commitments.is_some_and(|c| c.fields.contains_key(&pointer)) => {
                    commitments.and_then(|c| c.fields.get(&pointer)).cloned().unwrap_or_default()
                }
                (None, _) => continue,
                (Some(v), Secrets::Stored) => secret_commitment(v),
                (Some(Value::String(s)), Secrets::Committed) if is_commitment(s, SECRET_PREFIX) => s.clone(),
                (Some(_), Secrets::Committed) => return Err(ChainError::SecretNotCommitted(pointer)),
            },
            FieldClass::Personal => match commitments.and_then(|c| c.fields.get(&pointer)) {
                Some(commitment) => commitment.clone(),
                None if value.is_none() => continue,
                None => return Err(ChainError::Uncommitted(pointer)),
            },
        };
        replacements.push((pointer, replacement));
    }
    let mut out = String::with_capacity(768);
    let mut path = String::with_capacity(64);
    out.push_str("{\"aggregateId\":");
    write_string(event.aggregate_id, &mut out);
    out.push_str(",\"aggregateType\":");
    write_string(event.aggregate_type, &mut out);
    out.push_str(",\"eventType\":");
    write_string(event.event_type, &mut out);
    out.push_str(",\"eventVersion\":");
    write_string(event.event_version, &mut out);
    out.push_str(",\"metadata\":");
    path.push_str("/metadata");
    write_replacing(event.metadata, &mut path, &replacements, &mut out);
    out.push_str(",\"payload\":");
    path.clear();
    path.push_str("/payload");
    write_replacing(event.payload, &mut path, &replacements, &mut out);
    out.push_str(",\"personalKey\":");
    match commitments {
        Some(c) if !c.key.is_empty() => write_string(&c.key, &mut out),
        _ => out.push_str("null"),
    }
    out.push_str(",\"recordedAt\":");
    write_string(&canonical_time(event.recorded_at), &mut out);
    let _ = write!(out, ",\"sequence\":{}}}", event.sequence);
    Ok(out)
}

/// The value a pointer from the record root names, if present and not `null`.
fn lookup<'a>(payload: &'a Value, metadata: &'a Value, pointer: &str) -> Option<&'a Value> {
    let found = if let Some(rest) = pointer.strip_prefix("/payload") {
        payload.pointer(rest)
    } else {
        pointer.strip_prefix("/metadata").and_then(|rest| metadata.pointer(rest))
    };
    found.filter(|v| !v.is_null())
}

/// A member of an object being written: a stored value, or a replacement.
enum Member<'a> {
    Stored(&'a Value),
    Replaced(&'a str),
}

/// Writes `value` (found at `path`) in JCS, replacing the members `replacements` name, and
/// adding a replaced member whose stored value is absent (an erased value keeps its
/// commitment).
fn write_replacing(value: &Value, path: &mut String, replacements: &[(String, String)], out: &mut String) {
    if !replacements.iter().any(|(p, _)| p.starts_with(path.as_str())) {
        write_jcs(value, out);
        return;
    }
    match value {
        Value::Object(map) => {
            let mut members: Vec<(std::borrow::Cow<'_, str>, Member<'_>)> = map
                .iter()
                .map(|(k, v)| (std::borrow::Cow::Borrowed(k.as_str()), Member::Stored(v)))
                .collect();
            for (pointer, replacement) in replacements {
                if let Some((parent, last)) = pointer.rsplit_once('/')
                    && parent == path.as_str()
                {
                    let key = last.replace("~1", "/").replace("~0", "~");
                    if !map.contains_key(&key) {
                        members.push((std::borrow::Cow::Owned(key), Member::Replaced(replacement)));
                    }
                }
            }
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (key, member)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                let depth = path.len();
                path.push('/');
                path.push_str(&escape_pointer(key));
                match member {
                    Member::Replaced(replacement) => write_string(replacement, out),
                    Member::Stored(stored) => match replacements.iter().find(|(p, _)| p == path.as_str()) {
                        Some((_, replacement)) => write_string(replacement, out),
                        None => write_replacing(stored, path, replacements, out),
                    },
                }
                path.truncate(depth);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let depth = path.len();
                let _ = write!(path, "/{i}");
                match replacements.iter().find(|(p, _)| p == path.as_str()) {
                    Some((_, replacement)) => write_string(replacement, out),
                    None => write_replacing(item, path, replacements, out),
                }
                path.truncate(depth);
            }
            out.push(']');
        }
        other => write_jcs(other, out),
    }
}

fn is_commitment(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
/// Sets the value at a pointer, creating the last member if it is absent (an erased value
/// keeps its commitment in the canonical form).
fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    if let Some(slot) = root.pointer_mut(pointer) {
        *slot = value;
        return;
    }
    let Some((parent, last)) = pointer.rsplit_once('/') else { return };
    if let Some(Value::Object(map)) = root.pointer_mut(parent) {
        map.insert(last.replace("~1", "/").replace("~0", "~"), value);
    }
}

/// The hash of an event: `SHA-256(previous ‖ canonical)`.
pub fn event_hash(previous: &Digest32, canonical: &str) -> Digest32 {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical.as_bytes());
    hasher.finalize().into()
}

/// The root after one more event: `SHA-256(root ‖ hash)`.
pub fn fold_root(root: &Digest32, hash: &Digest32) -> Digest32 {
    let mut hasher = Sha256::new();
    hasher.update(root);
    hasher.update(hash);
    hasher.finalize().into()
}

/// Lowercase hex.
pub fn hex(bytes: &Digest32) -> String {
    let mut out = String::with_capacity(64);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses 64 hex digits.
pub fn parse_hex(text: &str) -> Result<Digest32, ChainError> {
    let bad = || ChainError::MalformedHash(text.chars().take(80).collect());
    if text.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Writes a value in the JSON Canonicalization Scheme (RFC 8785): object members sorted
/// by key, no whitespace, strings with the minimal escapes. Integers print as integers;
/// other numbers as serde_json prints them (the log's own fields hold integers only).
pub fn write_jcs(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jcs(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            // RFC 8785 orders by UTF-16 code units.
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_jcs(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The first implementation (clones the record, then replaces): the oracle the
    /// streaming one must match.
    fn canonical_by_cloning(
        event: &EventParts<'_>,
        commitments: Option<&Commitments>,
        secrets: Secrets,
    ) -> Result<String, ChainError> {
        let mut whole = record(event.payload, event.metadata);
        for (pointer, field) in record_fields(event.payload, event.event_type) {
            let value = present(&whole, &pointer);
            let replacement = match field.class {
                FieldClass::Secret => match (value, secrets) {
                    (None, _) => continue,
                    (Some(v), Secrets::Stored) => secret_commitment(&v),
                    (Some(Value::String(s)), Secrets::Committed) if is_commitment(&s, SECRET_PREFIX) => s,
                    (Some(_), Secrets::Committed) => return Err(ChainError::SecretNotCommitted(pointer)),
                },
                FieldClass::Personal => match commitments.and_then(|c| c.fields.get(&pointer)) {
                    Some(commitment) => commitment.clone(),
                    None if value.is_none() => continue,
                    None => return Err(ChainError::Uncommitted(pointer)),
                },
            };
            set_pointer(&mut whole, &pointer, Value::String(replacement));
        }
        let (payload, metadata) = match whole {
            Value::Object(mut map) => (map.remove("payload"), map.remove("metadata")),
            _ => (None, None),
        };
        let form = serde_json::json!({
            "aggregateId": event.aggregate_id,
            "aggregateType": event.aggregate_type,
            "eventType": event.event_type,
            "eventVersion": event.event_version,
            "metadata": metadata.unwrap_or(Value::Null),
            "payload": payload.unwrap_or(Value::Null),
            "personalKey": commitments.map(|c| c.key.clone()),
            "recordedAt": canonical_time(event.recorded_at),
            "sequence": event.sequence,
        });
        let mut out = String::with_capacity(512);
        write_jcs(&form, &mut out);
        Ok(out)
    }

    fn parts<'a>(payload: &'a Value, metadata: &'a Value) -> EventParts<'a> {
        EventParts {
            aggregate_type: "user",
            aggregate_id: "u1",
            sequence: 1,
            event_type: "UserRegistered",
            event_version: "1",
            recorded_at: DateTime::parse_from_rfc3339("2026-11-29T10:00:00.123456Z").unwrap().to_utc(),
            payload,
            metadata,
        }
    }

    #[test]
    fn jcs_sorts_members_and_escapes_minimally() {
        let mut out = String::new();
        write_jcs(&json!({"b": [1, "x\n\u{1}é"], "a": null, "A": true}), &mut out);
        assert_eq!(out, "{\"A\":true,\"a\":null,\"b\":[1,\"x\\n\\u0001é\"]}");
    }

    #[test]
    fn the_canonical_form_holds_commitments_not_values() {
        let payload = json!({"UserRegistered": {"user_id": "u1", "personal": {"email": "a@b.example", "name": null},
            "password_hash": "$argon2id$v=19$secret", "role": "user", "registered_at": "2026-11-29T10:00:00Z"}});
        let metadata =
            json!({"actor": "u1", "client_ip": "203.0.113.9", "recorded_at": "2026-11-29T10:00:00Z"});
        let key = [7u8; 32];
        let commitments = commit_personal("user:u1", &key, "UserRegistered", &payload, &metadata).unwrap();
        assert_eq!(commitments.fields.len(), 2, "e-mail and IP; the null name has nothing to commit");
        let form = canonical(&parts(&payload, &metadata), Some(&commitments), Secrets::Stored).unwrap();
        for clear in ["a@b.example", "203.0.113.9", "argon2id"] {
            assert!(!form.contains(clear), "{clear} in {form}");
        }
        assert!(form.contains(&secret_commitment(&json!("$argon2id$v=19$secret"))));

        // An export carries the secret's commitment and verifies to the same form.
        let exported = export_payload("UserRegistered", &payload, None);
        assert!(!exported.to_string().contains("argon2id"));
        let offline =
            canonical(&parts(&exported, &metadata), Some(&commitments), Secrets::Committed).unwrap();
        assert_eq!(offline, form);

        // Erasing the value keeps the form; changing it is caught with the key.
        let mut erased = payload.clone();
        erased["UserRegistered"]["personal"]["email"] = Value::Null;
        let after = canonical(&parts(&erased, &metadata), Some(&commitments), Secrets::Stored).unwrap();
        assert_eq!(after, form);
        let mut changed = payload.clone();
        changed["UserRegistered"]["personal"]["email"] = json!("evil@b.example");
        assert!(check_personal(&key, "UserRegistered", &payload, &metadata, &commitments).is_ok());
        assert_eq!(
            check_personal(&key, "UserRegistered", &changed, &metadata, &commitments),
            Err(ChainError::PersonalMismatch("/payload/UserRegistered/personal/email".into()))
        );
        // A personal value added without a commitment does not fit.
        assert!(matches!(
            canonical(&parts(&payload, &metadata), None, Secrets::Stored),
            Err(ChainError::Uncommitted(_))
        ));
    }

    #[test]
    fn the_streaming_canonical_form_equals_the_cloning_one() {
        let payload = json!({"SessionRefreshed": {"user_id": "u1", "previous_hash": "p", "refresh_hash": "r",
            "refresh_expires_at": "2026-12-06T10:00:00Z", "refreshed_at": "2026-11-29T10:00:00Z",
            "personal": {"device_id": "d", "device_name": null, "ip_address": "203.0.113.9", "user_agent": "ua/1 \"x\""}}});
        let metadata = json!({"actor": "u1", "client_ip": "203.0.113.9", "request_id": "r-1", "recorded_at": "2026-11-29T10:00:00Z"});
        let key = [9u8; 32];
        let commitments = commit_personal("user:u1", &key, "SessionRefreshed", &payload, &metadata).unwrap();
        let mut erased = payload.clone();
        erased["SessionRefreshed"]["personal"].as_object_mut().unwrap().remove("device_id");
        erased["SessionRefreshed"]["personal"]["ip_address"] = Value::Null;
        let mut parts = parts(&payload, &metadata);
        parts.event_type = "SessionRefreshed";
        for (payload, commitments) in [(&payload, Some(&commitments)), (&erased, Some(&commitments))] {
            let parts = EventParts { payload, ..parts };
            assert_eq!(
                canonical(&parts, commitments, Secrets::Stored).unwrap(),
                canonical_by_cloning(&parts, commitments, Secrets::Stored).unwrap()
            );
            let exported = export_payload("SessionRefreshed", payload, None);
            let parts = EventParts { payload: &exported, ..parts };
            assert_eq!(
                canonical(&parts, commitments, Secrets::Committed).unwrap(),
                canonical_by_cloning(&parts, commitments, Secrets::Committed).unwrap()
            );
        }
        let plain = json!({"CreditsGranted": {"amount": 5, "description": "x"}});
        let parts =
            EventParts { payload: &plain, event_type: "CreditsGranted", metadata: &Value::Null, ..parts };
        assert_eq!(
            canonical(&parts, None, Secrets::Stored).unwrap(),
            canonical_by_cloning(&parts, None, Secrets::Stored).unwrap()
        );
    }

    #[test]
    fn hashes_chain_and_roots_fold_in_order() {
        let a = event_hash(&ZERO, "a");
        let b = event_hash(&a, "b");
        assert_ne!(event_hash(&ZERO, "b"), b);
        assert_ne!(fold_root(&fold_root(&ZERO, &a), &b), fold_root(&fold_root(&ZERO, &b), &a));
        assert_eq!(parse_hex(&hex(&b)).unwrap(), b);
        assert!(parse_hex("zz").is_err());
    }
}
