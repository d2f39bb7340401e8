//! `/api/v1/credits` (the caller's balance, spends and history) and
//! `/api/v1/admin/credits` (grants, adjustments and refunds for admin and service tokens).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{ApiJson, Authenticated, Client, page};
use crate::credits::input::{SpendRequest, fingerprint, parse_amount, parse_key, parse_signed_amount};
use crate::credits::{AdminOperation, CreditFailure};
use crate::events::auth::Role;
use crate::events::credits::Pool;
use crate::projections::ledger::Transaction;

/// The credit routes of users: balance, spends and transaction history.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(balance))
        .routes(routes!(use_credits))
        .routes(routes!(transactions))
        .routes(routes!(grant))
        .routes(routes!(adjust))
        .routes(routes!(refund))
}

impl From<CreditFailure> for ApiError {
    fn from(failure: CreditFailure) -> Self {
        match failure {
            CreditFailure::Validation(messages) => ApiError::validation(messages),
            CreditFailure::Insufficient { available, requested } => ApiError::new(
                ErrorCode::InsufficientCredits,
                format!("Insufficient credits: {available} available, {requested} requested"),
            ),
            CreditFailure::KeyReused => ApiError::code(ErrorCode::IdempotencyKeyReused),
            CreditFailure::NotFound => ApiError::code(ErrorCode::NotFound),
            CreditFailure::RefundTooLarge { refundable } => ApiError::new(
                ErrorCode::RefundExceedsSpend,
                format!("At most {refundable} credits of that transaction can still be refunded"),
            ),
            CreditFailure::Conflict => ApiError::code(ErrorCode::Conflict),
            CreditFailure::Internal(cause) => ApiError::internal(format!("{cause:#}")),
        }
    }
}

/// `GET /credits/balance`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BalanceBody {
    /// Paid credits.
    pub balance: i64,
    pub free_credits_remaining: i64,
    pub total_earned: i64,
    pub total_spent: i64,
    pub daily_free_credits: i64,
}

/// A ledger line, as the original answered it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransactionBody {
    pub id: String,
    pub user_id: String,
    /// `bonus`, `usage`, `purchase`, `refund` or `adjustment`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `completed`.
    pub status: &'static str,
    /// Signed: negative for usage.
    pub amount: i64,
    pub balance_before: i64,
    pub balance_after: i64,
    pub app_id: String,
    pub description: String,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub completed_at: String,
}

impl From<Transaction> for TransactionBody {
    fn from(t: Transaction) -> Self {
        let at = t.at.to_rfc3339_opts(SecondsFormat::Millis, true);
        Self {
            id: t.id,
            user_id: t.user_id,
            kind: t.kind.as_str(),
            status: "completed",
            amount: t.amount,
            balance_before: t.balance_before,
            balance_after: t.balance_after,
            app_id: t.app_id,
            description: t.description,
            metadata: t.metadata,
            idempotency_key: t.idempotency_key,
            created_at: at.clone(),
            completed_at: at,
        }
    }
}

/// The balance right after a spend.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewBalanceBody {
    pub balance: i64,
    pub free_credits_remaining: i64,
    pub total_spent: i64,
}

/// `POST /credits/use` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendBody {
    pub success: bool,
    pub transaction: TransactionBody,
    pub new_balance: NewBalanceBody,
}

/// `POST /credits/use` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UseBody {
    /// Integer from 1 to 1,000,000.
    #[schema(value_type = i64)]
    amount: Option<Value>,
    /// 1 to 64 characters of `[A-Za-z0-9._-]`.
    app_id: Option<String>,
    /// At most 500 characters.
    description: Option<String>,
    /// A JSON object of at most 4 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// Also accepted as the `Idempotency-Key` header.
    idempotency_key: Option<String>,
}

/// The balance; the day's free credits are granted by the first read or spend of the day.
#[utoipa::path(get, path = "/api/v1/credits/balance", tag = "credits", security(("bearer" = [])),
    responses(
        (status = 200, body = BalanceBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
    ))]
async fn balance(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
) -> Result<Json<BalanceBody>, ApiError> {
    let b = state.credits().balance(&claims.sub, &client).await?;
    Ok(Json(BalanceBody {
        balance: b.paid,
        free_credits_remaining: b.free,
        total_earned: b.total_earned,
        total_spent: b.total_spent,
        daily_free_credits: b.daily_free_credits,
    }))
}

/// Spend credits (free first, then paid). Idempotent per user under `idempotencyKey`.
#[utoipa::path(post, path = "/api/v1/credits/use", tag = "credits", security(("bearer" = [])), request_body = UseBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "The idempotency key (or `idempotencyKey` in the body)")),
    responses(
        (status = 201, description = "Spent; a retry with the same key answers the same body with `Idempotent-Replayed: true`", body = SpendBody),
        (status = 400, description = "`VALIDATION_FAILED`, `INSUFFICIENT_CREDITS`", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_KEY_REUSED`: the key was used for a different request", body = ErrorBody),
    ))]
async fn use_credits(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UseBody>,
) -> Result<Response, ApiError> {
    let header_key = headers.get("idempotency-key").map(|v| v.to_str().unwrap_or("\u{0}"));
    let request = SpendRequest::parse(
        body.amount.as_ref(),
        body.app_id.as_deref(),
        body.description.as_deref(),
        body.metadata.as_ref(),
        body.idempotency_key.as_deref(),
        header_key,
    )
    .map_err(ApiError::validation)?;
    let spent = state.credits().spend(&claims.sub, request, &client).await?;
    let answer = SpendBody {
        success: true,
        transaction: spent.transaction.into(),
        new_balance: NewBalanceBody {
            balance: spent.paid_after,
            free_credits_remaining: spent.free_after,
            total_spent: spent.total_spent_after,
        },
    };
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    if spent.replayed {
        response
            .headers_mut()
            .insert(HeaderName::from_static("idempotent-replayed"), HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The caller's transactions, newest first in the order the account applied them: each
/// row's `balanceBefore` is the next row's `balanceAfter`.
#[utoipa::path(get, path = "/api/v1/credits/transactions", tag = "credits", security(("bearer" = [])),
    params(
        ("limit" = Option<i64>, Query, description = "1 to 100, default 50"),
        ("offset" = Option<i64>, Query, description = "0 or more, default 0"),
    ),
    responses(
        (status = 200, body = [TransactionBody]),
        (status = 400, description = "`VALIDATION_FAILED`", body = ErrorBody),
    ))]
async fn transactions(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<TransactionBody>>, ApiError> {
    let (limit, offset) = page(&query)?;
    let rows = state.credits().transactions(&claims.sub, limit, offset).await?;
    Ok(Json(rows.into_iter().map(TransactionBody::from).collect()))
}

/// Admin and service tokens only.
fn require_operator(role: Role) -> Result<(), ApiError> {
    match role {
        Role::Admin | Role::Service => Ok(()),
        Role::User => Err(ApiError::new(ErrorCode::Forbidden, "Admin or service role required")),
    }
}

/// `POST /admin/credits/grant` and `/adjust` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrantBody {
    user_id: Option<String>,
    /// Grant: 1 to 1,000,000. Adjust: non-zero, ±1,000,000.
    #[schema(value_type = i64)]
    amount: Option<Value>,
    pool: Option<Pool>,
    reason: Option<String>,
    /// Required; scoped to the calling operator, whichever account the request targets.
    idempotency_key: Option<String>,
}

/// `POST /admin/credits/refund` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RefundBody {
    transaction_id: Option<String>,
    /// At most what is left of the spend; all of it when absent.
    #[schema(value_type = Option<i64>)]
    amount: Option<Value>,
    reason: Option<String>,
    /// Required; scoped to the calling operator, whichever account the request targets.
    idempotency_key: Option<String>,
}

/// The answer of an admin operation.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminBody {
    pub success: bool,
    pub transaction: TransactionBody,
}

fn reason_of(reason: Option<&str>, problems: &mut Vec<String>) -> String {
    match reason.map(str::trim) {
        Some(r) if !r.is_empty() && r.chars().count() <= 500 => r.to_owned(),
        _ => {
            problems.push("reason is required (at most 500 characters)".into());
            String::new()
        }
    }
}

fn key_of(key: Option<&str>, request: &Value, problems: &mut Vec<String>) -> Option<(String, String)> {
    match key.map(parse_key) {
        Some(Ok(key)) => Some((key, fingerprint(request))),
        Some(Err(message)) => {
            problems.push(message);
            None
        }
        None => {
            problems.push("idempotencyKey is required".into());
            None
        }
    }
}

fn admin_answer(outcome: (Transaction, bool)) -> Response {
    let (transaction, replayed) = outcome;
    let mut response =
        (StatusCode::CREATED, Json(AdminBody { success: true, transaction: transaction.into() }))
            .into_response();
    if replayed {
        response
            .headers_mut()
            .insert(HeaderName::from_static("idempotent-replayed"), HeaderValue::from_static("true"));
    }
    response
}

async fn grant_or_adjust(
    state: &AppState,
    client: &crate::auth::ClientInfo,
    actor: &str,
    body: GrantBody,
    signed: bool,
) -> Result<Response, ApiError> {
    let mut problems = Vec::new();
    let amount = if signed {
        parse_signed_amount(body.amount.as_ref(), &mut problems)
    } else {
        parse_amount(body.amount.as_ref(), "amount", &mut problems)
    };
    let user_id = body.user_id.clone().filter(|u| !u.is_empty());
    if user_id.is_none() {
        problems.push("userId is required".into());
    }
    if body.pool.is_none() {
        problems.push("pool is required (free or paid)".into());
    }
    let reason = reason_of(body.reason.as_deref(), &mut problems);
    let request = serde_json::json!({"userId": body.user_id, "amount": body.amount, "pool": body.pool, "reason": reason});
    let key = key_of(body.idempotency_key.as_deref(), &request, &mut problems);
    let (Some(user_id), Some(amount), Some(pool), Some(key)) = (user_id, amount, body.pool, key) else {
        return Err(ApiError::validation(problems));
    };
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let operation = if signed {
        AdminOperation::Adjust { user_id, pool, amount }
    } else {
        AdminOperation::Grant { user_id, pool, amount }
    };
    Ok(admin_answer(state.credits().admin(actor, operation, reason, Some(key), client).await?))
}

/// Grant credits to a user (free pool: `bonus`; paid pool: `adjustment`).
#[utoipa::path(post, path = "/api/v1/admin/credits/grant", tag = "admin", security(("bearer" = [])), request_body = GrantBody,
    responses(
        (status = 201, body = AdminBody),
        (status = 400, description = "`VALIDATION_FAILED`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: not an admin or service token", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such user", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_KEY_REUSED`: this operator used the key for another operation, target or body", body = ErrorBody),
    ))]
async fn grant(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<Response, ApiError> {
    require_operator(claims.role)?;
    grant_or_adjust(&state, &client, &claims.sub, body, false).await
}

/// Correct a user's pool by a signed amount (never below zero).
#[utoipa::path(post, path = "/api/v1/admin/credits/adjust", tag = "admin", security(("bearer" = [])), request_body = GrantBody,
    responses(
        (status = 201, body = AdminBody),
        (status = 400, description = "`VALIDATION_FAILED`, `INSUFFICIENT_CREDITS` (the pool would go below zero)", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_KEY_REUSED`: this operator used the key for another operation, target or body", body = ErrorBody),
    ))]
async fn adjust(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<Response, ApiError> {
    require_operator(claims.role)?;
    grant_or_adjust(&state, &client, &claims.sub, body, true).await
}

/// Give back (part of) a spend to the pools it came from, paid first.
#[utoipa::path(post, path = "/api/v1/admin/credits/refund", tag = "admin", security(("bearer" = [])), request_body = RefundBody,
    responses(
        (status = 201, body = AdminBody),
        (status = 400, description = "`VALIDATION_FAILED`, `REFUND_EXCEEDS_SPEND`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no refundable spend with that id", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_KEY_REUSED`: this operator used the key for another operation, target or body", body = ErrorBody),
    ))]
async fn refund(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<Response, ApiError> {
    require_operator(claims.role)?;
    let mut problems = Vec::new();
    let amount = body.amount.as_ref().and_then(|a| parse_amount(Some(a), "amount", &mut problems));
    let transaction_id = body.transaction_id.clone().filter(|t| !t.is_empty());
    if transaction_id.is_none() {
        problems.push("transactionId is required".into());
    }
    let reason = reason_of(body.reason.as_deref(), &mut problems);
    let request =
        serde_json::json!({"transactionId": body.transaction_id, "amount": body.amount, "reason": reason});
    let key = key_of(body.idempotency_key.as_deref(), &request, &mut problems);
    let (Some(transaction_id), Some(key)) = (transaction_id, key) else {
        return Err(ApiError::validation(problems));
    };
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let operation = AdminOperation::Refund { transaction_id, amount };
    Ok(admin_answer(state.credits().admin(&claims.sub, operation, reason, Some(key), &client).await?))
}
