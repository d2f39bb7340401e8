//! The query strings of the ledger and usage routes, validated into typed requests by
//! `TryFrom` (every problem listed, each naming its parameter). A parameter given with an
//! empty value counts as not given; an unknown or repeated one is refused.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::valid_app_id;
use crate::events::LogCursor;
use crate::projections::ledger_postings::{GroupBy, UsageFilter};

/// A point of the log to answer at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// As far as the read model has got.
    Now,
    /// Every event up to and including this cursor.
    Cursor(LogCursor),
    /// The last event in global order recorded at or before this time, and everything
    /// before it.
    Time(DateTime<Utc>),
}

/// `at` (`?at=` and `--at`): a cursor (`txid:position`) or an RFC 3339 time.
impl FromStr for Point {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(cursor) = text.parse::<LogCursor>() {
            return Ok(Self::Cursor(cursor));
        }
        DateTime::parse_from_rfc3339(text).map(|t| Self::Time(t.to_utc())).map_err(|_| {
            "at: expected a cursor (txid:position, as answers and exports give it) or an RFC 3339 time \
             such as 2026-11-29T10:00:00Z"
                .to_owned()
        })
    }
}

/// The parameters of a query string that have a value, refusing names outside `known`
/// and names given twice.
fn parameters(query: Option<&str>, known: &[&str], problems: &mut Vec<String>) -> HashMap<String, String> {
    let mut found = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !known.contains(&name.as_ref()) {
            problems.push(format!("{name}: unknown parameter (expected {})", known.join(", ")));
        } else if found.contains_key(name.as_ref()) {
            problems.push(format!("{name}: given more than once"));
        } else if !value.is_empty() {
            found.insert(name.into_owned(), value.into_owned());
        }
    }
    found
}

/// `GET /admin/ledger/trial-balance?at=`: the point to answer at (now without `at`).
impl TryFrom<Option<&str>> for Point {
    type Error = Vec<String>;
    fn try_from(query: Option<&str>) -> Result<Self, Self::Error> {
        let mut problems = Vec::new();
        let found = parameters(query, &["at"], &mut problems);
        let point = match found.get("at").map(|at| at.parse::<Self>()) {
            None => Self::Now,
            Some(Ok(point)) => point,
            Some(Err(problem)) => {
                problems.push(problem);
                Self::Now
            }
        };
        if problems.is_empty() { Ok(point) } else { Err(problems) }
    }
}

/// `from`/`to`: an RFC 3339 time, or a date (midnight UTC at its start).
fn instant(name: &str, text: &str, problems: &mut Vec<String>) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.to_utc());
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return day.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    problems.push(format!(
        "{name}: expected an RFC 3339 time such as 2026-11-29T10:00:00Z or a date such as 2026-11-29"
    ));
    None
}

/// `GET /admin/usage?appId=&from=&to=&groupBy=`: every parameter optional; `groupBy`
/// defaults to `day`; the period is `[from, to)`.
impl TryFrom<Option<&str>> for UsageFilter {
    type Error = Vec<String>;
    fn try_from(query: Option<&str>) -> Result<Self, Self::Error> {
        let mut problems = Vec::new();
        let found = parameters(query, &["appId", "from", "to", "groupBy"], &mut problems);
        let app_id = found.get("appId").cloned();
        if app_id.as_deref().is_some_and(|app| !valid_app_id(app)) {
            problems.push("appId: must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'".into());
        }
        let from = found.get("from").and_then(|t| instant("from", t, &mut problems));
        let to = found.get("to").and_then(|t| instant("to", t, &mut problems));
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            problems.push("to: must be later than from (the period is [from, to))".into());
        }
        let group_by = match found.get("groupBy").map(String::as_str) {
            None | Some("day") => GroupBy::Day,
            Some("app") => GroupBy::App,
            Some("user") => GroupBy::User,
            Some(_) => {
                problems.push("groupBy: must be day, app or user".into());
                GroupBy::Day
            }
        };
        if problems.is_empty() { Ok(Self { app_id, from, to, group_by }) } else { Err(problems) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("a time").to_utc()
    }

    #[test]
    fn at_is_a_cursor_or_an_rfc_3339_time_and_now_without_it() {
        assert_eq!(Point::try_from(None), Ok(Point::Now));
        assert_eq!(Point::try_from(Some("at=")), Ok(Point::Now));
        assert_eq!(
            Point::try_from(Some("at=7%3A42")),
            Ok(Point::Cursor(LogCursor { txid: 7, position: 42 }))
        );
        assert_eq!(
            Point::try_from(Some("at=2026-11-29T10:00:00%2B01:00")),
            Ok(Point::Time(time("2026-11-29T09:00:00Z")))
        );
        for bad in ["at=yesterday", "at=2026-11-29", "at=7", "at=1:2&at=1:3", "when=1:2"] {
            assert!(Point::try_from(Some(bad)).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_usage_query_takes_dates_or_times_and_defaults_to_every_app_and_all_time_by_day() {
        let all = UsageFilter::try_from(None).expect("no parameters");
        assert_eq!(all, UsageFilter { app_id: None, from: None, to: None, group_by: GroupBy::Day });
        let some =
            UsageFilter::try_from(Some("appId=chat&from=2026-11-02&to=2026-11-03T12:00:00Z&groupBy=user"))
                .expect("valid");
        assert_eq!(some.app_id.as_deref(), Some("chat"));
        assert_eq!(some.from, Some(time("2026-11-02T00:00:00Z")));
        assert_eq!(some.to, Some(time("2026-11-03T12:00:00Z")));
        assert_eq!(some.group_by, GroupBy::User);
    }

    #[test]
    fn a_usage_query_names_every_problem() {
        let problems =
            UsageFilter::try_from(Some("groupBy=week&from=soon&appId=no%20spaces&x=1")).expect_err("invalid");
        for name in ["groupBy:", "from:", "appId:", "x:"] {
            assert!(problems.iter().any(|p| p.starts_with(name)), "{name} in {problems:?}");
        }
        let backwards = UsageFilter::try_from(Some("from=2026-11-03&to=2026-11-02")).expect_err("invalid");
        assert!(backwards[0].starts_with("to:"), "{backwards:?}");
        assert!(UsageFilter::try_from(Some("from=2026-11-03&to=2026-11-03")).is_err(), "an empty period");
    }
}
