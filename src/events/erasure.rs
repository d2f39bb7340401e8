//! The storage side of erasing a person (docs/PRIVACY.md): the one maintenance path that
//! may rewrite stored events, in one transaction.
//!
//! Events written since sealing exist need nothing: destroying the person's data key
//! makes their sealed fields unreadable. Events written before (version 1, plaintext)
//! are scrubbed: each personal or secret field of the person gets its commitment (the
//! hash chain already covers personal fields by commitment; a secret's `sha256:` is
//! added beside it) and its value is replaced by its erased form, so every hash stays
//! valid. Claim and login-protection streams still named by the unkeyed SHA-256 of the
//! address are renamed `erased:<user id>`: their hashes stay in the chain and under the
//! seals, and `verify` accepts the renamed streams because a `UserErased` event says so.
//!
//! The table trigger allows these updates only while the person's row in `erasures` is
//! not yet marked scrubbed; the same transaction marks it, deletes the data key and the
//! messages addressed to the person.

use serde_json::Value;
use sqlx::Row;

use super::catalogue::FieldClass;
use super::chain::{self, Commitments};
use super::sealing::{self, ENVELOPE, SEALED_SINCE};
use super::{EventStore, StoreError};
use crate::db::{Db, DbTime, DbTx};

/// What an erasure scrubs: the person, and what the log and the outbox know them by.
#[derive(Clone, Debug)]
pub struct Erasure {
    pub user_id: String,
    pub erased_at: chrono::DateTime<chrono::Utc>,
    /// The unkeyed claim id of their address, when their claim still used one.
    pub legacy_claim_id: Option<String>,
    /// Their address, to delete the messages queued or delivered to it.
    pub email: Option<String>,
}

impl Erasure {
    /// The person's key name (`user:<id>`).
    pub fn subject(&self) -> String {
        format!("user:{}", self.user_id)
    }
}

/// What a scrub changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scrubbed {
    /// Stored events rewritten (plaintext fields replaced, or a legacy stream renamed).
    pub events: u64,
    /// Outbox and development mailbox rows deleted.
    pub messages: u64,
    /// Whether a data key was destroyed (false when an earlier run already did).
    pub key_destroyed: bool,
}

/// One stored event as the scrub reads it (never opened).
struct Stored {
    position: i64,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    event_version: String,
    payload: Value,
    metadata: Value,
    commitments: Option<Value>,
}

/// The rewrite of one event.
struct Rewrite {
    position: i64,
    aggregate_id: String,
    payload: Value,
    metadata: Value,
    commitments: Value,
}

const PG_CANDIDATES: &str = "
SELECT position, aggregate_type, aggregate_id, event_type, event_version, payload, metadata, commitments
  FROM events
 WHERE (commitments IS NOT NULL AND (commitments ->> 'sealed') IS NULL AND (commitments ->> 'key') = $1)
    OR (aggregate_type = 'user' AND aggregate_id = $2)
    OR (aggregate_type IN ('email_claim', 'login_attempts') AND aggregate_id = $3)";

const SQLITE_CANDIDATES: &str = "
SELECT position, aggregate_type, aggregate_id, event_type, event_version, payload, metadata, commitments
  FROM events
 WHERE (commitments IS NOT NULL AND json_extract(commitments, '$.sealed') IS NULL
        AND json_extract(commitments, '$.key') = $1)
    OR (aggregate_type = 'user' AND aggregate_id = $2)
    OR (aggregate_type IN ('email_claim', 'login_attempts') AND aggregate_id = $3)";

impl EventStore {
    /// How many stored events of this person hold plaintext an erasure would scrub.
    pub async fn plaintext_events(
        &self,
        user_id: &str,
        legacy_claim_id: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.db().begin_write().await?;
        let rows = candidates(&mut tx, user_id, legacy_claim_id).await?;
        drop(tx);
        Ok(rows.iter().filter_map(|row| rewrite(row, user_id, legacy_claim_id)).count() as u64)
    }

    /// Runs (or completes) the storage side of an erasure; safe to run again.
    pub async fn scrub(&self, erasure: &Erasure) -> Result<Scrubbed, StoreError> {
        let subject = erasure.subject();
        let mut tx = self.db().begin_write().await?;
        crate::exec!(
            &mut tx,
            "INSERT INTO erasures (subject, user_id, erased_at, legacy_claim_id) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (subject) DO NOTHING",
            &subject,
            &erasure.user_id,
            DbTime(erasure.erased_at),
            &erasure.legacy_claim_id
        )?;
        let rows = candidates(&mut tx, &erasure.user_id, erasure.legacy_claim_id.as_deref()).await?;
        let rewrites: Vec<Rewrite> = rows
            .iter()
            .filter_map(|row| rewrite(row, &erasure.user_id, erasure.legacy_claim_id.as_deref()))
            .collect();
        for r in &rewrites {
            match &mut tx {
                DbTx::Postgres(pg) => {
                    sqlx::query(
                        "UPDATE events SET aggregate_id = $2, payload = $3, metadata = $4, commitments = $5 \
                         WHERE position = $1",
                    )
                    .bind(r.position)
                    .bind(&r.aggregate_id)
                    .bind(&r.payload)
                    .bind(&r.metadata)
                    .bind(&r.commitments)
                    .execute(&mut **pg)
                    .await?;
                }
                DbTx::Sqlite(lite) => {
                    sqlx::query(
                        "UPDATE events SET aggregate_id = $2, payload = $3, metadata = $4, commitments = $5 \
                         WHERE position = $1",
                    )
                    .bind(r.position)
                    .bind(&r.aggregate_id)
                    .bind(r.payload.to_string())
                    .bind(r.metadata.to_string())
                    .bind(r.commitments.to_string())
                    .execute(&mut **lite)
                    .await?;
                }
            }
        }
        let mut messages = 0;
        if let Some(email) = &erasure.email {
            messages +=
                crate::exec!(&mut tx, "DELETE FROM outbox WHERE lower(recipient) = lower($1)", email)?;
            messages +=
                crate::exec!(&mut tx, "DELETE FROM dev_mailbox WHERE lower(recipient) = lower($1)", email)?;
        }
        let key_destroyed = crate::exec!(&mut tx, "DELETE FROM data_keys WHERE subject = $1", &subject)? > 0;
        crate::exec!(
            &mut tx,
            "UPDATE erasures SET scrubbed_at = $2 WHERE subject = $1 AND scrubbed_at IS NULL",
            &subject,
            DbTime(erasure.erased_at)
        )?;
        tx.commit().await?;
        self.personal_keys().forget(&subject);
        self.checkpoint().await?;
        Ok(Scrubbed { events: rewrites.len() as u64, messages, key_destroyed })
    }

    /// On SQLite, moves the write-ahead log into the database file and empties it, so no
    /// old page image (with secure_delete, freed space is zeroed) keeps erased plaintext.
    /// The erasure runs it after its scrub and again once the projections blanked the
    /// person. Nothing to do on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        if let Db::Sqlite { writer, .. } = self.db() {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(writer).await?;
        }
        Ok(())
    }

    /// Whether the erasure of this person is recorded and complete.
    pub async fn erasure_complete(&self, user_id: &str) -> Result<bool, StoreError> {
        let subject = format!("user:{user_id}");
        let sql = "SELECT count(*) FROM erasures WHERE subject = $1 AND scrubbed_at IS NOT NULL";
        let done: i64 = match self.db() {
            Db::Postgres(pool) => sqlx::query_scalar(sql).bind(&subject).fetch_one(pool).await?,
            Db::Sqlite { reader, .. } => sqlx::query_scalar(sql).bind(&subject).fetch_one(reader).await?,
        };
        Ok(done > 0)
    }
}

async fn candidates(tx: &mut DbTx, user_id: &str, legacy: Option<&str>) -> Result<Vec<Stored>, StoreError> {
    let subject = format!("user:{user_id}");
    let legacy = legacy.unwrap_or("");
    let rows = match tx {
        DbTx::Postgres(pg) => {
            let rows = sqlx::query(PG_CANDIDATES)
                .bind(&subject)
                .bind(user_id)
                .bind(legacy)
                .fetch_all(&mut **pg)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(Stored {
                        position: r.try_get(0)?,
                        aggregate_type: r.try_get(1)?,
                        aggregate_id: r.try_get(2)?,
                        event_type: r.try_get(3)?,
                        event_version: r.try_get(4)?,
                        payload: r.try_get(5)?,
                        metadata: r.try_get(6)?,
                        commitments: r.try_get(7)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        }
        DbTx::Sqlite(lite) => {
            let rows = sqlx::query(SQLITE_CANDIDATES)
                .bind(&subject)
                .bind(user_id)
                .bind(legacy)
                .fetch_all(&mut **lite)
                .await?;
            let json = |text: Option<String>| -> Result<Option<Value>, StoreError> {
                text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
                    .transpose()
            };
            rows.iter()
                .map(|r| {
                    Ok(Stored {
                        position: r.try_get(0)?,
                        aggregate_type: r.try_get(1)?,
                        aggregate_id: r.try_get(2)?,
                        event_type: r.try_get(3)?,
                        event_version: r.try_get(4)?,
                        payload: json(r.try_get(5)?)?.unwrap_or(Value::Null),
                        metadata: json(r.try_get(6)?)?.unwrap_or(Value::Null),
                        commitments: json(r.try_get(7)?)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        }
    };
    Ok(rows)
}

/// The scrubbed form of one stored event, or `None` when it holds nothing to scrub.
fn rewrite(row: &Stored, user_id: &str, legacy: Option<&str>) -> Option<Rewrite> {
    let mut commitments: Commitments =
        row.commitments.clone().and_then(|c| serde_json::from_value(c).ok()).unwrap_or_default();
    let subject =
        if commitments.key.is_empty() { format!("user:{user_id}") } else { commitments.key.clone() };
    let body_plain = row.event_version.parse::<u32>().is_ok_and(|v| v < SEALED_SINCE);
    let mut record = serde_json::json!({ "payload": row.payload, "metadata": row.metadata });
    let mut changed = false;
    for (pointer, field) in chain::record_fields(&row.payload, &row.event_type) {
        if !body_plain && pointer.starts_with("/payload") {
            continue;
        }
        let Some(slot) = record.pointer_mut(&pointer) else { continue };
        if slot.is_null()
            || slot.as_str().is_some_and(|s| s.starts_with(ENVELOPE) || s.starts_with("erased:"))
        {
            continue;
        }
        match field.class {
            FieldClass::Secret => {
                commitments.fields.entry(pointer.clone()).or_insert_with(|| chain::secret_commitment(slot));
            }
            // Every personal value written before sealing has its commitment (the audit
            // backfill gave them one); without it the value could not be erased safely.
            FieldClass::Personal if !commitments.fields.contains_key(&pointer) => continue,
            FieldClass::Personal => {}
        }
        *slot = sealing::erased_value(&field, &subject);
        changed = true;
    }
    let renamed = legacy.is_some_and(|id| {
        !id.is_empty()
            && row.aggregate_id == id
            && matches!(row.aggregate_type.as_str(), "email_claim" | "login_attempts")
    });
    if !changed && !renamed {
        return None;
    }
    let (mut payload, mut metadata) = match record {
        Value::Object(mut map) => {
            (map.remove("payload").unwrap_or(Value::Null), map.remove("metadata").unwrap_or(Value::Null))
        }
        _ => (Value::Null, Value::Null),
    };
    if let Value::Object(map) = &mut metadata {
        map.retain(|_, v| !v.is_null());
    }
    if payload.is_null() {
        payload = row.payload.clone();
    }
    Some(Rewrite {
        position: row.position,
        aggregate_id: if renamed { format!("erased:{user_id}") } else { row.aggregate_id.clone() },
        payload,
        metadata,
        commitments: serde_json::to_value(&commitments).unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn registered_v1() -> Stored {
        let payload = json!({"UserRegistered": {"user_id": "u1", "personal": {"email": "ada@example.com", "name": "Ada"},
                   "password_hash": "$argon2id$secret", "role": "user", "registered_at": "2026-01-01T00:00:00Z"}});
        let metadata =
            json!({"recorded_at": "2026-01-01T00:00:00Z", "actor": "u1", "client_ip": "203.0.113.9"});
        let key = [3u8; 32];
        let commitments = chain::commit_personal("user:u1", &key, "UserRegistered", &payload, &metadata);
        Stored {
            position: 1,
            aggregate_type: "user".into(),
            aggregate_id: "u1".into(),
            event_type: "UserRegistered".into(),
            event_version: "1".into(),
            payload,
            metadata,
            commitments: commitments.map(|c| serde_json::to_value(c).unwrap_or_default()),
        }
    }

    fn canonical(
        aggregate_id: &str,
        payload: &Value,
        metadata: &Value,
        commitments: &Option<Value>,
    ) -> String {
        let commitments: Option<Commitments> =
            commitments.clone().and_then(|c| serde_json::from_value(c).ok());
        let parts = chain::EventParts {
            aggregate_type: "user",
            aggregate_id,
            sequence: 1,
            event_type: "UserRegistered",
            event_version: "1",
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            payload,
            metadata,
        };
        chain::canonical(&parts, commitments.as_ref(), chain::Secrets::Stored).expect("canonical")
    }

    #[test]
    fn a_scrubbed_event_holds_no_plaintext_and_keeps_its_canonical_form() {
        let row = registered_v1();
        let before = canonical("u1", &row.payload, &row.metadata, &row.commitments);
        let scrubbed = rewrite(&row, "u1", None).expect("something to scrub");
        let stored = format!("{}{}", scrubbed.payload, scrubbed.metadata);
        for plain in ["ada@example.com", "Ada", "argon2id", "203.0.113.9"] {
            assert!(!stored.contains(plain), "{plain} in {stored}");
        }
        let after =
            canonical("u1", &scrubbed.payload, &scrubbed.metadata, &Some(scrubbed.commitments.clone()));
        assert_eq!(before, after);
        assert_eq!(scrubbed.payload["UserRegistered"]["personal"]["email"], "erased:u1");
    }

    #[test]
    fn scrubbing_twice_changes_nothing_more() {
        let row = registered_v1();
        let once = rewrite(&row, "u1", None).expect("first scrub");
        let again = Stored {
            payload: once.payload,
            metadata: once.metadata,
            commitments: Some(once.commitments),
            ..registered_v1()
        };
        assert!(rewrite(&again, "u1", None).is_none());
    }
}
