//! The OpenAPI 3 document, served at `/api/v1/openapi.json`. Paths come from the
//! `#[utoipa::path]` annotations of the handlers, registered with their routes; [`finish`]
//! then adds what every operation shares (the statuses the middleware answers, the
//! security of public operations, the server), so a new route is documented exactly
//! without repeating them.

use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder, ServerBuilder};

use super::error::{ErrorBody, ErrorCode, Message};

/// The document's fixed parts; routes add their paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mana-core-auth",
        description = "Central authentication and credit service. Every error uses the `ErrorBody` shape.",
    ),
    components(schemas(ErrorBody, ErrorCode, Message, Jwks, Jwk)),
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

/// A JSON Web Key Set (RFC 7517), as `/auth/jwks` and `/audit/keys` publish it.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "documents the shape of a set the key store serialises")]
pub struct Jwks {
    keys: Vec<Jwk>,
}

/// One public Ed25519 key (RFC 8037).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "documents the shape of a key the key store serialises")]
pub struct Jwk {
    /// Always `OKP`.
    #[schema(example = "OKP")]
    kty: String,
    /// Always `Ed25519`.
    #[schema(example = "Ed25519")]
    crv: String,
    /// The public key, base64url without padding.
    x: String,
    /// The key id: its RFC 7638 thumbprint.
    kid: String,
    /// Always `EdDSA`.
    #[schema(example = "EdDSA")]
    alg: String,
    /// Always `sig`.
    #[schema(rename = "use", example = "sig")]
    key_use: String,
}

/// Completes the document generated from the routes with what the middleware adds to
/// every operation, so that the document lists every status a client can get:
/// - `servers` (the paths are absolute, so the server is the origin itself);
/// - `security: []` on public operations (the others name `bearer`);
/// - 401 on operations that need a token;
/// - 400, 413 and 415 on operations that read a JSON body;
/// - 429 on operations the rate limiter counts (`rate_limited` says which);
/// - 503 on every operation (request timeout, database unavailable).
pub fn finish(doc: &mut utoipa::openapi::OpenApi, rate_limited: impl Fn(&str) -> bool) {
    doc.servers = Some(vec![ServerBuilder::new().url("/").description(Some("This server")).build()]);
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            finish_operation(operation, rate_limited(path));
        }
    }
}

fn finish_operation(operation: &mut Operation, rate_limited: bool) {
    let security = operation.security.get_or_insert_with(Vec::new);
    let needs_token = security.iter().any(|requirement| *requirement != SecurityRequirement::default());
    let reads_body = operation.request_body.is_some();
    let mut add = |status: u16, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(error_response(description, status == 429)));
    };
    if needs_token {
        add(
            401,
            "`UNAUTHORIZED`: no token, or an invalid, expired or revoked one (`WWW-Authenticate: Bearer`)",
        );
    }
    if reads_body {
        add(
            400,
            "`VALIDATION_FAILED` (the body is not a JSON object, or a field is missing or wrong), `INVALID_JSON`",
        );
        add(413, "`PAYLOAD_TOO_LARGE`: the body is over `BODY_LIMIT_BYTES`");
        add(415, "`UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`");
    }
    if rate_limited {
        add(429, "`RATE_LIMITED` (`Retry-After`, `RateLimit-*` headers)");
    }
    add(503, "`SERVICE_UNAVAILABLE`: the request timed out or a dependency is unavailable");
}

fn error_response(description: &str, retry_after: bool) -> Response {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    let mut response = ResponseBuilder::new().description(description).content("application/json", content);
    if retry_after {
        let seconds = utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .minimum(Some(1))
            .build();
        let header = utoipa::openapi::HeaderBuilder::new()
            .schema(seconds)
            .description(Some("Seconds to wait before trying again"))
            .build();
        response = response.header("Retry-After", header);
    }
    response.build()
}
