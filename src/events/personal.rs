//! The data keys of personal data (`data_keys`): one per person (`user:<id>`), or per day
//! (`day:<date>`) for data that belongs to no account. A key is made the first time an
//! event needs it and kept outside the log, itself sealed under a key derived from
//! `KEY_ENCRYPTION_SECRET` ([`KeyWrap`]). It serves two purposes: the HMAC commitments the
//! hash chain covers ([`super::chain`]) and, through a subkey, the sealing of the values
//! themselves ([`super::sealing`]). Destroying it (erasure) makes the sealed values
//! unreadable and leaves every hash intact.
//!
//! A subject listed in `erasures` never gets a key again: what later events hold about an
//! erased person is not stored at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sqlx::Row;

use super::StoreError;
use crate::db::Db;

/// A personal-data key.
pub type PersonalKey = Arc<[u8; 32]>;

/// Seals data keys at rest (XChaCha20-Poly1305 under a key derived from the server
/// secret, the subject as associated data, so a sealed key cannot be moved to another
/// subject).
#[derive(Clone)]
pub struct KeyWrap {
    cipher: Arc<XChaCha20Poly1305>,
}

impl std::fmt::Debug for KeyWrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyWrap([redacted])")
    }
}

impl KeyWrap {
    /// The wrap from a 32-byte key (`ServerSecret::key_wrap` derives it).
    pub fn new(key: [u8; 32]) -> Self {
        Self { cipher: Arc::new(XChaCha20Poly1305::new(&key.into())) }
    }

    fn seal(&self, subject: &str, key: &[u8; 32]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: key, aad: subject.as_bytes() })
            .unwrap_or_default();
        [nonce.as_slice(), &sealed].concat()
    }

    fn open(&self, subject: &str, sealed: &[u8]) -> Result<PersonalKey, StoreError> {
        let corrupt = || {
            StoreError::Corrupt(format!(
                "the data key of {subject} does not open: wrong KEY_ENCRYPTION_SECRET or altered row"
            ))
        };
        if sealed.len() < 24 {
            return Err(corrupt());
        }
        let (nonce, body) = sealed.split_at(24);
        let key = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: subject.as_bytes() })
            .map_err(|_| corrupt())?;
        let key: [u8; 32] = key.try_into().map_err(|_| corrupt())?;
        Ok(Arc::new(key))
    }
}

/// How long a process remembers that a subject was erased (long after its key row is gone).
const ERASED_TTL: Duration = Duration::from_secs(86_400);

/// How many days the data of attempts on unknown addresses (per-day keys) stays readable.
pub const DAY_KEY_DAYS: i64 = 30;

/// How long a process keeps a key it read. Another process's erasure reaches this one's
/// cache at the latest after this (a cached key only opens what this process reads).
const CACHE_TTL: Duration = Duration::from_secs(600);

/// The data keys of one process, cached.
#[derive(Clone)]
pub struct PersonalKeys {
    db: Db,
    wrap: KeyWrap,
    cache: moka::sync::Cache<String, PersonalKey>,
    /// Subjects this process knows are erased: never read or cached again, even while
    /// the erasure's transaction that deletes the key has not committed yet.
    erased: moka::sync::Cache<String, ()>,
}

impl PersonalKeys {
    pub fn new(db: Db, wrap: KeyWrap) -> Self {
        Self {
            db,
            wrap,
            cache: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(CACHE_TTL).build(),
            erased: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(ERASED_TTL).build(),
        }
    }

    /// The keys of these subjects, made for those that have none yet. A subject that was
    /// erased maps to `None` and gets no key.
    pub async fn get_or_create(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, Option<PersonalKey>>, StoreError> {
        let mut found = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        for name in names {
            if self.erased.contains_key(name) {
                found.insert(name.clone(), None);
                continue;
            }
            match self.cache.get(name) {
                Some(key) => {
                    found.insert(name.clone(), Some(key));
                }
                None if !missing.contains(name) => missing.push(name.clone()),
                None => {}
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let fresh: Vec<Vec<u8>> = missing
            .iter()
            .map(|name| {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                self.wrap.seal(name, &key)
            })
            .collect();
        let rows: Vec<(String, Vec<u8>)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO data_keys (subject, sealed) SELECT s, k FROM UNNEST($1::text[], $2::bytea[]) AS n(s, k) \
                     WHERE NOT EXISTS (SELECT 1 FROM erasures WHERE erasures.subject = n.s) \
                     ON CONFLICT (subject) DO NOTHING",
                )
                .bind(&missing)
                .bind(&fresh)
                .execute(pool)
                .await?;
                sqlx::query("SELECT subject, sealed FROM data_keys WHERE subject = ANY($1)")
                    .bind(&missing)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| {
                        Ok((row.try_get::<String, _>("subject")?, row.try_get::<Vec<u8>, _>("sealed")?))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Db::Sqlite { writer, .. } => {
                let mut tx = writer.begin().await?;
                let mut rows = Vec::with_capacity(missing.len());
                for (name, sealed) in missing.iter().zip(&fresh) {
                    sqlx::query(
                        "INSERT OR IGNORE INTO data_keys (subject, sealed) \
                         SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM erasures WHERE subject = $1)",
                    )
                    .bind(name)
                    .bind(sealed)
                    .execute(&mut *tx)
                    .await?;
                    let sealed: Option<Vec<u8>> =
                        sqlx::query_scalar("SELECT sealed FROM data_keys WHERE subject = $1")
                            .bind(name)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if let Some(sealed) = sealed {
                        rows.push((name.clone(), sealed));
                    }
                }
                tx.commit().await?;
                rows
            }
        };
        for (name, sealed) in rows {
            let key = self.wrap.open(&name, &sealed)?;
            self.cache.insert(name.clone(), Arc::clone(&key));
            found.insert(name, Some(key));
        }
        for name in missing {
            found.entry(name).or_insert(None);
        }
        Ok(found)
    }

    /// The key of a subject if it exists (reading never makes one).
    pub async fn existing(&self, name: &str) -> Result<Option<PersonalKey>, StoreError> {
        if self.erased.contains_key(name) {
            return Ok(None);
        }
        if let Some(key) = self.cache.get(name) {
            return Ok(Some(key));
        }
        let sealed: Option<Vec<u8>> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT sealed FROM data_keys WHERE subject = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?
            }
            Db::Sqlite { reader, .. } => {
                sqlx::query_scalar("SELECT sealed FROM data_keys WHERE subject = $1")
                    .bind(name)
                    .fetch_optional(reader)
                    .await?
            }
        };
        let Some(sealed) = sealed else { return Ok(None) };
        let key = self.wrap.open(name, &sealed)?;
        self.cache.insert(name.to_owned(), Arc::clone(&key));
        Ok(Some(key))
    }

    /// The existing keys of several subjects (absent ones are erased or never existed).
    pub async fn existing_many(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, Option<PersonalKey>>, StoreError> {
        let mut found = HashMap::with_capacity(names.len());
        let mut missing = Vec::new();
        for name in names {
            if self.erased.contains_key(name) {
                found.insert(name.clone(), None);
                continue;
            }
            match self.cache.get(name) {
                Some(key) => {
                    found.insert(name.clone(), Some(key));
                }
                None => missing.push(name.clone()),
            }
        }
        let rows: Vec<(String, Vec<u8>)> = match &self.db {
            _ if missing.is_empty() => Vec::new(),
            Db::Postgres(pool) => {
                sqlx::query_as("SELECT subject, sealed FROM data_keys WHERE subject = ANY($1)")
                    .bind(&missing)
                    .fetch_all(pool)
                    .await?
            }
            Db::Sqlite { reader, .. } => {
                let mut rows = Vec::with_capacity(missing.len());
                for name in &missing {
                    let sealed: Option<Vec<u8>> =
                        sqlx::query_scalar("SELECT sealed FROM data_keys WHERE subject = $1")
                            .bind(name)
                            .fetch_optional(reader)
                            .await?;
                    rows.extend(sealed.map(|s| (name.clone(), s)));
                }
                rows
            }
        };
        for (name, sealed) in rows {
            let key = self.wrap.open(&name, &sealed)?;
            self.cache.insert(name.clone(), Arc::clone(&key));
            found.insert(name, Some(key));
        }
        for name in missing {
            found.entry(name).or_insert(None);
        }
        Ok(found)
    }

    /// Destroys the per-day keys of days before `day` (the data of attempts on unknown
    /// addresses is kept readable for [`DAY_KEY_DAYS`] days); returns how many.
    pub async fn destroy_day_keys_before(&self, day: chrono::NaiveDate) -> Result<u64, StoreError> {
        // `day:YYYY-MM-DD` sorts as the dates do.
        let sql = "DELETE FROM data_keys WHERE subject LIKE 'day:%' AND subject < $1";
        let bound = format!("day:{day}");
        let destroyed = match &self.db {
            Db::Postgres(pool) => sqlx::query(sql).bind(&bound).execute(pool).await?.rows_affected(),
            Db::Sqlite { writer, .. } => sqlx::query(sql).bind(&bound).execute(writer).await?.rows_affected(),
        };
        self.cache.invalidate_all();
        Ok(destroyed)
    }

    /// What seals the keys at rest.
    pub fn wrap(&self) -> &KeyWrap {
        &self.wrap
    }

    /// Lets this process read a subject's key again while it still exists: only for
    /// completing an interrupted erasure, which must read the person's address.
    pub fn recover(&self, name: &str) {
        self.erased.invalidate(name);
    }

    /// Forgets a subject's key for good (it is being destroyed by an erasure).
    pub fn forget(&self, name: &str) {
        self.erased.insert(name.to_owned(), ());
        self.cache.invalidate(name);
    }

    /// Moves keys written unsealed by releases before erasure existed (`personal_keys`)
    /// into `data_keys`, sealed, and deletes the plaintext rows. Runs at start-up and
    /// `migrate`; cheap when there is nothing to move.
    pub async fn seal_plaintext_keys(&self) -> Result<u64, StoreError> {
        let plain: Vec<(String, Vec<u8>)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as("SELECT subject, key FROM personal_keys").fetch_all(pool).await?
            }
            Db::Sqlite { writer, .. } => {
                sqlx::query_as("SELECT subject, key FROM personal_keys").fetch_all(writer).await?
            }
        };
        if plain.is_empty() {
            return Ok(0);
        }
        let mut moved = 0u64;
        for chunk in plain.chunks(1_000) {
            let subjects: Vec<String> = chunk.iter().map(|(s, _)| s.clone()).collect();
            let sealed: Vec<Vec<u8>> = chunk
                .iter()
                .map(|(subject, key)| {
                    let key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
                        StoreError::Corrupt(format!("personal key {subject} is not 32 bytes"))
                    })?;
                    Ok(self.wrap.seal(subject, &key))
                })
                .collect::<Result<_, StoreError>>()?;
            match &self.db {
                Db::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    sqlx::query(
                        "INSERT INTO data_keys (subject, sealed) SELECT * FROM UNNEST($1::text[], $2::bytea[]) \
                         ON CONFLICT (subject) DO NOTHING",
                    )
                    .bind(&subjects)
                    .bind(&sealed)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM personal_keys WHERE subject = ANY($1)")
                        .bind(&subjects)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                }
                Db::Sqlite { writer, .. } => {
                    let mut tx = writer.begin().await?;
                    for (subject, sealed) in subjects.iter().zip(&sealed) {
                        sqlx::query("INSERT OR IGNORE INTO data_keys (subject, sealed) VALUES ($1, $2)")
                            .bind(subject)
                            .bind(sealed)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("DELETE FROM personal_keys WHERE subject = $1")
                            .bind(subject)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
            }
            moved += chunk.len() as u64;
        }
        Ok(moved)
    }
}
