//! Sealing personal and secret fields in the log (crypto-shredding).
//!
//! Every field the catalogue classifies ([`super::catalogue`]) is stored, from version 2
//! of its event type on, as an envelope `sealed:v1:<subject>:<base64url(nonce ‖ ciphertext)>`:
//! XChaCha20-Poly1305 under a subkey of the subject's data key ([`super::personal`]), the
//! plaintext being the value's JSON, and the event's stream, sequence and field as
//! associated data (a sealed value cannot be moved to another event or field). The
//! client address in the metadata is sealed the same way on every event type.
//!
//! The store opens envelopes as it reads ([`open`]), so the rest of the code sees the
//! plaintext shape. When the subject's key is gone (the person was erased), a field reads
//! as its erased form ([`erased_value`]): `null` where the field is optional, the text
//! `erased:<subject id>` where it is required. The hash chain never sees either form:
//! it covers the fields' commitments ([`super::chain`]).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::Value;
use sha2::Sha256;

use super::catalogue::ClassifiedField;
use super::chain;
use super::personal::PersonalKey;

/// What every sealed value starts with.
pub const ENVELOPE: &str = "sealed:v1:";

/// The version from which an event type's body fields are stored sealed (the metadata's
/// client address is recognised by its envelope on every version).
pub const SEALED_SINCE: u32 = 2;

/// Body fields (relative to the variant's object) that every version of their type
/// requires: erased, they read as `erased:<subject id>` instead of `null`.
const REQUIRED: &[&str] = &[
    "/personal/email",
    "/password_hash",
    "/token_hash",
    "/refresh_hash",
    "/previous_hash",
    "/presented_hash",
    "/description",
    "/key/key",
];

/// The form of a field whose key was destroyed (or that was scrubbed from an old event):
/// `erased:<id>` for a required field, where `<id>` is the user id (or the day) of
/// `subject` (`user:<id>`, `day:<date>`), else `null`.
pub fn erased_value(field: &ClassifiedField, subject: &str) -> Value {
    if REQUIRED.contains(&field.pointer) {
        let id = subject.split_once(':').map_or(subject, |(_, id)| id);
        Value::String(format!("erased:{id}"))
    } else {
        Value::Null
    }
}

/// Whether a value is the erased form of a required field.
pub fn is_erased_text(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.starts_with("erased:"))
}

/// Where a stored event's fields live, for the associated data.
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
}

impl Place<'_> {
    fn aad(&self, pointer: &str) -> String {
        format!(
            "mana-core-auth/field/v1|{}|{}|{}|{pointer}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }

    /// Whether body fields of this event are stored sealed.
    fn body_sealed(&self) -> bool {
        self.event_version.parse::<u32>().is_ok_and(|v| v >= SEALED_SINCE)
    }
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"mana-core-auth/seal/v1");
    let subkey: [u8; 32] = mac.finalize().into_bytes().into();
    XChaCha20Poly1305::new(&subkey.into())
}

fn seal_value(cipher: &XChaCha20Poly1305, subject: &str, aad: &str, value: &Value) -> String {
    let mut nonce = [0u8; 24];
    rand::rng().fill_bytes(&mut nonce);
    let plaintext = serde_json::to_vec(value).unwrap_or_default();
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plaintext, aad: aad.as_bytes() })
        .unwrap_or_default();
    format!("{ENVELOPE}{subject}:{}", URL_SAFE_NO_PAD.encode([nonce.as_slice(), &sealed].concat()))
}

/// The subject named by an envelope, and its sealed bytes.
fn parse_envelope(text: &str) -> Option<(&str, &str)> {
    text.strip_prefix(ENVELOPE)?.rsplit_once(':')
}

fn open_value(cipher: &XChaCha20Poly1305, aad: &str, sealed: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if bytes.len() < 24 {
        return None;
    }
    let (nonce, body) = bytes.split_at(24);
    let plaintext =
        cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: aad.as_bytes() }).ok()?;
    serde_json::from_slice(&plaintext).ok()
}

/// The record `{payload, metadata}` the catalogue's pointers read, built by moving.
fn into_record(payload: Value, metadata: Value) -> Value {
    let mut record = serde_json::Map::with_capacity(2);
    record.insert("payload".into(), payload);
    record.insert("metadata".into(), metadata);
    Value::Object(record)
}

fn from_record(record: Value) -> (Value, Value) {
    match record {
        Value::Object(mut map) => {
            (map.remove("payload").unwrap_or(Value::Null), map.remove("metadata").unwrap_or(Value::Null))
        }
        _ => (Value::Null, Value::Null),
    }
}

/// The classified fields of an event that this place stores sealed, with their pointer
/// from the record root.
fn sealable(place: &Place<'_>, payload: &Value) -> Vec<(String, ClassifiedField)> {
    let body = place.body_sealed();
    chain::record_fields(payload, place.event_type)
        .into_iter()
        .filter(|(pointer, _)| body || pointer.starts_with("/metadata"))
        .collect()
}

/// Why a new event cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} belongs to an erased person: nothing personal about them is stored any more")]
pub struct ErasedSubject(pub String);

/// Seals a new event's classified fields under `key` (the data key of `subject`) and
/// returns the stored payload and metadata. Without a key (the subject was erased) the
/// client address is dropped, and an event carrying other personal data is refused.
pub fn seal(
    place: &Place<'_>,
    subject: &str,
    key: Option<&PersonalKey>,
    payload: &Value,
    metadata: &Value,
) -> Result<(Value, Value), ErasedSubject> {
    let fields = sealable(place, payload);
    let mut record = into_record(payload.clone(), metadata.clone());
    let cipher = key.map(|k| cipher(k));
    for (pointer, field) in &fields {
        let Some(slot) = record.pointer_mut(pointer) else { continue };
        if slot.is_null() {
            continue;
        }
        match &cipher {
            Some(cipher) => *slot = Value::String(seal_value(cipher, subject, &place.aad(pointer), slot)),
            None if pointer.starts_with("/metadata") || erased_value(field, subject).is_null() => {
                *slot = Value::Null;
            }
            None => return Err(ErasedSubject(subject.to_owned())),
        }
    }
    let (payload, mut metadata) = from_record(record);
    if let Value::Object(map) = &mut metadata {
        map.retain(|_, v| !v.is_null());
    }
    Ok((payload, metadata))
}

/// The subjects whose keys opening this event needs.
pub fn subjects(place: &Place<'_>, payload: &Value, metadata: &Value, into: &mut Vec<String>) {
    let mut note = |value: Option<&Value>| {
        if let Some((subject, _)) = value.and_then(Value::as_str).and_then(parse_envelope)
            && !into.iter().any(|s| s == subject)
        {
            into.push(subject.to_owned());
        }
    };
    note(metadata.get("client_ip"));
    if place.body_sealed() {
        let record_payload = serde_json::json!({ "payload": payload });
        for (pointer, _) in sealable(place, payload) {
            if pointer.starts_with("/payload") {
                note(record_payload.pointer(&pointer));
            }
        }
    }
}

/// Opens an event's sealed fields in place with the keys found (`None`: destroyed). A
/// value that does not open under an existing key is left sealed, so the decoder fails
/// loudly instead of reading altered data.
pub fn open(
    place: &Place<'_>,
    payload: &mut Value,
    metadata: &mut Value,
    keys: &HashMap<String, Option<PersonalKey>>,
) {
    let sealed_ip =
        metadata.get("client_ip").and_then(Value::as_str).is_some_and(|s| s.starts_with(ENVELOPE));
    if !sealed_ip && !place.body_sealed() {
        return;
    }
    let fields = sealable(place, payload);
    let mut record = into_record(std::mem::take(payload), std::mem::take(metadata));
    for (pointer, field) in &fields {
        let Some(slot) = record.pointer_mut(pointer) else { continue };
        let Some((subject, sealed)) = slot.as_str().and_then(parse_envelope) else { continue };
        let opened = match keys.get(subject) {
            Some(Some(key)) => open_value(&cipher(key), &place.aad(pointer), sealed),
            _ => Some(erased_value(field, subject)),
        };
        if let Some(value) = opened {
            *slot = value;
        }
    }
    let (opened_payload, opened_metadata) = from_record(record);
    *payload = opened_payload;
    *metadata = opened_metadata;
    if let Value::Object(map) = metadata {
        map.retain(|_, v| !v.is_null());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn place(version: &'static str) -> Place<'static> {
        Place {
            aggregate_type: "user",
            aggregate_id: "u1",
            sequence: 1,
            event_type: "UserRegistered",
            event_version: version,
        }
    }

    fn registered() -> (Value, Value) {
        (
            json!({"UserRegistered": {"user_id": "u1", "personal": {"email": "ada@example.com", "name": "Ada"},
                   "password_hash": "$argon2id$secret", "role": "user", "registered_at": "2026-11-30T00:00:00Z"}}),
            json!({"recorded_at": "2026-11-30T00:00:00Z", "actor": "u1", "client_ip": "203.0.113.9"}),
        )
    }

    #[test]
    fn sealed_fields_hold_no_plaintext_and_open_to_the_original_values() {
        let key: PersonalKey = Arc::new([7; 32]);
        let (payload, metadata) = registered();
        let (mut sealed_payload, mut sealed_metadata) =
            seal(&place("2"), "user:u1", Some(&key), &payload, &metadata).expect("seal");
        let stored = format!("{sealed_payload}{sealed_metadata}");
        for plain in ["ada@example.com", "Ada", "argon2id", "203.0.113.9"] {
            assert!(!stored.contains(plain), "{plain} in {stored}");
        }
        assert_eq!(sealed_payload["UserRegistered"]["user_id"], "u1");
        let mut wanted = Vec::new();
        subjects(&place("2"), &sealed_payload, &sealed_metadata, &mut wanted);
        assert_eq!(wanted, vec!["user:u1".to_owned()]);
        let keys = HashMap::from([("user:u1".to_owned(), Some(key))]);
        open(&place("2"), &mut sealed_payload, &mut sealed_metadata, &keys);
        assert_eq!((sealed_payload, sealed_metadata), registered());
    }

    #[test]
    fn without_the_key_fields_read_as_erased_and_a_moved_value_does_not_open() {
        let key: PersonalKey = Arc::new([7; 32]);
        let (payload, metadata) = registered();
        let (sealed_payload, sealed_metadata) =
            seal(&place("2"), "user:u1", Some(&key), &payload, &metadata).expect("seal");
        let (mut erased_payload, mut erased_metadata) = (sealed_payload.clone(), sealed_metadata.clone());
        open(
            &place("2"),
            &mut erased_payload,
            &mut erased_metadata,
            &HashMap::from([("user:u1".into(), None)]),
        );
        assert_eq!(erased_payload["UserRegistered"]["personal"], json!({"email": "erased:u1", "name": null}));
        assert_eq!(erased_payload["UserRegistered"]["password_hash"], "erased:u1");
        assert!(erased_metadata.get("client_ip").is_none());

        let elsewhere = Place { sequence: 2, ..place("2") };
        let (mut moved, mut moved_metadata) = (sealed_payload, sealed_metadata);
        open(&elsewhere, &mut moved, &mut moved_metadata, &HashMap::from([("user:u1".into(), Some(key))]));
        assert!(moved["UserRegistered"]["personal"]["email"].as_str().unwrap_or("").starts_with(ENVELOPE));
    }

    #[test]
    fn version_one_bodies_are_plaintext_and_never_opened() {
        let (mut payload, mut metadata) = registered();
        payload["UserRegistered"]["personal"]["name"] = json!("sealed:v1:user:u1:AAAA");
        let before = payload.clone();
        open(&place("1"), &mut payload, &mut metadata, &HashMap::new());
        assert_eq!(payload, before);
    }

    #[test]
    fn an_erased_subject_gets_no_personal_data_written() {
        let (payload, metadata) = registered();
        assert_eq!(
            seal(&place("2"), "user:u1", None, &payload, &metadata),
            Err(ErasedSubject("user:u1".into()))
        );
        let granted = json!({"CreditsGranted": {"amount": 5}});
        let (stored, stored_metadata) = seal(
            &Place { event_type: "CreditsGranted", event_version: "1", ..place("1") },
            "user:u1",
            None,
            &granted,
            &metadata,
        )
        .expect("no personal body field");
        assert_eq!(stored, granted);
        assert!(stored_metadata.get("client_ip").is_none());
    }
}
