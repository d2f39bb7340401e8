//! `/api/v1/auth/session(s)` and `/api/v1/auth/security-events`: the caller's own
//! sessions and security events.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::UserBody;
use super::error::{ApiError, ErrorBody};
use super::extract::{Authenticated, Client, Page};
use crate::auth::{CurrentSession, SessionSummary};
use crate::projections::security_events::SecurityEventRow;

/// The caller's session routes: current session, list, revoke, security events.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(current_session))
        .routes(routes!(list_sessions))
        .routes(routes!(revoke_session))
        .routes(routes!(revoke_others))
        .routes(routes!(security_events))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A session as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionBody {
    pub id: String,
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: Option<String>,
    pub last_active_at: Option<String>,
    /// Whether this is the session of the presented token.
    pub current: bool,
    /// When the refresh token expires (the current session's in `/auth/session`; every
    /// session's in the operators' list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// `GET /auth/session`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CurrentSessionBody {
    pub user: UserBody,
    pub session: SessionBody,
}

/// The current user and session.
#[utoipa::path(get, path = "/api/v1/auth/session", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller and the session of the presented token", body = CurrentSessionBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
    ))]
async fn current_session(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
) -> Result<Json<CurrentSessionBody>, ApiError> {
    Ok(Json(state.auth().current_session(&claims).await?.into()))
}

/// The caller's live sessions, newest first.
#[utoipa::path(get, path = "/api/v1/auth/sessions", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 200, description = "Live sessions (not revoked, refresh token not expired)", body = [SessionBody]),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
    ))]
async fn list_sessions(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
) -> Result<Json<Vec<SessionBody>>, ApiError> {
    let sessions = state.auth().list_sessions(&claims).await?;
    Ok(Json(sessions.into_iter().map(SessionBody::from).collect()))
}

/// `{"success":true,...}` answers of this module.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedBody {
    pub success: bool,
    /// How many sessions were revoked.
    pub revoked: usize,
}

/// Revoke one of the caller's sessions.
#[utoipa::path(delete, path = "/api/v1/auth/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "Revoked", body = RevokedBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such session of the caller", body = ErrorBody),
    ))]
async fn revoke_session(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<RevokedBody>, ApiError> {
    state.auth().revoke_own_session(&claims, &id, &client).await?;
    Ok(Json(RevokedBody { success: true, revoked: 1 }))
}

/// Revoke every live session of the caller but the current one.
#[utoipa::path(post, path = "/api/v1/auth/sessions/revoke-others", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 200, description = "Revoked the others", body = RevokedBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
    ))]
async fn revoke_others(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
) -> Result<Json<RevokedBody>, ApiError> {
    let revoked = state.auth().revoke_other_sessions(&claims, &client).await?;
    Ok(Json(RevokedBody { success: true, revoked }))
}

/// A security event as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityEventBody {
    pub id: i64,
    pub event_type: String,
    pub session_id: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: String,
}

/// The caller's security events, newest first.
#[utoipa::path(get, path = "/api/v1/auth/security-events", tag = "sessions", security(("bearer" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 50"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 2_147_483_647, description = "0 or more, default 0"),
    ),
    responses(
        (status = 200, description = "Newest first", body = [SecurityEventBody]),
        (status = 400, description = "`VALIDATION_FAILED`: bad limit or offset", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
    ))]
async fn security_events(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    page: Page,
) -> Result<Json<Vec<SecurityEventBody>>, ApiError> {
    let rows = state.auth().security_events(&claims, page.limit, page.offset).await?;
    Ok(Json(rows.into_iter().map(SecurityEventBody::from).collect()))
}

impl From<CurrentSession> for CurrentSessionBody {
    fn from(current: CurrentSession) -> Self {
        let created_at = current.user.created_at.map(time);
        let session = SessionBody {
            id: current.session_id,
            device_id: current.personal.device_id,
            device_name: current.personal.device_name,
            ip_address: current.personal.ip_address,
            user_agent: current.personal.user_agent,
            created_at: current.created_at.map(time),
            last_active_at: current.last_active_at.map(time),
            current: true,
            expires_at: current.expires_at.map(time),
        };
        Self { user: UserBody::of(current.user, created_at), session }
    }
}

impl From<SessionSummary> for SessionBody {
    fn from(s: SessionSummary) -> Self {
        Self {
            id: s.row.id,
            device_id: s.row.device_id,
            device_name: s.row.device_name,
            ip_address: s.row.ip_address,
            user_agent: s.row.user_agent,
            created_at: Some(time(s.row.created_at)),
            last_active_at: Some(time(s.row.last_active_at)),
            current: s.current,
            expires_at: None,
        }
    }
}

impl From<SecurityEventRow> for SecurityEventBody {
    fn from(r: SecurityEventRow) -> Self {
        Self {
            id: r.id,
            event_type: r.event_type,
            session_id: r.session_id,
            ip_address: r.ip_address,
            user_agent: r.user_agent,
            metadata: r.metadata,
            created_at: time(r.created_at),
        }
    }
}
