//! Paid credits: `/api/v1/credits/packages`, `/purchase`, `/purchases`, Stripe's webhook at
//! `/api/v1/webhooks/stripe`, and the operators' `/api/v1/admin/credits/purchases`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::Allowed;
use super::access::family::AdminRead;
use super::credits::Replayed;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{ApiJson, Authenticated, Client, IdempotencyKeyHeader, Page};
use crate::credits::purchases::{PaymentFailure, PurchaseService, Started};
use crate::domain::CreditPackage;
use crate::projections::purchases::{PurchaseFilter, PurchaseRow, UnknownIntent};

/// The purchase routes, the webhook and the operators' list.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(packages))
        .routes(routes!(purchase))
        .routes(routes!(purchases))
        .routes(routes!(purchase_by_id))
        .routes(routes!(stripe_webhook))
        .routes(routes!(admin_purchases))
}

impl From<PaymentFailure> for ApiError {
    fn from(failure: PaymentFailure) -> Self {
        match failure {
            PaymentFailure::NotConfigured => ApiError::code(ErrorCode::PaymentsNotConfigured),
            PaymentFailure::ProviderUnavailable => ApiError::code(ErrorCode::PaymentProviderUnavailable),
            PaymentFailure::NotFound => ApiError::code(ErrorCode::NotFound),
            PaymentFailure::KeyReused => ApiError::code(ErrorCode::IdempotencyKeyReused),
            PaymentFailure::InvalidSignature(_) => ApiError::code(ErrorCode::InvalidSignature),
            PaymentFailure::InvalidEvent => {
                ApiError::validation(vec!["the body is not a Stripe event".to_owned()])
            }
            PaymentFailure::Conflict => ApiError::code(ErrorCode::Conflict),
            PaymentFailure::Internal(cause) => ApiError::internal(format!("{cause:#}")),
        }
    }
}

fn service(state: &AppState) -> Result<&PurchaseService, ApiError> {
    state.purchases().map(AsRef::as_ref).ok_or_else(|| ApiError::code(ErrorCode::PaymentsNotConfigured))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A package of paid credits.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageBody {
    pub id: String,
    pub name: String,
    pub description: String,
    pub credits: i64,
    pub price_euro_cents: i64,
    /// Always `eur`.
    pub currency: String,
    pub active: bool,
    pub sort_order: i64,
}

impl From<CreditPackage> for PackageBody {
    fn from(p: CreditPackage) -> Self {
        Self {
            id: p.id,
            name: p.name,
            description: p.description,
            credits: p.credits.get(),
            price_euro_cents: p.price_euro_cents,
            currency: p.currency,
            active: p.active,
            sort_order: p.sort_order,
        }
    }
}

/// `POST /credits/purchase` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurchaseRequest {
    pub package_id: String,
}

/// A started purchase: what the client confirms the payment with.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartedBody {
    pub purchase_id: String,
    /// The PaymentIntent's client secret, for Stripe.js.
    pub client_secret: String,
    /// In cents, as Stripe counts it.
    pub amount: i64,
    pub currency: String,
    pub credits: i64,
    /// Always `pending`.
    pub status: &'static str,
}

impl From<Started> for StartedBody {
    fn from(s: Started) -> Self {
        Self {
            purchase_id: s.purchase_id,
            client_secret: s.client_secret,
            amount: s.amount,
            currency: s.currency,
            credits: s.credits.get(),
            status: "pending",
        }
    }
}

/// A purchase.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PurchaseBody {
    pub id: String,
    pub package_id: String,
    pub credits: i64,
    pub price_euro_cents: i64,
    pub currency: String,
    /// `pending`, `completed`, `failed`, `refunded` or `partially_refunded`.
    pub status: String,
    /// Why it failed: `provider_unavailable`, `payment_failed`, `canceled` or `expired`.
    pub failure_reason: Option<String>,
    pub stripe_payment_intent_id: Option<String>,
    /// Credits taken back by refunds and disputes.
    pub credits_refunded: i64,
    pub created_at: String,
    pub completed_at: Option<String>,
}

impl From<PurchaseRow> for PurchaseBody {
    fn from(r: PurchaseRow) -> Self {
        Self {
            id: r.id,
            package_id: r.package_id,
            credits: r.credits,
            price_euro_cents: r.price_euro_cents,
            currency: r.currency,
            status: r.status,
            failure_reason: r.failure_reason,
            stripe_payment_intent_id: r.stripe_payment_intent_id,
            credits_refunded: r.credits_refunded,
            created_at: time(r.created_at),
            completed_at: r.completed_at.map(time),
        }
    }
}

/// The active packages, by `sortOrder` (with or without a token).
#[utoipa::path(get, path = "/api/v1/credits/packages", tag = "credits",
    responses((status = 200, body = [PackageBody])))]
async fn packages(State(state): State<AppState>) -> Result<Json<Vec<PackageBody>>, ApiError> {
    Ok(Json(service(&state)?.packages().into_iter().map(PackageBody::from).collect()))
}

/// Start a purchase: a pending purchase and a Stripe PaymentIntent. Idempotent per user
/// under `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/credits/purchase", tag = "credits", security(("bearer" = [])),
    request_body = PurchaseRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry answers the same purchase and client secret")),
    responses(
        (status = 201, body = StartedBody),
        (status = 400, description = "`VALIDATION_FAILED`", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no active package with that id", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_KEY_REUSED`: the key was used for another package", body = ErrorBody),
        (status = 502, description = "`PAYMENT_PROVIDER_UNAVAILABLE`: Stripe unreachable, slow or refusing; the purchase is failed", body = ErrorBody),
        (status = 503, description = "`PAYMENTS_NOT_CONFIGURED`: no `STRIPE_SECRET_KEY`", body = ErrorBody),
    ))]
async fn purchase(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    ApiJson(body): ApiJson<PurchaseRequest>,
) -> Result<(StatusCode, Replayed, Json<StartedBody>), ApiError> {
    let mut problems = Vec::new();
    if body.package_id.is_empty() || body.package_id.len() > 64 {
        problems.push("packageId must be 1 to 64 characters".to_owned());
    }
    if let Some(key) = &key
        && (key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()))
    {
        problems.push("Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned());
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let started = service(&state)?.purchase(&claims.sub, &body.package_id, key.as_deref(), &client).await?;
    Ok((StatusCode::CREATED, Replayed(started.replayed), Json(started.into())))
}

/// The caller's purchases, newest first.
#[utoipa::path(get, path = "/api/v1/credits/purchases", tag = "credits", security(("bearer" = [])),
    params(
        ("limit" = Option<i64>, Query, description = "1 to 100, default 50"),
        ("offset" = Option<i64>, Query, description = "0 or more, default 0"),
    ),
    responses((status = 200, body = [PurchaseBody]), (status = 400, description = "`VALIDATION_FAILED`", body = ErrorBody)))]
async fn purchases(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    page: Page,
) -> Result<Json<Vec<PurchaseBody>>, ApiError> {
    let rows = service(&state)?.purchases(&claims.sub, page.limit, page.offset).await?;
    Ok(Json(rows.into_iter().map(PurchaseBody::from).collect()))
}

/// One of the caller's purchases (another user's answers 404).
#[utoipa::path(get, path = "/api/v1/credits/purchases/{id}", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "The purchase id")),
    responses((status = 200, body = PurchaseBody), (status = 404, description = "`NOT_FOUND`", body = ErrorBody)))]
async fn purchase_by_id(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<PurchaseBody>, ApiError> {
    Ok(Json(service(&state)?.purchase_of(&claims.sub, &id).await?.into()))
}

/// The webhook's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceivedBody {
    pub received: bool,
    /// `applied`, `no_change`, `mismatch`, `unknown_payment_intent` or `ignored`.
    pub outcome: &'static str,
}

/// Stripe's webhook: the signature is checked over the raw body first; 200 only after the
/// event and its effect are committed (a 5xx lets Stripe retry, and a retry converges).
#[utoipa::path(post, path = "/api/v1/webhooks/stripe", tag = "credits",
    params(("Stripe-Signature" = String, Header, description = "`t=<unix>,v1=<hex>[,v1=...]`")),
    request_body(content = String, description = "A Stripe event, signed", content_type = "application/json"),
    responses(
        (status = 200, body = ReceivedBody),
        (status = 400, description = "`INVALID_SIGNATURE`; `VALIDATION_FAILED` for a signed body that is not a Stripe event", body = ErrorBody),
        (status = 503, description = "`PAYMENTS_NOT_CONFIGURED`: no `STRIPE_WEBHOOK_SECRET`", body = ErrorBody),
    ))]
async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ReceivedBody>, ApiError> {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let outcome = service(&state)?.webhook(&body, signature).await?;
    Ok(Json(ReceivedBody { received: true, outcome: outcome.as_str() }))
}

/// Filters of the operators' purchase list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminQuery {
    status: Option<String>,
    user_id: Option<String>,
}

/// A webhook for a PaymentIntent that is not one of ours.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnknownIntentBody {
    pub stripe_event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub stripe_payment_intent_id: Option<String>,
    pub received_at: String,
}

impl From<UnknownIntent> for UnknownIntentBody {
    fn from(u: UnknownIntent) -> Self {
        Self {
            stripe_event_id: u.stripe_event_id,
            event_type: u.event_type,
            stripe_payment_intent_id: u.payment_intent_id,
            received_at: time(u.received_at),
        }
    }
}

/// A purchase as operators see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminPurchaseBody {
    #[serde(flatten)]
    pub purchase: PurchaseBody,
    pub user_id: String,
    /// A success arrived with another amount or currency: nothing was granted.
    pub needs_review: bool,
}

/// The operators' list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminPurchasesBody {
    pub purchases: Vec<AdminPurchaseBody>,
    /// With `status=needs_review`: webhooks for unknown PaymentIntents.
    pub unknown_payment_intents: Vec<UnknownIntentBody>,
}

const STATUSES: [&str; 6] =
    ["pending", "completed", "failed", "refunded", "partially_refunded", "needs_review"];

/// Purchases, newest first; `status=needs_review` lists the mismatched ones and the
/// webhooks for unknown PaymentIntents.
#[utoipa::path(get, path = "/api/v1/admin/credits/purchases", tag = "admin", security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "pending, completed, failed, refunded, partially_refunded or needs_review"),
        ("userId" = Option<String>, Query, description = "One user's purchases"),
        ("limit" = Option<i64>, Query, description = "1 to 100, default 50"),
        ("offset" = Option<i64>, Query, description = "0 or more, default 0"),
    ),
    responses(
        (status = 200, body = AdminPurchasesBody),
        (status = 400, description = "`VALIDATION_FAILED`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the role is not admin or auditor", body = ErrorBody),
    ))]
async fn admin_purchases(
    State(state): State<AppState>,
    _reader: Allowed<AdminRead>,
    page: Page,
    Query(query): Query<AdminQuery>,
) -> Result<Json<AdminPurchasesBody>, ApiError> {
    if let Some(status) = &query.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::validation(vec![format!("status must be one of {}", STATUSES.join(", "))]));
    }
    let filter = PurchaseFilter {
        user_id: query.user_id,
        status: query.status,
        limit: page.limit,
        offset: page.offset,
    };
    let (rows, unknown) = service(&state)?.admin_list(&filter).await?;
    let purchases = rows
        .into_iter()
        .map(|row| {
            let (user_id, needs_review) = (row.user_id.clone(), row.needs_review);
            AdminPurchaseBody { purchase: row.into(), user_id, needs_review }
        })
        .collect();
    Ok(Json(AdminPurchasesBody {
        purchases,
        unknown_payment_intents: unknown.into_iter().map(UnknownIntentBody::from).collect(),
    }))
}
