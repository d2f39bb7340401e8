//! Properties of the session and login-attempt aggregates over random command sequences
//! (proptest; the credit account's are in `src/commands/credit_account/tests`). Each
//! command runs as the command bus runs it: its events are applied at once.
//!
//! Session: started once and first; revoked is final (nothing happens after it); a refused
//! command changes nothing; each token rotates at most once; a spent token presented again
//! revokes the session unless it is the grace-window retry, which changes nothing; an
//! unknown token or an expired session never refreshes.
//!
//! Login attempts: at most one check in flight per client class; no check starts while
//! the class is locked or within the delay after its last failed check; a refusal never
//! counts as a failure; failures count up by one per failed check, restart after a lock
//! runs out, reset on success, and lock the class exactly at the threshold; failures of
//! unfamiliar clients never touch the familiar class; at most one refusal note per client
//! and minute.
//!
//! A shrunk failing case belongs in the aggregate's own tests as a plain test.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use mana_core_auth::commands::login_attempts::{
    AttemptPolicy, ClassState, LockoutPolicy, LoginAttemptCommand, LoginAttempts, THROTTLE_NOTE_EVERY,
};
use mana_core_auth::commands::session::{Session, SessionCommand, SessionError};
use mana_core_auth::domain::TokenHash;
use mana_core_auth::events::auth::{
    LoginAttemptEvent, LoginFailure, RevokeReason, SessionEvent, SessionOrigin, SessionPersonal,
};
use proptest::prelude::*;

fn run<A: Aggregate<Services = ()>>(
    aggregate: &mut A,
    command: A::Command,
) -> Result<Vec<A::Event>, A::Error> {
    futures::executor::block_on(async {
        let sink = EventSink::default();
        aggregate.handle(command, &(), &sink).await?;
        Ok(sink.collect().await)
    })
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z").expect("time").with_timezone(&Utc)
}

/// Time steps from "at once" to "past the refresh token's life".
fn pause() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::zero()),
        Just(Duration::seconds(2)),
        Just(Duration::seconds(30)),
        Just(Duration::hours(1)),
        Just(Duration::days(3)),
        Just(Duration::days(8)),
    ]
}

// The session.

#[derive(Clone, Debug)]
enum SessionStep {
    Start,
    /// Presents the `nth` token issued so far (counted from the newest), or an unknown one.
    Refresh {
        nth: Option<u8>,
        retry_successor: bool,
        admits: bool,
    },
    Revoke,
}

fn session_step() -> impl Strategy<Value = SessionStep> {
    prop_oneof![
        1 => Just(SessionStep::Start),
        6 => (proptest::option::weighted(0.9, 0u8..4), any::<bool>(), proptest::bool::weighted(0.9))
            .prop_map(|(nth, retry_successor, admits)| SessionStep::Refresh { nth, retry_successor, admits }),
        1 => Just(SessionStep::Revoke),
    ]
}

fn hash(n: usize) -> TokenHash {
    TokenHash(format!("hash-{n}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_the_session_state_machine(
        steps in proptest::collection::vec((session_step(), pause()), 1..40),
    ) {
        let grace = Duration::seconds(10);
        let mut session = Session::default();
        let mut at = t0();
        // Tokens in the order they were issued; the last one is the newest.
        let mut issued: Vec<TokenHash> = Vec::new();
        let mut rotated: HashSet<String> = HashSet::new();
        let mut revoked_with: Option<(RevokeReason, DateTime<Utc>)> = None;
        for (n, (step, wait)) in steps.into_iter().enumerate() {
            at += wait;
            let before = session.clone();
            let (command, presented) = match &step {
                SessionStep::Start => (SessionCommand::Start {
                    session_id: "s1".into(),
                    user_id: "u1".into(),
                    origin: SessionOrigin::Login,
                    refresh_hash: hash(n),
                    remember_me: false,
                    personal: SessionPersonal::default(),
                    at,
                }, None),
                SessionStep::Refresh { nth, retry_successor, admits } => {
                    let presented = nth
                        .and_then(|k| issued.len().checked_sub(1 + usize::from(k)))
                        .map_or_else(|| TokenHash(format!("never-issued-{n}")), |i| issued[i].clone());
                    // A concurrent retry presents the previous token with the successor it
                    // was given; every other refresh brings a fresh successor.
                    let successor = match (retry_successor, issued.last()) {
                        (true, Some(newest)) if *newest != presented => newest.clone(),
                        _ => hash(n),
                    };
                    (SessionCommand::Refresh {
                        presented: presented.clone(),
                        successor,
                        grace,
                        user_admits: *admits,
                        personal: SessionPersonal::default(),
                        at,
                    }, Some(presented))
                }
                SessionStep::Revoke => (SessionCommand::Revoke { reason: RevokeReason::Logout, at }, None),
            };
            let was_started = before.exists();
            let spent_before = presented.as_ref().is_some_and(|p| rotated.contains(&p.0));
            let expired = before.refresh_expires_at.is_some_and(|t| at > t);
            match run(&mut session, command) {
                Ok(events) => {
                    if revoked_with.is_some() {
                        prop_assert!(events.is_empty(), "nothing happens after a revocation: {:?}", events);
                    }
                    for event in &events {
                        match event {
                            SessionEvent::SessionStarted { refresh_hash, .. } => {
                                prop_assert!(!was_started, "started twice");
                                issued.push(refresh_hash.clone());
                            }
                            SessionEvent::SessionRefreshed { previous_hash, refresh_hash, .. } => {
                                prop_assert!(!expired, "an expired session refreshed");
                                prop_assert_eq!(Some(previous_hash), issued.last(), "only the newest token rotates");
                                prop_assert!(rotated.insert(previous_hash.0.clone()), "a token rotated twice");
                                issued.push(refresh_hash.clone());
                            }
                            SessionEvent::RefreshTokenReuseDetected { presented_hash, .. } => {
                                prop_assert!(rotated.contains(&presented_hash.0), "reuse of a token never spent");
                            }
                            SessionEvent::SessionRevoked { reason, revoked_at, .. } => {
                                prop_assert!(revoked_with.is_none());
                                revoked_with = Some((*reason, *revoked_at));
                            }
                        }
                    }
                    // A spent token presented again ends the session, except the
                    // grace-window retry, which changes nothing.
                    if spent_before {
                        prop_assert!(
                            events.is_empty() || session.revoked.is_some(),
                            "a spent token was accepted: {:?}", events
                        );
                        if events.is_empty() {
                            prop_assert_eq!(&session, &before, "the grace retry changes nothing");
                        }
                    }
                }
                Err(error) => {
                    prop_assert_eq!(&session, &before, "a refused command changes nothing");
                    match error {
                        SessionError::NotFound => prop_assert!(!was_started),
                        SessionError::AlreadyStarted => prop_assert!(was_started),
                        SessionError::Revoked => prop_assert!(revoked_with.is_some()),
                        SessionError::Expired => prop_assert!(expired),
                        SessionError::InvalidToken => {
                            let presented = presented.expect("a refresh");
                            prop_assert!(!spent_before, "a spent token is reuse, not an unknown token: {:?}", presented);
                        }
                    }
                }
            }
            prop_assert_eq!(&session.revoked, &revoked_with, "revoked is final and recorded once");
            if let Some((reason, _)) = &session.revoked {
                prop_assert!(session.exists(), "only a started session is revoked: {:?}", reason);
            }
        }
    }
}

// Login attempts.

#[derive(Clone, Debug)]
enum AttemptStep {
    /// Client `client` (0 and 1 have signed in before, 2..5 never) asks to check.
    Begin {
        client: u8,
        may_wait: bool,
    },
    /// The oldest attempt still unfinished reports `outcome` (true: right password).
    Finish {
        outcome: Option<bool>,
    },
    Unlock,
}

fn attempt_step() -> impl Strategy<Value = AttemptStep> {
    prop_oneof![
        4 => (0u8..6, any::<bool>()).prop_map(|(client, may_wait)| AttemptStep::Begin { client, may_wait }),
        4 => proptest::option::weighted(0.9, proptest::bool::weighted(0.2))
            .prop_map(|outcome| AttemptStep::Finish { outcome }),
        1 => Just(AttemptStep::Unlock),
    ]
}

fn client(n: u8) -> SessionPersonal {
    SessionPersonal { ip_address: Some(format!("198.51.100.{n}")), ..SessionPersonal::default() }
}

fn class(attempts: &LoginAttempts, familiar: bool) -> &ClassState {
    if familiar { &attempts.familiar } else { &attempts.unfamiliar }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_attempts_keep_the_login_attempt_rules(
        threshold in 2u32..6,
        steps in proptest::collection::vec((attempt_step(), pause()), 1..60),
    ) {
        let lockout = LockoutPolicy { threshold, lock_for: Duration::minutes(15) };
        let policy = AttemptPolicy::login(lockout);
        let mut attempts = LoginAttempts::default();
        let mut at = t0();
        // Clients 0 and 1 signed in before: they are familiar.
        for familiar in 0..2 {
            let command = LoginAttemptCommand::RecordSignIn {
                attempt_id: format!("signin-{familiar}"),
                user_id: "u1".into(),
                personal: client(familiar),
                at,
            };
            run(&mut attempts, command).expect("infallible");
        }
        let mut open: Vec<(String, u8)> = Vec::new();
        let mut familiar_clients: HashSet<u8> = HashSet::from([0, 1]);
        let mut last_note: std::collections::HashMap<String, DateTime<Utc>> = Default::default();
        for (n, (step, wait)) in steps.into_iter().enumerate() {
            // Small steps keep attempts in flight and delays running; the rest jump ahead.
            at += if wait > Duration::hours(1) { Duration::minutes(20) } else { wait };
            let before = attempts.clone();
            let mut finishing = None;
            let command = match &step {
                AttemptStep::Begin { client: c, may_wait } => LoginAttemptCommand::Begin {
                    attempt_id: format!("a{n}"),
                    user_id: Some("u1".into()),
                    personal: client(*c),
                    policy,
                    may_wait: *may_wait,
                    at,
                },
                AttemptStep::Finish { outcome } => {
                    let Some((attempt_id, c)) = open.first().cloned() else { continue };
                    open.remove(0);
                    finishing = Some(c);
                    LoginAttemptCommand::Finish {
                        attempt_id,
                        outcome: outcome.map(|right| if right { Ok("u1".into()) } else { Err(LoginFailure::BadPassword) }),
                        user_id: Some("u1".into()),
                        personal: client(c),
                        policy,
                        at,
                    }
                }
                AttemptStep::Unlock => LoginAttemptCommand::Unlock { user_id: Some("u1".into()), at },
            };
            let events = run(&mut attempts, command).expect("infallible");
            for event in &events {
                match event {
                    LoginAttemptEvent::LoginCheckStarted { attempt_id, familiar, .. } => {
                        let c = class(&before, *familiar);
                        prop_assert!(
                            c.in_flight.as_ref().is_none_or(|f| at >= f.lease_until),
                            "two checks in flight in one class"
                        );
                        prop_assert!(c.locked_until.is_none_or(|until| at >= until), "a check started while locked");
                        if let Some(last) = c.last_failure_at
                            && c.locked_until.is_none_or(|until| at < until)
                        {
                            let delay = mana_core_auth::commands::login_attempts::delay_after(c.consecutive_failures);
                            prop_assert!(at >= last + delay, "a check started within the delay");
                        }
                        if let AttemptStep::Begin { client: c, .. } = step {
                            prop_assert_eq!(*familiar, familiar_clients.contains(&c), "familiarity is the client's");
                            open.push((attempt_id.clone(), c));
                        }
                    }
                    LoginAttemptEvent::LoginThrottled { personal, throttled_at, .. } => {
                        let key = personal.ip_address.clone().unwrap_or_default();
                        if let Some(last) = last_note.get(&key) {
                            prop_assert!(*throttled_at - *last >= THROTTLE_NOTE_EVERY, "two notes within a minute");
                        }
                        last_note.insert(key, *throttled_at);
                    }
                    LoginAttemptEvent::LoginCheckFailed { familiar, consecutive_failures, .. } => {
                        let c = class(&before, *familiar);
                        let restarted = c.locked_until.is_some_and(|until| at >= until);
                        let expected = if restarted { 1 } else { c.consecutive_failures + 1 };
                        prop_assert_eq!(*consecutive_failures, expected, "failures count up by one");
                        let other = class(&before, !*familiar);
                        prop_assert_eq!(class(&attempts, !*familiar), other, "the other class is untouched");
                    }
                    LoginAttemptEvent::LoginLocked { familiar, failures, .. } => {
                        prop_assert!(*failures >= threshold, "locked below the threshold");
                        prop_assert!(class(&before, *familiar).locked_until.is_none_or(|u| at >= u));
                    }
                    _ => {}
                }
            }
            let failed = events.iter().find_map(|e| match e {
                LoginAttemptEvent::LoginCheckFailed { consecutive_failures, familiar, .. } => Some((*consecutive_failures, *familiar)),
                _ => None,
            });
            if let Some((failures, familiar)) = failed {
                let locked = events.iter().any(|e| matches!(e, LoginAttemptEvent::LoginLocked { .. }));
                let was_locked = class(&before, familiar).locked_until.is_some_and(|u| at < u);
                prop_assert_eq!(locked, failures >= threshold && !was_locked, "a lock exactly at the threshold");
            }
            let refused_only = events.iter().all(|e| matches!(e, LoginAttemptEvent::LoginThrottled { .. }));
            if refused_only {
                for familiar in [true, false] {
                    let (now, then) = (class(&attempts, familiar), class(&before, familiar));
                    prop_assert_eq!(now.consecutive_failures, then.consecutive_failures, "a refusal is no failure");
                    prop_assert_eq!(now.locked_until, then.locked_until);
                }
            }
            if events.iter().any(|e| matches!(e, LoginAttemptEvent::LoginCheckSucceeded { .. })) {
                let familiar = events.iter().find_map(|e| match e {
                    LoginAttemptEvent::LoginCheckSucceeded { familiar, .. } => Some(*familiar),
                    _ => None,
                }).expect("a success");
                prop_assert_eq!(class(&attempts, familiar).consecutive_failures, 0, "a success resets the count");
                familiar_clients.extend(finishing);
            }
        }
    }
}
