//! The sealer: every `AUDIT_SEAL_INTERVAL_SECS` it folds the events appended since the
//! last seal into the running root, signs the result with the active audit key, and
//! appends it to the seal stream as `LogSealed` (docs/AUDIT.md).
//!
//! Every process runs it without a lock: a seal is offered with the next sequence of the
//! one seal stream, so when two processes seal at once one append conflicts and that
//! process appends nothing (its next run starts from the winner's seal). Appends of other
//! events are never held up. A run appends nothing when the log holds nothing new but
//! the last seal itself, so an idle log does not grow.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::commands::seal_log::{Seal, SealCommand, SealLog, SealPoint};
use crate::commands::{CommandContext, StreamHead, replay, to_new_event};
use crate::events::audit::{SEALS_ID, SEALS_TYPE, seal_message};
use crate::events::chain::{self, ZERO};
use crate::events::{AppendError, EventStore, LogCursor, RecordedEvent};
use crate::security::audit_keys::AuditKeys;

/// Events read from the log per query while folding.
const FOLD_BATCH: usize = 1000;

/// What one run of the sealer did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealOutcome {
    /// A seal was appended.
    Sealed(SealPoint),
    /// Nothing was appended since the last seal (but the seal itself).
    NothingNew,
    /// Another process appended a seal first.
    Lost,
    /// An event has no hash yet (the chain backfill has not run): nothing was sealed.
    Unhashed(LogCursor),
}

/// The sealer of one process.
pub struct LogSealer {
    store: EventStore,
    keys: Arc<AuditKeys>,
    clock: SharedClock,
    /// The seal stream as this process last read it; caught up on each run.
    stream: tokio::sync::Mutex<(SealLog, StreamHead)>,
}

/// Seals the log once (tests and the CLI).
pub async fn seal_now(
    store: &EventStore,
    keys: &Arc<AuditKeys>,
    clock: &SharedClock,
) -> anyhow::Result<SealOutcome> {
    LogSealer::new(store.clone(), Arc::clone(keys), clock.clone()).seal_now().await
}

impl LogSealer {
    pub fn new(store: EventStore, keys: Arc<AuditKeys>, clock: SharedClock) -> Self {
        Self {
            store,
            keys,
            clock,
            stream: tokio::sync::Mutex::new((SealLog::default(), StreamHead::default())),
        }
    }

    /// One run: fold what was appended since the last seal and append a seal over it.
    pub async fn seal_now(&self) -> anyhow::Result<SealOutcome> {
        let mut stream = self.stream.lock().await;
        let (log, head) = &mut *stream;
        let newer = self.store.load::<SealLog>(SEALS_ID, head.sequence).await?;
        *head = replay(log, *head, newer).map_err(|e| anyhow::anyhow!("the seal stream: {e}"))?;
        let fold = match self.fold(log.last.as_ref()).await? {
            Folded::Point(point) => point,
            Folded::NothingNew => return Ok(SealOutcome::NothingNew),
            Folded::Unhashed(cursor) => {
                tracing::warn!(%cursor, "an event has no hash yet: not sealing until the chain backfill has run");
                return Ok(SealOutcome::Unhashed(cursor));
            }
        };
        // Another process may have rotated the audit key.
        self.keys.refresh().await?;
        let key_set = self.keys.keys();
        let (kid, key) = key_set.active.as_ref().ok_or_else(|| anyhow::anyhow!("no active audit key"))?;
        // Times along the seal stream never go backwards, whatever the processes' clocks.
        let ctx = CommandContext::system(chain::to_micros(self.clock.now())).decided_after(head.recorded_at);
        let sealed_at = ctx.now;
        let message = seal_message(&fold.through, fold.count, &fold.root, kid, sealed_at);
        let signature = URL_SAFE_NO_PAD.encode(key.sign(message.as_bytes()).to_bytes());
        let command = SealCommand::Append(Seal {
            extends: log.last.clone(),
            point: fold.clone(),
            kid: kid.clone(),
            signature,
            sealed_at,
        });
        let events = log.decide(command)?;
        let mut staged = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let new = to_new_event::<SealLog>(SEALS_ID, head.sequence + i + 1, event, &ctx)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            staged.push(new);
        }
        if staged.is_empty() {
            return Ok(SealOutcome::NothingNew);
        }
        match self.store.append(&staged).await {
            Ok(_) => {
                for event in events {
                    cqrs_es::Aggregate::apply(log, event);
                    head.sequence += 1;
                }
                head.recorded_at = head.recorded_at.max(Some(sealed_at));
                tracing::info!(through = %fold.through, count = fold.count, %kid, "log sealed");
                Ok(SealOutcome::Sealed(fold))
            }
            Err(AppendError::Conflict) => {
                tracing::debug!("another process sealed the log first");
                Ok(SealOutcome::Lost)
            }
            Err(AppendError::Store(error)) => Err(error.into()),
        }
    }

    /// Folds the readable events after `last` into its root.
    async fn fold(&self, last: Option<&SealPoint>) -> anyhow::Result<Folded> {
        let (mut cursor, mut count, mut root) = match last {
            Some(point) => (
                point.through.parse::<LogCursor>().map_err(anyhow::Error::msg)?,
                point.count,
                chain::parse_hex(&point.root)?,
            ),
            None => (LogCursor::ORIGIN, 0, ZERO),
        };
        // Everything up to the readable head is settled: no transaction can still add
        // an event before it.
        let horizon = self.store.head().await?;
        let mut beyond_seals = false;
        'read: while cursor < horizon {
            let batch = self.store.read_after(cursor, FOLD_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for event in &batch {
                if event.cursor > horizon {
                    break 'read;
                }
                let Some(hash) = event.hash.as_deref() else {
                    return Ok(Folded::Unhashed(event.cursor));
                };
                root = chain::fold_root(&root, &chain::parse_hex(hash)?);
                count += 1;
                cursor = event.cursor;
                beyond_seals |= !is_seal(event);
            }
        }
        if !beyond_seals {
            return Ok(Folded::NothingNew);
        }
        Ok(Folded::Point(SealPoint { through: cursor.to_string(), count, root: chain::hex(&root) }))
    }

    /// Runs [`Self::seal_now`] every `interval` until `cancel`, in `tasks`.
    pub fn spawn(self: Arc<Self>, tasks: &mut JoinSet<()>, interval: Duration, cancel: &CancellationToken) {
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                if let Err(error) = self.seal_now().await {
                    tracing::warn!(error = format!("{error:#}"), "sealing the log failed; will retry");
                }
            }
        });
    }
}

enum Folded {
    Point(SealPoint),
    NothingNew,
    Unhashed(LogCursor),
}

fn is_seal(event: &RecordedEvent) -> bool {
    event.aggregate_type == SEALS_TYPE && event.aggregate_id == SEALS_ID
}
