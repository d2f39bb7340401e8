//! Rate limits shared by every server process: fixed windows counted in Redis with one
//! atomic pipeline (`INCR`, `EXPIRE NX`, `TTL`).
//!
//! Redis unreachable or slow never fails a request: every Redis call has a short timeout,
//! and on failure a per-process limiter takes over (limits then hold per process), the
//! outage is logged once, readiness and metrics report it, and Redis is tried again a
//! second later. Keys carry `REDIS_KEY_PREFIX`; subjects that are personal data (e-mail
//! addresses) are hashed before they reach Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::redis::aio::MultiplexedConnection;
use parking_lot::Mutex;
use sha2::Sha256;

pub use crate::config::rate_limits::{Limit, Limits, Rule};
use crate::telemetry::Metrics;

/// How long establishing a Redis connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of one hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: Limit,
    pub remaining: u32,
    /// Until the window ends.
    pub reset: Duration,
    /// The first refusal of this window (to record one security event per window, not
    /// one per request under a flood).
    pub first_refusal: bool,
}

/// The limiter of one process.
pub struct RateLimiter {
    limits: Limits,
    prefix: String,
    /// Keys the subjects (addresses, IPs) in counter names: Redis never holds an e-mail
    /// address or IP in a form a list of them could be matched against.
    subject_key: [u8; 32],
    redis: Option<Redis>,
    local: Mutex<LocalWindows>,
    metrics: Arc<Metrics>,
}

struct Redis {
    pool: deadpool_redis::Pool,
    connection: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
    down_until: Mutex<Option<Instant>>,
    degraded: AtomicBool,
}

#[derive(Default)]
struct LocalWindows {
    windows: HashMap<String, (u32, Instant)>,
    hits: u64,
}

impl RateLimiter {
    /// A limiter on Redis at `redis_url` (when given), else per process.
    pub fn new(
        limits: Limits,
        redis_url: Option<&str>,
        prefix: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let redis = match redis_url {
            Some(url) => {
                let mut config = deadpool_redis::Config::from_url(url);
                let mut pool = deadpool_redis::PoolConfig::new(8);
                pool.timeouts.wait = Some(timeout);
                pool.timeouts.create = Some(CONNECT_TIMEOUT);
                pool.timeouts.recycle = Some(timeout);
                config.pool = Some(pool);
                let pool = config.create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
                Some(Redis {
                    pool,
                    connection: Mutex::new(None),
                    timeout,
                    down_until: Mutex::new(None),
                    degraded: AtomicBool::new(false),
                })
            }
            None => None,
        };
        Ok(Self {
            limits,
            prefix: prefix.to_owned(),
            subject_key: [0; 32],
            redis,
            local: Mutex::new(LocalWindows::default()),
            metrics,
        })
    }

    /// Connects to Redis ahead of the first request (best effort; failures fall back as
    /// usual).
    pub async fn warm_up(&self) {
        if let Some(redis) = &self.redis {
            match tokio::time::timeout(CONNECT_TIMEOUT, redis.connection()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => self.redis_failed(redis, &format!("{error:#}")),
                Err(_) => self.redis_failed(redis, "connecting timed out"),
            }
        }
    }

    /// Whether limits are enforced at all (`RATE_LIMITS=off` turns them off).
    pub fn enabled(&self) -> bool {
        self.limits.enabled
    }

    /// Whether Redis is configured but unreachable (the per-process limiter is in use).
    pub fn degraded(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.degraded.load(Ordering::Relaxed))
    }

    /// `"redis"`, `"degraded"` (Redis configured but down) or `"local"` (no Redis).
    pub fn mode(&self) -> &'static str {
        match &self.redis {
            Some(_) if self.degraded() => "degraded",
            Some(_) => "redis",
            None => "local",
        }
    }

    /// Counts one hit of `subject` against `rule`.
    pub async fn hit(&self, rule: Rule, subject: &str) -> Decision {
        let limit = self.limits.get(rule);
        if !self.limits.enabled {
            return Decision {
                allowed: true,
                limit,
                remaining: limit.max,
                reset: limit.window,
                first_refusal: false,
            };
        }
        let key = format!("{}rl:{}:{}", self.prefix, rule.name(), self.hashed(subject));
        let counted = match &self.redis {
            Some(redis) => self.redis_hit(redis, &key, limit).await,
            None => None,
        };
        let (count, reset) = counted.unwrap_or_else(|| self.local_hit(&key, limit));
        Decision {
            allowed: count <= limit.max,
            limit,
            remaining: limit.max.saturating_sub(count),
            reset,
            first_refusal: count == limit.max + 1,
        }
    }

    async fn redis_hit(&self, redis: &Redis, key: &str, limit: Limit) -> Option<(u32, Duration)> {
        if redis.down_until.lock().is_some_and(|until| Instant::now() < until) {
            return None;
        }
        // Connecting may take longer than a command (it happens once per outage).
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, redis.connection()).await;
        let mut connection = match connection {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                self.redis_failed(redis, &format!("{error:#}"));
                return None;
            }
            Err(_) => {
                self.redis_failed(redis, "connecting timed out");
                return None;
            }
        };
        let outcome = tokio::time::timeout(redis.timeout, async {
            let window = limit.window.as_secs().max(1);
            let result: Result<(u64, i64), _> = deadpool_redis::redis::pipe()
                .atomic()
                .incr(key, 1u64)
                .cmd("EXPIRE")
                .arg(key)
                .arg(window)
                .arg("NX")
                .ignore()
                .cmd("TTL")
                .arg(key)
                .query_async(&mut connection)
                .await;
            result.map_err(anyhow::Error::from)
        })
        .await;
        match outcome {
            Ok(Ok((count, ttl))) => {
                if redis.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limiter: Redis is back; limits are shared again");
                    self.metrics.rate_limiter_degraded(false);
                }
                let reset = Duration::from_secs(u64::try_from(ttl).unwrap_or(limit.window.as_secs()));
                Some((u32::try_from(count).unwrap_or(u32::MAX), reset))
            }
            Ok(Err(error)) => {
                self.redis_failed(redis, &format!("{error:#}"));
                None
            }
            Err(_) => {
                self.redis_failed(redis, "timed out");
                None
            }
        }
    }

    fn redis_failed(&self, redis: &Redis, error: &str) {
        *redis.connection.lock() = None;
        *redis.down_until.lock() = Some(Instant::now() + Duration::from_secs(1));
        if !redis.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error, "rate limiter: Redis unreachable; limiting per process until it is back");
            self.metrics.rate_limiter_degraded(true);
        }
    }

    fn local_hit(&self, key: &str, limit: Limit) -> (u32, Duration) {
        let now = Instant::now();
        let mut local = self.local.lock();
        local.hits += 1;
        if local.hits.is_multiple_of(10_000) {
            // Drop windows that ended (the longest window is kept by the check below).
            local.windows.retain(|_, (_, start)| now.duration_since(*start) < Duration::from_secs(3600));
        }
        let entry = local.windows.entry(key.to_owned()).or_insert((0, now));
        if now.duration_since(entry.1) >= limit.window {
            *entry = (0, now);
        }
        entry.0 += 1;
        (entry.0, limit.window.saturating_sub(now.duration_since(entry.1)))
    }
}

impl Redis {
    /// The shared multiplexed connection (taken from the pool once, reused by every call).
    async fn connection(&self) -> anyhow::Result<MultiplexedConnection> {
        if let Some(connection) = self.connection.lock().clone() {
            return Ok(connection);
        }
        let object = self.pool.get().await?;
        let connection: MultiplexedConnection = (*object).clone();
        *self.connection.lock() = Some(connection.clone());
        Ok(connection)
    }
}

/// Subjects may be e-mail addresses: keep them out of Redis.
impl RateLimiter {
    /// The limiter with counter names keyed by `key` (every process must use the same:
    /// `ServerSecret::derive("rate-limit-subjects/v1")`).
    pub fn with_subject_key(mut self, key: [u8; 32]) -> Self {
        self.subject_key = key;
        self
    }

    fn hashed(&self, subject: &str) -> String {
        let mut mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.subject_key)
            .expect("HMAC takes any key length");
        hmac::Mac::update(&mut mac, subject.as_bytes());
        hmac::Mac::finalize(mac).into_bytes()[..12].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_max_per_seconds() {
        assert_eq!(Limit::parse("5/60"), Some(Limit { max: 5, window: Duration::from_secs(60) }));
        assert_eq!(Limit::parse("0/60"), None);
        assert_eq!(Limit::parse("five"), None);
    }

    #[tokio::test]
    async fn the_local_limiter_allows_exactly_the_limit_per_window() {
        let mut limits = Limits::defaults();
        limits.rules.insert(Rule::Default, Limit { max: 3, window: Duration::from_secs(60) });
        let limiter =
            RateLimiter::new(limits, None, "t:", Duration::from_millis(50), Arc::new(Metrics::new()))
                .unwrap();
        let mut decisions = Vec::new();
        for _ in 0..5 {
            decisions.push(limiter.hit(Rule::Default, "1.2.3.4").await);
        }
        assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 3);
        assert_eq!(decisions.iter().filter(|d| d.first_refusal).count(), 1);
        assert!(limiter.hit(Rule::Default, "5.6.7.8").await.allowed, "another subject has its own window");
        assert_eq!(limiter.mode(), "local");
    }
}
