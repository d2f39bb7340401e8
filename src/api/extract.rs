//! Extractors that reject bad input in the one error shape.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};

/// A JSON body, which must be a JSON object. Malformed JSON → 400 `INVALID_JSON`; an
/// array, a string, a number, `true`/`false` or `null` → 400 `VALIDATION_FAILED` (serde
/// would otherwise read an array into a struct field by field); a body that does not fit
/// the type (unknown or mistyped fields) → 400 `VALIDATION_FAILED` naming the field, in
/// words about JSON rather than Rust types; a wrong content type → 415; a body over the
/// limit → 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(request.headers()) {
            return Err(ApiError::code(ErrorCode::UnsupportedMediaType));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::code(ErrorCode::PayloadTooLarge)
            } else {
                ApiError::new(ErrorCode::InvalidJson, "Request body could not be read")
            }
        })?;
        parse_object(&bytes).map(Self)
    }
}

/// The message for a body that is valid JSON but not an object.
pub const NOT_AN_OBJECT: &str = "The request body must be a JSON object";

/// Parses a body that must be a JSON object into `T`.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => ApiError::validation(vec![NOT_AN_OBJECT.to_owned()]),
            Err(error) => ApiError::new(
                ErrorCode::InvalidJson,
                format!("Request body is not valid JSON: {}", without_type_names(&error.to_string())),
            ),
        });
    }
    match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(value)) => Ok(value),
        Err(rejection) => Err(json_rejection(rejection)),
    }
}

/// `application/json` or any `application/*+json`, parameters ignored (what axum's own
/// `Json` accepts).
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonSyntaxError(error) => ApiError::new(
            ErrorCode::InvalidJson,
            format!("Request body is not valid JSON: {}", serde_detail(&error.body_text())),
        ),
        JsonRejection::JsonDataError(error) => ApiError::validation(vec![serde_detail(&error.body_text())]),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::code(ErrorCode::PayloadTooLarge)
        }
        _ => ApiError::new(ErrorCode::InvalidJson, "Request body could not be read"),
    }
}

/// serde's own words about the input (field path, expected type, line and column),
/// without axum's prefix and without Rust type names. It describes the client's input
/// only, never our internals.
fn serde_detail(text: &str) -> String {
    let detail = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .or_else(|| text.strip_prefix("Failed to parse the request body as JSON: "))
        .unwrap_or(text);
    without_type_names(detail).chars().take(300).collect()
}

/// Rewrites serde's Rust vocabulary into JSON's: `expected struct LoginBody with 7
/// elements` → `expected an object`, `expected enum Pool` → `expected one of the
/// documented values`, `expected u64` → `expected an integer`, `expected f64` → `expected
/// a number`.
fn without_type_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("expected ") {
        let (before, after) = rest.split_at(at + "expected ".len());
        out.push_str(before);
        let (replacement, consumed) = json_words(after);
        out.push_str(replacement.unwrap_or_default());
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// The JSON words for the Rust type named at the start of `text`, and how many bytes
/// of `text` they replace (none: keep the text).
fn json_words(text: &str) -> (Option<&'static str>, usize) {
    let word_end = |s: &str| s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    for (kind, words) in [
        ("tuple struct ", "an object"),
        ("unit struct ", "an object"),
        ("struct variant ", "an object"),
        ("tuple variant ", "an object"),
        ("struct ", "an object"),
        ("enum ", "one of the documented values"),
    ] {
        if let Some(name) = text.strip_prefix(kind) {
            let mut consumed = kind.len() + word_end(name);
            let tail = &text[consumed..];
            if let Some(count) = tail.strip_prefix(" with ") {
                let digits = count.find(|c: char| !c.is_ascii_digit()).unwrap_or(count.len());
                let rest = &count[digits..];
                for unit in [" elements", " element"] {
                    if digits > 0 && rest.starts_with(unit) {
                        consumed += " with ".len() + digits + unit.len();
                        break;
                    }
                }
            }
            return (Some(words), consumed);
        }
    }
    let word = &text[..word_end(text)];
    let words = match word {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "char" => "a single character",
        _ => return (None, 0),
    };
    (Some(words), word.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axum_prefixes_are_removed_from_serde_messages() {
        assert_eq!(
            serde_detail("Failed to deserialize the JSON body into the target type: amount: invalid type"),
            "amount: invalid type"
        );
    }

    #[test]
    fn rust_type_names_become_json_words() {
        assert_eq!(
            without_type_names("invalid type: sequence, expected struct LoginBody with 7 elements"),
            "invalid type: sequence, expected an object"
        );
        assert_eq!(
            without_type_names("pool: invalid type: integer `1`, expected enum Pool at line 1 column 9"),
            "pool: invalid type: integer `1`, expected one of the documented values at line 1 column 9"
        );
        assert_eq!(
            without_type_names("invalid value: integer `-1`, expected u64"),
            "invalid value: integer `-1`, expected a non-negative integer"
        );
        assert_eq!(
            without_type_names("unknown field `x`, expected one of `a`, `b`"),
            "unknown field `x`, expected one of `a`, `b`"
        );
        assert_eq!(without_type_names("expected a string"), "expected a string");
    }

    #[test]
    fn only_objects_are_accepted_as_bodies() {
        #[derive(serde::Deserialize, Debug)]
        struct Body {
            #[expect(dead_code, reason = "only its presence matters")]
            a: Option<String>,
        }
        assert!(parse_object::<Body>(br#" {"a":"x"}"#).is_ok());
        for body in [&br#"["x"]"#[..], b"\"x\"", b"1", b"true", b"null", b" [ ] "] {
            let error = parse_object::<Body>(body).expect_err("not an object");
            assert_eq!(error.error_code(), ErrorCode::ValidationFailed, "{body:?}");
        }
        for body in [&b"[x"[..], b"", b"  ", b"{"] {
            let error = parse_object::<Body>(body).expect_err("not JSON");
            assert_eq!(error.error_code(), ErrorCode::InvalidJson, "{body:?}");
        }
    }
}

/// The client of a request: its address (from `X-Forwarded-For` only when the peer is
/// a trusted proxy), its user agent and the request id.
#[derive(Clone, Debug, Default)]
pub struct Client(pub crate::auth::ClientInfo);

impl axum::extract::FromRequestParts<super::AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &super::AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip());
        let ip = peer.map(|peer| client_ip(peer, &parts.headers, &state.config().trusted_proxies));
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().filter(|c| !c.is_control()).take(512).collect());
        let request_id = parts.extensions.get::<super::middleware::RequestId>().map(|r| r.0.clone());
        Ok(Self(crate::auth::ClientInfo { request_id, ip: ip.map(|ip| ip.to_string()), user_agent }))
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| entry.trim().parse::<std::net::IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded.into_iter().rev().find(|ip| !is_trusted(ip)).unwrap_or(peer)
}

/// The bearer token of a request, if it has one (scheme case-insensitive).
fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    Some(token.trim()).filter(|t| scheme.eq_ignore_ascii_case("bearer") && !t.is_empty())
}

/// The outcome of checking a request's bearer token, computed once per request (the
/// rate limiter needs the user before the handler runs).
#[derive(Clone, Debug)]
pub struct PreAuthenticated(
    Option<Result<crate::security::tokens::AccessClaims, crate::security::tokens::TokenError>>,
);

impl PreAuthenticated {
    /// Checks the request's bearer token, if any.
    pub async fn from_headers(headers: &axum::http::HeaderMap, state: &super::AppState) -> Self {
        match bearer_token(headers) {
            Some(token) => Self(Some(state.auth().authenticate(token).await)),
            None => Self(None),
        }
    }

    /// The authenticated user, if the token was good.
    pub fn user_id(&self) -> Option<String> {
        match &self.0 {
            Some(Ok(claims)) => Some(claims.sub.clone()),
            _ => None,
        }
    }
}

/// A request authenticated by `Authorization: Bearer <access token>` (scheme
/// case-insensitive). The token's signature, claims, session and user are checked;
/// anything else answers 401 `UNAUTHORIZED` with `WWW-Authenticate: Bearer`.
#[derive(Clone, Debug)]
pub struct Authenticated(pub crate::security::tokens::AccessClaims);

impl axum::extract::FromRequestParts<super::AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &super::AppState,
    ) -> Result<Self, Self::Rejection> {
        let checked = match parts.extensions.get::<PreAuthenticated>() {
            Some(checked) => checked.clone(),
            None => PreAuthenticated::from_headers(&parts.headers, state).await,
        };
        let challenge = |error: Option<&str>| {
            let value = if error.is_some() { "Bearer error=\"invalid_token\"" } else { "Bearer" };
            ApiError::new(ErrorCode::Unauthorized, error.unwrap_or("Authentication required").to_owned())
                .with_header(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static(value),
                )
        };
        match checked.0 {
            None => Err(challenge(None)),
            Some(Ok(claims)) => Ok(Self(claims)),
            Some(Err(_)) => Err(challenge(Some("Invalid or expired token"))),
        }
    }
}

#[cfg(test)]
mod client_ip_tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.5".parse().unwrap());
        let proxy: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(proxy, &headers, &trusted).to_string(), "203.0.113.7");
        assert_eq!(
            client_ip(stranger, &headers, &trusted),
            stranger,
            "a spoofed header from outside is ignored"
        );
        assert_eq!(client_ip(proxy, &axum::http::HeaderMap::new(), &trusted), proxy);
    }
}

/// The page of a listing, from the query string: `limit` (1 to 100, default 50) and
/// `offset` (0 or more, default 0). A bad value answers 400 `VALIDATION_FAILED` naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Page {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        let axum::extract::Query(query) =
            axum::extract::Query::<std::collections::HashMap<String, String>>::from_request_parts(
                parts, state,
            )
            .await
            .map_err(IntoResponse::into_response)?;
        page(&query).map_err(IntoResponse::into_response)
    }
}

fn page(query: &std::collections::HashMap<String, String>) -> Result<Page, ApiError> {
    let mut problems = Vec::new();
    let mut number = |name: &str, default: i64, min: i64, max: i64| match query.get(name) {
        None => default,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                problems.push(format!("{name} must be an integer from {min} to {max}"));
                default
            }
        },
    };
    let limit = number("limit", 50, 1, 100);
    let offset = number("offset", 0, 0, i64::from(i32::MAX));
    if problems.is_empty() { Ok(Page { limit, offset }) } else { Err(ApiError::validation(problems)) }
}

/// The `Idempotency-Key` header, if the request has one. A value that is not visible
/// ASCII becomes a NUL character, which no key validation accepts: such a key is
/// refused as malformed rather than ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdempotencyKeyHeader(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get("idempotency-key");
        Ok(Self(value.map(|v| v.to_str().unwrap_or("\u{0}").to_owned())))
    }
}
