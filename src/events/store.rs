//! [`EventStore`]: the one type the rest of the code uses for the log, whatever the engine.

use std::sync::Arc;

use cqrs_es::Aggregate;
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use postgres_es::PostgresEventRepository;
use sqlx::Row;

use tokio::sync::{mpsc, oneshot};

use super::personal::{KeyWrap, PersonalKeys};
use super::sealing::{self, Place};
use super::stamp::{Mode, Stamper};
use super::{LogCursor, LogSignal, NewEvent, OutgoingMail, RecordedEvent, chain, postgres, sqlite};
use crate::db::{Db, DbTime, DbTx};
use crate::telemetry::Metrics;

/// The event log of one deployment.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    postgres_es: Option<PostgresEventRepository>,
    signal: LogSignal,
    metrics: Arc<Metrics>,
    keys: PersonalKeys,
    /// `None` only in [`EventStore::without_chain_for_benchmarks`].
    stamper: Option<Stamper>,
    combiner: tokio::sync::OnceCell<mpsc::UnboundedSender<Pending>>,
}

/// An append waiting for the writer.
struct Pending {
    events: Vec<NewEvent>,
    mail: Vec<OutgoingMail>,
    reply: oneshot::Sender<Result<LogCursor, AppendError>>,
}

/// Appends queued at once are written together, at most this many.
const MAX_COMBINED: usize = 256;

/// A failure to read or write the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored event is unreadable: {0}")]
    Corrupt(String),
    #[error("event repository error: {0}")]
    Repository(String),
}

/// Why an append did not happen. Nothing of a failed append is written.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer took one of the sequence numbers first: reload and retry.
    #[error("optimistic concurrency conflict")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventStore {
    /// The store over an opened (and migrated) database; `wrap` seals the data keys
    /// (derived from `KEY_ENCRYPTION_SECRET`, `ServerSecret::key_wrap`).
    pub fn new(db: Db, signal: LogSignal, metrics: Arc<Metrics>, wrap: KeyWrap) -> Self {
        let postgres_es = match &db {
            Db::Postgres(pool) => Some(PostgresEventRepository::new(pool.clone())),
            Db::Sqlite { .. } => None,
        };
        let combiner = tokio::sync::OnceCell::new();
        let keys = PersonalKeys::new(db.clone(), wrap);
        let stamper = Some(Stamper::new(keys.clone()));
        Self { inner: Arc::new(Inner { db, postgres_es, signal, metrics, keys, stamper, combiner }) }
    }

    /// For measuring the hash chain's cost only (`mana-core-auth-bench audit`): a store
    /// whose appends skip stamping, so rows get a NULL `hash` and `commitments`. Such a log
    /// fails `verify` and must never be a deployment's. PostgreSQL only.
    #[doc(hidden)]
    pub fn without_chain_for_benchmarks(
        db: Db,
        signal: LogSignal,
        metrics: Arc<Metrics>,
        wrap: KeyWrap,
    ) -> Self {
        assert!(matches!(db, Db::Postgres(_)), "the unchained benchmark store is PostgreSQL only");
        let store = Self::new(db, signal, metrics, wrap);
        let Inner { db, postgres_es, signal, metrics, keys, combiner, .. } =
            Arc::try_unwrap(store.inner).unwrap_or_else(|_| unreachable!("just built"));
        Self { inner: Arc::new(Inner { db, postgres_es, signal, metrics, keys, stamper: None, combiner }) }
    }

    /// The keys that commit and seal personal data.
    pub fn personal_keys(&self) -> &PersonalKeys {
        &self.inner.keys
    }

    /// What seals the data keys (a store over another database of the same deployment,
    /// such as replay's scratch copy, opens the same keys with it).
    pub fn key_wrap(&self) -> KeyWrap {
        self.inner.keys.wrap().clone()
    }

    /// The database underneath.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The wake-up signal followers of this log listen to.
    pub fn signal(&self) -> &LogSignal {
        &self.inner.signal
    }

    /// The metrics this store reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Appends events of one or more aggregates atomically: all or none. Returns the
    /// cursor of the last event written.
    pub async fn append(&self, events: &[NewEvent]) -> Result<LogCursor, AppendError> {
        self.append_with_mail(events, &[]).await
    }

    /// Appends events and queues outbox messages in the same transaction (the
    /// transactional outbox): the messages exist if and only if the events do.
    pub async fn append_with_mail(
        &self,
        events: &[NewEvent],
        mail: &[OutgoingMail],
    ) -> Result<LogCursor, AppendError> {
        if events.is_empty() {
            return Err(StoreError::Repository("nothing to append".into()).into());
        }
        let writer = self
            .inner
            .combiner
            .get_or_init(|| async {
                let (sender, queue) = mpsc::unbounded_channel();
                tokio::spawn(write_combined(self.inner.db.clone(), self.inner.stamper.clone(), queue));
                sender
            })
            .await;
        let (reply, answer) = oneshot::channel();
        // The stores keep microseconds: hash what will be read back.
        let events_at_micros = events
            .iter()
            .map(|e| NewEvent { recorded_at: chain::to_micros(e.recorded_at), ..e.clone() })
            .collect();
        let pending = Pending { events: events_at_micros, mail: mail.to_vec(), reply };
        writer.send(pending).map_err(|_| StoreError::Repository("the writer stopped".into()))?;
        let cursor = answer.await.map_err(|_| StoreError::Repository("the writer stopped".into()))??;
        for event in events {
            self.inner.metrics.event_appended(&event.event_type);
        }
        self.inner.signal.events_committed();
        Ok(cursor)
    }

    /// An aggregate's events with a sequence above `after_sequence`, in order.
    pub async fn load<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, StoreError> {
        let mut events = match (&self.inner.db, &self.inner.postgres_es) {
            (Db::Postgres(_), Some(repo)) if after_sequence == 0 => {
                repo.get_events::<A>(aggregate_id).await.map_err(|e| StoreError::Repository(e.to_string()))
            }
            // postgres-es formats the sequence into the SQL text, so each catch-up would be
            // a new statement to parse; ours is prepared once.
            (Db::Postgres(pool), Some(_)) => {
                let after = i64::try_from(after_sequence).unwrap_or(i64::MAX);
                postgres::aggregate_events(pool, A::TYPE, aggregate_id, after).await
            }
            (Db::Sqlite { reader, .. }, _) => {
                let after = i64::try_from(after_sequence).unwrap_or(i64::MAX);
                sqlite::aggregate_events(reader, A::TYPE, aggregate_id, after).await
            }
            (Db::Postgres(_), None) => Err(StoreError::Repository("no postgres repository".into())),
        }?;
        self.open_serialized(&mut events).await?;
        Ok(events)
    }

    /// Up to `limit` events of one stream with a sequence above `after_sequence`, in
    /// sequence order, as recorded (cursor, time, hash). Within a stream, sequence order
    /// is also log order and time order: a stream's next event is appended only after
    /// its previous one committed, at a time no earlier (`CommandContext::decided_after`).
    pub async fn read_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = match &self.inner.db {
            Db::Postgres(pool) => {
                postgres::read_stream(pool, aggregate_type, aggregate_id, after_sequence, limit).await
            }
            Db::Sqlite { reader, .. } => {
                sqlite::read_stream(reader, aggregate_type, aggregate_id, after_sequence, limit).await
            }
        }?;
        self.open_recorded(&mut events).await?;
        Ok(events)
    }

    /// Up to `limit` events after `after`, in global order. Never skips an event whose
    /// transaction commits late and never returns one twice.
    pub async fn read_after(&self, after: LogCursor, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = match &self.inner.db {
            Db::Postgres(pool) => postgres::read_after(pool, after, limit).await,
            Db::Sqlite { reader, .. } => sqlite::read_after(reader, after, limit).await,
        }?;
        self.open_recorded(&mut events).await?;
        Ok(events)
    }

    /// Like [`read_after`](Self::read_after), inside a write transaction (projectors).
    pub async fn read_after_in(
        &self,
        tx: &mut DbTx,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = match tx {
            DbTx::Postgres(tx) => postgres::read_after(&mut **tx, after, limit).await,
            DbTx::Sqlite(tx) => sqlite::read_after(&mut **tx, after, limit).await,
        }?;
        self.open_recorded(&mut events).await?;
        Ok(events)
    }

    /// Opens the sealed fields of events read from the log ([`sealing`]): erased ones
    /// read as their erased form.
    async fn open_recorded(&self, events: &mut [RecordedEvent]) -> Result<(), StoreError> {
        self.open(events).await
    }

    /// [`Self::open_recorded`] for events loaded by an aggregate.
    async fn open_serialized(&self, events: &mut [SerializedEvent]) -> Result<(), StoreError> {
        self.open(events).await
    }

    async fn open<E: Sealed>(&self, events: &mut [E]) -> Result<(), StoreError> {
        let mut wanted = Vec::new();
        for event in events.iter_mut() {
            let (place, payload, metadata) = event.parts_mut();
            sealing::subjects(&place, payload, metadata, &mut wanted);
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let keys = self.inner.keys.existing_many(&wanted).await?;
        for event in events.iter_mut() {
            let (place, payload, metadata) = event.parts_mut();
            sealing::open(&place, payload, metadata, &keys);
        }
        Ok(())
    }

    /// The cursor of the newest readable event ([`LogCursor::START`] when empty). On
    /// PostgreSQL it lags while any older transaction in the cluster is still open, so it
    /// is for reporting; to wait for the read models use [`Self::committed_head`].
    pub async fn head(&self) -> Result<LogCursor, StoreError> {
        match &self.inner.db {
            Db::Postgres(pool) => postgres::head(pool).await,
            Db::Sqlite { reader, .. } => sqlite::head(reader).await,
        }
    }

    /// The cursor of the last event in global order recorded at or before `at`
    /// ([`LogCursor::START`] when none was): what "the log at a time" means for readers
    /// that answer as of a cursor. Recorded times follow the global order only up to clock
    /// skew between processes, so an event recorded after `at` may precede the answer.
    pub async fn cursor_recorded_by(
        &self,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<LogCursor, StoreError> {
        let row = match &self.inner.db {
            Db::Postgres(pool) => {
                let sql = "SELECT txid, position FROM events WHERE recorded_at <= $1 \
                           ORDER BY txid DESC, position DESC LIMIT 1";
                let row = sqlx::query(sql).bind(DbTime(at)).fetch_optional(pool).await?;
                row.map(|r| Ok::<_, sqlx::Error>(LogCursor { txid: r.try_get(0)?, position: r.try_get(1)? }))
            }
            Db::Sqlite { reader, .. } => {
                // One writer: position order is the global order (txid is always 0).
                let sql = "SELECT txid, position FROM events WHERE recorded_at <= $1 ORDER BY position DESC LIMIT 1";
                let row = sqlx::query(sql).bind(DbTime(at)).fetch_optional(reader).await?;
                row.map(|r| Ok(LogCursor { txid: r.try_get(0)?, position: r.try_get(1)? }))
            }
        };
        Ok(row.transpose()?.unwrap_or(LogCursor::START))
    }

    /// The cursor of the newest committed event, readable yet or not: once the projector
    /// has passed it (`Projector::wait_for`), every event committed before this call is in
    /// the read models.
    pub async fn committed_head(&self) -> Result<LogCursor, StoreError> {
        match &self.inner.db {
            Db::Postgres(pool) => postgres::committed_head(pool).await,
            // One writer: everything committed is readable.
            Db::Sqlite { reader, .. } => sqlite::head(reader).await,
        }
    }
}

/// The writer of one process: appends that queue while a write is in flight are written
/// together in one statement (PostgreSQL) or one transaction (SQLite), so independent
/// commands share a commit. Every append is atomic on its own either way: if the combined
/// write conflicts, each append is retried alone and gets its own outcome. Each append's
/// cursor is that of the combined write (its events become readable at the same moment).
async fn write_combined(db: Db, stamper: Option<Stamper>, mut queue: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_COMBINED {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        if group.len() == 1 {
            let Some(one) = group.pop() else { continue };
            let result = raw_append(&db, stamper.as_ref(), &one.events, &one.mail).await;
            let _ = one.reply.send(result);
            continue;
        }
        let events: Vec<NewEvent> = group.iter().flat_map(|p| p.events.iter().cloned()).collect();
        let mail: Vec<OutgoingMail> = group.iter().flat_map(|p| p.mail.iter().cloned()).collect();
        match raw_append(&db, stamper.as_ref(), &events, &mail).await {
            Ok(cursor) => {
                for pending in group {
                    let _ = pending.reply.send(Ok(cursor));
                }
            }
            Err(AppendError::Conflict) => {
                for pending in group {
                    let result = raw_append(&db, stamper.as_ref(), &pending.events, &pending.mail).await;
                    let _ = pending.reply.send(result);
                }
            }
            Err(AppendError::Store(error)) => {
                let text = error.to_string();
                for pending in group {
                    let _ = pending.reply.send(Err(StoreError::Repository(text.clone()).into()));
                }
            }
        }
    }
}

async fn raw_append(
    db: &Db,
    stamper: Option<&Stamper>,
    events: &[NewEvent],
    mail: &[OutgoingMail],
) -> Result<LogCursor, AppendError> {
    let Some(stamper) = stamper else {
        // Benchmarks only: UNNEST pads the absent hash and commitments columns with NULL.
        let Db::Postgres(pool) = db else {
            return Err(StoreError::Repository("the unchained store is PostgreSQL only".into()).into());
        };
        return postgres::append(pool, events, &[], mail).await;
    };
    let stamps = stamper.stamp(db, events, Mode::Seal).await?;
    let cursor = match db {
        Db::Postgres(pool) => postgres::append(pool, events, &stamps, mail).await,
        Db::Sqlite { writer, .. } => sqlite::append(writer, events, &stamps, mail).await,
    }?;
    stamper.written(events, &stamps);
    Ok(cursor)
}

/// A stored event whose sealed fields can be opened in place: its place in the log, and
/// its payload and metadata.
trait Sealed {
    fn parts_mut(&mut self) -> (Place<'_>, &mut serde_json::Value, &mut serde_json::Value);
}

impl Sealed for RecordedEvent {
    fn parts_mut(&mut self) -> (Place<'_>, &mut serde_json::Value, &mut serde_json::Value) {
        let place = Place {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
        };
        (place, &mut self.payload, &mut self.metadata)
    }
}

impl Sealed for SerializedEvent {
    fn parts_mut(&mut self) -> (Place<'_>, &mut serde_json::Value, &mut serde_json::Value) {
        let place = Place {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: i64::try_from(self.sequence).unwrap_or(i64::MAX),
            event_type: &self.event_type,
            event_version: &self.event_version,
        };
        (place, &mut self.payload, &mut self.metadata)
    }
}
