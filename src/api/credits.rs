//! `/api/v1/credits`: the caller's balance, spends and history.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponseParts, ResponseParts};
use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{ApiJson, Authenticated, Client, IdempotencyKeyHeader, Page};
use crate::credits::input::{SpendRequest, UseBody};
use crate::credits::{Balance, CreditFailure, Spent};
use crate::domain::Credits;
use crate::projections::ledger::Transaction;

/// The caller's credit routes: balance, spends and history.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(balance)).routes(routes!(use_credits)).routes(routes!(transactions))
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
    #[schema(value_type = i64)]
    pub balance: Credits,
    #[schema(value_type = i64)]
    pub free_credits_remaining: Credits,
    #[schema(value_type = i64)]
    pub total_earned: Credits,
    #[schema(value_type = i64)]
    pub total_spent: Credits,
    #[schema(value_type = i64)]
    pub daily_free_credits: Credits,
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
    #[schema(value_type = i64)]
    pub amount: Credits,
    #[schema(value_type = i64)]
    pub balance_before: Credits,
    #[schema(value_type = i64)]
    pub balance_after: Credits,
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
    #[schema(value_type = i64)]
    pub balance: Credits,
    #[schema(value_type = i64)]
    pub free_credits_remaining: Credits,
    #[schema(value_type = i64)]
    pub total_spent: Credits,
}

/// `POST /credits/use` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendBody {
    pub success: bool,
    pub transaction: TransactionBody,
    pub new_balance: NewBalanceBody,
}

/// `Idempotent-Replayed: true` on an answer that repeats a key's first answer.
pub struct Replayed(pub bool);

impl IntoResponseParts for Replayed {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if self.0 {
            parts
                .headers_mut()
                .insert(HeaderName::from_static("idempotent-replayed"), HeaderValue::from_static("true"));
        }
        Ok(parts)
    }
}

impl From<Balance> for BalanceBody {
    fn from(b: Balance) -> Self {
        Self {
            balance: b.paid,
            free_credits_remaining: b.free,
            total_earned: b.total_earned,
            total_spent: b.total_spent,
            daily_free_credits: b.daily_free_credits,
        }
    }
}

impl From<Spent> for SpendBody {
    fn from(spent: Spent) -> Self {
        Self {
            success: true,
            transaction: spent.transaction.into(),
            new_balance: NewBalanceBody {
                balance: spent.paid_after,
                free_credits_remaining: spent.free_after,
                total_spent: spent.total_spent_after,
            },
        }
    }
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
    Ok(Json(state.credits().balance(&claims.sub, &client).await?.into()))
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
    IdempotencyKeyHeader(header_key): IdempotencyKeyHeader,
    ApiJson(body): ApiJson<UseBody>,
) -> Result<(StatusCode, Replayed, Json<SpendBody>), ApiError> {
    let request = SpendRequest::try_from((body, header_key.as_deref())).map_err(ApiError::validation)?;
    let spent = state.credits().spend(&claims.sub, request, &client).await?;
    Ok((StatusCode::CREATED, Replayed(spent.replayed), Json(spent.into())))
}

/// The caller's transactions, newest first in the order the account applied them: each
/// row's `balanceBefore` is the next row's `balanceAfter`.
#[utoipa::path(get, path = "/api/v1/credits/transactions", tag = "credits", security(("bearer" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 50"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 2_147_483_647, description = "0 or more, default 0"),
    ),
    responses(
        (status = 200, body = [TransactionBody]),
        (status = 400, description = "`VALIDATION_FAILED`", body = ErrorBody),
    ))]
async fn transactions(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    page: Page,
) -> Result<Json<Vec<TransactionBody>>, ApiError> {
    let rows = state.credits().transactions(&claims.sub, page.limit, page.offset).await?;
    Ok(Json(rows.into_iter().map(TransactionBody::from).collect()))
}
