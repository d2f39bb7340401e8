//! The export of the log as NDJSON (`mana-core-auth export`, `GET /api/v1/admin/events`):
//! one [`ExportRecord`] a line, in global order, whatever is stored (a broken chain is
//! `verify`'s finding, not the exporter's).
//!
//! An export streams: a reader task fetches pages of [`PAGE`] events while a blocking
//! writer serialises the previous page, so reading (the cost) overlaps writing, and at most
//! [`PAGES_IN_FLIGHT`] + 2 pages are in memory however large the log.
//!
//! Its end is fixed when it starts: the readable head of the log at that moment (every
//! event at or before it is committed for good, so the export is a consistent prefix of the
//! global order), or `--until` if that comes first.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::record::ExportRecord;
use crate::events::{EventStore, LogCursor, RecordedEvent, StoreError};

/// Events fetched per query: large enough that the per-query cost (planning, the round
/// trip, the snapshot check) is small beside decoding the rows, small enough that the
/// pages in memory stay modest (a decoded event takes a few KiB as `serde_json::Value`s;
/// 10,000-event pages with two in flight peaked at 240 MB of RSS).
pub const PAGE: usize = 5_000;

/// Pages the reader may be ahead of the writer: one is enough to overlap the two.
pub const PAGES_IN_FLIGHT: usize = 1;

/// Where an export stops (inclusive): through the event with this cursor, or through the
/// last event, in global order, before the first one recorded after this time (the export
/// stops at that event rather than skipping it and going on).
pub use crate::events::Moment as Until;

/// What an export did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Events written.
    pub events: u64,
    /// The cursor of the last event written (continue with `--after` it).
    pub last: Option<LogCursor>,
    pub elapsed: Duration,
}

impl Summary {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why an export stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the log: {0}")]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(#[from] io::Error),
    #[error("the export task failed: {0}")]
    Task(String),
}

/// Writes one event as one NDJSON line.
pub fn write_line(out: &mut impl Write, event: &RecordedEvent) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &ExportRecord::of(event))?;
    out.write_all(b"\n")
}

/// One page of the log as NDJSON, and the cursor to continue after (`after` itself when
/// the page is empty): the body of `GET /api/v1/admin/events`.
pub async fn page(
    store: &EventStore,
    after: LogCursor,
    limit: usize,
) -> Result<(Vec<u8>, LogCursor), ExportError> {
    let events = store.read_after(after, limit).await?;
    let mut body = Vec::with_capacity(events.len() * 512);
    for event in &events {
        write_line(&mut body, event)?;
    }
    Ok((body, events.last().map_or(after, |e| e.cursor)))
}

/// An export with its bounds fixed: built by [`Export::plan`], run by [`Export::run`].
#[derive(Clone)]
pub struct Export {
    store: EventStore,
    after: LogCursor,
    end: LogCursor,
    until_time: Option<DateTime<Utc>>,
}

impl Export {
    /// Fixes the export's end: the log's readable head now, or `until` if earlier.
    pub async fn plan(
        store: &EventStore,
        after: LogCursor,
        until: Option<Until>,
    ) -> Result<Self, ExportError> {
        let head = store.head().await?;
        let (end, until_time) = match until {
            Some(Until::Cursor(cursor)) => (cursor.min(head), None),
            Some(Until::Time(time)) => (head, Some(time)),
            None => (head, None),
        };
        Ok(Self { store: store.clone(), after, end, until_time })
    }

    /// The last cursor the export may write.
    pub fn end(&self) -> LogCursor {
        self.end
    }

    /// An upper bound of the events the export writes, from the positions (for a
    /// progress bar: positions of rolled-back appends are gaps).
    pub fn estimate(&self) -> u64 {
        u64::try_from(self.end.position.saturating_sub(self.after.position)).unwrap_or(0)
    }

    /// Streams the events after `after` through the end into `out`, buffered; calls
    /// `progress` with the running count after each page. `out` is written from a
    /// blocking thread and flushed at the end.
    pub async fn run<W, P>(self, out: W, progress: P) -> Result<Summary, ExportError>
    where
        W: Write + Send + 'static,
        P: FnMut(u64) + Send + 'static,
    {
        let started = Instant::now();
        let (pages, received) = mpsc::channel(PAGES_IN_FLIGHT);
        let reader = tokio::spawn(self.read_pages(pages));
        let writer = tokio::task::spawn_blocking(move || write_pages(received, out, progress));
        let written = writer.await.map_err(|e| ExportError::Task(e.to_string()));
        // A failed writer drops its receiver, which stops the reader.
        let read = reader.await.map_err(|e| ExportError::Task(e.to_string()));
        let (events, last) = written??;
        read??;
        Ok(Summary { events, last, elapsed: started.elapsed() })
    }

    /// Sends pages of events until the end; stops early when the writer is gone.
    async fn read_pages(self, pages: mpsc::Sender<Vec<RecordedEvent>>) -> Result<(), StoreError> {
        let mut cursor = self.after;
        while cursor < self.end {
            let mut events = self.store.read_after(cursor, PAGE).await?;
            let Some(last) = events.last() else { break };
            cursor = last.cursor;
            let mut done = cursor >= self.end;
            events.retain(|e| e.cursor <= self.end);
            if let Some(until) = self.until_time
                && let Some(past) = events.iter().position(|e| e.recorded_at > until)
            {
                events.truncate(past);
                done = true;
            }
            if !events.is_empty() && pages.send(events).await.is_err() {
                break;
            }
            if done {
                break;
            }
        }
        Ok(())
    }
}

fn write_pages<W: Write>(
    mut pages: mpsc::Receiver<Vec<RecordedEvent>>,
    out: W,
    mut progress: impl FnMut(u64),
) -> Result<(u64, Option<LogCursor>), ExportError> {
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    let (mut count, mut last) = (0_u64, None);
    while let Some(events) = pages.blocking_recv() {
        for event in &events {
            write_line(&mut out, event)?;
        }
        count += events.len() as u64;
        last = events.last().map(|e| e.cursor).or(last);
        progress(count);
    }
    out.flush()?;
    Ok((count, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_reads_a_cursor_or_an_rfc3339_time_and_nothing_else() {
        assert_eq!("7:42".parse::<Until>(), Ok(Until::Cursor(LogCursor { txid: 7, position: 42 })));
        let time = DateTime::parse_from_rfc3339("2026-11-29T10:00:00+01:00").unwrap().to_utc();
        assert_eq!("2026-11-29T10:00:00+01:00".parse::<Until>(), Ok(Until::Time(time)));
        for bad in ["", "7", "yesterday", "2026-11-29"] {
            assert!(bad.parse::<Until>().is_err(), "{bad:?} was accepted");
        }
    }
}
