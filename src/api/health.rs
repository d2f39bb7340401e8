//! Liveness, readiness and the Prometheus metrics endpoint.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};

/// The health routes: liveness, readiness and metrics.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health)).routes(routes!(ready)).routes(routes!(metrics))
}

/// `GET /api/v1/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
    /// RFC 3339.
    pub timestamp: String,
}

/// `GET /api/v1/ready` when ready.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Always `ready`.
    pub status: &'static str,
    pub timestamp: String,
    /// `postgres` or `sqlite`.
    pub database: &'static str,
    /// `redis` (limits shared), `degraded` (Redis unreachable: limits per process) or
    /// `local` (no Redis configured).
    pub rate_limiter: &'static str,
    pub projections: Vec<ProjectionStatus>,
    /// The change feed, when `EVENT_STREAM_URL` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_stream: Option<EventStreamStatus>,
}

/// Where the change feed stands (docs/FEED.md).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventStreamStatus {
    /// The JetStream stream.
    pub stream: String,
    /// `publishing` (this process holds the lease), `standby` (another process
    /// publishes) or `down` (NATS unreachable from this process, or publishing fails).
    pub state: &'static str,
    /// Position of the last event JetStream acknowledged.
    pub position: i64,
    pub lag_events: i64,
    pub lag_seconds: f64,
    /// Whether readiness fails while the feed is down or behind (`EVENT_STREAM_REQUIRED`).
    pub required: bool,
}

/// How far one projection is behind the log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionStatus {
    pub name: &'static str,
    pub position: i64,
    pub lag_events: i64,
    pub lag_seconds: f64,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/api/v1/health", tag = "health",
    responses((status = 200, description = "The process is alive", body = Health)))]
async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health { status: "ok", timestamp: state.now().to_rfc3339() })
}

/// Readiness: the database answers and every projection is within the configured lag.
#[utoipa::path(get, path = "/api/v1/ready", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "Not ready; `message` lists what is wrong", body = ErrorBody),
    ))]
async fn ready(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    let timeout = std::time::Duration::from_secs(2);
    let mut problems = Vec::new();
    match tokio::time::timeout(timeout, state.db().ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => problems.push("database does not answer".to_owned()),
    }
    let mut projections = Vec::new();
    if problems.is_empty() {
        match tokio::time::timeout(timeout, state.projector().lag()).await {
            Ok(Ok(lags)) => {
                let max = state.config().ready_max_projection_lag.as_secs_f64();
                for lag in lags {
                    if lag.seconds > max {
                        problems.push(format!(
                            "projection {} is {:.1} s behind ({} events; limit {max} s)",
                            lag.name, lag.seconds, lag.events
                        ));
                    }
                    projections.push(ProjectionStatus {
                        name: lag.name,
                        position: lag.checkpoint.position,
                        lag_events: lag.events,
                        lag_seconds: lag.seconds,
                    });
                }
            }
            Ok(Err(_)) | Err(_) => problems.push("projection status unavailable".to_owned()),
        }
    }
    let event_stream = match state.feed() {
        Some(feed) if problems.is_empty() => Some(feed_status(&state, feed, &mut problems).await),
        _ => None,
    };
    if !problems.is_empty() {
        return Err(ApiError::not_ready(problems));
    }
    Ok(Json(Readiness {
        status: "ready",
        timestamp: state.now().to_rfc3339(),
        database: state.db().engine(),
        rate_limiter: state.limiter().mode(),
        projections,
        event_stream,
    }))
}

/// The feed's status; a problem only when the feed is required and down or behind.
async fn feed_status(
    state: &AppState,
    feed: &crate::feed::Feed,
    problems: &mut Vec<String>,
) -> EventStreamStatus {
    let required = feed.settings().required;
    let max = state.config().ready_max_projection_lag.as_secs_f64();
    let status = tokio::time::timeout(std::time::Duration::from_secs(2), feed.status()).await;
    let (position, lag_events, lag_seconds) = match &status {
        Ok(Ok(s)) => (s.checkpoint.position, s.lag_events, s.lag_seconds),
        Ok(Err(_)) | Err(_) => (0, 0, 0.0),
    };
    let state_name = feed.state();
    if required {
        match &status {
            Ok(Ok(s)) if s.lag_seconds > max => problems.push(format!(
                "event stream is {:.1} s behind ({} events; limit {max} s)",
                s.lag_seconds, s.lag_events
            )),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => problems.push("event stream status unavailable".to_owned()),
        }
        if state_name == crate::feed::FeedState::Down {
            problems.push("event stream is down".to_owned());
        }
    }
    EventStreamStatus {
        stream: feed.settings().name.clone(),
        state: state_name.as_str(),
        position,
        lag_events,
        lag_seconds,
        required,
    }
}

/// Prometheus metrics (OpenMetrics text format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AppState>) -> Response {
    // Lag gauges are measured on scrape; a failure leaves the last values in place.
    if let Err(error) = state.projector().lag().await {
        tracing::warn!(error = format!("{error:#}"), "could not measure projection lag");
    }
    if let Some(feed) = state.feed()
        && let Err(error) = feed.status().await
    {
        tracing::warn!(error = format!("{error:#}"), "could not measure the event stream's lag");
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], state.metrics().render())
        .into_response()
}
