//! The keys that commit personal data (`personal_keys`): one per person, or per day for
//! data that belongs to no account. A key is made the first time an event needs it and
//! kept outside the log, so destroying it (erasure) leaves every hash intact.

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore;
use sqlx::Row;

use super::StoreError;
use crate::db::Db;

/// A personal-data key.
pub type PersonalKey = Arc<[u8; 32]>;

/// The keys of one process, cached (a key never changes while it exists).
#[derive(Clone)]
pub struct PersonalKeys {
    db: Db,
    cache: moka::sync::Cache<String, PersonalKey>,
}

impl PersonalKeys {
    pub fn new(db: Db) -> Self {
        Self { db, cache: moka::sync::Cache::new(100_000) }
    }

    /// The keys of these subjects, made for those that have none yet.
    pub async fn get_or_create(&self, names: &[String]) -> Result<HashMap<String, PersonalKey>, StoreError> {
        let mut found = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        for name in names {
            match self.cache.get(name) {
                Some(key) => {
                    found.insert(name.clone(), key);
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
            .map(|_| {
                let mut key = vec![0u8; 32];
                rand::rng().fill_bytes(&mut key);
                key
            })
            .collect();
        let rows = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO personal_keys (subject, key) SELECT * FROM UNNEST($1::text[], $2::bytea[]) \
                     ON CONFLICT (subject) DO NOTHING",
                )
                .bind(&missing)
                .bind(&fresh)
                .execute(pool)
                .await?;
                sqlx::query("SELECT subject, key FROM personal_keys WHERE subject = ANY($1)")
                    .bind(&missing)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get::<String, _>("subject")?, row.try_get::<Vec<u8>, _>("key")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Db::Sqlite { writer, .. } => {
                let mut tx = writer.begin().await?;
                let mut rows = Vec::with_capacity(missing.len());
                for (name, key) in missing.iter().zip(&fresh) {
                    sqlx::query("INSERT OR IGNORE INTO personal_keys (subject, key) VALUES ($1, $2)")
                        .bind(name)
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                    let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM personal_keys WHERE subject = $1")
                        .bind(name)
                        .fetch_one(&mut *tx)
                        .await?;
                    rows.push((name.clone(), key));
                }
                tx.commit().await?;
                rows
            }
        };
        for (name, key) in rows {
            let key: [u8; 32] = key
                .try_into()
                .map_err(|_| StoreError::Corrupt(format!("personal key {name} is not 32 bytes")))?;
            let key = Arc::new(key);
            self.cache.insert(name.clone(), Arc::clone(&key));
            found.insert(name, key);
        }
        Ok(found)
    }

    /// The key of a subject if it exists (verification never makes one).
    pub async fn existing(&self, name: &str) -> Result<Option<PersonalKey>, StoreError> {
        if let Some(key) = self.cache.get(name) {
            return Ok(Some(key));
        }
        let key: Option<Vec<u8>> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT key FROM personal_keys WHERE subject = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?
            }
            Db::Sqlite { reader, .. } => {
                sqlx::query_scalar("SELECT key FROM personal_keys WHERE subject = $1")
                    .bind(name)
                    .fetch_optional(reader)
                    .await?
            }
        };
        Ok(key.and_then(|k| <[u8; 32]>::try_from(k).ok()).map(Arc::new))
    }

    /// Forgets cached keys (after a key was destroyed).
    pub fn invalidate(&self, name: &str) {
        self.cache.invalidate(name);
    }
}
