//! The fixture must hold every event type: every variant of every event enum in
//! `src/events`, each stored event readable by today's code under its stored name.

use std::collections::BTreeMap;

use mana_core_auth::events::auth::{
    EmailClaimEvent, KeyringEvent, LoginAttemptEvent, SecurityNoticeEvent, SessionEvent, UserEvent,
};
use mana_core_auth::events::credits::{CreditEvent, OperatorKeyEvent};
use mana_core_auth::events::{EventStore, LogCursor};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The names of an event enum's variants, from the enum itself: serde lists every
/// variant when asked for one that does not exist.
fn variants<E: DeserializeOwned>() -> Vec<String> {
    let error =
        serde_json::from_value::<E>(json!({"NoSuchVariant": {}})).err().expect("an unknown variant fails");
    let text = error.to_string();
    let (_, listed) =
        text.split_once("expected").unwrap_or_else(|| panic!("unexpected serde message: {text}"));
    listed.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Each aggregate type's event enum: its variants, and the name a stored payload
/// decodes to (failing on a payload today's code cannot read).
type Decoder = fn(&Value) -> Result<String, serde_json::Error>;

fn decoder<E: DeserializeOwned + cqrs_es::DomainEvent>() -> (Vec<String>, Decoder) {
    (variants::<E>(), |payload| E::deserialize(payload).map(|e| e.event_type()))
}

/// Asserts that the log holds every variant of every event enum at least once, and that
/// every stored event decodes into its aggregate's enum under its stored type name.
/// Returns the number of events of each type.
pub async fn assert_every_variant(store: &EventStore) -> BTreeMap<String, usize> {
    let enums: BTreeMap<&str, (Vec<String>, Decoder)> = BTreeMap::from([
        ("user", decoder::<UserEvent>()),
        ("email_claim", decoder::<EmailClaimEvent>()),
        ("session", decoder::<SessionEvent>()),
        ("login_attempts", decoder::<LoginAttemptEvent>()),
        ("keyring", decoder::<KeyringEvent>()),
        ("security_notice", decoder::<SecurityNoticeEvent>()),
        ("credit_account", decoder::<CreditEvent>()),
        ("operator_key", decoder::<OperatorKeyEvent>()),
    ]);
    let events = store.read_after(LogCursor::START, 100_000).await.expect("read the log");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for event in &events {
        let (_, decode) = enums
            .get(event.aggregate_type.as_str())
            .unwrap_or_else(|| panic!("unknown aggregate type {} at {}", event.aggregate_type, event.cursor));
        let name = decode(&event.payload)
            .unwrap_or_else(|e| panic!("event at {} does not decode: {e}", event.cursor));
        assert_eq!(name, event.event_type, "stored type of the event at {}", event.cursor);
        *seen.entry(format!("{}/{name}", event.aggregate_type)).or_default() += 1;
    }
    let missing: Vec<String> = enums
        .iter()
        .flat_map(|(kind, (variants, _))| variants.iter().map(move |v| format!("{kind}/{v}")))
        .filter(|name| !seen.contains_key(name))
        .collect();
    assert!(missing.is_empty(), "the fixture lacks these event variants: {missing:?}");
    seen
}
