//! The rate-limit settings (`RATE_LIMITS`, `RATE_LIMIT_*`): which rules exist and their
//! limits. `security::rate_limit` counts hits against them.

use std::collections::HashMap;
use std::time::Duration;

/// What is limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Logins per (client IP, e-mail).
    LoginIpEmail,
    /// Logins per client IP.
    LoginIp,
    /// Registrations per client IP.
    Register,
    /// Refreshes per session.
    Refresh,
    /// Refreshes per client IP, whatever the token (unknown and malformed ones too).
    RefreshIp,
    /// Forgot-password requests per e-mail.
    ForgotEmail,
    /// Forgot-password requests per client IP.
    ForgotIp,
    /// Every other route, per user when authenticated, else per client IP.
    Default,
}

impl Rule {
    /// The rule's name in keys, logs and security events.
    pub fn name(self) -> &'static str {
        match self {
            Self::LoginIpEmail => "login_ip_email",
            Self::LoginIp => "login_ip",
            Self::Register => "register_ip",
            Self::Refresh => "refresh_session",
            Self::RefreshIp => "refresh_ip",
            Self::ForgotEmail => "forgot_password_email",
            Self::ForgotIp => "forgot_password_ip",
            Self::Default => "default",
        }
    }
}

/// At most `max` hits per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

impl Limit {
    /// Parses `max/seconds`, e.g. `5/60`.
    pub fn parse(text: &str) -> Option<Self> {
        let (max, secs) = text.trim().split_once('/')?;
        let (max, secs): (u32, u64) = (max.trim().parse().ok()?, secs.trim().parse().ok()?);
        (max > 0 && secs > 0).then(|| Self { max, window: Duration::from_secs(secs) })
    }
}

/// The limit of every rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub enabled: bool,
    pub rules: HashMap<Rule, Limit>,
}

impl Limits {
    /// The defaults: login 5/min per (IP, e-mail) and 30/min per IP, register 10/hour per
    /// IP, refresh 60/min per session and 300/min per IP, forgot-password 3/5 min per e-mail and 10/hour per IP,
    /// everything else 100/min.
    pub fn defaults() -> Self {
        let limit = |max, secs| Limit { max, window: Duration::from_secs(secs) };
        Self {
            enabled: true,
            rules: HashMap::from([
                (Rule::LoginIpEmail, limit(5, 60)),
                (Rule::LoginIp, limit(30, 60)),
                (Rule::Register, limit(10, 3600)),
                (Rule::Refresh, limit(60, 60)),
                (Rule::RefreshIp, limit(300, 60)),
                (Rule::ForgotEmail, limit(3, 300)),
                (Rule::ForgotIp, limit(10, 3600)),
                (Rule::Default, limit(100, 60)),
            ]),
        }
    }

    /// The limit of a rule (100 per minute for a rule without one).
    pub fn get(&self, rule: Rule) -> Limit {
        self.rules.get(&rule).copied().unwrap_or(Limit { max: 100, window: Duration::from_secs(60) })
    }
}
