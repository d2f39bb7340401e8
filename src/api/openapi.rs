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
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "auth", description = "Registration, login, tokens and keys"),
        (name = "sessions", description = "The caller's sessions and security events"),
        (name = "credits", description = "The caller's credits: balance, spends, history"),
        (name = "admin", description = "Operators' routes: credit operations (admin and service tokens), reads of a user (admin and auditor tokens; service: a user's transactions), the ledger's trial balance (admin and auditor) and usage figures (admin and auditor; service: its own app)"),
        (name = "audit", description = "What auditors use: the event log (admin and auditor tokens) and the audit keys"),
    ),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme (an EdDSA access token).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
    }
}
