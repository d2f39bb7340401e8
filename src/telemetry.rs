//! Logging (tracing) and metrics (Prometheus text format).
//!
//! The subscriber is installed once by the binary. Metrics live in a [`Metrics`] value
//! owned by each application instance (no global registry), rendered at `GET /metrics`.
//! Nothing here ever records a token, password, hash or `Authorization` header.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{ConfigError, LogFormat};

/// Installs the global tracing subscriber, writing to standard output, or to standard
/// error when `to_stderr` (commands whose data goes to standard output). A malformed
/// `RUST_LOG` is a configuration error naming the variable.
pub fn init_tracing(format: LogFormat, filter: &str, to_stderr: bool) -> Result<(), ConfigError> {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| ConfigError { variable: "RUST_LOG", reason: e.to_string() })?;
    let (writer, ansi) = if to_stderr {
        (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal())
    } else {
        (BoxMakeWriter::new(std::io::stdout), std::io::stdout().is_terminal())
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer)).try_init()
        }
    };
    // Already installed (a second application in one test process): keep the first.
    drop(result);
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventTypeLabels {
    event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AggregateLabels {
    aggregate: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The metrics of one application instance.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram>,
    events_appended: Family<EventTypeLabels, Counter>,
    command_conflicts: Family<AggregateLabels, Counter>,
    projection_position: Family<ProjectionLabels, Gauge>,
    projection_lag_events: Family<ProjectionLabels, Gauge>,
    projection_lag_seconds: Family<ProjectionLabels, FloatGauge>,
    projection_errors: Family<ProjectionLabels, Counter>,
    read_your_writes_timeouts: Counter,
    rate_limited: Family<RuleLabels, Counter>,
    rate_limiter_degraded: Gauge,
    http_connections_open: Gauge,
    event_stream: EventStreamMetrics,
}

/// The change feed's metrics (`event_stream_*`).
#[derive(Default)]
struct EventStreamMetrics {
    published: Counter,
    errors: Counter,
    position: Gauge,
    lag_events: Gauge,
    lag_seconds: FloatGauge,
    publishing: Gauge,
    connected: Gauge,
}

impl EventStreamMetrics {
    fn register(&self, registry: &mut Registry) {
        let stream = registry.sub_registry_with_prefix("event_stream");
        stream.register("published", "Events this process published to the stream", self.published.clone());
        stream.register("errors", "Failed publish attempts (retried)", self.errors.clone());
        stream.register("position", "Global position of the last event in the stream", self.position.clone());
        stream.register(
            "lag_events",
            "Readable events not in the stream yet (capped)",
            self.lag_events.clone(),
        );
        stream.register(
            "lag_seconds",
            "Age of the oldest event not in the stream yet",
            self.lag_seconds.clone(),
        );
        stream.register("publishing", "1 while this process holds the feed's lease", self.publishing.clone());
        stream.register("connected", "1 while this process reaches NATS", self.connected.clone());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric of the service, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mana_core_auth");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.000_25, 2.0, 16))) as fn() -> Histogram,
        );
        let events_appended = Family::<EventTypeLabels, Counter>::default();
        let command_conflicts = Family::<AggregateLabels, Counter>::default();
        let projection_position = Family::<ProjectionLabels, Gauge>::default();
        let projection_lag_events = Family::<ProjectionLabels, Gauge>::default();
        let projection_lag_seconds = Family::<ProjectionLabels, FloatGauge>::default();
        let projection_errors = Family::<ProjectionLabels, Counter>::default();
        let read_your_writes_timeouts = Counter::default();
        let rate_limited = Family::<RuleLabels, Counter>::default();
        let rate_limiter_degraded = Gauge::default();
        let http_connections_open = Gauge::default();
        let event_stream = EventStreamMetrics::default();
        event_stream.register(&mut registry);
        registry.register(
            "http_connections_open",
            "Client connections open now (at most HTTP_MAX_CONNECTIONS)",
            http_connections_open.clone(),
        );
        registry.register("rate_limited", "Requests refused by a rate limit, by rule", rate_limited.clone());
        registry.register(
            "rate_limiter_degraded",
            "1 while Redis is unreachable and limits are counted per process",
            rate_limiter_degraded.clone(),
        );
        registry.register("http_requests", "HTTP requests by route and status", http_requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            http_duration.clone(),
        );
        registry.register("events_appended", "Events appended to the log, by type", events_appended.clone());
        registry.register(
            "command_conflicts",
            "Optimistic concurrency conflicts retried by the command layer",
            command_conflicts.clone(),
        );
        registry.register(
            "projection_position",
            "Global position of the last event a projection applied",
            projection_position.clone(),
        );
        registry.register(
            "projection_lag_events",
            "Events readable in the log that a projection has not applied yet (capped)",
            projection_lag_events.clone(),
        );
        registry.register(
            "projection_lag_seconds",
            "Age of the oldest event a projection has not applied yet",
            projection_lag_seconds.clone(),
        );
        registry.register(
            "projection_errors",
            "Projection batches that failed and were retried",
            projection_errors.clone(),
        );
        registry.register(
            "read_your_writes_timeouts",
            "Requests that answered before the projections caught up with their write",
            read_your_writes_timeouts.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            events_appended,
            command_conflicts,
            projection_position,
            projection_lag_events,
            projection_lag_seconds,
            projection_errors,
            read_your_writes_timeouts,
            rate_limited,
            rate_limiter_degraded,
            http_connections_open,
            event_stream,
        }
    }

    /// Counts events this process published to the change feed.
    pub fn event_stream_published(&self, events: u64) {
        self.event_stream.published.inc_by(events);
    }

    /// Counts a failed publish attempt of the change feed.
    pub fn event_stream_error(&self) {
        self.event_stream.errors.inc();
    }

    /// Publishes the change feed's position, lag and state in this process.
    pub fn event_stream(
        &self,
        position: i64,
        lag_events: i64,
        lag_seconds: f64,
        publishing: bool,
        connected: bool,
    ) {
        let feed = &self.event_stream;
        feed.position.set(position);
        feed.lag_events.set(lag_events);
        feed.lag_seconds.set(lag_seconds);
        feed.publishing.set(i64::from(publishing));
        feed.connected.set(i64::from(connected));
    }

    /// Counts a request refused by a rate limit.
    pub fn rate_limited(&self, rule: &str) {
        self.rate_limited.get_or_create(&RuleLabels { rule: rule.to_owned() }).inc();
    }

    /// Whether the limiter fell back to per-process counting.
    pub fn rate_limiter_degraded(&self, degraded: bool) {
        self.rate_limiter_degraded.set(i64::from(degraded));
    }

    /// Counts a client connection accepted.
    pub fn http_connection_opened(&self) {
        self.http_connections_open.inc();
    }

    /// Counts a client connection closed.
    pub fn http_connection_closed(&self) {
        self.http_connections_open.dec();
    }

    /// Records one finished HTTP request.
    pub fn http_request(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        let labels =
            HttpLabels { method: method.to_owned(), route: route.to_owned(), status: status.to_string() };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration.get_or_create(&labels).observe(seconds);
    }

    /// Counts an appended event.
    pub fn event_appended(&self, event_type: &str) {
        self.events_appended.get_or_create(&EventTypeLabels { event_type: event_type.to_owned() }).inc();
    }

    /// Counts a retried optimistic conflict.
    pub fn command_conflict(&self, aggregate: &str) {
        self.command_conflicts.get_or_create(&AggregateLabels { aggregate: aggregate.to_owned() }).inc();
    }

    /// Publishes a projection's position.
    pub fn projection_position(&self, projection: &str, position: i64) {
        self.projection_position.get_or_create(&Self::projection(projection)).set(position);
    }

    /// Publishes a projection's lag.
    pub fn projection_lag(&self, projection: &str, events: i64, seconds: f64) {
        let labels = Self::projection(projection);
        self.projection_lag_events.get_or_create(&labels).set(events);
        self.projection_lag_seconds.get_or_create(&labels).set(seconds);
    }

    /// Counts a failed projection batch.
    pub fn projection_error(&self, projection: &str) {
        self.projection_errors.get_or_create(&Self::projection(projection)).inc();
    }

    /// Counts a read-your-writes wait that timed out.
    pub fn read_your_writes_timeout(&self) {
        self.read_your_writes_timeouts.inc();
    }

    fn projection(name: &str) -> ProjectionLabels {
        ProjectionLabels { projection: name.to_owned() }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
