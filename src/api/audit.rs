//! `/api/v1/admin/events`: the event log as NDJSON for auditors' incremental pulls, page
//! by page, in the export's line format (secrets as their commitments).

use axum::extract::{RawQuery, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::Allowed;
use super::access::family::AuditLog;
use super::error::{ApiError, ErrorBody};
use crate::audit::export;
use crate::events::LogCursor;

/// The auditors' routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// Events per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 1_000;
/// The largest page.
const MAX_LIMIT: usize = 10_000;

/// The header carrying the cursor to pass as `after` for the next page.
pub const NEXT_CURSOR: &str = "x-next-cursor";

/// A page request: `after` (a cursor, default the start) and `limit` (1 to 10,000).
#[derive(Debug, PartialEq, Eq)]
struct PageQuery {
    after: LogCursor,
    limit: usize,
}

impl TryFrom<Option<&str>> for PageQuery {
    type Error = Vec<String>;
    fn try_from(query: Option<&str>) -> Result<Self, Self::Error> {
        let mut page = Self { after: LogCursor::ORIGIN, limit: DEFAULT_LIMIT };
        let mut problems = Vec::new();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match name.as_ref() {
                "after" => match value.parse() {
                    Ok(cursor) => page.after = cursor,
                    Err(reason) => problems.push(format!("after: {reason}")),
                },
                "limit" => match value.parse::<usize>() {
                    Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => page.limit = limit,
                    _ => problems.push(format!("limit: must be an integer from 1 to {MAX_LIMIT}")),
                },
                _ => {}
            }
        }
        if problems.is_empty() { Ok(page) } else { Err(problems) }
    }
}

/// Read the log after a cursor, in global order, as NDJSON (one exported event a line).
/// `X-Next-Cursor` is the cursor to pass as `after` for the next page (the `after` given
/// when the page is empty: poll again later).
#[utoipa::path(get, path = "/api/v1/admin/events", tag = "audit", security(("bearer" = [])),
    params(
        ("after" = Option<String>, Query, pattern = "^-?[0-9]{1,18}:-?[0-9]{1,18}$", description = "Continue after this cursor (the `cursor` field of an exported event); default: the start of the log"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10_000, description = "Events in the page, 1 to 10,000; default 1,000"),
    ),
    responses(
        (status = 200, description = "The page as `application/x-ndjson`, one exported event a line (docs/AUDIT.md); the next cursor in `X-Next-Cursor`",
            content_type = "application/x-ndjson", body = String,
            headers(("X-Next-Cursor" = String, description = "Pass as `after` for the next page"))),
        (status = 400, description = "`VALIDATION_FAILED`: a malformed cursor or a limit outside 1 to 10,000", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`: no valid token", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: not an admin or auditor token", body = ErrorBody),
    ))]
async fn events(
    State(state): State<AppState>,
    _reader: Allowed<AuditLog>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let page = PageQuery::try_from(query.as_deref()).map_err(ApiError::validation)?;
    let (body, next) =
        export::page(state.store(), page.after, page.limit).await.map_err(ApiError::internal)?;
    let next = HeaderValue::from_str(&next.to_string()).map_err(ApiError::internal)?;
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson")),
        (HeaderName::from_static(NEXT_CURSOR), next),
    ];
    Ok((headers, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_query_defaults_to_before_every_row_and_a_thousand_events() {
        assert_eq!(PageQuery::try_from(None), Ok(PageQuery { after: LogCursor::ORIGIN, limit: 1_000 }));
        let page = PageQuery::try_from(Some("after=3%3A9&limit=10000")).unwrap();
        assert_eq!(page, PageQuery { after: LogCursor { txid: 3, position: 9 }, limit: 10_000 });
    }

    #[test]
    fn a_page_query_refuses_bad_cursors_and_limits_outside_one_to_ten_thousand() {
        for bad in ["after=x", "after=1", "after=1:-", "limit=0", "limit=10001", "limit=ten", "limit=-5"] {
            assert!(PageQuery::try_from(Some(bad)).is_err(), "{bad} was accepted");
        }
    }
}
