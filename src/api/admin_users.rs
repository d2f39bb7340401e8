//! `/api/v1/admin/users`: operators' reads of a user, the admin reads route family (admin
//! and auditor tokens; a service token only a user's transactions; see
//! `security::access`): a user by e-mail, a balance at a past moment computed from the
//! log, and a user's transactions, security events and sessions, paged like the user's
//! own lists.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::family::AdminRead;
use super::access::{Allowed, Scoped};
use super::credits::{BalanceBody, TransactionBody};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::Page;
use super::sessions::{SecurityEventBody, SessionBody};
use crate::auth::SessionSummary;
use crate::credits::history::{Moment, PastBalance};
use crate::events::auth::Role;
use crate::projections::sessions::SessionRecord;
use crate::projections::users::UserRecord;
use crate::security::access::Access;

/// The operators' user routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(find_users))
        .routes(routes!(balance))
        .routes(routes!(transactions))
        .routes(routes!(security_events))
        .routes(routes!(sessions))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A user as operators see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminUserBody {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub email_verified: bool,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /admin/users` answer: the users found (none or one).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsersBody {
    pub users: Vec<AdminUserBody>,
}

/// `GET /admin/users` query.
#[derive(Debug, Deserialize)]
struct UserQuery {
    email: Option<String>,
}

/// Look a user up by e-mail address (normalised as registration and login normalise it).
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])),
    params(("email" = String, Query, max_length = 254, pattern = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", description = "The address; case and surrounding spaces do not matter")),
    responses(
        (status = 200, description = "The user registered under the address, or an empty list", body = UsersBody),
        (status = 400, description = "`VALIDATION_FAILED`: no address, or not an e-mail address", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: not an admin or auditor token", body = ErrorBody),
    ))]
async fn find_users(
    State(state): State<AppState>,
    _reader: Allowed<AdminRead>,
    Query(query): Query<UserQuery>,
) -> Result<Json<UsersBody>, ApiError> {
    let found = state.auth().find_user_by_email(query.email.as_deref().unwrap_or_default()).await?;
    Ok(Json(UsersBody { users: found.into_iter().map(AdminUserBody::from).collect() }))
}

/// `GET /admin/users/{userId}/balance` answer: the fields of `GET /credits/balance` at
/// the moment asked for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PastBalanceBody {
    #[serde(flatten)]
    pub balance: BalanceBody,
    /// The moment: the time asked for (UTC), the cursor asked for, or the time of the
    /// request when `at` was absent.
    pub as_of: String,
    /// The cursor of the last event included; null before the account's first event.
    pub cursor: Option<String>,
}

/// `GET /admin/users/{userId}/balance` query.
#[derive(Debug, Deserialize)]
struct BalanceQuery {
    at: Option<String>,
}

/// A user's balance and totals at a moment, computed from the account's events in the log
/// (those recorded at or before the time, or at or before the cursor).
#[utoipa::path(get, path = "/api/v1/admin/users/{userId}/balance", tag = "admin", operation_id = "admin_user_balance", security(("bearer" = [])),
    params(
        ("userId" = String, Path, description = "The user's id"),
        ("at" = Option<String>, Query, description = "An RFC 3339 time, or a log cursor `<txid>:<position>` (an exported event's `cursor`); default: every event so far"),
    ),
    responses(
        (status = 200, description = "The balance at that moment (zeros before the account opened)", body = PastBalanceBody),
        (status = 400, description = "`VALIDATION_FAILED`: `at` is neither a time nor a cursor", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: not an admin or auditor token", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such user", body = ErrorBody),
    ))]
async fn balance(
    State(state): State<AppState>,
    _reader: Allowed<AdminRead>,
    Path(user_id): Path<String>,
    Query(query): Query<BalanceQuery>,
) -> Result<Json<PastBalanceBody>, ApiError> {
    let at = query
        .at
        .as_deref()
        .map(str::parse::<Moment>)
        .transpose()
        .map_err(|reason| ApiError::validation(vec![format!("at: {reason}")]))?;
    Ok(Json(state.credits().balance_at(&user_id, at).await?.into()))
}

/// A user's transactions, as `GET /credits/transactions` shows them to that user.
#[utoipa::path(get, path = "/api/v1/admin/users/{userId}/transactions", tag = "admin", operation_id = "admin_user_transactions", security(("bearer" = [])),
    params(
        ("userId" = String, Path, description = "The user's id"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 50"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 2_147_483_647, description = "0 or more, default 0"),
    ),
    responses(
        (status = 200, description = "Newest first in the order the account applied them", body = [TransactionBody]),
        (status = 400, description = "`VALIDATION_FAILED`: bad limit or offset", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: not an admin, auditor or service token", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such user", body = ErrorBody),
    ))]
async fn transactions(
    State(state): State<AppState>,
    reader: Scoped<AdminRead>,
    Path(user_id): Path<String>,
    page: Page,
) -> Result<Json<Vec<TransactionBody>>, ApiError> {
    match reader.access {
        // A service's narrowed grant is exactly this route: the transactions of one user.
        Access::Full | Access::UserTransactionsOnly => {}
        Access::OwnAppOnly | Access::Denied => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "This grant does not reach a user's transactions",
            ));
        }
    }
    let rows = state.credits().transactions_of(&user_id, page.limit, page.offset).await?;
    Ok(Json(rows.into_iter().map(TransactionBody::from).collect()))
}

/// A user's security events, as `GET /auth/security-events` shows them to that user.
#[utoipa::path(get, path = "/api/v1/admin/users/{userId}/security-events", tag = "admin", operation_id = "admin_user_security_events", security(("bearer" = [])),
    params(
        ("userId" = String, Path, description = "The user's id"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 50"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 2_147_483_647, description = "0 or more, default 0"),
    ),
    responses(
        (status = 200, description = "Newest first", body = [SecurityEventBody]),
        (status = 400, description = "`VALIDATION_FAILED`: bad limit or offset", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: not an admin or auditor token", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such user", body = ErrorBody),
    ))]
async fn security_events(
    State(state): State<AppState>,
    _reader: Allowed<AdminRead>,
    Path(user_id): Path<String>,
    page: Page,
) -> Result<Json<Vec<SecurityEventBody>>, ApiError> {
    let rows = state.auth().security_events_of(&user_id, page.limit, page.offset).await?;
    Ok(Json(rows.into_iter().map(SecurityEventBody::from).collect()))
}

/// A session as operators see it: the fields of `GET /auth/sessions`, and its end.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSessionBody {
    /// `expiresAt` is given for every session here.
    #[serde(flatten)]
    pub session: SessionBody,
    /// When the session was revoked; null while it is not.
    pub revoked_at: Option<String>,
    /// Why: `logout`, `revoked_by_user`, `refresh_token_reuse` or `user_changed` (a role
    /// change, disable or password change ended it).
    pub revoked_reason: Option<String>,
}

/// Every session of a user, revoked and expired ones too, newest first.
#[utoipa::path(get, path = "/api/v1/admin/users/{userId}/sessions", tag = "admin", operation_id = "admin_user_sessions", security(("bearer" = [])),
    params(
        ("userId" = String, Path, description = "The user's id"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 50"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 2_147_483_647, description = "0 or more, default 0"),
    ),
    responses(
        (status = 200, description = "Newest first, with `revokedAt` and `revokedReason`", body = [AdminSessionBody]),
        (status = 400, description = "`VALIDATION_FAILED`: bad limit or offset", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: not an admin or auditor token", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such user", body = ErrorBody),
    ))]
async fn sessions(
    State(state): State<AppState>,
    reader: Allowed<AdminRead>,
    Path(user_id): Path<String>,
    page: Page,
) -> Result<Json<Vec<AdminSessionBody>>, ApiError> {
    let rows = state.auth().sessions_of(&user_id, page.limit, page.offset).await?;
    let caller_session = reader.claims.sid;
    Ok(Json(rows.into_iter().map(|record| AdminSessionBody::of(record, &caller_session)).collect()))
}

impl From<UserRecord> for AdminUserBody {
    fn from(u: UserRecord) -> Self {
        Self {
            id: u.id,
            email: u.email,
            name: u.name,
            role: u.role,
            email_verified: u.email_verified,
            disabled: u.disabled,
            created_at: time(u.created_at),
            updated_at: time(u.updated_at),
        }
    }
}

impl From<PastBalance> for PastBalanceBody {
    fn from(past: PastBalance) -> Self {
        let as_of = match past.moment {
            Moment::Time(at) => at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            Moment::Cursor(cursor) => cursor.to_string(),
        };
        Self { balance: past.balance.into(), as_of, cursor: past.cursor.map(|c| c.to_string()) }
    }
}

impl AdminSessionBody {
    /// `current` marks the caller's own session, should an operator look at themselves.
    fn of(record: SessionRecord, caller_session: &str) -> Self {
        let current = record.row.id == caller_session;
        let mut session = SessionBody::from(SessionSummary { row: record.row, current });
        session.expires_at = Some(time(record.refresh_expires_at));
        Self { session, revoked_at: record.revoked_at.map(time), revoked_reason: record.revoked_reason }
    }
}
