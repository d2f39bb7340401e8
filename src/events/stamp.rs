//! Stamping events before they are written: each gets its commitments, its classified
//! fields sealed ([`super::sealing`]) and its hash, chained to the previous event of its
//! stream (from this batch, this process's cache of stream heads, or the log).

use std::collections::HashMap;

use serde_json::Value;
use sqlx::Row;

use super::catalogue::{Subject, body_of};
use super::chain::{self, Digest32, Secrets, ZERO};
use super::personal::PersonalKeys;
use super::sealing::{self, Place};
use super::{AppendError, NewEvent, StoreError};
use crate::db::Db;

/// What the writer stores: the event's hash and commitments, and its payload and
/// metadata with the classified fields sealed (`None`: store them as given).
#[derive(Clone, Debug)]
pub(super) struct Stamp {
    pub hash: String,
    pub commitments: Option<Value>,
    pub sealed: Option<(Value, Value)>,
    digest: Digest32,
}

/// Whether stamping seals the events (new appends) or hashes them as stored (the
/// backfill of rows written before the chain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Seal,
    AsStored,
}

type StreamKey = (String, String);

/// The chain state of one process: the last hash of recently written streams.
#[derive(Clone)]
pub(super) struct Stamper {
    heads: moka::sync::Cache<StreamKey, (i64, Digest32)>,
    keys: PersonalKeys,
}

impl Stamper {
    pub fn new(keys: PersonalKeys) -> Self {
        Self { heads: moka::sync::Cache::new(200_000), keys }
    }

    /// Stamps a batch (events keep their order; `recorded_at` must already be in
    /// microseconds). A missing previous event means another writer is behind or ahead:
    /// a conflict the command layer retries.
    pub async fn stamp(&self, db: &Db, events: &[NewEvent], mode: Mode) -> Result<Vec<Stamp>, AppendError> {
        let mut known: HashMap<StreamKey, (i64, Digest32)> = HashMap::new();
        let mut wanted: Vec<(String, String, i64)> = Vec::new();
        let mut in_batch: HashMap<StreamKey, i64> = HashMap::new();
        for event in events {
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            let chained_in_batch = in_batch.get(&key).is_some_and(|&seq| seq + 1 == event.sequence);
            in_batch.insert(key.clone(), event.sequence);
            if event.sequence <= 1 || chained_in_batch {
                continue;
            }
            match self.heads.get(&key) {
                Some((seq, digest)) if seq + 1 == event.sequence => {
                    known.insert(key, (seq, digest));
                }
                _ => wanted.push((key.0, key.1, event.sequence - 1)),
            }
        }
        for ((aggregate_type, aggregate_id), found) in fetch_hashes(db, &wanted).await? {
            known.insert((aggregate_type, aggregate_id), found);
        }

        let mut subjects: Vec<String> = Vec::new();
        let named: Vec<String> = events
            .iter()
            .map(|e| {
                Subject::of(
                    &e.aggregate_type,
                    &e.aggregate_id,
                    body_of(&e.payload),
                    &e.metadata,
                    e.recorded_at,
                )
                .key_name()
            })
            .collect();
        for name in &named {
            if !subjects.contains(name) {
                subjects.push(name.clone());
            }
        }
        let keys = self.keys.get_or_create(&subjects).await?;

        let mut stamps = Vec::with_capacity(events.len());
        for (event, name) in events.iter().zip(&named) {
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            let previous = if event.sequence <= 1 {
                ZERO
            } else {
                match known.get(&key) {
                    Some((seq, digest)) if seq + 1 == event.sequence => *digest,
                    _ => return Err(AppendError::Conflict),
                }
            };
            let personal_key = keys.get(name).cloned().flatten();
            let commitments = match (&personal_key, mode) {
                (Some(key), _) => chain::commit_fields(
                    name,
                    key.as_slice(),
                    &event.event_type,
                    &event.payload,
                    &event.metadata,
                    mode == Mode::Seal,
                ),
                (None, Mode::AsStored) => {
                    return Err(StoreError::Corrupt(format!(
                        "{name} was erased before its events were hashed"
                    ))
                    .into());
                }
                (None, Mode::Seal) => None,
            };
            let sealed = match mode {
                Mode::AsStored => None,
                Mode::Seal => {
                    let place = Place {
                        aggregate_type: &event.aggregate_type,
                        aggregate_id: &event.aggregate_id,
                        sequence: event.sequence,
                        event_type: &event.event_type,
                        event_version: &event.event_version,
                    };
                    let sealed =
                        sealing::seal(&place, name, personal_key.as_ref(), &event.payload, &event.metadata)
                            .map_err(|e| StoreError::Repository(e.to_string()))?;
                    Some(sealed)
                }
            };
            let parts = match &sealed {
                Some((payload, metadata)) => chain::EventParts { payload, metadata, ..event.parts() },
                None => event.parts(),
            };
            let canonical = chain::canonical(&parts, commitments.as_ref(), Secrets::Stored)
                .map_err(|e| StoreError::Repository(e.to_string()))?;
            let digest = chain::event_hash(&previous, &canonical);
            known.insert(key, (event.sequence, digest));
            stamps.push(Stamp {
                hash: chain::hex(&digest),
                commitments: commitments.map(|c| serde_json::to_value(c).unwrap_or(Value::Null)),
                sealed,
                digest,
            });
        }
        Ok(stamps)
    }

    /// Remembers the heads of streams just written.
    pub fn written(&self, events: &[NewEvent], stamps: &[Stamp]) {
        for (event, stamp) in events.iter().zip(stamps) {
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            self.heads.insert(key, (event.sequence, stamp.digest));
        }
    }
}

/// The stored hashes of these events (stream and sequence). An event that is absent is
/// left out; one without a hash (not yet backfilled) is an error.
async fn fetch_hashes(
    db: &Db,
    wanted: &[(String, String, i64)],
) -> Result<Vec<(StreamKey, (i64, Digest32))>, StoreError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String, i64, Option<String>)> = match db {
        Db::Postgres(pool) => {
            let column = |f: fn(&(String, String, i64)) -> String| wanted.iter().map(f).collect::<Vec<_>>();
            sqlx::query(
                "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.hash FROM events e \
                 JOIN UNNEST($1::text[], $2::text[], $3::bigint[]) AS w(t, i, s) \
                   ON e.aggregate_type = w.t AND e.aggregate_id = w.i AND e.sequence = w.s",
            )
            .bind(column(|w| w.0.clone()))
            .bind(column(|w| w.1.clone()))
            .bind(wanted.iter().map(|w| w.2).collect::<Vec<_>>())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()?
        }
        Db::Sqlite { reader, .. } => {
            let mut rows = Vec::with_capacity(wanted.len());
            for (aggregate_type, aggregate_id, sequence) in wanted {
                let hash: Option<Option<String>> = sqlx::query_scalar(
                    "SELECT hash FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
                )
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(sequence)
                .fetch_optional(reader)
                .await?;
                if let Some(hash) = hash {
                    rows.push((aggregate_type.clone(), aggregate_id.clone(), *sequence, hash));
                }
            }
            rows
        }
    };
    rows.into_iter()
        .map(|(aggregate_type, aggregate_id, sequence, hash)| {
            let hash = hash.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{aggregate_type}/{aggregate_id}#{sequence} has no hash: the audit backfill has not run"
                ))
            })?;
            let digest = chain::parse_hex(&hash).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(((aggregate_type, aggregate_id), (sequence, digest)))
        })
        .collect()
}
