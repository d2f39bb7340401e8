//! The change feed: every committed event, in global order, published to a NATS
//! JetStream stream, so that jobs react to changes without polling (docs/FEED.md).
//!
//! Each message is the audit export's record
//! ([`ExportRecord`](crate::audit::record::ExportRecord): the same fields and the same
//! redaction) on the subject `<prefix>.<aggregate_type>.<event_type>`, with `Nats-Msg-Id`
//! = the event's position and `Mana-Cursor` = its cursor.
//!
//! **Exactly once, in order.** Every process runs a [`Feed`]; one at a time publishes
//! (a lease in `event_feed`, [`checkpoint`]). The stream itself is the record of what is
//! published: a publisher that starts, takes over or recovers from an error reads the
//! stream's last message and continues after its cursor, and every publish carries
//! `Nats-Expected-Last-Sequence`, so JetStream refuses a message that would land out of
//! place (a stale publisher, a lost acknowledgement). `Nats-Msg-Id` lets JetStream drop
//! a repeated event within the duplicate window besides. The checkpoint in `event_feed`
//! moves only after JetStream acknowledged; it measures the lag and carries the feed
//! over a purged stream.
//!
//! A NATS outage or restart only delays the feed; the publisher catches up by itself. The
//! service stays ready meanwhile unless `EVENT_STREAM_REQUIRED=true`.

pub mod checkpoint;
pub mod follow;
mod publisher;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use publisher::{CURSOR_HEADER, subject_of};

use crate::clock::SharedClock;
use crate::config::EventStreamConfig;
use crate::events::{EventStore, LogCursor};
use checkpoint::FeedRow;

/// Lag counts stop here, so measuring lag stays cheap when the feed is far behind.
pub const LAG_COUNT_CAP: i64 = 100_000;

/// What this process's feed is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    /// This process holds the lease and publishes.
    Publishing,
    /// Another process publishes; this one is connected and ready to take over.
    Standby,
    /// NATS is unreachable from this process, or its last publish failed.
    Down,
}

impl FeedState {
    /// The name readiness shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publishing => "publishing",
            Self::Standby => "standby",
            Self::Down => "down",
        }
    }
}

/// How far the feed is, as readiness and the metrics report it.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedStatus {
    pub stream: String,
    pub state: FeedState,
    /// The last event JetStream acknowledged (whichever process published it).
    pub checkpoint: LogCursor,
    /// Readable events not published yet (counted up to [`LAG_COUNT_CAP`]).
    pub lag_events: i64,
    /// Age of the oldest event not published yet.
    pub lag_seconds: f64,
}

/// The change feed of one process: its publisher task and its status.
pub struct Feed {
    settings: EventStreamConfig,
    store: EventStore,
    clock: SharedClock,
    row: FeedRow,
    /// This process's lease holder id (fresh per start).
    holder: String,
    leading: AtomicBool,
    connected: AtomicBool,
    failing: AtomicBool,
}

impl Feed {
    /// The feed over `store`, publishing as `settings` say; [`Feed::spawn`] starts it.
    pub async fn new(
        settings: EventStreamConfig,
        store: EventStore,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let row = FeedRow::new(store.db().clone(), &settings.name);
        row.init().await?;
        Ok(Self {
            settings,
            store,
            clock,
            row,
            holder: uuid::Uuid::new_v4().to_string(),
            leading: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        })
    }

    /// The settings it publishes with.
    pub fn settings(&self) -> &EventStreamConfig {
        &self.settings
    }

    /// Starts the publisher task; it releases its lease and stops when `shutdown` is
    /// cancelled.
    pub fn spawn(self: &Arc<Self>, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        let feed = Arc::clone(self);
        let shutdown = shutdown.clone();
        tasks.spawn(async move { publisher::run(feed, shutdown).await });
    }

    /// What this process's feed is doing now.
    pub fn state(&self) -> FeedState {
        if !self.connected.load(Ordering::Relaxed) || self.failing.load(Ordering::Relaxed) {
            FeedState::Down
        } else if self.leading.load(Ordering::Relaxed) {
            FeedState::Publishing
        } else {
            FeedState::Standby
        }
    }

    /// The feed's checkpoint and lag (read from the database: the same in every process),
    /// also published as metrics.
    pub async fn status(&self) -> anyhow::Result<FeedStatus> {
        let point = self.row.point().await?;
        let (lag_events, oldest) = checkpoint::pending(self.store.db(), point.cursor, LAG_COUNT_CAP).await?;
        let lag_seconds = oldest.map_or(0.0, |t| seconds_since(self.clock.now(), t));
        let state = self.state();
        self.store.metrics().event_stream(
            point.cursor.position,
            lag_events,
            lag_seconds,
            state == FeedState::Publishing,
            state != FeedState::Down,
        );
        Ok(FeedStatus {
            stream: self.settings.name.clone(),
            state,
            checkpoint: point.cursor,
            lag_events,
            lag_seconds,
        })
    }
}

fn seconds_since(now: DateTime<Utc>, then: DateTime<Utc>) -> f64 {
    (now - then).num_milliseconds().max(0) as f64 / 1000.0
}
