//! Erasure routes (docs/PRIVACY.md): `DELETE /api/v1/auth/account` for the account's
//! owner (with the password), `POST /api/v1/admin/users/{userId}/erase` for role `admin`
//! (the user administration family).

use axum::Json;
use axum::extract::{Path, State};
use chrono::SecondsFormat;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::Allowed;
use super::access::family::UserAdministration;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Authenticated, Client};
use crate::auth::erasure::{EraseTarget, Erased};
use crate::auth::input::{DeleteAccountBody, Password};

/// The erasure routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(delete_account)).routes(routes!(erase_user))
}

/// Something kept after an erasure, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeptBody {
    pub data: &'static str,
    pub reason: &'static str,
}

/// What an erasure removed and what it kept.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureBody {
    pub erased: bool,
    pub user_id: String,
    pub erased_at: String,
    /// What is gone for good (the key that could read it is destroyed).
    pub removed: Vec<&'static str>,
    pub kept: Vec<KeptBody>,
    /// Events written before sealing existed whose plaintext the erasure scrubbed.
    pub plaintext_events_scrubbed: u64,
}

const REMOVED: [&str; 7] = [
    "e-mail address (it may register again, as a new user)",
    "name",
    "every password hash, reset and verification token hash",
    "IP addresses, user agents and devices of every session and sign-in attempt",
    "the free text of spends (descriptions, metadata, idempotency keys)",
    "messages queued or delivered to the address",
    "every session (revoked) and the address's sign-in protection state",
];

fn kept() -> Vec<KeptBody> {
    vec![
        KeptBody {
            data: "credit history: amounts, types, apps and times; the balance",
            reason: "bookkeeping: the ledger must balance, and a later refund of a purchase still applies",
        },
        KeptBody { data: "security events: their types and times", reason: "the audit trail of the service" },
        KeptBody {
            data: "the event log's hashes and keyed commitments",
            reason: "tamper evidence; without the destroyed key they reveal nothing",
        },
        KeptBody {
            data: "the user id",
            reason: "the books and other apps refer to it; it names nobody once the rest is gone",
        },
    ]
}

impl From<Erased> for ErasureBody {
    fn from(erased: Erased) -> Self {
        Self {
            erased: true,
            user_id: erased.user_id,
            erased_at: erased.erased_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            removed: REMOVED.to_vec(),
            kept: kept(),
            plaintext_events_scrubbed: erased.scrubbed.events,
        }
    }
}

/// Erase the caller's account (GDPR Art. 17): their personal data is destroyed, their
/// sessions revoked, their address released; the credit history keeps its amounts.
#[utoipa::path(delete, path = "/api/v1/auth/account", tag = "auth", security(("bearer" = [])),
    request_body = DeleteAccountBody,
    responses(
        (status = 200, description = "Erased; the body says what was kept and why", body = ErasureBody),
        (status = 400, description = "`VALIDATION_FAILED`, `INVALID_CURRENT_PASSWORD` (nothing changed)", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 429, description = "`LOGIN_THROTTLED`: too many wrong passwords on this session", body = ErrorBody),
    ))]
async fn delete_account(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
    ApiJson(body): ApiJson<DeleteAccountBody>,
) -> Result<Json<ErasureBody>, ApiError> {
    let password = Password::try_from(body).map_err(ApiError::validation)?;
    let erased = state.auth().erase_own_account(&claims, password, &client).await?;
    Ok(Json(erased.into()))
}

/// Erase a user (role `admin`).
#[utoipa::path(post, path = "/api/v1/admin/users/{userId}/erase", tag = "admin", security(("bearer" = [])),
    params(("userId" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "Erased; the body says what was kept and why", body = ErasureBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: not an admin token", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such user", body = ErrorBody),
        (status = 409, description = "`ALREADY_ERASED`", body = ErrorBody),
    ))]
async fn erase_user(
    State(state): State<AppState>,
    Client(client): Client,
    admin: Allowed<UserAdministration>,
    Path(user_id): Path<String>,
) -> Result<Json<ErasureBody>, ApiError> {
    let erased = state.auth().erase_user(EraseTarget::Id(&user_id), &client, &admin.claims.sub).await?;
    Ok(Json(erased.into()))
}
