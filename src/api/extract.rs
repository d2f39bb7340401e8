//! Extractors that reject bad input in the one error shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};

/// A JSON body. Malformed JSON → 400 `INVALID_JSON`; a body that does not fit the type
/// (missing, unknown or mistyped fields) → 400 `VALIDATION_FAILED` naming the field; a
/// wrong content type → 415; a body over the limit → 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::code(ErrorCode::UnsupportedMediaType),
        JsonRejection::JsonSyntaxError(error) => ApiError::new(
            ErrorCode::InvalidJson,
            format!(
                "Request body is not valid JSON: {}",
                serde_detail(&error.body_text())
            ),
        ),
        JsonRejection::JsonDataError(error) => {
            ApiError::validation(vec![serde_detail(&error.body_text())])
        }
        JsonRejection::BytesRejection(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::code(ErrorCode::PayloadTooLarge)
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::code(ErrorCode::PayloadTooLarge)
        }
        _ => ApiError::new(ErrorCode::InvalidJson, "Request body could not be read"),
    }
}

/// serde's own words about the input (field path, expected type, line and column),
/// without axum's prefix. It describes the client's input only, never our internals.
fn serde_detail(text: &str) -> String {
    let detail = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .or_else(|| text.strip_prefix("Failed to parse the request body as JSON: "))
        .unwrap_or(text);
    detail.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axum_prefixes_are_removed_from_serde_messages() {
        assert_eq!(
            serde_detail(
                "Failed to deserialize the JSON body into the target type: amount: invalid type"
            ),
            "amount: invalid type"
        );
    }
}
