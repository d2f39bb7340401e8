//! Login attempts on one e-mail address, registered or not (the id is the address's
//! claim id): brute-force protection that holds under parallel attempts.
//!
//! An attempt must begin here before the password is checked. It may begin only when
//! the address is not locked, no other attempt on it is in flight, and the delay after
//! the last failure has passed (1 s, 3 s, 5 s, then 10 s). Otherwise it is refused
//! without a password check and counts as a failure; at the threshold the address is
//! locked for the configured time. A success resets the count. Because attempts begin on
//! one aggregate, parallel attempts are serialised: a storm of concurrent guesses gets
//! at most one password check at a time.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::events::auth::{LoginAttemptEvent, LoginFailure, SessionPersonal};

/// How long an attempt may stay in flight before it is considered abandoned.
const IN_FLIGHT_EXPIRY: Duration = Duration::seconds(30);

/// The delay after `failures` consecutive failures.
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

/// The attempts on one address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginAttempts {
    pub consecutive_failures: u32,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub in_flight: Option<(String, DateTime<Utc>)>,
    pub locked_until: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug)]
pub enum LoginAttemptCommand {
    /// Asks to check a password now.
    Begin {
        attempt_id: String,
        user_id: Option<String>,
        personal: SessionPersonal,
        policy: LockoutPolicy,
        at: DateTime<Utc>,
    },
    /// Records a password-reset request for an address without an account.
    RecordUnknownReset { personal: SessionPersonal, at: DateTime<Utc> },
    /// Reports the check's outcome: `Some(Ok(user))`, `Some(Err(failure))`, or `None`
    /// when the attempt ended without a verdict.
    Finish {
        attempt_id: String,
        outcome: Option<Result<String, LoginFailure>>,
        user_id: Option<String>,
        personal: SessionPersonal,
        policy: LockoutPolicy,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginAttemptError {}

impl LoginAttempts {
    /// Whether the events of a `Begin` allow the password check.
    pub fn began(events: &[LoginAttemptEvent]) -> bool {
        events.iter().any(|e| matches!(e, LoginAttemptEvent::LoginAttemptStarted { .. }))
    }

    fn failure(
        &self,
        reason: LoginFailure,
        user_id: Option<String>,
        personal: SessionPersonal,
        policy: LockoutPolicy,
        at: DateTime<Utc>,
    ) -> Vec<LoginAttemptEvent> {
        let failures = self.consecutive_failures + 1;
        let mut events = vec![LoginAttemptEvent::LoginFailed {
            reason,
            user_id: user_id.clone(),
            personal,
            consecutive_failures: failures,
            failed_at: at,
        }];
        let locked = self.locked_until.is_some_and(|until| at < until);
        if failures >= policy.threshold && !locked {
            events.push(LoginAttemptEvent::AccountLocked {
                user_id,
                failures,
                locked_until: at + policy.lock_for,
                locked_at: at,
            });
        }
        events
    }

    fn decide(&self, command: LoginAttemptCommand) -> Vec<LoginAttemptEvent> {
        match command {
            LoginAttemptCommand::Begin { attempt_id, user_id, personal, policy, at } => {
                let mut events = Vec::new();
                let mut state = self.clone();
                if let Some(until) = self.locked_until {
                    if at < until {
                        return vec![LoginAttemptEvent::LoginFailed {
                            reason: LoginFailure::Locked,
                            user_id,
                            personal,
                            consecutive_failures: self.consecutive_failures,
                            failed_at: at,
                        }];
                    }
                    let unlocked =
                        LoginAttemptEvent::AccountUnlocked { user_id: user_id.clone(), unlocked_at: at };
                    state.apply(unlocked.clone());
                    events.push(unlocked);
                }
                let busy =
                    state.in_flight.as_ref().is_some_and(|(_, started)| at - *started < IN_FLIGHT_EXPIRY);
                let waiting =
                    state.last_failure_at.is_some_and(|t| at < t + delay_after(state.consecutive_failures));
                if busy || waiting {
                    events.extend(state.failure(LoginFailure::Throttled, user_id, personal, policy, at));
                } else {
                    events.push(LoginAttemptEvent::LoginAttemptStarted { attempt_id, started_at: at });
                }
                events
            }
            LoginAttemptCommand::RecordUnknownReset { personal, at } => {
                vec![LoginAttemptEvent::ResetRequestedForUnknownAddress { personal, requested_at: at }]
            }
            LoginAttemptCommand::Finish { attempt_id, outcome, user_id, personal, policy, at } => {
                match outcome {
                    Some(Ok(user_id)) => {
                        vec![LoginAttemptEvent::LoginSucceeded { attempt_id, user_id, succeeded_at: at }]
                    }
                    Some(Err(reason)) => self.failure(reason, user_id, personal, policy, at),
                    None => vec![LoginAttemptEvent::LoginAttemptAbandoned { attempt_id, abandoned_at: at }],
                }
            }
        }
    }
}

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
            LoginAttemptEvent::LoginAttemptStarted { attempt_id, started_at } => {
                self.in_flight = Some((attempt_id, started_at));
            }
            LoginAttemptEvent::LoginFailed { reason, consecutive_failures, failed_at, .. } => {
                if reason != LoginFailure::Locked {
                    self.consecutive_failures = consecutive_failures;
                    self.last_failure_at = Some(failed_at);
                }
                if !matches!(reason, LoginFailure::Throttled | LoginFailure::Locked) {
                    self.in_flight = None;
                }
            }
            LoginAttemptEvent::LoginAttemptAbandoned { attempt_id, .. } => {
                if self.in_flight.as_ref().is_some_and(|(id, _)| *id == attempt_id) {
                    self.in_flight = None;
                }
            }
            LoginAttemptEvent::LoginSucceeded { .. } => {
                self.consecutive_failures = 0;
                self.last_failure_at = None;
                self.in_flight = None;
            }
            LoginAttemptEvent::AccountLocked { locked_until, .. } => self.locked_until = Some(locked_until),
            LoginAttemptEvent::ResetRequestedForUnknownAddress { .. } => {}
            LoginAttemptEvent::AccountUnlocked { .. } => {
                self.locked_until = None;
                self.consecutive_failures = 0;
                self.last_failure_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LockoutPolicy = LockoutPolicy { threshold: 5, lock_for: Duration::minutes(15) };

    fn run(state: &mut LoginAttempts, command: LoginAttemptCommand) -> Vec<LoginAttemptEvent> {
        let events = state.decide(command);
        for event in events.clone() {
            state.apply(event);
        }
        events
    }

    fn begin(id: &str, at: DateTime<Utc>) -> LoginAttemptCommand {
        LoginAttemptCommand::Begin {
            attempt_id: id.into(),
            user_id: None,
            personal: SessionPersonal::default(),
            policy: POLICY,
            at,
        }
    }

    fn fail(id: &str, at: DateTime<Utc>) -> LoginAttemptCommand {
        LoginAttemptCommand::Finish {
            attempt_id: id.into(),
            outcome: Some(Err(LoginFailure::BadPassword)),
            user_id: None,
            personal: SessionPersonal::default(),
            policy: POLICY,
            at,
        }
    }

    #[test]
    fn only_one_attempt_at_a_time_and_parallel_ones_count_as_failures() {
        let t = Utc::now();
        let mut state = LoginAttempts::default();
        assert!(LoginAttempts::began(&run(&mut state, begin("a", t))));
        for i in 0..4 {
            assert!(!LoginAttempts::began(&run(&mut state, begin(&format!("p{i}"), t))), "in flight");
        }
        assert_eq!(state.consecutive_failures, 4);
        let events = run(&mut state, fail("a", t));
        assert!(events.iter().any(|e| matches!(e, LoginAttemptEvent::AccountLocked { .. })), "{events:?}");
        assert!(!LoginAttempts::began(&run(&mut state, begin("b", t + Duration::minutes(14)))), "locked");
        let after = run(&mut state, begin("c", t + Duration::minutes(16)));
        assert!(
            matches!(after[0], LoginAttemptEvent::AccountUnlocked { .. }) && LoginAttempts::began(&after)
        );
    }

    #[test]
    fn failures_add_a_growing_delay_and_a_success_resets_it() {
        let t = Utc::now();
        let mut state = LoginAttempts::default();
        run(&mut state, begin("a", t));
        run(&mut state, fail("a", t));
        assert!(
            !LoginAttempts::began(&run(&mut state, begin("b", t + Duration::milliseconds(500)))),
            "within 1 s"
        );
        // That refusal was the second failure: the delay is now 3 s from it.
        let t2 = t + Duration::milliseconds(500);
        assert!(!LoginAttempts::began(&run(&mut state, begin("c", t2 + Duration::seconds(2)))));
        let t3 = t2 + Duration::seconds(2);
        assert!(LoginAttempts::began(&run(&mut state, begin("d", t3 + Duration::seconds(6)))));
        run(
            &mut state,
            LoginAttemptCommand::Finish {
                attempt_id: "d".into(),
                outcome: Some(Ok("u".into())),
                user_id: Some("u".into()),
                personal: SessionPersonal::default(),
                policy: POLICY,
                at: t3 + Duration::seconds(6),
            },
        );
        assert_eq!(state.consecutive_failures, 0);
        assert!(LoginAttempts::began(&run(&mut state, begin("e", t3 + Duration::seconds(6)))));
    }
}
