//! The one error shape of the API and the catalogue of machine codes.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` sets the status and attaches an
//! [`ErrorPayload`] extension, and the `render_errors` middleware turns it (or any other
//! 4xx/5xx the stack produced, such as axum's 405) into
//! `{"statusCode","error","message","timestamp","path","requestId"}`.
//! A 5xx body never carries internal error text; its cause is logged once there.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Every machine code the API answers with, and its status. `docs/API.md` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationFailed,
    InvalidJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    RateLimited,
    InternalError,
    ServiceUnavailable,
    EmailTaken,
    InvalidCredentials,
    InvalidRefreshToken,
    EmailNotVerified,
    InvalidResetToken,
    InvalidVerificationToken,
    InvalidCurrentPassword,
    InsufficientCredits,
    IdempotencyKeyReused,
    RefundExceedsSpend,
    LoginThrottled,
    AlreadyErased,
    PaymentsNotConfigured,
    PaymentProviderUnavailable,
    InvalidSignature,
}

impl ErrorCode {
    /// The HTTP status this code is always sent with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ValidationFailed | Self::InvalidJson => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::EmailTaken => StatusCode::CONFLICT,
            Self::InvalidCredentials | Self::InvalidRefreshToken => StatusCode::UNAUTHORIZED,
            Self::EmailNotVerified => StatusCode::FORBIDDEN,
            Self::InvalidResetToken
            | Self::InvalidVerificationToken
            | Self::InvalidCurrentPassword
            | Self::InsufficientCredits
            | Self::RefundExceedsSpend => StatusCode::BAD_REQUEST,
            Self::IdempotencyKeyReused | Self::AlreadyErased => StatusCode::CONFLICT,
            Self::LoginThrottled => StatusCode::TOO_MANY_REQUESTS,
            Self::PaymentsNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            Self::PaymentProviderUnavailable => StatusCode::BAD_GATEWAY,
            Self::InvalidSignature => StatusCode::BAD_REQUEST,
        }
    }

    /// The code as sent in the `error` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationFailed => "VALIDATION_FAILED",
            Self::InvalidJson => "INVALID_JSON",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict => "CONFLICT",
            Self::RateLimited => "RATE_LIMITED",
            Self::InternalError => "INTERNAL_ERROR",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::EmailTaken => "EMAIL_TAKEN",
            Self::AlreadyErased => "ALREADY_ERASED",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::InvalidRefreshToken => "INVALID_REFRESH_TOKEN",
            Self::EmailNotVerified => "EMAIL_NOT_VERIFIED",
            Self::InvalidResetToken => "INVALID_RESET_TOKEN",
            Self::InvalidVerificationToken => "INVALID_VERIFICATION_TOKEN",
            Self::InvalidCurrentPassword => "INVALID_CURRENT_PASSWORD",
            Self::InsufficientCredits => "INSUFFICIENT_CREDITS",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::RefundExceedsSpend => "REFUND_EXCEEDS_SPEND",
            Self::LoginThrottled => "LOGIN_THROTTLED",
            Self::PaymentsNotConfigured => "PAYMENTS_NOT_CONFIGURED",
            Self::PaymentProviderUnavailable => "PAYMENT_PROVIDER_UNAVAILABLE",
            Self::InvalidSignature => "INVALID_SIGNATURE",
        }
    }

    /// The code for a status produced outside our handlers (routing, layers).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::TOO_MANY_REQUESTS => Self::RateLimited,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => Self::ServiceUnavailable,
            s if s.is_client_error() => Self::ValidationFailed,
            _ => Self::InternalError,
        }
    }

    /// The message sent when nothing more specific is known.
    pub fn default_message(self) -> &'static str {
        match self {
            Self::ValidationFailed => "Validation failed",
            Self::InvalidJson => "Request body is not valid JSON",
            Self::UnsupportedMediaType => "Content-Type must be application/json",
            Self::PayloadTooLarge => "Request body is too large",
            Self::Unauthorized => "Authentication required",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "Conflict",
            Self::RateLimited => "Too many requests",
            Self::InternalError => "Internal server error",
            Self::ServiceUnavailable => "Service temporarily unavailable",
            Self::EmailTaken => "An account with this e-mail address already exists",
            Self::AlreadyErased => "The user was already erased",
            Self::InvalidCredentials => "Invalid credentials",
            Self::InvalidRefreshToken => "Invalid or expired refresh token",
            Self::EmailNotVerified => "The e-mail address is not verified",
            Self::InvalidResetToken => "Invalid or expired reset token",
            Self::InvalidVerificationToken => "Invalid or expired verification token",
            Self::InvalidCurrentPassword => "The current password is wrong",
            Self::InsufficientCredits => "Insufficient credits",
            Self::IdempotencyKeyReused => "The idempotency key was already used for a different request",
            Self::RefundExceedsSpend => "The refund exceeds what is left of the transaction",
            Self::PaymentsNotConfigured => "Payments are not configured on this server",
            Self::PaymentProviderUnavailable => "The payment provider is unavailable; try again later",
            Self::InvalidSignature => "Invalid webhook signature",
            Self::LoginThrottled => "Too many sign-in attempts for this account; wait and try again",
        }
    }
}

/// The `message` field: one text, or a list (validation errors name each field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Message {
    Text(String),
    List(Vec<String>),
}

/// What the error renderer needs; carried from the handler in response extensions.
#[derive(Clone, Debug)]
pub struct ErrorPayload {
    pub code: ErrorCode,
    pub message: Message,
    /// The cause of a 5xx, logged by the renderer and never sent.
    pub cause: Option<String>,
}

/// An error a handler returns.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: Message,
    headers: Vec<(HeaderName, HeaderValue)>,
    cause: Option<String>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: Message::Text(message.into()), headers: Vec::new(), cause: None }
    }

    /// A code with its default message.
    pub fn code(code: ErrorCode) -> Self {
        Self::new(code, code.default_message())
    }

    /// A validation failure naming each bad field.
    pub fn validation(messages: Vec<String>) -> Self {
        Self {
            code: ErrorCode::ValidationFailed,
            message: Message::List(messages),
            headers: Vec::new(),
            cause: None,
        }
    }

    /// A 500 whose cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut error = Self::code(ErrorCode::InternalError);
        error.cause = Some(cause.to_string());
        error
    }

    /// A 503 whose cause is logged, not sent.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        let mut error = Self::code(ErrorCode::ServiceUnavailable);
        error.cause = Some(cause.to_string());
        error
    }

    /// A 503 listing what is wrong (readiness).
    pub fn not_ready(problems: Vec<String>) -> Self {
        Self {
            code: ErrorCode::ServiceUnavailable,
            message: Message::List(problems),
            headers: Vec::new(),
            cause: None,
        }
    }

    /// Adds a response header (e.g. `Retry-After`, `WWW-Authenticate`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The machine code.
    pub fn error_code(&self) -> ErrorCode {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.code.status().into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response.extensions_mut().insert(ErrorPayload {
            code: self.code,
            message: self.message,
            cause: self.cause,
        });
        response
    }
}

/// The JSON body of every error response (documented in the OpenAPI document).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub status_code: u16,
    pub error: ErrorCode,
    pub message: Message,
    pub timestamp: String,
    pub path: String,
    pub request_id: String,
}
