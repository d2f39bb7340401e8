//! Group batches: one transaction that reads the log once and feeds every projection this
//! process can lock, then moves their checkpoints together.
//!
//! Leadership stays per projection (the same advisory lock as a single projection's
//! batch, taken for all of them in one round trip), and each projection only sees events
//! after its own checkpoint, so a projection that was rebuilt or fell behind catches up
//! inside the group. Compared with one transaction per projection, a batch costs one read
//! and one commit instead of one of each per projection.

use std::collections::HashMap;

use sqlx::Row;

use super::{BatchOutcome, Projector};
use crate::db::{DbTime, DbTx};
use crate::events::LogCursor;

/// Why a group batch failed.
#[derive(Debug)]
pub enum GroupError {
    /// This projection's apply failed; the whole batch was rolled back.
    Projection(&'static str, anyhow::Error),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for GroupError {
    fn from(error: E) -> Self {
        Self::Other(error.into())
    }
}

impl Projector {
    /// Applies one batch to every projection this process holds, except `excluded`.
    pub async fn run_group_batch(&self, excluded: &[&'static str]) -> Result<BatchOutcome, GroupError> {
        let candidates: Vec<&'static str> =
            self.projections.iter().map(|p| p.name()).filter(|n| !excluded.contains(n)).collect();
        if candidates.is_empty() {
            return Ok(BatchOutcome::CaughtUp(LogCursor::START));
        }
        let mut tx = self.store.db().begin_write().await?;
        let keys: Vec<i64> = candidates.iter().map(|n| self.lock_key(n)).collect();
        let held = lock_all(&mut tx, &candidates, &keys).await?;
        let checkpoints = read_checkpoints(&mut tx).await?;
        for (name, at) in &checkpoints {
            if !held.contains(&name.as_str()) && candidates.contains(&name.as_str()) {
                self.publish(name, *at);
            }
        }
        let start = |name: &str| checkpoints.get(name).copied().unwrap_or_default();
        let Some(from) = held.iter().map(|n| start(n)).min() else {
            drop(tx);
            return Ok(BatchOutcome::NotLeader(LogCursor::START));
        };
        let events = self.bounded(self.store.read_after_in(&mut tx, from, self.settings.batch_size).await?);
        let Some(last) = events.last().map(|e| e.cursor) else {
            drop(tx);
            for name in &held {
                self.publish(name, start(name));
            }
            return Ok(BatchOutcome::CaughtUp(from));
        };
        let mut moved = Vec::new();
        for projection in self.projections.iter().filter(|p| held.contains(&p.name())) {
            let name = projection.name();
            let own = start(name);
            let first = events.partition_point(|e| e.cursor <= own);
            if first < events.len()
                && let Err(error) = projection.apply_batch(&mut tx, &events[first..]).await
            {
                // Release the projections' locks now, not when the connection is next used.
                let _ = tx.rollback().await;
                return Err(GroupError::Projection(name, error));
            }
            if own < last {
                moved.push(name);
            }
        }
        let updated = advance(&mut tx, &moved, last, DbTime(self.clock.now())).await?;
        if updated != moved.len() as u64 {
            return Err(GroupError::Other(anyhow::anyhow!("a checkpoint moved during the batch")));
        }
        tx.commit().await?;
        for name in &held {
            self.publish(name, last.max(start(name)));
        }
        self.store.signal().progress_committed();
        Ok(BatchOutcome::Applied(events.len(), last))
    }
}

/// Takes every projection's lock it can get (PostgreSQL: transaction-level advisory
/// locks, in one round trip; SQLite: `BEGIN IMMEDIATE` already holds the write lock).
async fn lock_all(tx: &mut DbTx, names: &[&'static str], keys: &[i64]) -> anyhow::Result<Vec<&'static str>> {
    match tx {
        DbTx::Postgres(tx) => {
            let rows = sqlx::query("SELECT k, pg_try_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k")
                .bind(keys)
                .fetch_all(&mut **tx)
                .await?;
            let mut held = Vec::new();
            for row in rows {
                let (key, locked): (i64, bool) = (row.try_get(0)?, row.try_get(1)?);
                if locked && let Some(index) = keys.iter().position(|k| *k == key) {
                    held.push(names[index]);
                }
            }
            Ok(held)
        }
        DbTx::Sqlite(_) => Ok(names.to_vec()),
    }
}

async fn read_checkpoints(tx: &mut DbTx) -> anyhow::Result<HashMap<String, LogCursor>> {
    let sql = "SELECT name, txid, position FROM projection_checkpoints";
    let rows = match tx {
        DbTx::Postgres(tx) => sqlx::query(sql)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, LogCursor { txid: r.try_get(1)?, position: r.try_get(2)? })))
            .collect::<Result<_, sqlx::Error>>()?,
        DbTx::Sqlite(tx) => sqlx::query(sql)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, LogCursor { txid: r.try_get(1)?, position: r.try_get(2)? })))
            .collect::<Result<_, sqlx::Error>>()?,
    };
    Ok(rows)
}

/// Moves the named checkpoints forward to `to` (never backwards); returns how many moved.
async fn advance(tx: &mut DbTx, names: &[&'static str], to: LogCursor, at: DbTime) -> anyhow::Result<u64> {
    if names.is_empty() {
        return Ok(0);
    }
    let placeholders: Vec<String> = (0..names.len()).map(|i| format!("${}", i + 4)).collect();
    let sql = format!(
        "UPDATE projection_checkpoints SET txid = $1, position = $2, updated_at = $3 \
         WHERE name IN ({}) AND (txid, position) < ($1, $2)",
        placeholders.join(", ")
    );
    macro_rules! run {
        ($tx:expr) => {{
            let mut query = sqlx::query(&sql).bind(to.txid).bind(to.position).bind(at);
            for name in names {
                query = query.bind(*name);
            }
            query.execute(&mut **$tx).await?.rows_affected()
        }};
    }
    Ok(match tx {
        DbTx::Postgres(tx) => run!(tx),
        DbTx::Sqlite(tx) => run!(tx),
    })
}
