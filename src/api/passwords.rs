//! `/api/v1/auth`: password change and reset, e-mail verification.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::SuccessBody;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Authenticated, Client};
use super::limits::enforce;
use crate::auth::input::{
    ChangePasswordBody, EmailVerification, ForgotPasswordBody, PasswordChange, PasswordReset,
    PasswordResetRequest, ResetPasswordBody, VerifyEmailBody,
};
use crate::security::rate_limit::Rule;

/// The password and e-mail verification routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(change_password))
        .routes(routes!(forgot_password))
        .routes(routes!(reset_password))
        .routes(routes!(verify_email))
        .routes(routes!(resend_verification))
}

/// Change the caller's password; every other session is revoked.
#[utoipa::path(post, path = "/api/v1/auth/change-password", tag = "auth", security(("bearer" = [])),
    request_body = ChangePasswordBody,
    responses(
        (status = 200, description = "Changed; other sessions revoked", body = SuccessBody),
        (status = 400, description = "`VALIDATION_FAILED`, `INVALID_CURRENT_PASSWORD`", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
    ))]
async fn change_password(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
    ApiJson(body): ApiJson<ChangePasswordBody>,
) -> Result<Json<SuccessBody>, ApiError> {
    let PasswordChange { current, new } = body.try_into().map_err(ApiError::validation)?;
    state.auth().change_password(&claims, current, new, &client).await?;
    Ok(Json(SuccessBody { success: true, message: "Password changed successfully" }))
}

/// Ask for a password-reset link. The answer is the same whether or not the address has
/// an account.
#[utoipa::path(post, path = "/api/v1/auth/forgot-password", tag = "auth", request_body = ForgotPasswordBody,
    responses(
        (status = 200, description = "Always the same answer", body = SuccessBody),
        (status = 400, description = "`VALIDATION_FAILED` (malformed address, disallowed redirectTo)", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`", body = ErrorBody),
    ))]
async fn forgot_password(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<ForgotPasswordBody>,
) -> Result<Json<SuccessBody>, ApiError> {
    let PasswordResetRequest { email, redirect_to } = body.try_into().map_err(ApiError::validation)?;
    enforce(&state, Rule::ForgotEmail, email.as_str(), None, &client).await?;
    state.auth().forgot_password(email, redirect_to.as_deref(), &client).await?;
    Ok(Json(SuccessBody {
        success: true,
        message: "If an account with that email exists, a password reset link has been sent",
    }))
}

/// Set a new password with a reset token; every session is revoked.
#[utoipa::path(post, path = "/api/v1/auth/reset-password", tag = "auth", request_body = ResetPasswordBody,
    responses(
        (status = 200, description = "Reset; every session revoked", body = SuccessBody),
        (status = 400, description = "`INVALID_RESET_TOKEN` (invalid, expired or used), `VALIDATION_FAILED`", body = ErrorBody),
    ))]
async fn reset_password(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<ResetPasswordBody>,
) -> Result<Json<SuccessBody>, ApiError> {
    let PasswordReset { token, new_password } = body.try_into().map_err(ApiError::validation)?;
    state.auth().reset_password(&token, new_password, &client).await?;
    Ok(Json(SuccessBody { success: true, message: "Password has been reset successfully" }))
}

/// Mark the address verified with the token from the verification message.
#[utoipa::path(post, path = "/api/v1/auth/verify-email", tag = "auth", request_body = VerifyEmailBody,
    responses(
        (status = 200, description = "Verified", body = SuccessBody),
        (status = 400, description = "`INVALID_VERIFICATION_TOKEN`, `VALIDATION_FAILED`", body = ErrorBody),
    ))]
async fn verify_email(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<VerifyEmailBody>,
) -> Result<Json<SuccessBody>, ApiError> {
    let EmailVerification { token } = body.try_into().map_err(ApiError::validation)?;
    state.auth().verify_email(&token, &client).await?;
    Ok(Json(SuccessBody { success: true, message: "Email verified successfully" }))
}

/// Mail a new verification link (the previous one stops working).
#[utoipa::path(post, path = "/api/v1/auth/resend-verification", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "Sent (or already verified)", body = SuccessBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
    ))]
async fn resend_verification(
    State(state): State<AppState>,
    Client(client): Client,
    Authenticated(claims): Authenticated,
) -> Result<Json<SuccessBody>, ApiError> {
    let sent = state.auth().resend_verification(&claims, &client).await?;
    let message = if sent { "Verification email sent" } else { "Email already verified" };
    Ok(Json(SuccessBody { success: true, message }))
}
