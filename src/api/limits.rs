//! Rate limiting at the HTTP edge: the per-IP rules of sign-in routes (login, register,
//! refresh, forgot-password) and the default limit of every other route (per user when a
//! valid token is presented, else per IP). The per-IP rules count every request, before
//! its body is read, so malformed and unknown input is counted too. Rules keyed by the
//! body (login per IP and e-mail, refresh per session, forgot-password per e-mail) are
//! checked by their handlers with [`enforce`].

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use super::extract::{Client, PreAuthenticated};
use crate::auth::ClientInfo;
use crate::security::rate_limit::{Decision, Rule};

/// Routes no limit applies to.
const EXEMPT: &[&str] = &[
    "/api/v1/auth/validate",
    "/api/v1/auth/jwks",
    "/.well-known/jwks.json",
    "/api/v1/audit/keys",
    "/api/v1/health",
    "/api/v1/ready",
    "/metrics",
    // Stripe sends bursts from a few addresses; the signature is checked first instead.
    "/api/v1/webhooks/stripe",
];

/// Whether the rate limiter counts requests to `route` (a route template); the OpenAPI
/// document lists 429 on exactly these.
pub fn is_limited(route: &str) -> bool {
    !EXEMPT.contains(&route)
}

/// The rate-limit middleware: the IP-keyed rules and the default per-user rule, before the
/// body is read (rules keyed by the body run in their handlers).
pub async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.limiter().enabled() || request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let route = route.as_deref().unwrap_or("unmatched");
    if EXEMPT.contains(&route) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let Ok(Client(client)) =
        <Client as axum::extract::FromRequestParts<AppState>>::from_request_parts(&mut parts, &state).await;
    let ip = client.ip.clone().unwrap_or_default();
    let (rule, subject, user) = match (parts.method.clone(), route) {
        (Method::POST, "/api/v1/auth/login") => (Rule::LoginIp, ip, None),
        (Method::POST, "/api/v1/auth/register") => (Rule::Register, ip, None),
        (Method::POST, "/api/v1/auth/refresh") => (Rule::RefreshIp, ip, None),
        (Method::POST, "/api/v1/auth/forgot-password") => (Rule::ForgotIp, ip, None),
        _ => {
            // Authenticate once here; the handler's extractor reuses the outcome.
            let pre = PreAuthenticated::from_headers(&parts.headers, &state).await;
            let user = pre.user_id();
            parts.extensions.insert(pre);
            match user {
                Some(user) => (Rule::Default, format!("user:{user}"), Some(user)),
                None => (Rule::Default, format!("ip:{ip}"), None),
            }
        }
    };
    let decision = state.limiter().hit(rule, &subject).await;
    if !decision.allowed {
        return refuse(&state, rule, decision, user.as_deref(), &client).await.into_response();
    }
    let mut response = next.run(Request::from_parts(parts, body)).await;
    // A handler's own (stricter) limit answered: keep its headers.
    if !response.headers().contains_key("ratelimit-limit") {
        set_headers(response.headers_mut(), &decision);
    }
    response
}

/// Counts one hit of a handler-checked rule; a 429 error when over the limit.
pub async fn enforce(
    state: &AppState,
    rule: Rule,
    subject: &str,
    user: Option<&str>,
    client: &ClientInfo,
) -> Result<(), ApiError> {
    if !state.limiter().enabled() {
        return Ok(());
    }
    let decision = state.limiter().hit(rule, subject).await;
    if decision.allowed { Ok(()) } else { Err(refuse(state, rule, decision, user, client).await) }
}

async fn refuse(
    state: &AppState,
    rule: Rule,
    decision: Decision,
    user: Option<&str>,
    client: &ClientInfo,
) -> ApiError {
    state.metrics().rate_limited(rule.name());
    if decision.first_refusal {
        // One security event per window, recorded off the request path.
        let (state, client, user) = (state.clone(), client.clone(), user.map(str::to_owned));
        tokio::spawn(
            async move { state.auth().record_rate_limited(rule.name(), user.as_deref(), &client).await },
        );
    }
    let retry = decision.reset.as_secs().max(1);
    let mut headers = HeaderMap::new();
    set_headers(&mut headers, &decision);
    let mut error = ApiError::new(ErrorCode::RateLimited, format!("Too many requests; retry in {retry} s"))
        .with_header(header::RETRY_AFTER, HeaderValue::from(retry));
    for (name, value) in &headers {
        error = error.with_header(name.clone(), value.clone());
    }
    error
}

fn set_headers(headers: &mut HeaderMap, decision: &Decision) {
    let window = decision.limit.window.as_secs();
    let pairs = [
        ("ratelimit-limit", decision.limit.max.to_string()),
        ("ratelimit-remaining", decision.remaining.to_string()),
        ("ratelimit-reset", decision.reset.as_secs().to_string()),
        ("ratelimit-policy", format!("{};w={window}", decision.limit.max)),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}
