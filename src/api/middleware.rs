//! The envelope every request passes through: request id, tracing span, metrics, the
//! error renderer and the security headers of the original service (helmet's set).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::AppState;
use super::error::{ErrorBody, ErrorCode, ErrorPayload, Message};

/// The request id of the current request (accepted from `X-Request-Id` or generated).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The header carrying the request id both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self';style-src 'self' 'unsafe-inline';script-src 'self';img-src 'self' data: https:;\
         connect-src 'self';font-src 'self' data:;object-src 'none';media-src 'self';frame-src 'none';\
         base-uri 'self';form-action 'self';frame-ancestors 'self';script-src-attr 'none';upgrade-insecure-requests",
    ),
    ("cross-origin-opener-policy", "same-origin-allow-popups"),
    ("cross-origin-resource-policy", "cross-origin"),
    ("origin-agent-cluster", "?1"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("x-content-type-options", "nosniff"),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("x-frame-options", "DENY"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
];

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// The method label of metrics and spans: one of the standard methods (RFC 9110 and
/// PATCH), or `other` for any extension method a client invents, so that clients cannot
/// create new metric series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Accepts a client's request id only if it is short and plain (it ends up in logs).
fn accepted_request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(&X_REQUEST_ID)?.to_str().ok()?;
    let plain = (1..=128).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    plain.then(|| value.to_owned())
}

/// The outermost middleware: everything a request gets whatever its route.
pub async fn envelope(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id =
        accepted_request_id(request.headers()).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The route label is the matched route's template (a fixed set) or `unmatched`,
    // never the path: metric series stay bounded whatever clients send.
    let matched = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let route = matched.clone().unwrap_or_else(|| UNMATCHED.to_owned());
    let span =
        tracing::info_span!("http", method = method_label(&method), route = %route, request_id = %request_id);

    let mut response = if method == Method::OPTIONS && matched.is_none() {
        // A preflight to a path that does not exist: no route, so 404 like any other
        // method (the CORS layer would otherwise answer it as if the path existed).
        super::error::ApiError::code(ErrorCode::NotFound).into_response()
    } else {
        next.run(request).instrument(span.clone()).await
    };

    if method == Method::OPTIONS && response.status() == StatusCode::OK {
        // CORS preflight (allowed or not): 204, as the original answered.
        *response.status_mut() = StatusCode::NO_CONTENT;
    } else if response.status().is_client_error() || response.status().is_server_error() {
        response = render_error(response, &state, &path, &request_id, &span);
    }
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.entry(*name).or_insert(HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    state.metrics().http_request(method_label(&method), &route, status, seconds);
    span.in_scope(|| tracing::debug!(status, latency_ms = seconds * 1000.0, "request"));
    response
}

/// Gives a 4xx/5xx response the one error body, keeping its status and headers.
fn render_error(
    response: Response,
    state: &AppState,
    path: &str,
    request_id: &str,
    span: &tracing::Span,
) -> Response {
    let status = response.status();
    let (mut parts, _) = response.into_parts();
    let payload = parts.extensions.remove::<ErrorPayload>().unwrap_or_else(|| {
        let code = ErrorCode::for_status(status);
        ErrorPayload { code, message: Message::Text(code.default_message().to_owned()), cause: None }
    });
    if status.is_server_error() {
        let cause = payload.cause.as_deref().unwrap_or("no cause recorded");
        span.in_scope(|| tracing::error!(status = status.as_u16(), cause, "request failed"));
    }
    let body = ErrorBody {
        status_code: status.as_u16(),
        error: payload.code,
        message: payload.message,
        timestamp: state.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        path: path.to_owned(),
        request_id: request_id.to_owned(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json)).into_response()
}
