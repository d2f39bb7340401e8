//! `/api/v1/auth`: registration, login, refresh, logout, validation and the JWKS.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{ApiJson, Authenticated, Client};
use super::limits::enforce;
use crate::auth::input::{LoginBody, RefreshBody, RefreshRequest, RegisterBody, ValidateBody};
use crate::auth::{AuthError, LoginInput, Registered, Registration, SignedIn};
use crate::events::auth::Role;
use crate::security::keys::JWKS_MAX_AGE_SECS;
use crate::security::rate_limit::Rule;
use crate::security::tokens::{AccessClaims, TokenError};

/// The sign-in routes: register, login, refresh, logout, validate and the JWKS.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(validate))
        .routes(routes!(jwks))
        .routes(routes!(well_known_jwks))
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Validation(messages) => ApiError::validation(messages),
            AuthError::EmailTaken => ApiError::code(ErrorCode::EmailTaken),
            AuthError::InvalidCredentials => ApiError::code(ErrorCode::InvalidCredentials),
            AuthError::InvalidRefreshToken => ApiError::code(ErrorCode::InvalidRefreshToken),
            AuthError::Unauthorized(_) => ApiError::code(ErrorCode::Unauthorized),
            AuthError::NotFound => ApiError::code(ErrorCode::NotFound),
            AuthError::AlreadyErased => ApiError::code(ErrorCode::AlreadyErased),
            AuthError::Busy => {
                ApiError::new(ErrorCode::ServiceUnavailable, "Too many sign-ins at once; retry shortly")
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
            AuthError::Conflict => ApiError::code(ErrorCode::Conflict),
            AuthError::EmailNotVerified => ApiError::code(ErrorCode::EmailNotVerified),
            AuthError::InvalidResetToken => ApiError::code(ErrorCode::InvalidResetToken),
            AuthError::InvalidVerificationToken => ApiError::code(ErrorCode::InvalidVerificationToken),
            AuthError::InvalidCurrentPassword => ApiError::code(ErrorCode::InvalidCurrentPassword),
            AuthError::Throttled { retry_after_secs } => {
                let message = format!(
                    "Too many sign-in attempts for this account; wait {retry_after_secs} s and try again"
                );
                let seconds = HeaderValue::from(retry_after_secs.max(1));
                ApiError::new(ErrorCode::LoginThrottled, message).with_header(header::RETRY_AFTER, seconds)
            }
            AuthError::Internal(cause) => ApiError::internal(format!("{cause:#}")),
        }
    }
}

/// The caching headers of an answer that carries tokens: `Cache-Control: no-store` and
/// `Pragma: no-cache` (RFC 6749 §5.1), so that no browser or proxy keeps a copy.
struct NoStore;

impl axum::response::IntoResponseParts for NoStore {
    type Error = std::convert::Infallible;

    fn into_response_parts(
        self,
        mut parts: axum::response::ResponseParts,
    ) -> Result<axum::response::ResponseParts, Self::Error> {
        let headers = parts.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        Ok(parts)
    }
}

/// The user in sign-in answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserBody {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub email_verified: bool,
    /// Present in the registration answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

impl UserBody {
    /// The user part of an answer; `created_at` only where the answer promises it.
    pub fn of(user: crate::auth::UserView, created_at: Option<String>) -> Self {
        Self {
            id: user.id,
            email: user.email,
            name: user.name,
            role: user.role,
            email_verified: user.email_verified,
            created_at,
        }
    }
}

/// The registration answer when the address must be verified before signing in.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnverifiedBody {
    pub user: UserBody,
    /// Always true: a verification link was mailed; sign in after following it.
    pub email_verification_required: bool,
}

/// The answer of `POST /auth/register`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RegisterAnswer {
    SignedIn(TokensBody),
    VerificationRequired(UnverifiedBody),
}

/// A sign-in answer (register, login, refresh).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokensBody {
    pub user: UserBody,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires (900).
    pub expires_in: i64,
    /// Always `Bearer`.
    pub token_type: &'static str,
}

impl TokensBody {
    fn of(signed: SignedIn, with_created_at: bool) -> Self {
        let created_at = signed
            .user
            .created_at
            .filter(|_| with_created_at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        Self {
            user: UserBody::of(signed.user, created_at),
            access_token: signed.access_token,
            refresh_token: signed.refresh_token,
            expires_in: signed.expires_in,
            token_type: "Bearer",
        }
    }
}

impl From<Registered> for RegisterAnswer {
    fn from(registered: Registered) -> Self {
        match registered {
            Registered::SignedIn(signed) => Self::SignedIn(TokensBody::of(signed, true)),
            Registered::VerificationRequired(user) => {
                let created_at =
                    user.created_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                Self::VerificationRequired(UnverifiedBody {
                    user: UserBody::of(user, created_at),
                    email_verification_required: true,
                })
            }
        }
    }
}

/// `{"success":true,"message":...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuccessBody {
    pub success: bool,
    pub message: &'static str,
}

/// The answer of `/auth/validate`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ValidateAnswer {
    Valid { valid: bool, payload: AccessClaims },
    Invalid { valid: bool, error: String },
}

/// Register and sign in at once.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterBody,
    responses(
        (status = 201, description = "Registered and signed in (or, with REQUIRE_VERIFIED_EMAIL, registered without tokens)", body = RegisterAnswer),
        (status = 400, description = "`VALIDATION_FAILED`, `INVALID_JSON`", body = ErrorBody),
        (status = 409, description = "`EMAIL_TAKEN`: the address already has an account", body = ErrorBody),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: hashing queue full (`Retry-After`)", body = ErrorBody),
    ))]
async fn register(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<(StatusCode, NoStore, Json<RegisterAnswer>), ApiError> {
    let input = Registration::try_from(body).map_err(ApiError::validation)?;
    let registered = state.auth().register(input, &client).await?;
    Ok((StatusCode::CREATED, NoStore, Json(registered.into())))
}

/// Sign in with e-mail and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginBody,
    responses(
        (status = 200, description = "Signed in", body = TokensBody),
        (status = 400, description = "`VALIDATION_FAILED`, `INVALID_JSON`", body = ErrorBody),
        (status = 401, description = "`INVALID_CREDENTIALS` (unknown e-mail, wrong password or disabled account alike)", body = ErrorBody),
        (status = 403, description = "`EMAIL_NOT_VERIFIED` (with REQUIRE_VERIFIED_EMAIL)", body = ErrorBody),
        (status = 429, description = "`LOGIN_THROTTLED`: refused without a password check (another attempt in flight, too soon after a failure, or locked; `Retry-After`), alike for every address; `RATE_LIMITED` (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: hashing queue full (`Retry-After`)", body = ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<(NoStore, Json<TokensBody>), ApiError> {
    let input = LoginInput::try_from(body).map_err(ApiError::validation)?;
    let subject = format!("{}|{}", client.ip.as_deref().unwrap_or_default(), input.email.as_str());
    enforce(&state, Rule::LoginIpEmail, &subject, None, &client).await?;
    let signed = state.auth().login(input, &client).await?;
    Ok((NoStore, Json(TokensBody::of(signed, false))))
}

/// Spend a refresh token for a new pair.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses(
        (status = 200, description = "A new access token and refresh token", body = TokensBody),
        (status = 400, description = "`VALIDATION_FAILED`", body = ErrorBody),
        (status = 401, description = "`INVALID_REFRESH_TOKEN`: unknown, expired, spent (the session is then revoked) or revoked", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED` per client address or per session (`Retry-After`)", body = ErrorBody),
    ))]
async fn refresh(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<(NoStore, Json<TokensBody>), ApiError> {
    let request = RefreshRequest::try_from(body).map_err(ApiError::validation)?;
    if let Some(session_id) = request.session_id() {
        enforce(&state, Rule::Refresh, &session_id, None, &client).await?;
    }
    let signed = state.auth().refresh(&request.token, &client).await?;
    Ok((NoStore, Json(TokensBody::of(signed, false))))
}

/// Revoke the session of the presented access token.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The session is revoked", body = SuccessBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
    ))]
async fn logout(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
) -> Result<Json<SuccessBody>, ApiError> {
    state.auth().logout(&claims, &client).await?;
    Ok(Json(SuccessBody { success: true, message: "Logged out successfully" }))
}

/// Check an access token: signature, algorithm, key, expiry, issuer, audience, and that
/// its session is not revoked and its user not disabled.
#[utoipa::path(post, path = "/api/v1/auth/validate", tag = "auth", request_body = ValidateBody,
    responses((status = 200, description = "`{valid:true,payload}` or `{valid:false,error}`", body = ValidateAnswer)))]
async fn validate(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ValidateBody>,
) -> Json<ValidateAnswer> {
    let Some(token) = body.into_token() else {
        return Json(ValidateAnswer::Invalid { valid: false, error: "token missing".into() });
    };
    Json(match state.auth().authenticate(&token).await {
        Ok(payload) => ValidateAnswer::Valid { valid: true, payload },
        Err(error) => ValidateAnswer::Invalid { valid: false, error: reason(error) },
    })
}

fn reason(error: TokenError) -> String {
    error.to_string()
}

/// The public signing keys (JWKS).
#[utoipa::path(get, path = "/api/v1/auth/jwks", tag = "auth",
    responses((status = 200, description = "The signing keys, cacheable for 5 minutes", body = super::openapi::Jwks)))]
async fn jwks(State(state): State<AppState>) -> Response {
    jwks_response(&state)
}

/// The public signing keys at the well-known path.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "The same document as `/api/v1/auth/jwks`", body = super::openapi::Jwks)))]
async fn well_known_jwks(State(state): State<AppState>) -> Response {
    jwks_response(&state)
}

fn jwks_response(state: &AppState) -> Response {
    let keys = state.auth().tokens().keys().keys();
    let cache = format!("public, max-age={JWKS_MAX_AGE_SECS}");
    let cache = HeaderValue::from_str(&cache).unwrap_or(HeaderValue::from_static("public, max-age=300"));
    ([(header::CACHE_CONTROL, cache)], Json(keys.jwks.clone())).into_response()
}
