//! `/api/v1/admin/credits`: grants, adjustments and refunds, the credit operations route
//! family (admin and service tokens; see `security::access`). Each needs a reason and an
//! idempotency key scoped to the calling operator.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::{Allowed, family::CreditOperations};
use super::credits::{Replayed, TransactionBody};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Client};
use crate::credits::input::{AdjustBody, AdminAdjust, AdminGrant, AdminRefund, GrantBody, RefundBody};
use crate::projections::ledger::Transaction;

/// The admin credit routes: grant, adjust and refund.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(grant)).routes(routes!(adjust)).routes(routes!(refund))
}

/// The answer of an admin operation.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminBody {
    pub success: bool,
    pub transaction: TransactionBody,
}

/// An admin answer: 201 with the transaction, marked when it repeats a key's first answer.
type AdminAnswer = (StatusCode, Replayed, Json<AdminBody>);

fn answer((transaction, replayed): (Transaction, bool)) -> AdminAnswer {
    let body = AdminBody { success: true, transaction: transaction.into() };
    (StatusCode::CREATED, Replayed(replayed), Json(body))
}

/// Grant credits to a user (free pool: `bonus`; paid pool: `adjustment`).
#[utoipa::path(post, path = "/api/v1/admin/credits/grant", tag = "admin", security(("bearer" = [])), request_body = GrantBody,
    responses(
        (status = 201, body = AdminBody),
        (status = 400, description = "`VALIDATION_FAILED`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the role is not admin or service", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such user", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_KEY_REUSED`: this operator used the key for another operation, target or body", body = ErrorBody),
    ))]
async fn grant(
    State(state): State<AppState>,
    Client(client): Client,
    Allowed { claims, .. }: Allowed<CreditOperations>,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<AdminAnswer, ApiError> {
    let input = AdminGrant::try_from(body).map_err(ApiError::validation)?;
    Ok(answer(state.credits().admin(&claims.sub, input, &client).await?))
}

/// Correct a user's pool by a signed amount (never below zero).
#[utoipa::path(post, path = "/api/v1/admin/credits/adjust", tag = "admin", security(("bearer" = [])), request_body = AdjustBody,
    responses(
        (status = 201, body = AdminBody),
        (status = 400, description = "`VALIDATION_FAILED`, `INSUFFICIENT_CREDITS` (the pool would go below zero)", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the role is not admin or service", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_KEY_REUSED`: this operator used the key for another operation, target or body", body = ErrorBody),
    ))]
async fn adjust(
    State(state): State<AppState>,
    Client(client): Client,
    Allowed { claims, .. }: Allowed<CreditOperations>,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<AdminAnswer, ApiError> {
    let input = AdminAdjust::try_from(body).map_err(ApiError::validation)?;
    Ok(answer(state.credits().admin(&claims.sub, input, &client).await?))
}

/// Give back (part of) a spend to the pools it came from, paid first.
#[utoipa::path(post, path = "/api/v1/admin/credits/refund", tag = "admin", security(("bearer" = [])), request_body = RefundBody,
    responses(
        (status = 201, body = AdminBody),
        (status = 400, description = "`VALIDATION_FAILED`, `REFUND_EXCEEDS_SPEND`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the role is not admin or service", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no refundable spend with that id", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_KEY_REUSED`: this operator used the key for another operation, target or body", body = ErrorBody),
    ))]
async fn refund(
    State(state): State<AppState>,
    Client(client): Client,
    Allowed { claims, .. }: Allowed<CreditOperations>,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<AdminAnswer, ApiError> {
    let input = AdminRefund::try_from(body).map_err(ApiError::validation)?;
    Ok(answer(state.credits().admin(&claims.sub, input, &client).await?))
}
