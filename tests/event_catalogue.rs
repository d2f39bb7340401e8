//! The event catalogue (docs/EVENTS.md, `events schema`) agrees with the code, every
//! sensitive-looking field is in the registry, and `event_version` is honoured on both
//! load paths of a real store.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::{ENGINES, TestDb, open_store, read_all};
use cqrs_es::Aggregate;
use cqrs_es::persist::PersistedEventRepository;
use mana_core_auth::commands::CommandBus;
use mana_core_auth::commands::email_claim::EmailClaim;
use mana_core_auth::events::NewEvent;
use mana_core_auth::events::auth::EmailClaimEvent;
use mana_core_auth::events::catalogue::FieldClass;
use mana_core_auth::events::schemas::{EventType, catalogue, markdown, metadata_fields, schema_document};
use serde_json::{Value, json};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/EVENTS.md");
const REGENERATE: &str = "regenerate it: cargo run -- events markdown > docs/EVENTS.md";

/// `(event type, version)` headings and `(event type, pointer) -> class` rows of the
/// document (`""` for a row without a class); the metadata section is keyed `metadata`.
type Headings = Vec<(String, String)>;
type Rows = BTreeMap<(String, String), String>;

fn parse_doc(text: &str) -> (Headings, Rows) {
    let mut headings = Vec::new();
    let mut rows = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("## Metadata") {
            current = "metadata".to_owned();
        } else if let Some(rest) = line.strip_prefix("### ") {
            let (name, version) = rest.split_once(" (version ").expect("a heading `### Type (version N)`");
            current = name.to_owned();
            headings.push((name.to_owned(), version.trim_end_matches(')').to_owned()));
        } else if let Some(rest) = line.strip_prefix("| `/") {
            let pointer = format!("/{}", rest.split('`').next().unwrap_or_default());
            let class = line.trim_end_matches('|').rsplit('|').next().unwrap_or_default().trim().to_owned();
            rows.insert((current.clone(), pointer), class);
        }
    }
    (headings, rows)
}

fn class_text(class: Option<FieldClass>) -> String {
    class.map_or(String::new(), |c| c.as_str().to_owned())
}

#[test]
fn docs_events_md_lists_every_event_type_field_and_class_of_the_code() {
    let text = std::fs::read_to_string(DOC).expect("docs/EVENTS.md");
    let (headings, rows) = parse_doc(&text);
    let events = catalogue();
    let expected: Vec<(String, String)> =
        events.iter().map(|e| (e.event_type.clone(), e.version.to_string())).collect();
    let documented: BTreeSet<&String> = headings.iter().map(|(name, _)| name).collect();
    for (name, version) in &expected {
        let found = headings.iter().find(|(n, _)| n == name);
        assert!(found.is_some(), "docs/EVENTS.md lacks the event type {name}; {REGENERATE}");
        assert_eq!(
            found.map(|(_, v)| v),
            Some(version),
            "{name}: wrong version in docs/EVENTS.md; {REGENERATE}"
        );
    }
    let known: BTreeSet<&String> = expected.iter().map(|(name, _)| name).collect();
    let extra: Vec<&&String> = documented.difference(&known).collect();
    assert!(extra.is_empty(), "docs/EVENTS.md lists event types the code lacks: {extra:?}; {REGENERATE}");
    assert_eq!(headings.len(), expected.len(), "an event type is listed twice in docs/EVENTS.md");
    let mut wanted = BTreeMap::new();
    for event in &events {
        for field in &event.fields {
            wanted.insert((event.event_type.clone(), field.pointer.clone()), class_text(field.class));
        }
    }
    for field in metadata_fields() {
        wanted.insert(("metadata".to_owned(), field.pointer.clone()), class_text(field.class));
    }
    for (key, class) in &wanted {
        assert_eq!(
            rows.get(key),
            Some(class),
            "{key:?}: field missing or wrong class in docs/EVENTS.md; {REGENERATE}"
        );
    }
    let stray: Vec<_> = rows.keys().filter(|k| !wanted.contains_key(*k)).collect();
    assert!(stray.is_empty(), "docs/EVENTS.md lists fields the code lacks: {stray:?}; {REGENERATE}");
    assert!(text == markdown(), "docs/EVENTS.md is not what the code generates; {REGENERATE}");
}

/// Every property of a schema, as a pointer into the body, following `$ref`s.
fn properties(schema: &Value, defs: &Value, prefix: &str, out: &mut BTreeSet<String>, depth: usize) {
    assert!(depth < 16, "schema nesting too deep at {prefix}");
    if let Value::Object(map) = schema {
        if let Some(name) = map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
            properties(&defs[name], defs, prefix, out, depth + 1);
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            for option in map.get(key).and_then(Value::as_array).into_iter().flatten() {
                properties(option, defs, prefix, out, depth + 1);
            }
        }
        if let Some(items) = map.get("items") {
            properties(items, defs, prefix, out, depth + 1);
        }
        for (name, property) in map.get("properties").and_then(Value::as_object).into_iter().flatten() {
            let pointer = format!("{prefix}/{name}");
            out.insert(pointer.clone());
            properties(property, defs, &pointer, out, depth + 1);
        }
    }
}

fn body_properties(event: &EventType) -> BTreeSet<String> {
    let body = &event.schema["properties"][&event.event_type];
    let mut out = BTreeSet::new();
    properties(body, &event.schema["$defs"], "", &mut out, 0);
    out
}

fn looks_sensitive(name: &str) -> bool {
    matches!(
        name,
        "password_hash" | "email" | "name" | "ip_address" | "user_agent" | "device_id" | "device_name"
    ) || name.ends_with("_hash")
}

#[test]
fn every_secret_or_personal_looking_field_in_the_schemas_is_in_the_registry() {
    let mut checked = 0;
    for event in catalogue() {
        let classes: Vec<&str> = event.classes.iter().map(|c| c.pointer).collect();
        for pointer in body_properties(&event) {
            let name = pointer.rsplit('/').next().unwrap_or_default();
            // A credit package's `name` is the product's ("500 credits"), not a person's.
            let product = pointer.ends_with("/package/name") || pointer.ends_with("/packages/name");
            if !looks_sensitive(name) || product {
                continue;
            }
            checked += 1;
            let covered = classes.iter().any(|c| pointer == *c || pointer.starts_with(&format!("{c}/")));
            assert!(
                covered,
                "{}{pointer} looks secret or personal but is not in the registry (src/events/catalogue.rs)",
                event.event_type
            );
        }
    }
    assert!(checked >= 30, "the walk found only {checked} sensitive-looking fields");
}

#[test]
fn every_registered_pointer_names_a_field_of_its_event_type() {
    for event in catalogue() {
        let fields = body_properties(&event);
        for class in event.classes {
            assert!(
                fields.contains(class.pointer),
                "{}{} is registered but no such field",
                event.event_type,
                class.pointer
            );
        }
    }
    let metadata: BTreeSet<String> = metadata_fields().into_iter().map(|f| f.pointer).collect();
    for class in mana_core_auth::events::catalogue::METADATA_FIELDS {
        assert!(
            metadata.contains(class.pointer),
            "metadata{} is registered but no such field",
            class.pointer
        );
    }
}

#[test]
fn the_catalogue_names_the_aggregate_types_of_the_aggregates() {
    use mana_core_auth::commands::{
        credit_account::CreditAccount, keyring::Keyring, login_attempts::LoginAttempts,
        operator_key::OperatorKey, security_notice::SecurityNotice, session::Session, user::User,
    };
    let used: BTreeSet<&str> = catalogue().iter().map(|e| e.aggregate_type).collect();
    let aggregates = BTreeSet::from([
        User::TYPE,
        EmailClaim::TYPE,
        Session::TYPE,
        LoginAttempts::TYPE,
        Keyring::TYPE,
        SecurityNotice::TYPE,
        CreditAccount::TYPE,
        OperatorKey::TYPE,
        mana_core_auth::commands::purchase::Purchase::TYPE,
        mana_core_auth::commands::payment_records::Catalogue::TYPE,
        mana_core_auth::commands::payment_records::StripeReceipt::TYPE,
        mana_core_auth::commands::payment_records::IntentLink::TYPE,
        mana_core_auth::events::audit::SEALS_TYPE,
    ]);
    assert_eq!(used, aggregates);
}

#[test]
fn events_schema_and_markdown_print_the_catalogue_without_a_database() {
    let run = |args: &[&str]| {
        let output = Command::new(common::binary())
            .args(args)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .output()
            .expect("run the binary");
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    let printed: Value = serde_json::from_str(&run(&["events", "schema"])).expect("one JSON document");
    assert_eq!(printed, schema_document());
    let spent = &printed["CreditsSpent"];
    // Version 2: stored with its personal fields sealed (docs/PRIVACY.md).
    assert_eq!((&spent["version"], &spent["aggregateType"]), (&json!("2"), &json!("credit_account")));
    assert_eq!(spent["classes"]["/description"], "personal");
    assert_eq!(printed["UserRegistered"]["classes"]["/password_hash"], "secret");
    assert_eq!(
        printed["UserRegistered"]["schema"]["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let described =
        &printed["LoginCheckStarted"]["schema"]["properties"]["LoginCheckStarted"]["properties"]["familiar"];
    assert!(
        described["description"].as_str().is_some_and(|d| d.contains("30 days")),
        "doc comments become descriptions"
    );
    assert_eq!(run(&["events", "markdown"]), std::fs::read_to_string(DOC).expect("docs/EVENTS.md"));
}

fn claim(id: &str, version: &str) -> NewEvent {
    NewEvent {
        aggregate_type: EmailClaim::TYPE.to_owned(),
        aggregate_id: id.to_owned(),
        sequence: 1,
        event_type: "EmailClaimed".to_owned(),
        event_version: version.to_owned(),
        payload: json!({"EmailClaimed": {"user_id": "u-1", "claimed_at": "2026-11-29T10:00:00Z"}}),
        metadata: json!({"actor": "system", "recorded_at": "2026-11-29T10:00:00Z"}),
        recorded_at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn an_event_newer_than_the_code_is_refused_on_every_load_path_and_stays_as_stored() {
    for engine in ENGINES {
        let db = TestDb::new(engine).await;
        let store = open_store(&db).await;
        store.append(&[claim("current", "1")]).await.expect("append version 1");
        store.append(&[claim("future", "2")]).await.expect("append version 2");
        let bus = CommandBus::<EmailClaim>::new(store.clone(), ());
        // Aggregate loading.
        assert_eq!(bus.load("current").await.expect("a current event loads").1, 1, "{engine:?}");
        let Err(refused) = bus.load("future").await else {
            panic!("{engine:?}: a newer version must not load")
        };
        let refused = refused.to_string();
        assert!(
            refused.contains("EmailClaimed is stored at version 2, newer than this build knows (1)"),
            "{engine:?}: {refused}"
        );
        // The cqrs-es repository.
        assert_eq!(store.get_events::<EmailClaim>("current").await.expect("current").len(), 1);
        assert!(
            store.get_events::<EmailClaim>("future").await.is_err(),
            "{engine:?}: the repository must refuse it"
        );
        // Projections decoding the global log.
        let events = read_all(&store, 2).await;
        let future = events.iter().find(|e| e.aggregate_id == "future").expect("the stored event");
        let error =
            future.decode::<EmailClaimEvent>().expect_err("a newer version must not decode").to_string();
        assert!(error.contains("newer than this build knows"), "{engine:?}: {error}");
        let current = events.iter().find(|e| e.aggregate_id == "current").expect("the current event");
        assert!(matches!(current.decode::<EmailClaimEvent>(), Ok(EmailClaimEvent::EmailClaimed { .. })));
        // The stored form is what was written, and its chain hash is there.
        assert_eq!((future.event_version.as_str(), &future.payload), ("2", &claim("future", "2").payload));
        assert!(future.hash.is_some(), "{engine:?}: the chain covers the stored event");
    }
}
