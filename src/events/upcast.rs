//! Event versions and the one registry of upcasters.
//!
//! Every stored event carries `event_version`. The code knows one current version per
//! event type ([`current_version`]); an event stored at an older version is read through
//! the upcasters that lift it, step by step, to the current shape, and an event stored at
//! a newer version than the code knows is refused with a clear error instead of being
//! misread.
//!
//! Both load paths use it: aggregates replaying their stream (`commands::replay`, and the
//! cqrs-es repository) and projections decoding the global log
//! ([`super::RecordedEvent::decode`]). Upcasting works on a copy: the stored event, which
//! the hash chain ([`super::chain`]) covers as written, is never changed.
//!
//! To change an event's shape: bump its entry in [`VERSIONS`], add an [`Upcaster`] from
//! the old version to [`UPCASTERS`], and regenerate docs/EVENTS.md
//! (`mana-core-auth events markdown > docs/EVENTS.md`).

use std::borrow::Cow;

use serde_json::Value;

/// Lifts the body of one event type (the object under the variant's name) from one
/// version to the next.
#[derive(Clone, Copy, Debug)]
pub struct Upcaster {
    pub event_type: &'static str,
    /// The stored version it reads.
    pub from: u32,
    /// Changes the body in place to the shape of version `from + 1`.
    pub apply: fn(&mut Value),
}

/// Current versions of the event types that are not at version 1.
///
/// Version 2 of every event type with secret or personal fields stores those fields
/// sealed under the subject's data key ([`super::sealing`], docs/PRIVACY.md). The store
/// opens them as it reads, so that once opened a version-2 body has version 1's shape:
/// version-1 events, written in plaintext before sealing existed, are lifted by
/// [`plaintext_is_open`]. (The login-attempt events that say the client class,
/// `familiar`, were added earlier as new event types; the old ones keep their shape.)
pub const VERSIONS: &[(&str, u32)] = &[
    ("UserRegistered", 2),
    ("PasswordChanged", 2),
    ("PasswordResetRequested", 2),
    ("PasswordResetCompleted", 2),
    ("EmailVerificationRequested", 2),
    ("SessionStarted", 2),
    ("SessionRefreshed", 2),
    ("RefreshTokenReuseDetected", 2),
    ("LoginFailed", 2),
    ("LoginCheckFailed", 2),
    ("LoginCheckSucceeded", 2),
    ("LoginThrottled", 2),
    ("LoginLocked", 2),
    ("ResetRequestedForUnknownAddress", 2),
    ("RateLimitExceeded", 2),
    ("CreditsSpent", 2),
];

/// Version 1 → 2 of the sealed event types: a version-1 body holds its personal and
/// secret fields in plaintext, which is already the opened shape of version 2.
pub fn plaintext_is_open(_body: &mut Value) {}

macro_rules! sealed_since_2 {
    ($($event:literal),* $(,)?) => {
        &[$(Upcaster { event_type: $event, from: 1, apply: plaintext_is_open }),*]
    };
}

/// Every upcaster of the code.
pub const UPCASTERS: &[Upcaster] = sealed_since_2!(
    "UserRegistered",
    "PasswordChanged",
    "PasswordResetRequested",
    "PasswordResetCompleted",
    "EmailVerificationRequested",
    "SessionStarted",
    "SessionRefreshed",
    "RefreshTokenReuseDetected",
    "LoginFailed",
    "LoginCheckFailed",
    "LoginCheckSucceeded",
    "LoginThrottled",
    "LoginLocked",
    "ResetRequestedForUnknownAddress",
    "RateLimitExceeded",
    "CreditsSpent",
);

/// Versions and upcasters: [`Registry::CURRENT`] is the code's; tests build their own.
#[derive(Clone, Copy, Debug)]
pub struct Registry {
    pub versions: &'static [(&'static str, u32)],
    pub upcasters: &'static [Upcaster],
}

/// Why a stored event cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error(
        "{event_type} is stored at version {stored}, newer than this build knows ({current}): \
         run a newer build to read this log"
    )]
    Newer { event_type: String, stored: u32, current: u32 },
    #[error("{event_type} has no upcaster from version {from} (stored at {stored}, current {current})")]
    NoUpcaster { event_type: String, stored: u32, from: u32, current: u32 },
    #[error("{event_type} has an unreadable event_version {stored:?} (expected a positive integer)")]
    BadVersion { event_type: String, stored: String },
    #[error("{event_type} at version {stored} is not a single variant object, so it cannot be upcast")]
    NotAVariant { event_type: String, stored: u32 },
}

impl Registry {
    /// The code's versions and upcasters.
    pub const CURRENT: Self = Self { versions: VERSIONS, upcasters: UPCASTERS };

    /// The version the code writes for `event_type`.
    pub fn current_version(&self, event_type: &str) -> u32 {
        self.versions.iter().find(|(name, _)| *name == event_type).map_or(1, |(_, version)| *version)
    }

    /// The payload of an event stored at `stored_version`, in the current shape: borrowed
    /// when it already is, an upcast copy when it is older, an error when it is newer or
    /// no upcaster leads from it.
    pub fn upcast<'a>(
        &self,
        event_type: &str,
        stored_version: &str,
        payload: &'a Value,
    ) -> Result<Cow<'a, Value>, VersionError> {
        let stored = parse_version(stored_version).ok_or_else(|| VersionError::BadVersion {
            event_type: event_type.to_owned(),
            stored: stored_version.to_owned(),
        })?;
        let current = self.current_version(event_type);
        if stored == current {
            return Ok(Cow::Borrowed(payload));
        }
        if stored > current {
            return Err(VersionError::Newer { event_type: event_type.to_owned(), stored, current });
        }
        let mut lifted = payload.clone();
        let body = match &mut lifted {
            Value::Object(map) if map.len() == 1 => map.values_mut().next(),
            _ => None,
        }
        .ok_or_else(|| VersionError::NotAVariant { event_type: event_type.to_owned(), stored })?;
        for from in stored..current {
            let step =
                self.upcasters.iter().find(|u| u.event_type == event_type && u.from == from).ok_or_else(
                    || VersionError::NoUpcaster { event_type: event_type.to_owned(), stored, from, current },
                )?;
            (step.apply)(body);
        }
        Ok(Cow::Owned(lifted))
    }
}

/// [`upcast`] for a payload the caller owns (no copy when it is current).
pub fn upcast_owned(event_type: &str, stored_version: &str, payload: Value) -> Result<Value, VersionError> {
    if let Cow::Owned(lifted) = Registry::CURRENT.upcast(event_type, stored_version, &payload)? {
        return Ok(lifted);
    }
    Ok(payload)
}

/// The version the code writes for `event_type` (what `DomainEvent::event_version` says).
pub fn current_version(event_type: &str) -> u32 {
    Registry::CURRENT.current_version(event_type)
}

/// [`Registry::upcast`] with the code's registry.
pub fn upcast<'a>(
    event_type: &str,
    stored_version: &str,
    payload: &'a Value,
) -> Result<Cow<'a, Value>, VersionError> {
    Registry::CURRENT.upcast(event_type, stored_version, payload)
}

/// Stored versions are positive decimal integers ("1", "2", ...).
fn parse_version(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    /// A test-only event type at version 3: version 1 had `name`, version 2 renamed it to
    /// `display_name`, version 3 added `tags` (empty for older events).
    #[derive(Clone, Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    enum ProbeEvent {
        ProbeNamed { display_name: String, tags: Vec<String> },
    }

    fn rename(body: &mut Value) {
        if let Some(map) = body.as_object_mut()
            && let Some(name) = map.remove("name")
        {
            map.insert("display_name".to_owned(), name);
        }
    }

    fn add_tags(body: &mut Value) {
        if let Some(map) = body.as_object_mut() {
            map.entry("tags").or_insert_with(|| json!([]));
        }
    }

    const PROBE: Registry = Registry {
        versions: &[("ProbeNamed", 3)],
        upcasters: &[
            Upcaster { event_type: "ProbeNamed", from: 1, apply: rename },
            Upcaster { event_type: "ProbeNamed", from: 2, apply: add_tags },
        ],
    };

    fn decode(version: &str, payload: &Value) -> Result<ProbeEvent, String> {
        let current = PROBE.upcast("ProbeNamed", version, payload).map_err(|e| e.to_string())?;
        ProbeEvent::deserialize(current.as_ref()).map_err(|e| e.to_string())
    }

    #[test]
    fn an_event_of_every_older_version_is_read_in_the_current_shape() {
        let expected = ProbeEvent::ProbeNamed { display_name: "Ada".into(), tags: vec![] };
        assert_eq!(decode("1", &json!({"ProbeNamed": {"name": "Ada"}})), Ok(expected.clone()));
        assert_eq!(decode("2", &json!({"ProbeNamed": {"display_name": "Ada"}})), Ok(expected));
        let current = json!({"ProbeNamed": {"display_name": "Ada", "tags": ["x"]}});
        assert_eq!(
            decode("3", &current),
            Ok(ProbeEvent::ProbeNamed { display_name: "Ada".into(), tags: vec!["x".into()] })
        );
        assert!(matches!(PROBE.upcast("ProbeNamed", "3", &current), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn upcasting_leaves_the_stored_payload_as_written() {
        let stored = json!({"ProbeNamed": {"name": "Ada"}});
        let before = stored.to_string();
        let lifted = PROBE.upcast("ProbeNamed", "1", &stored).expect("upcast");
        assert_eq!(stored.to_string(), before);
        assert_ne!(lifted.as_ref(), &stored);
    }

    #[test]
    fn an_event_newer_than_the_code_is_refused_with_a_clear_error() {
        let error = decode("4", &json!({"ProbeNamed": {"display_name": "Ada", "tags": [], "colour": 1}}))
            .expect_err("a newer version");
        assert!(
            error.contains("ProbeNamed is stored at version 4, newer than this build knows (3)"),
            "{error}"
        );
        let error = upcast("UserRegistered", "3", &json!({"UserRegistered": {}})).expect_err("newer");
        assert_eq!(error, VersionError::Newer { event_type: "UserRegistered".into(), stored: 3, current: 2 });
    }

    #[test]
    fn a_missing_upcaster_or_a_bad_version_is_an_error_not_a_misread() {
        const GAP: Registry = Registry {
            versions: &[("ProbeNamed", 3)],
            upcasters: &[Upcaster { event_type: "ProbeNamed", from: 2, apply: add_tags }],
        };
        let gap = GAP;
        let error = gap.upcast("ProbeNamed", "1", &json!({"ProbeNamed": {"name": "Ada"}})).expect_err("gap");
        assert!(matches!(error, VersionError::NoUpcaster { from: 1, .. }), "{error}");
        for bad in ["", "0", "v1", "1.0", "-1", "99999999999"] {
            let error = PROBE.upcast("ProbeNamed", bad, &json!({"ProbeNamed": {}})).expect_err(bad);
            assert!(matches!(error, VersionError::BadVersion { .. }), "{bad}: {error}");
        }
        let error = PROBE.upcast("ProbeNamed", "1", &json!("ProbeNamed")).expect_err("not a variant");
        assert!(matches!(error, VersionError::NotAVariant { .. }), "{error}");
    }

    #[test]
    fn every_bumped_event_type_has_an_upcaster_from_each_older_version() {
        for (event_type, current) in VERSIONS {
            for from in 1..*current {
                assert!(
                    UPCASTERS.iter().any(|u| u.event_type == *event_type && u.from == from),
                    "{event_type} has no upcaster from version {from}"
                );
            }
        }
        for step in UPCASTERS {
            assert!(step.from < current_version(step.event_type), "{step:?} lifts past the current version");
        }
        let payload = json!({"SessionRevoked": {}});
        assert!(matches!(upcast("SessionRevoked", "1", &payload), Ok(Cow::Borrowed(_))));
    }
}
