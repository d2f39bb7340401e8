//! Wake-ups for log followers.
//!
//! After a commit in this process, [`LogSignal::events_committed`] wakes the local
//! projectors at once and asks the notifier to tell other processes. On PostgreSQL the
//! notifier sends one coalesced `NOTIFY` after the commit (never inside the appending
//! transaction: a notifying transaction serialises commits cluster-wide), and a listener
//! turns other processes' notifications into local wake-ups. Followers also poll, so a
//! lost notification only costs one poll interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// The PostgreSQL channel the processes of one database talk on.
pub const NOTIFY_CHANNEL: &str = "mana_core_auth_log";

/// Wake-up signals of one process.
#[derive(Clone, Debug)]
pub struct LogSignal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    events: watch::Sender<u64>,
    progress: watch::Sender<u64>,
    outbound: Notify,
    pending_events: AtomicBool,
    pending_progress: AtomicBool,
}

impl Default for LogSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl LogSignal {
    /// A fresh signal with nobody listening.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                events: watch::Sender::new(0),
                progress: watch::Sender::new(0),
                outbound: Notify::new(),
                pending_events: AtomicBool::new(false),
                pending_progress: AtomicBool::new(false),
            }),
        }
    }

    /// Events were committed by this process.
    pub fn events_committed(&self) {
        self.inner.events.send_modify(|n| *n = n.wrapping_add(1));
        self.inner.pending_events.store(true, Ordering::Release);
        self.inner.outbound.notify_one();
    }

    /// A projection checkpoint was committed by this process.
    pub fn progress_committed(&self) {
        self.inner.progress.send_modify(|n| *n = n.wrapping_add(1));
        self.inner.pending_progress.store(true, Ordering::Release);
        self.inner.outbound.notify_one();
    }

    /// Another process said it committed events and/or projection progress.
    pub fn remote(&self, events: bool, progress: bool) {
        if events {
            self.inner.events.send_modify(|n| *n = n.wrapping_add(1));
        }
        if progress {
            self.inner.progress.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Changes whenever new events may be readable.
    pub fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.inner.events.subscribe()
    }

    /// Changes whenever a projection checkpoint may have moved.
    pub fn subscribe_progress(&self) -> watch::Receiver<u64> {
        self.inner.progress.subscribe()
    }

    async fn next_outbound(&self) -> (bool, bool) {
        self.inner.outbound.notified().await;
        (
            self.inner.pending_events.swap(false, Ordering::AcqRel),
            self.inner.pending_progress.swap(false, Ordering::AcqRel),
        )
    }
}

/// Sends this process's commits to the other processes, coalesced, until shutdown.
pub async fn run_pg_notifier(pool: PgPool, signal: LogSignal, shutdown: CancellationToken) {
    loop {
        let (events, progress) = tokio::select! {
            kinds = signal.next_outbound() => kinds,
            () = shutdown.cancelled() => return,
        };
        let payload = match (events, progress) {
            (true, true) => "ep",
            (true, false) => "e",
            (false, true) => "p",
            (false, false) => continue,
        };
        let sent =
            sqlx::query("SELECT pg_notify($1, $2)").bind(NOTIFY_CHANNEL).bind(payload).execute(&pool).await;
        if let Err(error) = sent {
            tracing::warn!(%error, "could not notify other processes; they will poll");
        }
    }
}

/// Turns other processes' notifications into local wake-ups, reconnecting as needed.
pub async fn run_pg_listener(pool: PgPool, signal: LogSignal, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            result = connected => match result {
                Ok(listener) => listener,
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(%error, "cannot listen for other processes' commits; polling only");
                    }
                    let backoff = Duration::from_millis(200 * u64::from(failures.min(25)));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            },
            () = shutdown.cancelled() => return,
        };
        if failures > 0 {
            tracing::info!("listening for other processes' commits again");
            failures = 0;
        }
        // Anything may have happened while we were not listening.
        signal.remote(true, true);
        loop {
            tokio::select! {
                received = listener.recv() => match received {
                    Ok(note) => {
                        let payload = note.payload();
                        signal.remote(payload.contains('e'), payload.contains('p'));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "lost the notification connection; reconnecting");
                        break;
                    }
                },
                () = shutdown.cancelled() => return,
            }
        }
    }
}
