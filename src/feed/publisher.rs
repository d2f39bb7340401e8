//! The publisher task of one process: take the lease, get in step with the stream,
//! publish batches in global order, move the checkpoint after JetStream's
//! acknowledgements; on any doubt, get in step with the stream again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::context::{Context, PublishAckFuture};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream;
use tokio_util::sync::CancellationToken;

use super::Feed;
use super::checkpoint::FeedPoint;
use crate::audit::record::ExportRecord;
use crate::events::{LogCursor, RecordedEvent};

/// The header that carries an event's cursor (`txid:position`): consumers follow the
/// feed from a cursor with it, and a publisher finds where the stream stands.
pub const CURSOR_HEADER: &str = "Mana-Cursor";

/// How long a publish may wait for JetStream's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The polling fallback when no wake-up arrives (wake-ups come from this process's
/// commits and other processes' NOTIFY, as for the projector).
const POLL: Duration = Duration::from_millis(200);

/// The subject of an event: `<prefix>.<aggregate_type>.<event_type>`, each name kept to
/// the characters a subject token may hold (others become `_`).
pub fn subject_of(prefix: &str, aggregate_type: &str, event_type: &str) -> String {
    let token = |name: &str| -> String {
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .collect();
        if clean.is_empty() { "_".to_owned() } else { clean }
    };
    format!("{prefix}.{}.{}", token(aggregate_type), token(event_type))
}

/// Runs until `shutdown`: publishes while this process holds the lease, stands by
/// otherwise.
pub(super) async fn run(feed: Arc<Feed>, shutdown: CancellationToken) {
    let client = match connect(&feed).await {
        Ok(client) => client,
        Err(error) => {
            feed.failing.store(true, Ordering::Relaxed);
            tracing::error!(error = format!("{error:#}"), "the event stream cannot start; no feed");
            return;
        }
    };
    let js = async_nats::jetstream::ContextBuilder::new().timeout(ACK_TIMEOUT).build(client.clone());
    let mut publisher =
        Publisher { feed: &feed, js, at: None, ahead: Vec::new(), renewed: None, failures: 0 };
    let mut wake = feed.store.signal().subscribe_events();
    while !shutdown.is_cancelled() {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        feed.connected.store(connected, Ordering::Relaxed);
        let pause = if connected { publisher.step().await } else { publisher.disconnected().await };
        match pause {
            Pause::No => {}
            Pause::For(duration) => sleep_unless(&shutdown, duration).await,
            Pause::UntilNewEvents => tokio::select! {
                _ = wake.changed() => {}
                () = tokio::time::sleep(POLL.min(feed.settings.lease / 3)) => {}
                () = shutdown.cancelled() => {}
            },
        }
    }
    if publisher.renewed.is_some() {
        release(&feed).await;
    }
}

/// The state of one process's publisher between steps.
struct Publisher<'a> {
    feed: &'a Feed,
    js: Context,
    /// Where the stream stands, while this process leads and is in step with it.
    at: Option<FeedPoint>,
    /// The batch after `at`, read while the previous batch's acknowledgements came in.
    ahead: Vec<RecordedEvent>,
    /// When the lease was last taken or renewed; `None` while another process leads.
    renewed: Option<Instant>,
    failures: u32,
}

/// What the loop waits for before the next step.
enum Pause {
    No,
    For(Duration),
    UntilNewEvents,
}

impl Publisher<'_> {
    /// NATS is unreachable: give the lease up so that a process that reaches it takes over.
    async fn disconnected(&mut self) -> Pause {
        if self.renewed.take().is_some() {
            release(self.feed).await;
        }
        self.at = None;
        Pause::For(Duration::from_millis(100))
    }

    /// Takes or renews the lease when due; then, leading, publishes one batch (or gets in
    /// step with the stream first).
    async fn step(&mut self) -> Pause {
        let feed = self.feed;
        let lease = feed.settings.lease;
        if self.renewed.is_none_or(|t| t.elapsed() >= lease / 3) {
            match feed.row.claim(&feed.holder, lease).await {
                Ok(true) => self.renewed = Some(Instant::now()),
                Ok(false) => self.stand_by(),
                Err(error) => {
                    tracing::warn!(%error, "the event stream's lease could not be renewed");
                    self.stand_by();
                }
            }
        }
        feed.leading.store(self.renewed.is_some(), Ordering::Relaxed);
        if self.renewed.is_none() {
            feed.failing.store(false, Ordering::Relaxed);
            return Pause::For(lease / 3);
        }
        let step = match self.at {
            Some(point) => publish_next(feed, &self.js, point, std::mem::take(&mut self.ahead)).await,
            None => resync(feed, &self.js).await.map(|point| match point {
                Some(point) => Step::Published(point, 0, Vec::new()),
                None => Step::LostLease,
            }),
        };
        match step {
            Ok(Step::Published(point, count, next)) => {
                (self.at, self.ahead, self.failures) = (Some(point), next, 0);
                self.renewed = Some(Instant::now());
                feed.failing.store(false, Ordering::Relaxed);
                feed.store.metrics().event_stream_published(count);
                Pause::No
            }
            Ok(Step::CaughtUp) => {
                feed.failing.store(false, Ordering::Relaxed);
                Pause::UntilNewEvents
            }
            Ok(Step::LostLease) => {
                self.stand_by();
                Pause::No
            }
            Err(error) => {
                self.failures += 1;
                self.at = None;
                feed.failing.store(true, Ordering::Relaxed);
                feed.store.metrics().event_stream_error();
                tracing::warn!(
                    stream = feed.settings.name,
                    failures = self.failures,
                    error = format!("{error:#}"),
                    "the event stream could not be published to; retrying"
                );
                Pause::For(backoff(self.failures))
            }
        }
    }

    fn stand_by(&mut self) {
        (self.renewed, self.at) = (None, None);
        self.ahead.clear();
    }
}

/// What one step of a leading publisher did.
enum Step {
    /// The stream now ends at the point; this many events were published; the events
    /// after it read meanwhile (possibly none).
    Published(FeedPoint, u64, Vec<RecordedEvent>),
    /// Nothing new to publish.
    CaughtUp,
    /// Another process took the lease over (nothing was recorded).
    LostLease,
}

/// Connects (in the background: a NATS that is down at start-up delays only the feed),
/// reconnecting quickly after an outage.
async fn connect(feed: &Feed) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("mana-core-auth")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50 * 2_u64.pow(u32::try_from(attempts.min(6)).unwrap_or(6)))
        })
        .connect(feed.settings.url.expose())
        .await
        // The URL may carry credentials: never in the message.
        .map_err(|e| anyhow::anyhow!("EVENT_STREAM_URL: {}", e.kind()))
}

/// Publishes the next batch after `from` (`ahead`, if it was read already) and records
/// it; or reports that there is none. The batch after it is read while JetStream
/// acknowledges this one, so the two waits overlap.
async fn publish_next(
    feed: &Feed,
    js: &Context,
    from: FeedPoint,
    ahead: Vec<RecordedEvent>,
) -> anyhow::Result<Step> {
    let batch = feed.settings.batch_size;
    let events = if ahead.is_empty() { feed.store.read_after(from.cursor, batch).await? } else { ahead };
    let Some(last) = events.last().map(|e| e.cursor) else {
        return Ok(Step::CaughtUp);
    };
    let acks = send(feed, js, from, &events).await?;
    let (acked, next) = tokio::join!(acknowledged(acks, from, &events), feed.store.read_after(last, batch));
    let to = acked?;
    if !feed.row.advance(&feed.holder, to, feed.settings.lease).await? {
        return Ok(Step::LostLease);
    }
    // A failed read ahead only loses its head start.
    Ok(Step::Published(to, events.len() as u64, next.unwrap_or_default()))
}

/// Sends `events` after `from`, pipelined, without waiting. Each message must land right
/// after the one before: `Nats-Expected-Last-Sequence` makes JetStream refuse it otherwise.
async fn send(
    feed: &Feed,
    js: &Context,
    from: FeedPoint,
    events: &[RecordedEvent],
) -> anyhow::Result<Vec<PublishAckFuture>> {
    let prefix = &feed.settings.subject_prefix;
    let mut acks = Vec::with_capacity(events.len());
    for (expected_last, event) in (from.stream_sequence..).zip(events) {
        let body =
            serde_json::to_vec(&ExportRecord::of(event).without_personal()).context("encoding an event")?;
        let message = PublishMessage::build()
            .payload(body.into())
            .message_id(event.cursor.position.to_string())
            .expected_last_sequence(expected_last)
            .header(CURSOR_HEADER, event.cursor.to_string().as_str());
        let subject = subject_of(prefix, &event.aggregate_type, &event.event_type);
        acks.push(js.send_publish(subject, message).await.context("publishing")?);
    }
    Ok(acks)
}

/// Waits for every acknowledgement, in order. One at another sequence than the next, or
/// of a duplicate, means the stream is not where this publisher thought: an error (the
/// caller gets in step again).
async fn acknowledged(
    acks: Vec<PublishAckFuture>,
    from: FeedPoint,
    events: &[RecordedEvent],
) -> anyhow::Result<FeedPoint> {
    let mut at = from;
    for (ack, event) in acks.into_iter().zip(events) {
        let ack = ack.await.with_context(|| format!("the acknowledgement of event {}", event.cursor))?;
        anyhow::ensure!(
            !ack.duplicate && ack.sequence == at.stream_sequence + 1,
            "event {} landed at stream sequence {} (duplicate: {}), expected {}",
            event.cursor,
            ack.sequence,
            ack.duplicate,
            at.stream_sequence + 1
        );
        at = FeedPoint { cursor: event.cursor, stream_sequence: ack.sequence };
    }
    Ok(at)
}

/// Gets in step with the stream (creating it if absent) and records where it stands:
/// after the cursor of its last message; at the start of the log for a stream that never
/// held a message; at the stored checkpoint for a purged one. `None` when another process
/// took the lease over meanwhile.
async fn resync(feed: &Feed, js: &Context) -> anyhow::Result<Option<FeedPoint>> {
    let settings = &feed.settings;
    let config = stream::Config {
        name: settings.name.clone(),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        duplicate_window: settings.duplicate_window,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(config).await.context("creating or finding the stream")?;
    let info = stream.info().await.context("reading the stream's state")?;
    if info.config.duplicate_window != settings.duplicate_window {
        tracing::warn!(
            stream = settings.name,
            window_secs = info.config.duplicate_window.as_secs(),
            "the existing stream keeps its own duplicate window, not EVENT_STREAM_DUPLICATE_WINDOW_SECS"
        );
    }
    let (last, messages) = (info.state.last_sequence, info.state.messages);
    let stored = feed.row.point().await?;
    let cursor = if last == 0 {
        LogCursor::START
    } else if messages == 0 {
        stored.cursor
    } else {
        let message = stream.get_raw_message(last).await.context("reading the stream's last message")?;
        let cursor = message.headers.get(CURSOR_HEADER).and_then(|v| v.as_str().parse::<LogCursor>().ok());
        cursor.unwrap_or_else(|| {
            tracing::error!(
                stream = settings.name,
                sequence = last,
                "the stream's last message carries no Mana-Cursor (something else publishes to \
                 its subjects); continuing after the stored checkpoint"
            );
            stored.cursor
        })
    };
    let point = FeedPoint { cursor, stream_sequence: last };
    if !feed.row.advance(&feed.holder, point, settings.lease).await? {
        return Ok(None);
    }
    if point != stored {
        tracing::info!(stream = settings.name, %cursor, sequence = last, "event stream in step");
    }
    Ok(Some(point))
}

/// Gives the lease up (best effort: it runs out anyway).
async fn release(feed: &Feed) {
    if let Err(error) = feed.row.release(&feed.holder).await {
        tracing::warn!(%error, "the event stream's lease could not be released");
    }
    feed.leading.store(false, Ordering::Relaxed);
}

async fn sleep_unless(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = shutdown.cancelled() => {}
    }
}

/// How long a failing publisher waits before its next try.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * 2_u64.pow(failures.min(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_prefix_aggregate_type_and_event_type_with_unsafe_characters_replaced() {
        assert_eq!(
            subject_of("mana.events", "credit_account", "CreditsSpent"),
            "mana.events.credit_account.CreditsSpent"
        );
        assert_eq!(subject_of("p", "a.b c", "x>*"), "p.a_b_c.x__");
        assert_eq!(subject_of("p", "", "E"), "p._.E");
    }
}
