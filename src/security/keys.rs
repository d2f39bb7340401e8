//! The signing keys in use: generation, sealed storage of private keys, rotation, and
//! the in-memory key set that signs and verifies tokens and renders the JWKS. The life
//! of a keyring's keys ([`KeyLife`]) is shared with the audit keys (`audit_keys`).
//!
//! The keyring aggregate (`commands::keyring`) decides the keys' lives; this service
//! generates key material outside it, seals private keys into `signing_key_secrets`
//! before the keyring hears of them, and refreshes the key set from the keyring (at
//! start, after rotation, every rotation-job run, and when a token names a kid it does
//! not know).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Duration;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
use jsonwebtoken::{DecodingKey, EncodingKey};
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::secrets::Sealer;
use crate::clock::SharedClock;
use crate::commands::keyring::{KEYRING_ID, KeyEntry, Keyring, KeyringCommand, NewKey};
use crate::commands::{CommandBus, CommandContext};
use crate::db::{Db, DbTime};

/// How long the JWKS may be cached by clients (`Cache-Control: max-age`).
pub const JWKS_MAX_AGE_SECS: i64 = 300;

/// Timing of key lives.
#[derive(Clone, Copy, Debug)]
pub struct KeySettings {
    /// Age of the active key at which the next one is published.
    pub rotation_interval: Duration,
    /// How long a key is published before it signs (at least twice the JWKS max-age).
    pub publish_ahead: Duration,
    /// How long a retired key stays published: the access-token lifetime plus leeway.
    pub retired_lifetime: Duration,
}

/// The keys in use right now.
pub struct KeySet {
    /// The key that signs new tokens.
    pub signing: Option<(String, EncodingKey)>,
    /// Keys whose signatures are accepted, by kid.
    pub verifying: HashMap<String, DecodingKey>,
    /// The JWKS document (published keys).
    pub jwks: Value,
}

/// The life of one keyring's keys, shared by the signing keys and the audit keys:
/// generation, sealed storage of private parts, and the keyring commands of rotation.
pub(super) struct KeyLife {
    keyring: CommandBus<Keyring>,
    ring_id: &'static str,
    db: Db,
    sealer: Sealer,
    clock: SharedClock,
    rotation_interval: Duration,
    publish_ahead: Duration,
    /// How long a retired key stays published; `None`: for ever.
    retired_for: Option<Duration>,
}

impl KeyLife {
    pub(super) fn new(
        keyring: CommandBus<Keyring>,
        ring_id: &'static str,
        sealer: Sealer,
        clock: SharedClock,
        (rotation_interval, publish_ahead): (Duration, Duration),
        retired_for: Option<Duration>,
    ) -> Self {
        let db = keyring.store().db().clone();
        Self { keyring, ring_id, db, sealer, clock, rotation_interval, publish_ahead, retired_for }
    }

    /// The keyring as stored.
    pub(super) async fn load(&self) -> anyhow::Result<Keyring> {
        let (ring, _) = self.keyring.load(self.ring_id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(ring)
    }

    /// Creates and activates the first key of an empty keyring.
    pub(super) async fn bootstrap(&self) -> anyhow::Result<()> {
        if self.load().await?.keys.is_empty() {
            self.introduce(|key, at| KeyringCommand::Bootstrap { key, at }).await?;
        }
        Ok(())
    }

    /// Publishes the next key when due, activates it when its time comes, and unpublishes
    /// retired keys past their time. Safe to run in every process at once.
    pub(super) async fn rotate(&self) -> anyhow::Result<()> {
        let (interval, ahead) = (self.rotation_interval, self.publish_ahead);
        let ring = self.load().await?;
        let now = self.clock.now();
        if ring.rotation_due(now, interval) {
            self.introduce(|key, at| KeyringCommand::PrepareRotation {
                key,
                interval,
                publish_ahead: ahead,
                at,
            })
            .await?;
        }
        if ring.advance_due(now) || ring.rotation_due(now, interval) {
            let ctx = CommandContext::system(self.clock.now());
            let advance = KeyringCommand::Advance { retired_for: self.retired_for, at: ctx.now };
            self.keyring.execute(self.ring_id, advance, &ctx).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }

    /// Generates a key, seals its private part, and offers it to the keyring. If the
    /// keyring declines (not due, or another process was first), the sealed row is removed.
    async fn introduce(
        &self,
        command: impl FnOnce(NewKey, chrono::DateTime<chrono::Utc>) -> KeyringCommand,
    ) -> anyhow::Result<()> {
        let signing = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let public_key = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        let kid = thumbprint(&public_key);
        let der = KeypairBytes { secret_key: signing.to_bytes(), public_key: None }
            .to_pkcs8_der()
            .context("encoding the private key")?;
        let ctx = CommandContext::system(self.clock.now());
        self.store_secret(&kid, &self.sealer.seal(der.as_bytes(), &kid)?, &ctx).await?;
        let outcome = self
            .keyring
            .execute(self.ring_id, command(NewKey { kid: kid.clone(), public_key }, ctx.now), &ctx)
            .await;
        if !matches!(&outcome, Ok(committed) if !committed.events.is_empty()) {
            self.delete_secret(&kid).await?;
        }
        outcome.map(drop).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A key's private part (PKCS#8 v1 DER), unsealed.
    pub(super) async fn private_key(&self, kid: &str) -> anyhow::Result<Vec<u8>> {
        let sealed =
            self.load_secret(kid).await?.with_context(|| format!("no private key stored for {kid}"))?;
        self.sealer.open(&sealed, kid)
    }

    async fn store_secret(&self, kid: &str, sealed: &[u8], ctx: &CommandContext) -> anyhow::Result<()> {
        let sql = "INSERT INTO signing_key_secrets (kid, sealed, created_at) VALUES ($1, $2, $3)";
        match &self.db {
            Db::Postgres(pool) => {
                sqlx::query(sql).bind(kid).bind(sealed).bind(DbTime(ctx.now)).execute(pool).await?;
            }
            Db::Sqlite { writer, .. } => {
                sqlx::query(sql).bind(kid).bind(sealed).bind(DbTime(ctx.now)).execute(writer).await?;
            }
        }
        Ok(())
    }

    async fn load_secret(&self, kid: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let sql = "SELECT sealed FROM signing_key_secrets WHERE kid = $1";
        let row = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query(sql).bind(kid).fetch_optional(pool).await?.map(|r| r.try_get(0))
            }
            Db::Sqlite { reader, .. } => {
                sqlx::query(sql).bind(kid).fetch_optional(reader).await?.map(|r| r.try_get(0))
            }
        };
        Ok(row.transpose()?)
    }

    async fn delete_secret(&self, kid: &str) -> anyhow::Result<()> {
        let sql = "DELETE FROM signing_key_secrets WHERE kid = $1";
        match &self.db {
            Db::Postgres(pool) => sqlx::query(sql).bind(kid).execute(pool).await.map(drop)?,
            Db::Sqlite { writer, .. } => sqlx::query(sql).bind(kid).execute(writer).await.map(drop)?,
        }
        Ok(())
    }
}

/// The signing-key service of one process.
pub struct KeyService {
    life: KeyLife,
    current: RwLock<Arc<KeySet>>,
    decrypted: Mutex<HashMap<String, EncodingKey>>,
    last_refresh: Mutex<Option<Instant>>,
}

impl KeyService {
    /// Loads the keyring, creating and activating the first key on a new deployment.
    pub async fn start(
        keyring: CommandBus<Keyring>,
        sealer: Sealer,
        clock: SharedClock,
        settings: KeySettings,
    ) -> anyhow::Result<Arc<Self>> {
        let empty = KeySet { signing: None, verifying: HashMap::new(), jwks: json!({"keys": []}) };
        let timing = (settings.rotation_interval, settings.publish_ahead);
        let retired_for = Some(settings.retired_lifetime);
        let service = Arc::new(Self {
            life: KeyLife::new(keyring, KEYRING_ID, sealer, clock, timing, retired_for),
            current: RwLock::new(Arc::new(empty)),
            decrypted: Mutex::new(HashMap::new()),
            last_refresh: Mutex::new(None),
        });
        service.life.bootstrap().await?;
        service.rotate().await?;
        anyhow::ensure!(service.keys().signing.is_some(), "no active signing key after start-up");
        Ok(service)
    }

    /// The current key set.
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read())
    }

    /// One run of the rotation job: publish the next key when due, activate it when its
    /// time comes, unpublish retired keys, then reload the key set. Safe to run in every
    /// process at once.
    pub async fn rotate(&self) -> anyhow::Result<()> {
        self.life.rotate().await?;
        self.refresh().await
    }

    /// Reloads the key set when a token names an unknown kid, at most once a second.
    pub async fn refresh_for_unknown_kid(&self) {
        let due = {
            let mut last = self.last_refresh.lock();
            let due = last.is_none_or(|t| t.elapsed() >= StdDuration::from_secs(1));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due && let Err(error) = self.refresh().await {
            tracing::warn!(error = format!("{error:#}"), "could not reload the signing keys");
        }
    }

    /// Rebuilds the key set from the keyring and the sealed private keys.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let ring = self.life.load().await?;
        let signing = match ring.active() {
            Some(key) => Some((key.kid.clone(), self.encoding_key(&key.kid).await?)),
            None => None,
        };
        let mut verifying = HashMap::new();
        for key in ring.accepted() {
            let decoding = DecodingKey::from_ed_components(&key.public_key).context("a stored public key")?;
            verifying.insert(key.kid.clone(), decoding);
        }
        let jwks = json!({ "keys": ring.published().map(jwk).collect::<Vec<_>>() });
        *self.current.write() = Arc::new(KeySet { signing, verifying, jwks });
        *self.last_refresh.lock() = Some(Instant::now());
        Ok(())
    }

    async fn encoding_key(&self, kid: &str) -> anyhow::Result<EncodingKey> {
        if let Some(key) = self.decrypted.lock().get(kid) {
            return Ok(key.clone());
        }
        let key = EncodingKey::from_ed_der(&self.life.private_key(kid).await?);
        self.decrypted.lock().insert(kid.to_owned(), key.clone());
        Ok(key)
    }
}

/// The RFC 7638 thumbprint of an Ed25519 JWK: a stable key id.
pub fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A key's JWK (Ed25519, for signatures).
pub(super) fn jwk(key: &KeyEntry) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": key.public_key, "kid": key.kid, "alg": "EdDSA", "use": "sig"})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thumbprint_follows_rfc_8037_appendix_a3() {
        // RFC 8037 A.3: the thumbprint of the example Ed25519 key.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert_eq!(thumbprint(x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
