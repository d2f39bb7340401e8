//! Where the links in reset and verification e-mails point.
//!
//! A client's `redirectTo` goes into a genuine message, so it is held to a narrow rule:
//! an absolute URL on an allowed origin (scheme, host and port exactly), without user
//! credentials or fragment, and made only of URL characters. The link in the message is
//! re-serialised from the parsed URL, never copied from the request, so no text can ride
//! along with it.

use url::{Origin, Url};

/// The longest `redirectTo` accepted.
const MAX_LEN: usize = 2048;

/// The origins a `redirectTo` may point to, normalised as the URL parser sees them
/// (lower-case scheme and host, default ports made explicit).
#[derive(Clone, Debug, Default)]
pub struct RedirectOrigins(Vec<Origin>);

impl RedirectOrigins {
    /// The origins of the configured URLs; an entry that is not a URL with a host (no
    /// browser would send it as an origin) matches nothing.
    pub fn new<'a>(configured: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            configured
                .into_iter()
                .filter_map(|raw| Url::parse(raw).ok())
                .map(|url| url.origin())
                .filter(Origin::is_tuple)
                .collect(),
        )
    }

    fn allows(&self, origin: &Origin) -> bool {
        origin.is_tuple() && self.0.contains(origin)
    }
}

/// The base of the links in a message: an origin and, from a `redirectTo`, a path and
/// query. `link` appends the page to the path and the token to the query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkBase(Url);

impl LinkBase {
    /// A configured base (`FRONTEND_URL`); trusted, but parsed all the same.
    pub fn configured(raw: &str) -> Result<Self, url::ParseError> {
        Url::parse(raw).map(Self)
    }

    /// A client's `redirectTo`, checked against `allowed`. The message names the problem
    /// without repeating the input.
    pub fn parse(raw: &str, allowed: &RedirectOrigins) -> Result<Self, String> {
        if raw.len() > MAX_LEN {
            return Err(format!("redirectTo must be at most {MAX_LEN} characters"));
        }
        if !only_url_characters(raw) {
            return Err("redirectTo may hold only URL characters: no whitespace, control \
                        characters, fragment or stray %"
                .into());
        }
        let url = Url::parse(raw).map_err(|_| "redirectTo must be an absolute URL".to_owned())?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("redirectTo must not hold user credentials".into());
        }
        if url.fragment().is_some() || url.cannot_be_a_base() || !allowed.allows(&url.origin()) {
            return Err("redirectTo must be on an allowed origin".into());
        }
        Ok(Self(url))
    }

    /// The link to `page` (one path segment) carrying `token` as the last query
    /// parameter.
    pub fn link(&self, page: &str, token: &str) -> String {
        let mut url = self.0.clone();
        url.set_fragment(None);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(page);
        }
        url.query_pairs_mut().append_pair("token", token);
        url.into()
    }
}

/// RFC 3986 characters only (unreserved, reserved but `#`, and `%` starting a
/// two-digit escape): no whitespace, no control character, nothing outside ASCII.
fn only_url_characters(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'%' => bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)),
        b'#' => false,
        _ => b.is_ascii_alphanumeric() || b"-._~:/?[]@!$&'()*+,;=".contains(&b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> RedirectOrigins {
        RedirectOrigins::new(["http://localhost:3000", "https://App.Example.com", "not a url"])
    }

    #[test]
    fn a_redirect_on_an_allowed_origin_is_re_serialised_with_page_and_token() {
        let base = LinkBase::parse("HTTP://LOCALHOST:3000/app/./x/?lang=de&a=%41", &allowed()).unwrap();
        assert_eq!(
            base.link("reset-password", "t0k"),
            "http://localhost:3000/app/x/reset-password?lang=de&a=%41&token=t0k"
        );
        let base = LinkBase::parse("https://app.example.com:443", &allowed()).unwrap();
        assert_eq!(base.link("reset-password", "t"), "https://app.example.com/reset-password?token=t");
    }

    #[test]
    fn a_configured_base_gets_the_page_and_token() {
        let base = LinkBase::configured("http://localhost:3000").unwrap();
        assert_eq!(base.link("verify-email", "t"), "http://localhost:3000/verify-email?token=t");
    }

    #[test]
    fn injected_text_and_foreign_origins_are_refused() {
        for bad in [
            "http://localhost:3000/a\n\nClick here instead: https://evil.example",
            "http://localhost:3000/\0",
            "http://localhost:3000/a b",
            "http://localhost:3000/a\tb",
            "http://localhost:3000/a\rb",
            "http://localhost:3000/a\u{7f}",
            "http://localhost:3000/a\u{a0}b",
            "http://localhost:3000/\u{fc}",
            "http://localhost:3000/a%zz",
            "http://localhost:3000/a%4",
            "http://localhost:3000/#/reset",
            "http://localhost:3000\\@evil.example",
            "javascript:alert(1)//http://localhost:3000",
            "http://localhost:3001/",
            "https://localhost:3000/",
            "https://localhost:3000.evil.example",
            "http://localhost:3000.evil.example/",
            "http://user@localhost:3000",
            "http://user:pw@localhost:3000",
            "http://evil.example?http://localhost:3000",
            "//localhost:3000/x",
            "not a url",
            "",
        ] {
            assert!(LinkBase::parse(bad, &allowed()).is_err(), "{bad:?} was accepted");
        }
        let long = format!("http://localhost:3000/{}", "a".repeat(MAX_LEN));
        assert!(LinkBase::parse(&long, &allowed()).is_err());
    }
}
