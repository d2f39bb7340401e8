//! The rules each client class follows: the delay schedule, lockout and attempt
//! policies, and the state of one class (failures, delay, lock, attempt in flight).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The delay after `failures` consecutive failed checks.
pub fn delay_after(failures: u32) -> Duration {
    match failures {
        0 => Duration::zero(),
        1 => Duration::seconds(1),
        2 => Duration::seconds(3),
        3 => Duration::seconds(5),
        _ => Duration::seconds(10),
    }
}

/// Lockout settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Consecutive failures that lock the address.
    pub threshold: u32,
    pub lock_for: Duration,
}

/// How a stream of attempts is guarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptPolicy {
    /// Locks the class at a threshold; `None` never locks.
    pub lockout: Option<LockoutPolicy>,
    /// Failed checks that add no delay (the delay schedule applies from the next one).
    pub free_failures: u32,
    /// Whether clients are told apart by familiarity (a session's checks are one class).
    pub smart: bool,
}

impl AttemptPolicy {
    /// Logins on an address: delays from the first failure, lockout, two client classes.
    pub fn login(lockout: LockoutPolicy) -> Self {
        Self { lockout: Some(lockout), free_failures: 0, smart: true }
    }

    /// Change-password on one session: after 5 wrong current passwords in a row, the
    /// login delay schedule; never locked.
    pub fn change_password() -> Self {
        Self { lockout: None, free_failures: 4, smart: false }
    }

    pub(super) fn delay(&self, failures: u32) -> Duration {
        if failures > self.free_failures { delay_after(failures) } else { Duration::zero() }
    }
}

/// An attempt holding a class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    pub attempt_id: String,
    pub lease_until: DateTime<Utc>,
}

/// The failure count, delay, lock and attempt in flight of one client class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassState {
    pub consecutive_failures: u32,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub locked_until: Option<DateTime<Utc>>,
    pub in_flight: Option<InFlight>,
}

impl ClassState {
    pub(super) fn busy(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.in_flight.as_ref().map(|f| f.lease_until).filter(|until| at < *until)
    }

    pub(super) fn locked(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.locked_until.filter(|until| at < *until)
    }

    /// The failure count a new failure continues: a lock that has run out starts it again.
    pub(super) fn counted_failures(&self, at: DateTime<Utc>) -> u32 {
        if self.locked_until.is_some_and(|until| at >= until) { 0 } else { self.consecutive_failures }
    }

    pub(super) fn delayed(&self, policy: AttemptPolicy, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let failures = self.counted_failures(at);
        self.last_failure_at.map(|t| t + policy.delay(failures)).filter(|until| at < *until)
    }

    pub(super) fn release(&mut self, attempt_id: &str) {
        if self.in_flight.as_ref().is_some_and(|f| f.attempt_id == attempt_id) {
            self.in_flight = None;
        }
    }

    pub(super) fn reset_failures(&mut self) {
        self.consecutive_failures = 0;
        self.last_failure_at = None;
        self.locked_until = None;
    }
}
