//! The server secret (`KEY_ENCRYPTION_SECRET`) and what is derived from it: the AEAD key
//! that seals private signing keys at rest, and the HMAC key that derives a refresh
//! token's successor.
//!
//! In production the secret must come from the environment. In development without it, a
//! random secret is generated once into the data folder (mode 0600) with a warning;
//! several processes sharing that folder share it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{AppEnv, Secret};

/// The shortest secret accepted from the environment.
pub const MIN_SECRET_LEN: usize = 32;
const SECRET_FILE: &str = "key-encryption.secret";

/// The root secret of one deployment; every server process must share it.
#[derive(Clone)]
pub struct ServerSecret {
    root: [u8; 32],
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret([redacted])")
    }
}

impl ServerSecret {
    /// The configured secret, or in development one generated into `data_dir`.
    pub fn load(configured: Option<&Secret>, env: AppEnv, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(secret) = configured {
            if secret.expose().len() < MIN_SECRET_LEN {
                bail!("KEY_ENCRYPTION_SECRET must be at least {MIN_SECRET_LEN} characters");
            }
            return Ok(Self::from_text(secret.expose()));
        }
        if env == AppEnv::Production {
            bail!("KEY_ENCRYPTION_SECRET is required when APP_ENV=production");
        }
        let path = data_dir.join(SECRET_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(_) => generate_secret_file(&path)?,
        };
        tracing::warn!(
            path = %path.display(),
            "KEY_ENCRYPTION_SECRET is not set: using a development secret from the data folder; \
             set it (and APP_ENV=production) in production"
        );
        Ok(Self::from_text(text.trim()))
    }

    /// A secret from text (tests use this directly).
    pub fn from_text(text: &str) -> Self {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(b"mana-core-auth/root/v1").expect("any key length");
        mac.update(text.as_bytes());
        Self { root: mac.finalize().into_bytes().into() }
    }

    /// A key for one purpose, independent of the keys for other purposes.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.root).expect("any key length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// What seals the per-person data keys at rest (`data_keys`, docs/PRIVACY.md).
    pub fn key_wrap(&self) -> crate::events::personal::KeyWrap {
        crate::events::personal::KeyWrap::new(self.derive("personal-data-keys/v1"))
    }

    /// The HMAC key of e-mail claim ids: an address's claim stream is named by a keyed
    /// hash, so that a list of addresses cannot be matched against the log.
    pub fn email_id_key(&self) -> [u8; 32] {
        self.derive("email-claim-id/v1")
    }

    /// The AEAD that seals private signing keys.
    pub fn sealer(&self) -> Sealer {
        let key = self.derive("signing-key-encryption/v1");
        Sealer { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) }
    }
}

fn generate_secret_file(path: &PathBuf) -> anyhow::Result<String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(text)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?.trim().to_owned())
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// Authenticated encryption for secrets at rest (ChaCha20-Poly1305, random nonces).
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// Encrypts `plaintext` bound to `context` (e.g. the key id); returns nonce ‖ ciphertext.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> anyhow::Result<Vec<u8>> {
        let nonce: [u8; 12] = rand::random();
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// Decrypts what [`seal`](Self::seal) produced for the same context.
    pub fn open(&self, sealed: &[u8], context: &str) -> anyhow::Result<Vec<u8>> {
        if sealed.len() < 12 {
            bail!("sealed value too short");
        }
        let (nonce, body) = sealed.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: context.as_bytes() })
            .map_err(|_| anyhow::anyhow!("cannot decrypt: wrong KEY_ENCRYPTION_SECRET or altered data"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_secret_and_context() {
        let sealer = ServerSecret::from_text("a secret that is long enough for tests").sealer();
        let sealed = sealer.seal(b"private key", "kid-1").unwrap();
        assert_eq!(sealer.open(&sealed, "kid-1").unwrap(), b"private key");
        assert!(sealer.open(&sealed, "kid-2").is_err(), "context is authenticated");
        let other = ServerSecret::from_text("another secret that is long enough").sealer();
        assert!(other.open(&sealed, "kid-1").is_err());
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        let secret = ServerSecret::from_text("a secret that is long enough for tests");
        assert_ne!(secret.derive("a"), secret.derive("b"));
        assert_eq!(secret.derive("a"), secret.derive("a"));
    }

    #[test]
    fn production_without_a_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = ServerSecret::load(None, AppEnv::Production, dir.path()).unwrap_err();
        assert!(err.to_string().contains("KEY_ENCRYPTION_SECRET"));
        let short = Secret::new("short");
        assert!(ServerSecret::load(Some(&short), AppEnv::Development, dir.path()).is_err());
    }

    #[test]
    fn development_generates_one_secret_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerSecret::load(None, AppEnv::Development, dir.path()).unwrap();
        let second = ServerSecret::load(None, AppEnv::Development, dir.path()).unwrap();
        assert_eq!(first.derive("x"), second.derive("x"));
    }
}
