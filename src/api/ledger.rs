//! `/api/v1/admin/ledger/trial-balance` (admin reads) and `/api/v1/admin/usage` (usage
//! analytics): the double-entry ledger's balances at a point of the log, and credits used
//! and refunded per day, app or user (`credits::analytics`).

use axum::Json;
use axum::extract::{RawQuery, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::family::{AdminRead, UsageAnalytics};
use super::access::{Allowed, Scoped};
use super::error::{ApiError, ErrorBody, ErrorCode};
use crate::credits::analytics::{self, TrialBalance, UsageReport};
use crate::credits::input::Point;
use crate::projections::ledger_postings::UsageFilter;
use crate::security::access::Access;

/// The ledger and usage routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(trial_balance)).routes(routes!(usage))
}

/// Every account's balance at a point of the log; the balances sum to 0.
#[utoipa::path(get, path = "/api/v1/admin/ledger/trial-balance", tag = "admin", security(("bearer" = [])),
    params(
        ("at" = Option<String>, Query, description = "A cursor (`txid:position`) or an RFC 3339 time (the last event recorded at or before it); default: as far as the ledger has got"),
    ),
    responses(
        (status = 200, body = TrialBalance),
        (status = 400, description = "`VALIDATION_FAILED`: `at` is neither a cursor nor an RFC 3339 time, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`: no valid token", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: not an admin or auditor token", body = ErrorBody),
    ))]
async fn trial_balance(
    State(state): State<AppState>,
    _reader: Allowed<AdminRead>,
    RawQuery(query): RawQuery,
) -> Result<Json<TrialBalance>, ApiError> {
    let at = Point::try_from(query.as_deref()).map_err(ApiError::validation)?;
    let wait = state.config().read_your_writes_timeout;
    let answer = analytics::trial_balance(state.store(), state.projector(), at, wait).await;
    Ok(Json(answer.map_err(ApiError::internal)?))
}

/// Credits used and refunded over `[from, to)`, per day, app or user.
#[utoipa::path(get, path = "/api/v1/admin/usage", tag = "admin", security(("bearer" = [])),
    params(
        ("appId" = Option<String>, Query, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "One app; default every app (a service: its own)"),
        ("from" = Option<String>, Query, description = "Start, inclusive: an RFC 3339 time or a date (midnight UTC)"),
        ("to" = Option<String>, Query, description = "End, exclusive: an RFC 3339 time or a date (midnight UTC)"),
        ("groupBy" = Option<String>, Query, pattern = "^(day|app|user)$", description = "`day` (UTC, the default), `app` or `user`"),
    ),
    responses(
        (status = 200, body = UsageReport),
        (status = 400, description = "`VALIDATION_FAILED`: an unknown `groupBy`, a malformed time or app id, `to` not after `from`, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`: no valid token", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: a user token; a service token bound to no app (`SERVICE_APPS`) or asking for another app", body = ErrorBody),
    ))]
async fn usage(
    State(state): State<AppState>,
    reader: Scoped<UsageAnalytics>,
    RawQuery(query): RawQuery,
) -> Result<Json<UsageReport>, ApiError> {
    let mut filter = UsageFilter::try_from(query.as_deref()).map_err(ApiError::validation)?;
    match reader.access {
        Access::Full => {}
        Access::OwnAppOnly => {
            let own = state.config().service_apps.get(&reader.claims.sub).map(String::as_str);
            analytics::own_app_only(&mut filter, own)
                .map_err(|refusal| ApiError::new(ErrorCode::Forbidden, refusal.to_string()))?;
        }
        Access::UserTransactionsOnly | Access::Denied => return Err(ApiError::code(ErrorCode::Forbidden)),
    }
    let report = analytics::usage(state.store(), state.projector(), filter).await;
    Ok(Json(report.map_err(ApiError::internal)?))
}
