//! The HTTP API: the router, the middleware stack, the error type and extractors, and
//! one module per resource. Handlers only translate: extract, build a command, run it,
//! map the result.

pub mod access;
mod account;
mod admin;
mod admin_users;
mod audit;
mod audit_keys;
mod auth;
mod credits;
pub mod error;
pub mod extract;
mod health;
mod ledger;
mod limits;
pub mod middleware;
mod openapi;
mod passwords;
mod purchases;
mod sessions;
mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;

use error::{ApiError, ErrorCode};

pub use state::AppState;

pub use openapi::ApiDoc;

/// Every route of the service with its middleware, and the OpenAPI document built
/// from the same route definitions.
pub fn router(state: AppState) -> Router {
    let (routes, mut openapi) = api_routes().split_for_parts();
    openapi::finish(&mut openapi, limits::is_limited);
    let openapi = std::sync::Arc::new(openapi);
    let config = state.config();
    let envelope = axum::middleware::from_fn_with_state(state.clone(), middleware::envelope);
    let limiter = axum::middleware::from_fn_with_state(state.clone(), limits::rate_limit);
    let layers = ServiceBuilder::new()
        .layer(envelope)
        .layer(cors(&config.cors_origins))
        .layer(limiter)
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, config.request_timeout))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes));
    routes
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = openapi.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::code(ErrorCode::NotFound) })
        .method_not_allowed_fallback(|| async { ApiError::code(ErrorCode::MethodNotAllowed) })
        .layer(layers)
        .with_state(state)
}

/// The OpenAPI document the server publishes at `/api/v1/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut openapi) = api_routes().split_for_parts();
    openapi::finish(&mut openapi, limits::is_limited);
    openapi
}

/// The documented routes (everything but the OpenAPI document itself).
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(health::router())
        .merge(auth::router())
        .merge(sessions::router())
        .merge(passwords::router())
        .merge(credits::router())
        .merge(purchases::router())
        .merge(admin::router())
        .merge(admin_users::router())
        .merge(account::router())
        .merge(audit_keys::router())
        .merge(audit::router())
        .merge(ledger::router())
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-requested-with"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
            HeaderName::from_static("ratelimit-policy"),
            HeaderName::from_static("idempotent-replayed"),
            HeaderName::from_static(audit::NEXT_CURSOR),
        ])
        .max_age(std::time::Duration::from_secs(600))
}
