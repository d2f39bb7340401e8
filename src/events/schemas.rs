//! The event catalogue: every event type of every aggregate, with its current version,
//! its JSON Schema (generated from the code by schemars, doc comments becoming
//! descriptions) and the class of its fields from the one registry
//! ([`super::catalogue::classified_fields`]).
//!
//! `mana-core-auth events schema` prints [`schema_document`]; `mana-core-auth events
//! markdown` prints [`markdown`], which is docs/EVENTS.md (a test keeps the two equal).

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde_json::{Map, Value, json};

use super::audit::{AuditEvent, SEALS_TYPE};
use super::auth::{
    EmailClaimEvent, KeyringEvent, LoginAttemptEvent, SecurityNoticeEvent, SessionEvent, UserEvent,
};
use super::catalogue::{ClassifiedField, FieldClass, METADATA_FIELDS, classified_fields};
use super::credits::{CreditEvent, OperatorKeyEvent};
use super::purchases::{CatalogueEvent, PaymentIntentEvent, PurchaseEvent, StripeEventEvent};
use super::upcast::current_version;

/// One event type of the catalogue.
#[derive(Clone, Debug, PartialEq)]
pub struct EventType {
    pub event_type: String,
    /// The aggregate whose streams hold it (the `aggregate_type` column).
    pub aggregate_type: &'static str,
    /// The version the code writes and reads (older ones are upcast).
    pub version: u32,
    /// The variant's doc comment.
    pub description: Option<String>,
    /// JSON Schema (draft 2020-12) of the stored payload, `{"<EventType>": {...}}`.
    pub schema: Value,
    /// The registry's classified fields (pointers into the body).
    pub classes: &'static [ClassifiedField],
    /// Every field of the body, nested objects flattened, in declaration order.
    pub fields: Vec<Field>,
}

/// A field of an event body (or of the metadata), as the catalogue lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// JSON pointer into the body (`/personal/email`).
    pub pointer: String,
    /// Readable type (`string (date-time)`, `Credits (integer)`, `string or null`, ...).
    pub type_name: String,
    /// Present in every event of the type (an optional field may be absent).
    pub required: bool,
    pub meaning: String,
    pub class: Option<FieldClass>,
}

/// The aggregate types and their event enums, in the order the catalogue lists them.
fn enum_schemas() -> Vec<(&'static str, Value)> {
    fn of<T: JsonSchema>() -> Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
    }
    vec![
        ("user", of::<UserEvent>()),
        ("email_claim", of::<EmailClaimEvent>()),
        ("session", of::<SessionEvent>()),
        ("login_attempts", of::<LoginAttemptEvent>()),
        ("keyring", of::<KeyringEvent>()),
        ("security_notice", of::<SecurityNoticeEvent>()),
        ("credit_account", of::<CreditEvent>()),
        ("operator_key", of::<OperatorKeyEvent>()),
        ("credit_catalogue", of::<CatalogueEvent>()),
        ("purchase", of::<PurchaseEvent>()),
        ("payment_intent", of::<PaymentIntentEvent>()),
        ("stripe_event", of::<StripeEventEvent>()),
        (SEALS_TYPE, of::<AuditEvent>()),
    ]
}

/// Every event type of the code, grouped by aggregate type, in declaration order.
pub fn catalogue() -> Vec<EventType> {
    let mut out = Vec::new();
    for (aggregate_type, root) in enum_schemas() {
        let empty = Map::new();
        let defs = root.get("$defs").and_then(Value::as_object).unwrap_or(&empty);
        // An enum whose variants are all units would be a string enum; event enums never are.
        let variants = root.get("oneOf").and_then(Value::as_array).cloned().unwrap_or_default();
        for variant in variants {
            let Some((name, body)) =
                variant.get("properties").and_then(Value::as_object).and_then(|p| p.iter().next())
            else {
                continue;
            };
            let mut schema = variant.clone();
            let object = schema.as_object_mut().expect("a variant schema is an object");
            let description = object.remove("description").and_then(|d| d.as_str().map(str::to_owned));
            let mut head = Map::new();
            head.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
            head.insert("title".into(), json!(name));
            if let Some(text) = &description {
                head.insert("description".into(), json!(text));
            }
            head.append(object);
            let used = referenced_defs(body, defs);
            if !used.is_empty() {
                let pruned: Map<String, Value> =
                    used.iter().filter_map(|n| Some((n.clone(), defs.get(n)?.clone()))).collect();
                head.insert("$defs".into(), Value::Object(pruned));
            }
            let classes = classified_fields(name);
            let mut fields = Vec::new();
            flatten(body, defs, "", true, classes, &mut fields);
            out.push(EventType {
                event_type: name.clone(),
                aggregate_type,
                version: current_version(name),
                description,
                schema: Value::Object(head),
                classes,
                fields,
            });
        }
    }
    out
}

/// The fields of the metadata every event carries, with their classes.
pub fn metadata_fields() -> Vec<Field> {
    let root = serde_json::to_value(schemars::schema_for!(super::EventMetadata)).unwrap_or(Value::Null);
    let empty = Map::new();
    let defs = root.get("$defs").and_then(Value::as_object).unwrap_or(&empty);
    let mut fields = Vec::new();
    flatten(&root, defs, "", true, METADATA_FIELDS, &mut fields);
    fields
}

/// `{eventType: {version, aggregateType, schema, classes: {pointer: class}}}`, as
/// `mana-core-auth events schema` prints it.
pub fn schema_document() -> Value {
    let mut doc = Map::new();
    for event in catalogue() {
        let classes: Map<String, Value> =
            event.classes.iter().map(|c| (c.pointer.to_owned(), json!(c.class.as_str()))).collect();
        doc.insert(
            event.event_type.clone(),
            json!({
                "version": event.version.to_string(),
                "aggregateType": event.aggregate_type,
                "schema": event.schema,
                "classes": classes,
            }),
        );
    }
    Value::Object(doc)
}

/// The names of the `$defs` a schema uses, directly or through other definitions.
fn referenced_defs(schema: &Value, defs: &Map<String, Value>) -> BTreeSet<String> {
    fn walk(schema: &Value, defs: &Map<String, Value>, seen: &mut BTreeSet<String>) {
        match schema {
            Value::Object(map) => {
                for (key, value) in map {
                    if key == "$ref"
                        && let Some(name) = value.as_str().and_then(|r| r.strip_prefix("#/$defs/"))
                    {
                        if seen.insert(name.to_owned())
                            && let Some(def) = defs.get(name)
                        {
                            walk(def, defs, seen);
                        }
                    } else {
                        walk(value, defs, seen);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, defs, seen)),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    walk(schema, defs, &mut seen);
    seen
}

/// The definition a `$ref` names.
fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> (Option<&'a str>, &'a Value) {
    match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => (Some(name), defs.get(name).unwrap_or(&Value::Null)),
        None => (None, schema),
    }
}

/// `(nullable, the schema without the null)` for `anyOf [X, null]` and `type [T, null]`.
fn strip_null(schema: &Value) -> (bool, Value) {
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        let null = json!({"type": "null"});
        if options.len() == 2 && options.contains(&null) {
            let other = options.iter().find(|o| **o != null).cloned().unwrap_or(Value::Null);
            return (true, other);
        }
    }
    if let Some(types) = schema.get("type").and_then(Value::as_array)
        && types.iter().any(|t| t == "null")
    {
        let rest: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        let mut copy = schema.clone();
        copy["type"] = if rest.len() == 1 { rest[0].clone() } else { Value::Array(rest) };
        return (true, copy);
    }
    (false, schema.clone())
}

/// The string values of an enum (a string `enum`, or `oneOf` of `const`s).
fn string_values(schema: &Value) -> Option<Vec<String>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values.iter().map(|v| v.as_str().map(str::to_owned)).collect();
    }
    let options = schema.get("oneOf").and_then(Value::as_array)?;
    let mut values = Vec::new();
    for option in options {
        if let Some(value) = option.get("const").and_then(Value::as_str) {
            values.push(value.to_owned());
        } else {
            values.extend(string_values(option)?);
        }
    }
    Some(values)
}

/// The readable type of a (non-null) schema.
fn type_name(schema: &Value, defs: &Map<String, Value>) -> String {
    let (name, target) = resolve(schema, defs);
    if let Some(values) = string_values(target) {
        let list = values.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ");
        return match name {
            Some(name) => format!("{name} ({list})"),
            None => format!("one of {list}"),
        };
    }
    if let Some(options) = target.get("oneOf").and_then(Value::as_array) {
        let kinds: Vec<String> = options
            .iter()
            .filter_map(|o| {
                let props = o.get("properties")?.as_object()?;
                props.values().find_map(|p| p.get("const").and_then(Value::as_str).map(|c| format!("`{c}`")))
            })
            .collect();
        let tag = options
            .first()
            .and_then(|o| o.get("properties")?.as_object()?.iter().find(|(_, p)| p.get("const").is_some()))
            .map_or("kind", |(k, _)| k.as_str());
        let base = format!("object tagged by `{tag}`: {}", kinds.join(", "));
        return name.map_or(base.clone(), |n| format!("{n} ({base})"));
    }
    let base = match target {
        Value::Bool(true) => "any JSON".to_owned(),
        Value::Object(map) if map.get("type").is_none() && map.get("$ref").is_none() => "any JSON".to_owned(),
        _ => {
            let ty = match target.get("type") {
                Some(Value::String(t)) => t.clone(),
                Some(Value::Array(ts)) => {
                    ts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or ")
                }
                _ => "any JSON".to_owned(),
            };
            let ty = if ty == "array" {
                let items = target.get("items").map_or("any JSON".to_owned(), |i| type_name(i, defs));
                format!("array of {items}")
            } else {
                ty
            };
            match target.get("format").and_then(Value::as_str) {
                Some(format) => format!("{ty} ({format})"),
                None => ty,
            }
        }
    };
    match name {
        Some(name) => format!("{name} ({base})"),
        None => base,
    }
}

/// The first paragraph of a description, on one line.
fn first_paragraph(text: &str) -> String {
    text.split("\n\n").next().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a field without a doc comment means, by the naming conventions of the events.
fn conventional_meaning(name: &str) -> Option<String> {
    let fixed = match name {
        "user_id" => "The user's id.",
        "session_id" => "The session's id.",
        "attempt_id" => "The login attempt's id.",
        "transaction_id" => "The transaction's id (the idempotent operation's id).",
        "refunded_transaction_id" => "The spend being refunded.",
        "kid" => "The key's id.",
        "previous_kid" => "The key that signed before, if any.",
        "public_key" => "The public key (never the private part).",
        "role" => "The role from now on.",
        "previous" => "The role before.",
        "origin" => "How the session began.",
        "remember_me" => "The session's refresh token lives longer.",
        "reason" => "Why.",
        "actor" => "Who did it: a user id, or `system`.",
        "amount" => "The amount of credits moved.",
        "pool" => "The pool the credits went to or came from.",
        "before" => "The balances before the event.",
        "after" => "The balances after the event.",
        "free" => "Free credits.",
        "paid" => "Purchased credits.",
        "description" => "Free text the caller sent.",
        "metadata" => "Free JSON the caller sent.",
        "app_id" => "The app that spent.",
        "from_free" | "to_free" => "The part of the amount in the free pool.",
        "from_paid" | "to_paid" => "The part of the amount in the paid pool.",
        "total_spent_after" => "Every credit the user has spent, including this spend.",
        "key" => "The idempotency key the operation was made under.",
        "fingerprint" => "Fingerprint of the request made under the key.",
        "operator" => "The operator (admin or service) who sent the key.",
        "source" => "Why credits were granted.",
        "granted_day" => "The day of registration in the daily-grant time zone.",
        "day" => "The day (daily-grant time zone).",
        "kind" => "The kind (tag).",
        "rule" => "The rate-limit rule that was passed.",
        "failures" => "Failed checks that led to the lock.",
        "retry_after_secs" => "Seconds the client was told to wait.",
        "familiar" => "The client signed in to this account from the same IP or device within 30 days.",
        "email" => "The e-mail address.",
        "name" => "The display name.",
        "device_id" => "The client's device id.",
        "device_name" => "The client's device name.",
        "ip_address" => "The client's IP address.",
        "user_agent" => "The client's user agent.",
        "refresh_hash" => "SHA-256 of the refresh token issued.",
        "previous_hash" => "SHA-256 of the refresh token spent.",
        "presented_hash" => "SHA-256 of the spent refresh token presented again.",
        "token_hash" => "SHA-256 of the token mailed.",
        "refresh_expires_at" => "When the refresh token expires.",
        "expires_at" => "When the token expires.",
        "sessions_revoked_before" => "Sessions started at or before this time are revoked.",
        "kept_session" => "The session that is not revoked (the one that asked).",
        "locked_until" => "The end of the lock.",
        "lease_until" => "When the attempt stops holding its class if its process died.",
        "activates_at" => "When the key starts signing.",
        "unpublish_after" => "When the key stops being published.",
        _ => "",
    };
    if !fixed.is_empty() {
        return Some(fixed.to_owned());
    }
    (name == "at" || name.ends_with("_at")).then(|| "When it happened.".to_owned())
}

/// Adds a row for each property of an object schema (and of the objects under it).
fn flatten(
    schema: &Value,
    defs: &Map<String, Value>,
    prefix: &str,
    parent_required: bool,
    classes: &[ClassifiedField],
    out: &mut Vec<Field>,
) {
    let (_, target) = resolve(schema, defs);
    if let Some(options) = target.get("oneOf").and_then(Value::as_array) {
        for option in options {
            if option.get("properties").is_some() {
                flatten(option, defs, prefix, false, classes, out);
            }
        }
        return;
    }
    let Some(properties) = target.get("properties").and_then(Value::as_object) else { return };
    let required: Vec<&str> = target
        .get("required")
        .and_then(Value::as_array)
        .map_or(Vec::new(), |r| r.iter().filter_map(Value::as_str).collect());
    let mut names: Vec<&String> = properties.keys().collect();
    names.sort_by_key(|n| (required.iter().position(|r| r == n).unwrap_or(usize::MAX), n.as_str()));
    for name in names {
        let pointer = format!("{prefix}/{name}");
        if out.iter().any(|f| f.pointer == pointer) {
            continue;
        }
        let property = &properties[name];
        let (nullable, inner) = strip_null(property);
        let (_, resolved) = resolve(&inner, defs);
        let mut type_text = type_name(&inner, defs);
        if nullable {
            type_text.push_str(" or null");
        }
        // The field's doc comment, else the naming convention, else its type's doc comment.
        let described = |s: &Value| s.get("description").and_then(Value::as_str).map(first_paragraph);
        let meaning = described(property)
            .or_else(|| described(&inner))
            .or_else(|| conventional_meaning(name))
            .or_else(|| described(resolved))
            .unwrap_or_default();
        let required = parent_required && required.contains(&name.as_str()) && !nullable;
        let class = classes.iter().find(|c| c.pointer == pointer).map(|c| c.class);
        out.push(Field { pointer: pointer.clone(), type_name: type_text, required, meaning, class });
        flatten(&inner, defs, &pointer, required, classes, out);
    }
}

/// A table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn field_table(fields: &[Field], out: &mut String) {
    out.push_str("| Field | Type | Required | Meaning | Class |\n|---|---|---|---|---|\n");
    for field in fields {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            field.pointer,
            cell(&field.type_name),
            if field.required { "yes" } else { "no" },
            cell(&field.meaning),
            field.class.map_or("", FieldClass::as_str),
        ));
    }
}

/// docs/EVENTS.md, as `mana-core-auth events markdown` prints it.
pub fn markdown() -> String {
    let events = catalogue();
    let mut out = String::new();
    out.push_str(
        "# Event catalogue\n\n\
         <!-- Generated from the code: `mana-core-auth events markdown > docs/EVENTS.md`. \
         Do not edit by hand; tests/event_catalogue.rs fails when this file and the code disagree. -->\n\n\
         Every event type the service stores, by aggregate type, with its current version and\n\
         each field of its body: name (a JSON pointer into the body, the object under the\n\
         variant's name in the stored payload `{\"EventType\": {...}}`), type, whether it is\n\
         always present, meaning, and class:\n\n\
         - **secret**: never leaves the service; the hash chain and exports carry only its\n  \
         SHA-256 commitment (docs/AUDIT.md).\n\
         - **personal**: data about a person; the hash chain carries only its keyed commitment,\n  \
         so it can be erased by destroying the person's key.\n\n\
         The classes come from the one registry in the code (`src/events/catalogue.rs`).\n\
         `mana-core-auth events schema` prints the JSON Schema of every event type (generated\n\
         from the code), with its version, aggregate type and classes, as one JSON document.\n\n\
         **Versions.** `event_version` is stored with every event and honoured on every load:\n\
         an event stored at an older version is read through its upcasters\n\
         (`src/events/upcast.rs`) to the current shape; one stored at a newer version than the\n\
         build knows is refused with an error. Upcasting never changes the stored event, which\n\
         the hash chain covers as written.\n\n",
    );
    out.push_str("## Metadata (every event)\n\nThe `metadata` column of every event.\n\n");
    field_table(&metadata_fields(), &mut out);
    let mut aggregate = "";
    for event in &events {
        if event.aggregate_type != aggregate {
            aggregate = event.aggregate_type;
            let names: Vec<String> = events
                .iter()
                .filter(|e| e.aggregate_type == aggregate)
                .map(|e| format!("`{}`", e.event_type))
                .collect();
            out.push_str(&format!("\n## Aggregate `{aggregate}`\n\nEvent types: {}.\n", names.join(", ")));
        }
        out.push_str(&format!("\n### {} (version {})\n\n", event.event_type, event.version));
        if let Some(description) = &event.description {
            out.push_str(&description.split_whitespace().collect::<Vec<_>>().join(" "));
            out.push_str("\n\n");
        }
        if event.fields.is_empty() {
            out.push_str("No fields.\n");
        } else {
            field_table(&event.fields, &mut out);
        }
    }
    out
}

/// Classes by pointer, for tests and tools.
pub fn classes_of(event: &EventType) -> BTreeMap<String, FieldClass> {
    event.classes.iter().map(|c| (c.pointer.to_owned(), c.class)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_appears_once_with_its_own_schema() {
        let events = catalogue();
        let names: BTreeSet<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(names.len(), events.len(), "an event type is listed twice");
        assert!(
            names.contains("UserRegistered")
                && names.contains("LogSealed")
                && names.contains("OperatorKeyUsed")
        );
        let registered = events.iter().find(|e| e.event_type == "UserRegistered").expect("UserRegistered");
        assert_eq!(registered.aggregate_type, "user");
        assert_eq!(registered.schema["required"], json!(["UserRegistered"]));
        assert!(registered.schema["$defs"].get("UserPersonal").is_some());
        assert!(registered.schema["$defs"].get("Balances").is_none(), "unused definitions are pruned");
    }

    #[test]
    fn nested_and_optional_fields_are_flattened_with_their_class() {
        let events = catalogue();
        let spent = events.iter().find(|e| e.event_type == "CreditsSpent").expect("CreditsSpent");
        let key = spent.fields.iter().find(|f| f.pointer == "/key/key").expect("/key/key");
        assert_eq!((key.class, key.required), (Some(FieldClass::Personal), false));
        let free = spent.fields.iter().find(|f| f.pointer == "/after/free").expect("/after/free");
        assert!(free.type_name.starts_with("Credits (integer"), "{}", free.type_name);
        let started = events.iter().find(|e| e.event_type == "SessionStarted").expect("SessionStarted");
        let ip = started.fields.iter().find(|f| f.pointer == "/personal/ip_address").expect("ip");
        assert_eq!(ip.class, Some(FieldClass::Personal));
        assert_eq!(ip.type_name, "string or null");
        assert_eq!(started.fields[0].pointer, "/session_id", "required fields come in declaration order");
    }
}
