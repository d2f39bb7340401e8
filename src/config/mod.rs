//! Typed configuration, read once from the environment at start-up.
//!
//! Every variable is parsed here; a malformed value stops start-up with one line that
//! names the variable (see [`ConfigError`]). Names follow the original service's
//! `.env.example` where they overlap (`PORT`, `DATABASE_URL`, `REDIS_HOST`, `JWT_ISSUER`,
//! `CORS_ORIGINS`, ...). `.env.example` documents every variable.

pub mod payments;
pub mod rate_limits;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use payments::PaymentsConfig;

/// A value that must never be printed: `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Which engine holds the event log and the read models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// `DATABASE_URL=postgres://...`
    Postgres { url: Secret },
    /// `DATABASE_URL=sqlite://path` or unset (the embedded default).
    Sqlite { path: PathBuf },
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The deployment mode (`APP_ENV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

/// The whole configuration of one server process.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub app_env: AppEnv,
    pub database: DatabaseConfig,
    pub database_max_connections: u32,
    pub redis_url: Option<Secret>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub cors_origins: Vec<String>,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    /// How long a client may take to send a request head (`HTTP_HEADER_READ_TIMEOUT_SECS`).
    pub http_header_read_timeout: Duration,
    /// How long a kept-alive connection may stay silent between requests, or a response
    /// write make no progress (`HTTP_IDLE_TIMEOUT_SECS`).
    pub http_idle_timeout: Duration,
    /// Open connections per process; above it new ones wait to be accepted.
    pub http_max_connections: usize,
    pub projection_poll_interval: Duration,
    pub projection_batch_size: usize,
    pub ready_max_projection_lag: Duration,
    pub read_your_writes_timeout: Duration,
    /// Root secret for sealing private keys and deriving refresh successors.
    pub key_encryption_secret: Option<Secret>,
    pub key_rotation_interval: Duration,
    /// Age at which the audit key (it signs the log's seals) is replaced
    /// (`AUDIT_KEY_ROTATION_DAYS`).
    pub audit_key_rotation_interval: Duration,
    /// How often the log is sealed (`AUDIT_SEAL_INTERVAL_SECS`); zero: never, not even
    /// at start-up.
    pub audit_seal_interval: Duration,
    pub refresh_grace: Duration,
    pub jwt_leeway: Duration,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub password_hash_threads: usize,
    pub password_hash_queue: usize,
    pub credits_signup_bonus: i64,
    pub credits_daily_free: i64,
    pub credits_free_cap: Option<i64>,
    pub credits_daily_timezone: chrono_tz::Tz,
    /// Rate limits (`RATE_LIMITS=off` disables them all).
    pub rate_limits: rate_limits::Limits,
    pub redis_key_prefix: String,
    pub redis_timeout: Duration,
    /// Consecutive failed logins after which an address is locked.
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
    /// How long a login waits for another attempt in flight on the same address and client
    /// class before it answers 429 `LOGIN_THROTTLED`.
    pub login_queue_wait: Duration,
    pub require_verified_email: bool,
    pub smtp_url: Option<Secret>,
    pub smtp_from: String,
    /// Where links in e-mails point (reset and verification pages).
    pub frontend_url: String,
    /// The app each service account speaks for (`SERVICE_APPS`): service user id → app id.
    /// A service caller of the usage figures sees only its app's; without an entry, none.
    pub service_apps: HashMap<String, String>,
    /// The change feed on NATS JetStream (`EVENT_STREAM_URL`); `None`: no feed.
    pub event_stream: Option<EventStreamConfig>,
    /// Stripe and the credit packages (`STRIPE_*`, `CREDIT_PACKAGES_FILE`).
    pub payments: PaymentsConfig,
}

/// The change feed: where and how the log is published (`EVENT_STREAM_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventStreamConfig {
    /// `nats://host:port` (may carry credentials, hence a secret).
    pub url: Secret,
    /// The JetStream stream (`EVENT_STREAM_NAME`).
    pub name: String,
    /// Subjects are `<prefix>.<aggregate_type>.<event_type>` (`EVENT_STREAM_SUBJECT_PREFIX`).
    pub subject_prefix: String,
    /// Readiness fails while the feed is down (`EVENT_STREAM_REQUIRED`).
    pub required: bool,
    /// The stream's duplicate window, set on the stream when it is created
    /// (`EVENT_STREAM_DUPLICATE_WINDOW_SECS`).
    pub duplicate_window: Duration,
    /// How long a publisher's claim lasts without renewal: the longest pause of the feed
    /// after its publishing process dies (`EVENT_STREAM_LEASE_SECS`).
    pub lease: Duration,
    /// Events published per batch at most (`EVENT_STREAM_BATCH_SIZE`).
    pub batch_size: usize,
}

/// A variable that could not be parsed. Its `Display` is the one line printed at start-up.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

/// The default development origins of the original service's `.env.example`.
pub const DEFAULT_CORS_ORIGINS: &str = "http://localhost:3000,http://localhost:8081";
/// The log filter when `RUST_LOG` is unset (the scheduler is chatty at `info`).
pub const DEFAULT_LOG_FILTER: &str = "info,tokio_cron_scheduler=warn";
/// The default SQLite file, created with its folder on first start.
pub const DEFAULT_SQLITE_PATH: &str = "./data/mana-core-auth.db";

impl Config {
    /// Reads the process environment (after loading `.env` if present).
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// Parses a set of variables; tests pass their own map.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let env = Env(vars);
        Ok(Self {
            host: env.parse("HOST", "127.0.0.1")?,
            port: env.parse("PORT", "3001")?,
            app_env: match env.get("APP_ENV").unwrap_or("development") {
                "development" | "dev" | "test" => AppEnv::Development,
                "production" | "prod" => AppEnv::Production,
                other => {
                    return Err(env.bad("APP_ENV", other, "expected development or production"));
                }
            },
            database: parse_database_url(env.get("DATABASE_URL"))?,
            database_max_connections: env.parse_range("DATABASE_MAX_CONNECTIONS", "10", 1, 1000)?,
            redis_url: parse_redis(&env)?,
            jwt_issuer: env.non_empty("JWT_ISSUER", "manacore")?,
            jwt_audience: env.non_empty("JWT_AUDIENCE", "manacore")?,
            cors_origins: parse_origins(env.get("CORS_ORIGINS").unwrap_or(DEFAULT_CORS_ORIGINS))?,
            log_format: match env.get("LOG_FORMAT").unwrap_or("text") {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(env.bad("LOG_FORMAT", other, "expected text or json")),
            },
            log_filter: env.get("RUST_LOG").unwrap_or(DEFAULT_LOG_FILTER).to_owned(),
            body_limit_bytes: env.parse_range("BODY_LIMIT_BYTES", "65536", 1024, 16 << 20)?,
            request_timeout: Duration::from_secs(env.parse_range("REQUEST_TIMEOUT_SECS", "30", 1, 3600)?),
            http_header_read_timeout: Duration::from_secs(env.parse_range(
                "HTTP_HEADER_READ_TIMEOUT_SECS",
                "10",
                1,
                3600,
            )?),
            http_idle_timeout: Duration::from_secs(env.parse_range(
                "HTTP_IDLE_TIMEOUT_SECS",
                "60",
                1,
                86_400,
            )?),
            http_max_connections: env.parse_range("HTTP_MAX_CONNECTIONS", "10000", 1, 1_000_000)?,
            projection_poll_interval: Duration::from_millis(env.parse_range(
                "PROJECTION_POLL_INTERVAL_MS",
                "200",
                10,
                60_000,
            )?),
            projection_batch_size: env.parse_range("PROJECTION_BATCH_SIZE", "500", 1, 100_000)?,
            ready_max_projection_lag: Duration::from_secs(env.parse_range(
                "READY_MAX_PROJECTION_LAG_SECS",
                "10",
                1,
                86_400,
            )?),
            read_your_writes_timeout: Duration::from_millis(env.parse_range(
                "READ_YOUR_WRITES_TIMEOUT_MS",
                "2000",
                0,
                60_000,
            )?),
            key_encryption_secret: env.get("KEY_ENCRYPTION_SECRET").map(Secret::new),
            key_rotation_interval: Duration::from_secs(
                86_400 * env.parse_range::<u64>("KEY_ROTATION_INTERVAL_DAYS", "30", 1, 3650)?,
            ),
            audit_key_rotation_interval: Duration::from_secs(
                86_400 * env.parse_range::<u64>("AUDIT_KEY_ROTATION_DAYS", "30", 1, 3650)?,
            ),
            audit_seal_interval: Duration::from_secs(env.parse_range(
                "AUDIT_SEAL_INTERVAL_SECS",
                "60",
                0,
                86_400,
            )?),
            refresh_grace: Duration::from_secs(env.parse_range("REFRESH_GRACE_SECS", "10", 0, 300)?),
            jwt_leeway: Duration::from_secs(env.parse_range("JWT_LEEWAY_SECS", "5", 0, 30)?),
            trusted_proxies: parse_proxies(env.get("TRUSTED_PROXIES").unwrap_or(""))?,
            password_hash_threads: env.parse_range(
                "PASSWORD_HASH_THREADS",
                &default_hash_threads().to_string(),
                1,
                256,
            )?,
            password_hash_queue: env.parse_range("PASSWORD_HASH_QUEUE", "64", 1, 100_000)?,
            credits_signup_bonus: env.parse_range("CREDITS_SIGNUP_BONUS", "150", 0, 1_000_000_000)?,
            credits_daily_free: env.parse_range("CREDITS_DAILY_FREE", "5", 0, 1_000_000)?,
            credits_free_cap: match env.get("CREDITS_FREE_CAP") {
                None => None,
                Some(_) => Some(env.parse_range("CREDITS_FREE_CAP", "0", 0, 1_000_000_000)?),
            },
            credits_daily_timezone: env.parse("CREDITS_DAILY_TIMEZONE", "UTC")?,
            rate_limits: parse_rate_limits(&env)?,
            redis_key_prefix: env.get("REDIS_KEY_PREFIX").unwrap_or("mana-core-auth:").to_owned(),
            redis_timeout: Duration::from_millis(env.parse_range("REDIS_TIMEOUT_MS", "250", 1, 10_000)?),
            lockout_threshold: env.parse_range("LOGIN_LOCKOUT_THRESHOLD", "20", 1, 1000)?,
            lockout_duration: Duration::from_secs(env.parse_range(
                "LOGIN_LOCKOUT_SECS",
                "900",
                1,
                86_400 * 30,
            )?),
            login_queue_wait: Duration::from_millis(env.parse_range(
                "LOGIN_QUEUE_WAIT_MS",
                "2000",
                0,
                60_000,
            )?),
            require_verified_email: env.parse_bool("REQUIRE_VERIFIED_EMAIL", false)?,
            smtp_url: parse_smtp(&env)?,
            smtp_from: env.get("SMTP_FROM").unwrap_or("Mana <no-reply@localhost>").to_owned(),
            frontend_url: parse_origins(env.get("FRONTEND_URL").unwrap_or("http://localhost:3000"))
                .map_err(|e| ConfigError { variable: "FRONTEND_URL", reason: e.reason })?
                .into_iter()
                .next()
                .unwrap_or_else(|| "http://localhost:3000".to_owned()),
            service_apps: parse_service_apps(env.get("SERVICE_APPS").unwrap_or(""))?,
            event_stream: parse_event_stream(&env)?,
            payments: payments::parse_payments(&env)?,
        })
    }

    /// The folder for local files (the development secret): the SQLite file's folder,
    /// or `./data` on PostgreSQL.
    pub fn data_dir(&self) -> PathBuf {
        match &self.database {
            DatabaseConfig::Sqlite { path } => path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), PathBuf::from),
            DatabaseConfig::Postgres { .. } => PathBuf::from("./data"),
        }
    }

    /// A configuration for tests and tools: everything at its default except the database.
    pub fn for_database(database: DatabaseConfig) -> Self {
        let mut config = Self::from_vars(&HashMap::new()).expect("defaults parse");
        config.database = database;
        config.port = 0;
        config
    }
}

struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    /// A variable's value; an empty value counts as unset, as in most `.env` loaders.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn bad(&self, variable: &'static str, value: &str, reason: &str) -> ConfigError {
        ConfigError { variable, reason: format!("{reason} (got {value:?})") }
    }

    fn parse<T: FromStr>(&self, name: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        let raw = self.get(name).unwrap_or(default);
        raw.parse().map_err(|e: T::Err| self.bad(name, raw, &e.to_string()))
    }

    fn parse_range<T>(&self, name: &'static str, default: &str, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let value: T = self.parse(name, default)?;
        if value < min || value > max {
            let raw = self.get(name).unwrap_or(default);
            return Err(self.bad(name, raw, &format!("must be between {min} and {max}")));
        }
        Ok(value)
    }

    fn parse_bool(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(other) => Err(self.bad(name, other, "expected true or false")),
        }
    }

    fn non_empty(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self.get(name).unwrap_or(default).to_owned())
    }
}

fn parse_database_url(raw: Option<&str>) -> Result<DatabaseConfig, ConfigError> {
    let bad = |reason: &str| ConfigError { variable: "DATABASE_URL", reason: reason.to_owned() };
    let Some(url) = raw else {
        return Ok(DatabaseConfig::Sqlite { path: PathBuf::from(DEFAULT_SQLITE_PATH) });
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
        if rest.is_empty() || rest.starts_with('/') && rest.len() == 1 {
            return Err(bad("a postgres URL needs a host, e.g. postgres://user@localhost:5432/db"));
        }
        return Ok(DatabaseConfig::Postgres { url: Secret::new(url) });
    }
    if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" {
            return Err(bad("a sqlite URL needs a file path, e.g. sqlite://./data/mana-core-auth.db"));
        }
        return Ok(DatabaseConfig::Sqlite { path: PathBuf::from(path) });
    }
    Err(bad("unsupported scheme: expected postgres://... or sqlite://... (value not shown)"))
}

fn parse_redis(env: &Env<'_>) -> Result<Option<Secret>, ConfigError> {
    if let Some(url) = env.get("REDIS_URL") {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError {
                variable: "REDIS_URL",
                reason: "expected redis://host:port or rediss://... (value not shown)".into(),
            });
        }
        return Ok(Some(Secret::new(url)));
    }
    let Some(host) = env.get("REDIS_HOST") else {
        return Ok(None);
    };
    let port: u16 = env.parse("REDIS_PORT", "6379")?;
    let auth = env.get("REDIS_PASSWORD").map(|p| format!(":{p}@")).unwrap_or_default();
    Ok(Some(Secret::new(format!("redis://{auth}{host}:{port}"))))
}

fn parse_rate_limits(env: &Env<'_>) -> Result<rate_limits::Limits, ConfigError> {
    use rate_limits::{Limit, Limits, Rule};
    let mut limits = Limits::defaults();
    limits.enabled = match env.get("RATE_LIMITS").map(str::to_ascii_lowercase).as_deref() {
        None | Some("on" | "true" | "1") => true,
        Some("off" | "false" | "0") => false,
        Some(other) => return Err(env.bad("RATE_LIMITS", other, "expected on or off")),
    };
    let overrides = [
        ("RATE_LIMIT_LOGIN_IP_EMAIL", Rule::LoginIpEmail),
        ("RATE_LIMIT_LOGIN_IP", Rule::LoginIp),
        ("RATE_LIMIT_REGISTER", Rule::Register),
        ("RATE_LIMIT_REFRESH", Rule::Refresh),
        ("RATE_LIMIT_REFRESH_IP", Rule::RefreshIp),
        ("RATE_LIMIT_FORGOT_PASSWORD_EMAIL", Rule::ForgotEmail),
        ("RATE_LIMIT_FORGOT_PASSWORD_IP", Rule::ForgotIp),
        ("RATE_LIMIT_DEFAULT", Rule::Default),
    ];
    for (variable, rule) in overrides {
        if let Some(text) = env.get(variable) {
            let limit = Limit::parse(text)
                .ok_or_else(|| env.bad(variable, text, "expected max/seconds, e.g. 5/60"))?;
            limits.rules.insert(rule, limit);
        }
    }
    Ok(limits)
}

fn parse_smtp(env: &Env<'_>) -> Result<Option<Secret>, ConfigError> {
    let Some(url) = env.get("SMTP_URL") else { return Ok(None) };
    if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
        return Err(ConfigError {
            variable: "SMTP_URL",
            reason: "expected smtp://user:password@host:587 or smtps://... (value not shown)".into(),
        });
    }
    Ok(Some(Secret::new(url)))
}

fn parse_event_stream(env: &Env<'_>) -> Result<Option<EventStreamConfig>, ConfigError> {
    let Some(url) = env.get("EVENT_STREAM_URL") else { return Ok(None) };
    let rest = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
        return Err(ConfigError {
            variable: "EVENT_STREAM_URL",
            reason: "expected nats://host:port (value not shown)".into(),
        });
    }
    let name = env.non_empty("EVENT_STREAM_NAME", "MANA_EVENTS")?;
    // JetStream refuses these in a stream name.
    if name.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
        return Err(env.bad("EVENT_STREAM_NAME", &name, "no spaces, '.', '*', '>', '/' or '\\'"));
    }
    let subject_prefix = env.non_empty("EVENT_STREAM_SUBJECT_PREFIX", "mana.events")?;
    let token_ok = |t: &str| !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c == '*' || c == '>');
    if !subject_prefix.split('.').all(token_ok) {
        return Err(env.bad(
            "EVENT_STREAM_SUBJECT_PREFIX",
            &subject_prefix,
            "expected dot-separated tokens without spaces or wildcards, e.g. mana.events",
        ));
    }
    Ok(Some(EventStreamConfig {
        url: Secret::new(url),
        name,
        subject_prefix,
        required: env.parse_bool("EVENT_STREAM_REQUIRED", false)?,
        duplicate_window: Duration::from_secs(env.parse_range(
            "EVENT_STREAM_DUPLICATE_WINDOW_SECS",
            "600",
            1,
            7 * 86_400,
        )?),
        lease: Duration::from_secs(env.parse_range("EVENT_STREAM_LEASE_SECS", "10", 1, 3600)?),
        batch_size: env.parse_range("EVENT_STREAM_BATCH_SIZE", "1000", 1, 100_000)?,
    }))
}

/// Hashing threads by default: one per core. Measured on 2 cores (docs/BENCHMARKS.md),
/// every core for hashing keeps token validation's p99 well under 20 ms during a login
/// flood, while one core fewer caps logins at half the machine's argon2 rate.
fn default_hash_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().max(1))
}

fn parse_proxies(raw: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>().or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from)).map_err(|_| {
                ConfigError {
                    variable: "TRUSTED_PROXIES",
                    reason: format!("{p:?} is not an IP address or CIDR range"),
                }
            })
        })
        .collect()
}

/// `SERVICE_APPS`: a comma-separated list of `<service user id>=<appId>`, one app per
/// service. Ids are UUIDs (stored in their lowercase hyphenated form, as tokens carry
/// them); app ids follow the rule of `appId` in spends ([`crate::domain::valid_app_id`]).
fn parse_service_apps(raw: &str) -> Result<HashMap<String, String>, ConfigError> {
    let bad = |reason: String| ConfigError { variable: "SERVICE_APPS", reason };
    let mut apps = HashMap::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, app) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("{entry:?} is not <service user id>=<appId>")))?;
        let id = uuid::Uuid::parse_str(id.trim())
            .map_err(|_| bad(format!("{:?} is not a user id (a UUID)", id.trim())))?
            .to_string();
        let app = app.trim();
        if !crate::domain::valid_app_id(app) {
            return Err(bad(format!("{app:?} is not an app id (1 to 64 of A-Z, a-z, 0-9, '.', '_', '-')")));
        }
        if apps.insert(id.clone(), app.to_owned()).is_some() {
            return Err(bad(format!("{id} is bound twice: a service speaks for one app")));
        }
    }
    Ok(apps)
}

fn parse_origins(raw: &str) -> Result<Vec<String>, ConfigError> {
    let mut origins = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let valid = origin.split_once("://").is_some_and(|(scheme, host)| {
            !scheme.is_empty()
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
                && !host.is_empty()
                && !host.contains('/')
        });
        if !valid {
            return Err(ConfigError {
                variable: "CORS_ORIGINS",
                reason: format!("{origin:?} is not an origin like https://app.example.com"),
            });
        }
        origins.push(origin.to_owned());
    }
    Ok(origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn no_environment_selects_sqlite_and_the_documented_defaults() {
        let config = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(config.port, 3001);
        assert_eq!(config.host.to_string(), "127.0.0.1");
        assert_eq!(config.database, DatabaseConfig::Sqlite { path: DEFAULT_SQLITE_PATH.into() });
        assert_eq!(config.jwt_audience, "manacore");
        assert_eq!(config.cors_origins, ["http://localhost:3000", "http://localhost:8081"]);
        assert!(config.redis_url.is_none());
        assert_eq!(config.http_header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.http_idle_timeout, Duration::from_secs(60));
        assert_eq!(config.http_max_connections, 10_000);
        assert_eq!(config.audit_seal_interval, Duration::from_secs(60));
        assert_eq!(config.audit_key_rotation_interval, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn a_seal_interval_of_zero_turns_sealing_off_and_a_negative_one_is_refused() {
        let off = Config::from_vars(&vars(&[("AUDIT_SEAL_INTERVAL_SECS", "0")])).unwrap();
        assert_eq!(off.audit_seal_interval, Duration::ZERO);
        let err = Config::from_vars(&vars(&[("AUDIT_SEAL_INTERVAL_SECS", "-1")])).unwrap_err();
        assert_eq!(err.variable, "AUDIT_SEAL_INTERVAL_SECS");
        let err = Config::from_vars(&vars(&[("AUDIT_KEY_ROTATION_DAYS", "0")])).unwrap_err();
        assert_eq!(err.variable, "AUDIT_KEY_ROTATION_DAYS");
    }

    #[test]
    fn a_malformed_value_names_its_variable() {
        let err = Config::from_vars(&vars(&[("PORT", "eighty")])).unwrap_err();
        assert_eq!(err.variable, "PORT");
        let err = Config::from_vars(&vars(&[("DATABASE_URL", "mysql://x")])).unwrap_err();
        assert_eq!(err.variable, "DATABASE_URL");
        let err = Config::from_vars(&vars(&[("LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(err.variable, "LOG_FORMAT");
        let err = Config::from_vars(&vars(&[("CORS_ORIGINS", "localhost:3000")])).unwrap_err();
        assert_eq!(err.variable, "CORS_ORIGINS");
        for (name, value) in [
            ("HTTP_HEADER_READ_TIMEOUT_SECS", "0"),
            ("HTTP_IDLE_TIMEOUT_SECS", "soon"),
            ("HTTP_MAX_CONNECTIONS", "0"),
        ] {
            let err = Config::from_vars(&vars(&[(name, value)])).unwrap_err();
            assert_eq!(err.variable, name);
        }
    }

    #[test]
    fn database_urls_select_the_engine() {
        let pg = Config::from_vars(&vars(&[("DATABASE_URL", "postgres://u@h/db")])).unwrap();
        assert!(matches!(pg.database, DatabaseConfig::Postgres { .. }));
        let lite = Config::from_vars(&vars(&[("DATABASE_URL", "sqlite:///tmp/x.db")])).unwrap();
        assert_eq!(lite.database, DatabaseConfig::Sqlite { path: "/tmp/x.db".into() });
    }

    #[test]
    fn redis_can_be_given_as_host_port_and_password() {
        let config = Config::from_vars(&vars(&[
            ("REDIS_HOST", "cache"),
            ("REDIS_PORT", "6380"),
            ("REDIS_PASSWORD", "pw"),
        ]))
        .unwrap();
        assert_eq!(config.redis_url.unwrap().expose(), "redis://:pw@cache:6380");
    }

    #[test]
    fn refresh_is_limited_per_address_by_default_and_the_limit_can_be_set() {
        use rate_limits::{Limit, Rule};
        let limit = |config: &Config| config.rate_limits.rules.get(&Rule::RefreshIp).copied();
        let default = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(limit(&default), Some(Limit { max: 300, window: Duration::from_secs(60) }));
        let set = Config::from_vars(&vars(&[("RATE_LIMIT_REFRESH_IP", "5/10")])).unwrap();
        assert_eq!(limit(&set), Some(Limit { max: 5, window: Duration::from_secs(10) }));
        let err = Config::from_vars(&vars(&[("RATE_LIMIT_REFRESH_IP", "lots")])).unwrap_err();
        assert_eq!(err.variable, "RATE_LIMIT_REFRESH_IP");
    }

    #[test]
    fn service_apps_bind_each_service_user_to_one_app() {
        let id = "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B";
        let config = Config::from_vars(&vars(&[("SERVICE_APPS", &format!(" {id}=chat , "))])).unwrap();
        assert_eq!(config.service_apps.get(&id.to_lowercase()).map(String::as_str), Some("chat"));
        assert!(Config::from_vars(&HashMap::new()).unwrap().service_apps.is_empty());
        for bad in [
            "chat".to_owned(),
            "not-a-uuid=chat".to_owned(),
            format!("{id}=no spaces"),
            format!("{id}="),
            format!("{id}=chat,{id}=picture"),
        ] {
            let err = Config::from_vars(&vars(&[("SERVICE_APPS", &bad)])).unwrap_err();
            assert_eq!(err.variable, "SERVICE_APPS", "{bad}");
        }
    }

    #[test]
    fn the_event_stream_is_off_by_default_and_its_settings_are_checked() {
        assert!(Config::from_vars(&HashMap::new()).unwrap().event_stream.is_none());
        let on = Config::from_vars(&vars(&[("EVENT_STREAM_URL", "nats://127.0.0.1:4222")])).unwrap();
        let stream = on.event_stream.unwrap();
        assert_eq!((stream.name.as_str(), stream.subject_prefix.as_str()), ("MANA_EVENTS", "mana.events"));
        assert!(!stream.required);
        assert_eq!(stream.duplicate_window, Duration::from_secs(600));
        for (name, value) in [
            ("EVENT_STREAM_URL", "http://127.0.0.1:4222"),
            ("EVENT_STREAM_NAME", "MANA.EVENTS"),
            ("EVENT_STREAM_SUBJECT_PREFIX", "mana.>"),
            ("EVENT_STREAM_SUBJECT_PREFIX", "mana..events"),
            ("EVENT_STREAM_REQUIRED", "maybe"),
            ("EVENT_STREAM_LEASE_SECS", "0"),
        ] {
            let mut set = vars(&[("EVENT_STREAM_URL", "nats://127.0.0.1:4222")]);
            set.insert(name.to_owned(), value.to_owned());
            let err = Config::from_vars(&set).unwrap_err();
            assert_eq!(err.variable, name, "{name}={value}");
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = Config::from_vars(&vars(&[("DATABASE_URL", "postgres://u:hunter2@h/db")])).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
