//! The signing keyring: one aggregate holding the life of every signing key (public
//! parts only; private keys are sealed in `signing_key_secrets`).
//!
//! A key is created and published, starts signing once every JWKS cache has had time to
//! see it (`publish_ahead`), is retired when the next key starts, and is removed once
//! every token it signed has expired. Every process runs the rotation job; because the
//! keyring is one aggregate, concurrent runs conflict and all but one become no-ops.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::events::auth::KeyringEvent;

/// The id of the signing keyring.
pub const KEYRING_ID: &str = "signing-keys";
/// The id of the audit keyring: the keys that sign the log's seals. Its retired keys are
/// never unpublished (seals must stay checkable forever).
pub const AUDIT_KEYRING_ID: &str = "audit-keys";

/// The `unpublish_after` of a key retired for good (published forever): 9999-12-31.
pub fn never() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Pending,
    Active,
    Retired { unpublish_after: DateTime<Utc> },
    Removed,
}

/// One key's public record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub kid: String,
    /// The Ed25519 public key, base64url (the JWK `x`).
    pub public_key: String,
    pub created_at: DateTime<Utc>,
    pub activates_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub state: KeyState,
}

/// Every signing key there has been.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Keyring {
    pub keys: Vec<KeyEntry>,
}

impl Keyring {
    /// The key that signs new tokens.
    pub fn active(&self) -> Option<&KeyEntry> {
        self.keys.iter().rev().find(|k| k.state == KeyState::Active)
    }

    /// Keys published in the JWKS: pending, active and retired ones.
    pub fn published(&self) -> impl Iterator<Item = &KeyEntry> {
        self.keys.iter().filter(|k| k.state != KeyState::Removed)
    }

    /// Keys whose signatures are accepted: active and retired ones.
    pub fn accepted(&self) -> impl Iterator<Item = &KeyEntry> {
        self.keys.iter().filter(|k| matches!(k.state, KeyState::Active | KeyState::Retired { .. }))
    }

    fn pending(&self) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| k.state == KeyState::Pending)
    }

    /// Whether the next key should be published now.
    pub fn rotation_due(&self, at: DateTime<Utc>, interval: Duration) -> bool {
        let old_enough = self.active().and_then(|k| k.activated_at).is_some_and(|t| at - t >= interval);
        old_enough && self.pending().is_none()
    }

    /// Whether a pending key should start signing or a retired key be removed now.
    pub fn advance_due(&self, at: DateTime<Utc>) -> bool {
        self.pending().is_some_and(|k| k.activates_at <= at)
            || self
                .keys
                .iter()
                .any(|k| matches!(k.state, KeyState::Retired { unpublish_after } if unpublish_after <= at))
    }
}

/// A freshly generated key's public part (its private part is sealed by the caller
/// before the command runs).
#[derive(Clone, Debug)]
pub struct NewKey {
    pub kid: String,
    pub public_key: String,
}

#[derive(Clone, Debug)]
pub enum KeyringCommand {
    /// On an empty keyring: publish and activate the first key at once.
    Bootstrap { key: NewKey, at: DateTime<Utc> },
    /// If the active key is older than `interval` and no key is pending, publish the
    /// next key, to start signing after `publish_ahead`.
    PrepareRotation { key: NewKey, interval: Duration, publish_ahead: Duration, at: DateTime<Utc> },
    /// Activate a pending key whose time has come (retiring the one it replaces, to be
    /// unpublished after `retired_for`, or never when it is `None`), and remove retired
    /// keys past that.
    Advance { retired_for: Option<Duration>, at: DateTime<Utc> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("key id {0} already exists")]
    DuplicateKid(String),
}

impl Aggregate for Keyring {
    const TYPE: &'static str = "keyring";
    type Command = KeyringCommand;
    type Event = KeyringEvent;
    type Error = KeyringError;
    type Services = ();

    async fn handle(
        &mut self,
        command: KeyringCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), KeyringError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: KeyringEvent) {
        match event {
            KeyringEvent::SigningKeyCreated { kid, public_key, created_at, activates_at } => {
                self.keys.push(KeyEntry {
                    kid,
                    public_key,
                    created_at,
                    activates_at,
                    activated_at: None,
                    state: KeyState::Pending,
                });
            }
            KeyringEvent::SigningKeyActivated { kid, activated_at, .. } => {
                if let Some(key) = self.keys.iter_mut().find(|k| k.kid == kid) {
                    key.state = KeyState::Active;
                    key.activated_at = Some(activated_at);
                }
            }
            KeyringEvent::SigningKeyRetired { kid, unpublish_after, .. } => {
                if let Some(key) = self.keys.iter_mut().find(|k| k.kid == kid) {
                    key.state = KeyState::Retired { unpublish_after };
                }
            }
            KeyringEvent::SigningKeyRemoved { kid, .. } => {
                if let Some(key) = self.keys.iter_mut().find(|k| k.kid == kid) {
                    key.state = KeyState::Removed;
                }
            }
        }
    }
}

impl Keyring {
    fn decide(&self, command: KeyringCommand) -> Result<Vec<KeyringEvent>, KeyringError> {
        match command {
            KeyringCommand::Bootstrap { key, at } => {
                if !self.keys.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![
                    KeyringEvent::SigningKeyCreated {
                        kid: key.kid.clone(),
                        public_key: key.public_key,
                        created_at: at,
                        activates_at: at,
                    },
                    KeyringEvent::SigningKeyActivated { kid: key.kid, previous_kid: None, activated_at: at },
                ])
            }
            KeyringCommand::PrepareRotation { key, interval, publish_ahead, at } => {
                if self.keys.iter().any(|k| k.kid == key.kid) {
                    return Err(KeyringError::DuplicateKid(key.kid));
                }
                if !self.rotation_due(at, interval) {
                    return Ok(Vec::new());
                }
                Ok(vec![KeyringEvent::SigningKeyCreated {
                    kid: key.kid,
                    public_key: key.public_key,
                    created_at: at,
                    activates_at: at + publish_ahead,
                }])
            }
            KeyringCommand::Advance { retired_for, at } => {
                let mut events = Vec::new();
                if let Some(next) = self.pending().filter(|k| k.activates_at <= at) {
                    let previous = self.active().map(|k| k.kid.clone());
                    events.push(KeyringEvent::SigningKeyActivated {
                        kid: next.kid.clone(),
                        previous_kid: previous.clone(),
                        activated_at: at,
                    });
                    if let Some(kid) = previous {
                        events.push(KeyringEvent::SigningKeyRetired {
                            kid,
                            retired_at: at,
                            unpublish_after: retired_for.map_or_else(never, |d| at + d),
                        });
                    }
                }
                for key in &self.keys {
                    if let KeyState::Retired { unpublish_after } = key.state
                        && unpublish_after <= at
                    {
                        events.push(KeyringEvent::SigningKeyRemoved { kid: key.kid.clone(), removed_at: at });
                    }
                }
                Ok(events)
            }
        }
    }
}

#[cfg(test)]
mod tests;
