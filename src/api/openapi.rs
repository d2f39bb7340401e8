//! The OpenAPI 3 document, served at `/api/v1/openapi.json`. Paths come from the
//! `#[utoipa::path]` annotations of the handlers, registered with their routes.

use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorCode, Message};

/// The document's fixed parts; routes add their paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mana-core-auth",
        description = "Central authentication and credit service. Every error uses the `ErrorBody` shape.",
    ),
    components(schemas(ErrorBody, ErrorCode, Message)),
    tags((name = "health", description = "Liveness, readiness and metrics")),
)]
pub struct ApiDoc;
