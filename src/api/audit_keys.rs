//! `GET /api/v1/audit/keys`: the public audit keys (JWKS) that check the log's seals,
//! every one there has been. Public and cacheable, like the signing keys' JWKS.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::security::audit_keys::AUDIT_JWKS_MAX_AGE_SECS;

/// The audit-key route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(audit_keys))
}

/// The public audit keys (JWKS): every key that ever signed a seal, retired ones included.
#[utoipa::path(get, path = "/api/v1/audit/keys", tag = "audit",
    responses((status = 200, description = "`{keys:[{kty:\"OKP\",crv:\"Ed25519\",x,kid,use:\"sig\",alg:\"EdDSA\"}]}`, cacheable for 5 minutes", body = super::openapi::Jwks)))]
async fn audit_keys(State(state): State<AppState>) -> Response {
    let cache = format!("public, max-age={AUDIT_JWKS_MAX_AGE_SECS}");
    let cache = HeaderValue::from_str(&cache).unwrap_or(HeaderValue::from_static("public, max-age=300"));
    ([(header::CACHE_CONTROL, cache)], Json(state.audit_keys().jwks())).into_response()
}
