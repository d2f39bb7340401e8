//! The audit keys: the Ed25519 keys that sign the log's seals (`audit::seal`).
//!
//! They live like the signing keys (same keyring aggregate, stream `audit-keys`; private
//! parts sealed in `signing_key_secrets` under `KEY_ENCRYPTION_SECRET`; rotated by the
//! jobs every `AUDIT_KEY_ROTATION_DAYS`), except that a retired audit key is never
//! unpublished: a seal must stay checkable for as long as the log exists.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};

use super::keys::{KeyLife, jwk};
use super::secrets::Sealer;
use crate::clock::SharedClock;
use crate::commands::CommandBus;
use crate::commands::keyring::{AUDIT_KEYRING_ID, Keyring};

/// How long clients may cache the audit JWKS (`Cache-Control: max-age`), as the
/// signing keys' JWKS.
pub const AUDIT_JWKS_MAX_AGE_SECS: i64 = super::keys::JWKS_MAX_AGE_SECS;

/// Timing of audit-key lives (a retired audit key stays published for ever).
#[derive(Clone, Copy, Debug)]
pub struct AuditKeySettings {
    /// Age of the active key at which the next one is published.
    pub rotation_interval: chrono::Duration,
    /// How long a key is published before it signs (at least twice the JWKS max-age).
    pub publish_ahead: chrono::Duration,
}

/// The audit keys as this process has them.
pub struct AuditKeySet {
    /// The key that signs new seals: its kid and private key.
    pub active: Option<(String, SigningKey)>,
    /// Every audit public key there has been, by kid.
    pub verifying: HashMap<String, VerifyingKey>,
    /// `{"keys":[{kty,crv,x,kid,use,alg}]}` of every audit key there has been.
    pub jwks: Value,
}

/// The audit-key service of one process.
pub struct AuditKeys {
    life: KeyLife,
    current: RwLock<Arc<AuditKeySet>>,
    decrypted: Mutex<HashMap<String, SigningKey>>,
}

impl AuditKeys {
    /// Loads the audit keyring, creating and activating the first key on a new deployment
    /// (or one that predates the seals).
    pub async fn start(
        keyring: CommandBus<Keyring>,
        sealer: Sealer,
        clock: SharedClock,
        settings: AuditKeySettings,
    ) -> anyhow::Result<Arc<Self>> {
        let empty = AuditKeySet { active: None, verifying: HashMap::new(), jwks: json!({"keys": []}) };
        let keys = Arc::new(Self {
            life: KeyLife::new(
                keyring,
                AUDIT_KEYRING_ID,
                sealer,
                clock,
                (settings.rotation_interval, settings.publish_ahead),
                None,
            ),
            current: RwLock::new(Arc::new(empty)),
            decrypted: Mutex::new(HashMap::new()),
        });
        keys.life.bootstrap().await?;
        keys.rotate().await?;
        anyhow::ensure!(keys.keys().active.is_some(), "no active audit key after start-up");
        Ok(keys)
    }

    /// The current key set.
    pub fn keys(&self) -> Arc<AuditKeySet> {
        Arc::clone(&self.current.read())
    }

    /// The JWKS of every audit key there has been.
    pub fn jwks(&self) -> Value {
        self.keys().jwks.clone()
    }

    /// One run of the rotation job (safe in every process at once), then a reload.
    pub async fn rotate(&self) -> anyhow::Result<()> {
        self.life.rotate().await?;
        self.refresh().await
    }

    /// Rebuilds the key set from the keyring and the sealed private key of the active key.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let ring = self.life.load().await?;
        let active = match ring.active() {
            Some(key) => Some((key.kid.clone(), self.signing_key(&key.kid).await?)),
            None => None,
        };
        let mut verifying = HashMap::new();
        for key in &ring.keys {
            verifying.insert(key.kid.clone(), verifying_key(&key.public_key)?);
        }
        let jwks = json!({ "keys": ring.keys.iter().map(jwk).collect::<Vec<_>>() });
        *self.current.write() = Arc::new(AuditKeySet { active, verifying, jwks });
        Ok(())
    }

    async fn signing_key(&self, kid: &str) -> anyhow::Result<SigningKey> {
        if let Some(key) = self.decrypted.lock().get(kid) {
            return Ok(key.clone());
        }
        let der = self.life.private_key(kid).await?;
        let key = SigningKey::from_pkcs8_der(&der).map_err(|e| anyhow::anyhow!("audit key {kid}: {e}"))?;
        self.decrypted.lock().insert(kid.to_owned(), key.clone());
        Ok(key)
    }
}

/// The JWKS of every audit key the keyring holds, read from the log without the private
/// parts (what `GET /api/v1/audit/keys` serves; live verification uses it).
pub async fn published_jwks(
    keyring: &crate::commands::CommandBus<crate::commands::keyring::Keyring>,
) -> anyhow::Result<Value> {
    let (ring, _) = keyring
        .load(crate::commands::keyring::AUDIT_KEYRING_ID)
        .await
        .map_err(|e| anyhow::anyhow!("cannot load the audit keyring: {e}"))?;
    Ok(json!({ "keys": ring.keys.iter().map(jwk).collect::<Vec<_>>() }))
}

/// An Ed25519 public key from its JWK `x` (base64url).
pub fn verifying_key(x: &str) -> anyhow::Result<VerifyingKey> {
    let bytes = URL_SAFE_NO_PAD.decode(x).context("a stored audit public key is not base64url")?;
    let bytes: [u8; 32] =
        bytes.try_into().map_err(|_| anyhow::anyhow!("a stored audit public key is not 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).context("a stored audit public key is not a curve point")
}
