//! Login attempts on one e-mail address, registered or not (the id is the address's
//! claim id), or on one session's change-password checks (the id is
//! `session:<session id>`): brute-force protection that holds under parallel attempts and
//! across processes, without locking out the owner (smart lockout, after Microsoft
//! Entra's).
//!
//! * Clients come in two classes. A *familiar* client signed in to the account
//!   successfully from the same IP address or the same `deviceId` within the last 30
//!   days; every other client is *unfamiliar*. Each class has its own failure count,
//!   delay and lock, so a storm of wrong guesses from unfamiliar addresses delays and
//!   locks the unfamiliar class only, and the owner on a familiar client signs in.
//! * An attempt must begin here before the password is checked. It may begin only when
//!   its class is not locked, no other attempt of the class is in flight, and the delay
//!   after the class's last failed check has passed (1 s, 3 s, 5 s, then 10 s). Otherwise
//!   it is refused without a password check, and a refusal never counts as a failure.
//!   Only a failed check counts; at the threshold the class is locked for a while.
//! * An attempt in flight holds its class only until its lease ends (a little longer
//!   than the longest password check), so a process that dies mid-check blocks nobody for
//!   long and leaves no failure behind.
//! * Refusals are recorded (`LoginThrottled`) at most once per client and minute, so an
//!   attacker cannot flood the owner's security events.
//!
//! Events written before client classes existed (`LoginAttemptStarted`, `LoginFailed`,
//! `LoginSucceeded`, `AccountLocked`) are read as the unfamiliar class.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::events::auth::{LoginAttemptEvent, LoginFailure, SessionPersonal, ThrottleReason};

/// How long an attempt may hold its class before it is considered abandoned: a little
/// longer than the longest password check (a full hashing queue included).
pub const IN_FLIGHT_LEASE: Duration = Duration::seconds(5);
/// How long an attempt written before leases existed held the address.
const LEGACY_IN_FLIGHT: Duration = Duration::seconds(30);
/// How long a successful sign-in makes its IP address and device familiar.
pub const FAMILIAR_FOR: Duration = Duration::days(30);
/// At most one `LoginThrottled` per client within this time.
pub const THROTTLE_NOTE_EVERY: Duration = Duration::minutes(1);
/// How many familiar IP addresses (and, apart, devices) an account remembers.
const FAMILIAR_KEPT: usize = 32;
/// How many clients' last throttle notes are remembered (older ones are forgotten first).
const NOTES_KEPT: usize = 256;

pub use policy::{AttemptPolicy, ClassState, InFlight, LockoutPolicy, delay_after};

/// The attempts on one address (or one session's change-password checks).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginAttempts {
    pub familiar: ClassState,
    pub unfamiliar: ClassState,
    /// IP addresses that signed in successfully, with the last time (newest last).
    pub known_ips: Vec<(String, DateTime<Utc>)>,
    /// Device ids that signed in successfully, with the last time (newest last).
    pub known_devices: Vec<(String, DateTime<Utc>)>,
    /// The last recorded refusal of each recent client.
    pub throttle_notes: Vec<(String, DateTime<Utc>)>,
}

/// Whether an attempt may check the password now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// This attempt holds its class: check the password, then finish.
    Started,
    /// Another attempt of the class is in flight until `until` (wait and ask again).
    Busy { until: DateTime<Utc> },
    /// Refused without a check until `until`.
    Refused { reason: ThrottleReason, until: DateTime<Utc> },
}

impl Admission {
    /// Whole seconds until the refusal ends, at least 1 (`Retry-After`).
    pub fn retry_after_secs(until: DateTime<Utc>, at: DateTime<Utc>) -> u64 {
        let millis = (until - at).num_milliseconds().max(0);
        u64::try_from((millis + 999) / 1000).unwrap_or(1).max(1)
    }
}

#[derive(Clone, Debug)]
pub enum LoginAttemptCommand {
    /// Asks to check a password now. A refusal is recorded (coalesced) unless `may_wait`
    /// says the caller will wait for an attempt in flight and ask again.
    Begin {
        attempt_id: String,
        user_id: Option<String>,
        personal: SessionPersonal,
        policy: AttemptPolicy,
        may_wait: bool,
        at: DateTime<Utc>,
    },
    /// Records a password-reset request for an address without an account.
    RecordUnknownReset { personal: SessionPersonal, at: DateTime<Utc> },
    /// Records a sign-in that needed no check here (registration): the client becomes
    /// familiar.
    RecordSignIn { attempt_id: String, user_id: String, personal: SessionPersonal, at: DateTime<Utc> },
    /// Reports the check's outcome: `Some(Ok(user))`, `Some(Err(failure))`, or `None`
    /// when the attempt ended without a verdict.
    Finish {
        attempt_id: String,
        outcome: Option<Result<String, LoginFailure>>,
        user_id: Option<String>,
        personal: SessionPersonal,
        policy: AttemptPolicy,
        at: DateTime<Utc>,
    },
    /// Unlocks every class and clears the failure counts (a completed password reset).
    Unlock { user_id: Option<String>, at: DateTime<Utc> },
    /// Forgets everything about the address (its holder was erased).
    Clear { at: DateTime<Utc> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginAttemptError {}

/// The key a client's throttle notes are kept under.
fn client_key(personal: &SessionPersonal) -> String {
    match (&personal.ip_address, &personal.device_id) {
        (Some(ip), _) => format!("ip:{ip}"),
        (None, Some(device)) => format!("device:{device}"),
        (None, None) => "unknown".to_owned(),
    }
}

fn remember(list: &mut Vec<(String, DateTime<Utc>)>, key: &str, at: DateTime<Utc>, kept: usize) {
    list.retain(|(k, _)| k != key);
    list.push((key.to_owned(), at));
    if list.len() > kept {
        let excess = list.len() - kept;
        list.drain(..excess);
    }
}

impl LoginAttempts {
    /// Whether `personal`'s IP address or device signed in to the account within 30 days.
    pub fn is_familiar(&self, personal: &SessionPersonal, policy: AttemptPolicy, at: DateTime<Utc>) -> bool {
        if !policy.smart {
            return true;
        }
        let recent = |list: &[(String, DateTime<Utc>)], key: &Option<String>| {
            key.as_ref().is_some_and(|key| list.iter().any(|(k, t)| k == key && at - *t <= FAMILIAR_FOR))
        };
        recent(&self.known_ips, &personal.ip_address) || recent(&self.known_devices, &personal.device_id)
    }

    fn class(&self, familiar: bool) -> &ClassState {
        if familiar { &self.familiar } else { &self.unfamiliar }
    }

    fn class_mut(&mut self, familiar: bool) -> &mut ClassState {
        if familiar { &mut self.familiar } else { &mut self.unfamiliar }
    }

    /// Whether attempt `attempt_id` of `personal` may check now (after a `Begin`).
    pub fn admission(
        &self,
        attempt_id: &str,
        personal: &SessionPersonal,
        policy: AttemptPolicy,
        at: DateTime<Utc>,
    ) -> Admission {
        let class = self.class(self.is_familiar(personal, policy, at));
        if class.in_flight.as_ref().is_some_and(|f| f.attempt_id == attempt_id) {
            return Admission::Started;
        }
        if let Some(until) = class.locked(at) {
            return Admission::Refused { reason: ThrottleReason::Locked, until };
        }
        if let Some(until) = class.busy(at) {
            return Admission::Busy { until };
        }
        match class.delayed(policy, at) {
            Some(until) => Admission::Refused { reason: ThrottleReason::Delay, until },
            None => Admission::Started,
        }
    }

    /// Which class attempt `attempt_id` holds, if it still holds one.
    fn holder(&self, attempt_id: &str) -> Option<bool> {
        let holds = |c: &ClassState| c.in_flight.as_ref().is_some_and(|f| f.attempt_id == attempt_id);
        if holds(&self.familiar) {
            Some(true)
        } else if holds(&self.unfamiliar) {
            Some(false)
        } else {
            None
        }
    }

    fn begin(
        &self,
        attempt_id: String,
        user_id: Option<String>,
        personal: SessionPersonal,
        policy: AttemptPolicy,
        may_wait: bool,
        at: DateTime<Utc>,
    ) -> Vec<LoginAttemptEvent> {
        let familiar = self.is_familiar(&personal, policy, at);
        let (reason, until) = match self.admission(&attempt_id, &personal, policy, at) {
            Admission::Started => {
                let lease_until = at + IN_FLIGHT_LEASE;
                return vec![LoginAttemptEvent::LoginCheckStarted {
                    attempt_id,
                    familiar,
                    lease_until,
                    started_at: at,
                }];
            }
            Admission::Busy { .. } if may_wait => return Vec::new(),
            // Attempts in flight take milliseconds; the lease is only for crashes.
            Admission::Busy { .. } => (ThrottleReason::InFlight, at + Duration::seconds(1)),
            Admission::Refused { reason, until } => (reason, until),
        };
        let key = client_key(&personal);
        if self.throttle_notes.iter().any(|(k, t)| *k == key && at - *t < THROTTLE_NOTE_EVERY) {
            return Vec::new();
        }
        vec![LoginAttemptEvent::LoginThrottled {
            reason,
            user_id,
            personal,
            familiar,
            retry_after_secs: Admission::retry_after_secs(until, at),
            throttled_at: at,
        }]
    }

    fn finish(
        &self,
        attempt_id: String,
        outcome: Option<Result<String, LoginFailure>>,
        user_id: Option<String>,
        personal: SessionPersonal,
        policy: AttemptPolicy,
        at: DateTime<Utc>,
    ) -> Vec<LoginAttemptEvent> {
        let familiar = self.holder(&attempt_id).unwrap_or_else(|| self.is_familiar(&personal, policy, at));
        match outcome {
            None => vec![LoginAttemptEvent::LoginAttemptAbandoned { attempt_id, abandoned_at: at }],
            Some(Ok(user_id)) => vec![LoginAttemptEvent::LoginCheckSucceeded {
                attempt_id,
                user_id,
                personal,
                familiar,
                succeeded_at: at,
            }],
            Some(Err(reason)) => {
                let class = self.class(familiar);
                let failures = class.counted_failures(at) + 1;
                let lock = policy.lockout.filter(|l| failures >= l.threshold && class.locked(at).is_none());
                let mut events = vec![LoginAttemptEvent::LoginCheckFailed {
                    attempt_id,
                    reason,
                    user_id: user_id.clone(),
                    personal: personal.clone(),
                    familiar,
                    consecutive_failures: failures,
                    failed_at: at,
                }];
                if let Some(lock) = lock {
                    events.push(LoginAttemptEvent::LoginLocked {
                        user_id,
                        personal,
                        familiar,
                        failures,
                        locked_until: at + lock.lock_for,
                        locked_at: at,
                    });
                }
                events
            }
        }
    }

    fn decide(&self, command: LoginAttemptCommand) -> Vec<LoginAttemptEvent> {
        match command {
            LoginAttemptCommand::Begin { attempt_id, user_id, personal, policy, may_wait, at } => {
                self.begin(attempt_id, user_id, personal, policy, may_wait, at)
            }
            LoginAttemptCommand::RecordUnknownReset { personal, at } => {
                vec![LoginAttemptEvent::ResetRequestedForUnknownAddress { personal, requested_at: at }]
            }
            LoginAttemptCommand::RecordSignIn { attempt_id, user_id, personal, at } => {
                let familiar = self.is_familiar(&personal, AttemptPolicy::login(NO_LOCKOUT), at);
                vec![LoginAttemptEvent::LoginCheckSucceeded {
                    attempt_id,
                    user_id,
                    personal,
                    familiar,
                    succeeded_at: at,
                }]
            }
            LoginAttemptCommand::Finish { attempt_id, outcome, user_id, personal, policy, at } => {
                self.finish(attempt_id, outcome, user_id, personal, policy, at)
            }
            LoginAttemptCommand::Unlock { user_id, at } => {
                let clear = |c: &ClassState| c.consecutive_failures == 0 && c.locked_until.is_none();
                if clear(&self.familiar) && clear(&self.unfamiliar) {
                    return Vec::new();
                }
                vec![LoginAttemptEvent::AccountUnlocked { user_id, unlocked_at: at }]
            }
            LoginAttemptCommand::Clear { .. } if *self == Self::default() => Vec::new(),
            LoginAttemptCommand::Clear { at } => vec![LoginAttemptEvent::AttemptsCleared { cleared_at: at }],
        }
    }
}

/// Familiarity does not depend on the lockout settings.
const NO_LOCKOUT: LockoutPolicy = LockoutPolicy { threshold: u32::MAX, lock_for: Duration::zero() };

impl Aggregate for LoginAttempts {
    const TYPE: &'static str = "login_attempts";
    type Command = LoginAttemptCommand;
    type Event = LoginAttemptEvent;
    type Error = LoginAttemptError;
    type Services = ();

    async fn handle(
        &mut self,
        command: LoginAttemptCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), LoginAttemptError> {
        for event in self.decide(command) {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: LoginAttemptEvent) {
        match event {
            LoginAttemptEvent::LoginCheckStarted { attempt_id, familiar, lease_until, .. } => {
                self.class_mut(familiar).in_flight = Some(InFlight { attempt_id, lease_until });
            }
            LoginAttemptEvent::LoginCheckFailed {
                attempt_id,
                familiar,
                consecutive_failures,
                failed_at,
                ..
            } => {
                let class = self.class_mut(familiar);
                class.release(&attempt_id);
                class.consecutive_failures = consecutive_failures;
                class.last_failure_at = Some(failed_at);
                if class.locked_until.is_some_and(|until| failed_at >= until) {
                    class.locked_until = None;
                }
            }
            LoginAttemptEvent::LoginCheckSucceeded {
                attempt_id, personal, familiar, succeeded_at, ..
            } => {
                let class = self.class_mut(familiar);
                class.release(&attempt_id);
                class.reset_failures();
                if let Some(ip) = &personal.ip_address {
                    remember(&mut self.known_ips, ip, succeeded_at, FAMILIAR_KEPT);
                }
                if let Some(device) = &personal.device_id {
                    remember(&mut self.known_devices, device, succeeded_at, FAMILIAR_KEPT);
                }
            }
            LoginAttemptEvent::LoginThrottled { personal, throttled_at, .. } => {
                self.throttle_notes.retain(|(_, t)| throttled_at - *t < THROTTLE_NOTE_EVERY);
                remember(&mut self.throttle_notes, &client_key(&personal), throttled_at, NOTES_KEPT);
            }
            LoginAttemptEvent::LoginLocked { familiar, locked_until, .. } => {
                self.class_mut(familiar).locked_until = Some(locked_until);
            }
            LoginAttemptEvent::LoginAttemptAbandoned { attempt_id, .. } => {
                self.familiar.release(&attempt_id);
                self.unfamiliar.release(&attempt_id);
            }
            LoginAttemptEvent::AccountUnlocked { .. } => {
                self.familiar.reset_failures();
                self.unfamiliar.reset_failures();
            }
            LoginAttemptEvent::ResetRequestedForUnknownAddress { .. } => {}
            LoginAttemptEvent::AttemptsCleared { .. } => *self = Self::default(),
            // Written before client classes: the unfamiliar class, as those events meant.
            LoginAttemptEvent::LoginAttemptStarted { attempt_id, started_at } => {
                let lease_until = started_at + LEGACY_IN_FLIGHT;
                self.unfamiliar.in_flight = Some(InFlight { attempt_id, lease_until });
            }
            LoginAttemptEvent::LoginFailed { reason, consecutive_failures, failed_at, .. } => {
                if reason != LoginFailure::Locked {
                    self.unfamiliar.consecutive_failures = consecutive_failures;
                    self.unfamiliar.last_failure_at = Some(failed_at);
                }
                if !matches!(reason, LoginFailure::Throttled | LoginFailure::Locked) {
                    self.unfamiliar.in_flight = None;
                }
            }
            LoginAttemptEvent::LoginSucceeded { .. } => {
                self.unfamiliar.reset_failures();
                self.unfamiliar.in_flight = None;
            }
            LoginAttemptEvent::AccountLocked { locked_until, .. } => {
                self.unfamiliar.locked_until = Some(locked_until);
            }
        }
    }
}

mod policy;
#[cfg(test)]
mod tests;
