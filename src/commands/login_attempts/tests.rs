//! Rules of the login-attempts aggregate, given/when/then.

use cqrs_es::test::TestFramework;

use super::*;

const LOCKOUT: LockoutPolicy = LockoutPolicy { threshold: 5, lock_for: Duration::minutes(15) };

fn policy() -> AttemptPolicy {
    AttemptPolicy::login(LOCKOUT)
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z").expect("time").with_timezone(&Utc)
}

fn client(ip: &str) -> SessionPersonal {
    SessionPersonal { ip_address: Some(ip.into()), ..Default::default() }
}

fn begin(id: &str, ip: &str, may_wait: bool, at: DateTime<Utc>) -> LoginAttemptCommand {
    LoginAttemptCommand::Begin {
        attempt_id: id.into(),
        user_id: Some("u".into()),
        personal: client(ip),
        policy: policy(),
        may_wait,
        at,
    }
}

fn finish(
    id: &str,
    ip: &str,
    outcome: Option<Result<String, LoginFailure>>,
    at: DateTime<Utc>,
) -> LoginAttemptCommand {
    LoginAttemptCommand::Finish {
        attempt_id: id.into(),
        outcome,
        user_id: Some("u".into()),
        personal: client(ip),
        policy: policy(),
        at,
    }
}

fn started(id: &str, familiar: bool, at: DateTime<Utc>) -> LoginAttemptEvent {
    LoginAttemptEvent::LoginCheckStarted {
        attempt_id: id.into(),
        familiar,
        lease_until: at + IN_FLIGHT_LEASE,
        started_at: at,
    }
}

fn failed(id: &str, ip: &str, familiar: bool, n: u32, at: DateTime<Utc>) -> LoginAttemptEvent {
    LoginAttemptEvent::LoginCheckFailed {
        attempt_id: id.into(),
        reason: LoginFailure::BadPassword,
        user_id: Some("u".into()),
        personal: client(ip),
        familiar,
        consecutive_failures: n,
        failed_at: at,
    }
}

fn succeeded(id: &str, ip: &str, familiar: bool, at: DateTime<Utc>) -> LoginAttemptEvent {
    LoginAttemptEvent::LoginCheckSucceeded {
        attempt_id: id.into(),
        user_id: "u".into(),
        personal: client(ip),
        familiar,
        succeeded_at: at,
    }
}

fn throttled(
    reason: ThrottleReason,
    ip: &str,
    familiar: bool,
    secs: u64,
    at: DateTime<Utc>,
) -> LoginAttemptEvent {
    LoginAttemptEvent::LoginThrottled {
        reason,
        user_id: Some("u".into()),
        personal: client(ip),
        familiar,
        retry_after_secs: secs,
        throttled_at: at,
    }
}

/// `n` failed checks from one unfamiliar address, each after the previous one's delay.
fn unfamiliar_failures(n: u32) -> (Vec<LoginAttemptEvent>, DateTime<Utc>) {
    let mut events = Vec::new();
    let mut at = t0();
    for i in 1..=n {
        let id = format!("a{i}");
        events.push(started(&id, false, at));
        events.push(failed(&id, "10.0.0.9", false, i, at));
        at += delay_after(i);
    }
    (events, at)
}

/// Five failed checks from one unfamiliar address and the lock they caused.
fn locked_unfamiliar() -> (Vec<LoginAttemptEvent>, DateTime<Utc>) {
    let (mut events, at) = unfamiliar_failures(5);
    events.push(LoginAttemptEvent::LoginLocked {
        user_id: Some("u".into()),
        personal: client("10.0.0.9"),
        familiar: false,
        failures: 5,
        locked_until: at + LOCKOUT.lock_for,
        locked_at: at,
    });
    (events, at)
}

fn state_after(events: Vec<LoginAttemptEvent>) -> LoginAttempts {
    let mut state = LoginAttempts::default();
    for event in events {
        state.apply(event);
    }
    state
}

#[test]
fn a_first_attempt_starts_a_check_with_a_lease() {
    TestFramework::<LoginAttempts>::with(())
        .given_no_previous_events()
        .when(begin("a", "10.0.0.9", true, t0()))
        .then_expect_events(vec![started("a", false, t0())]);
}

#[test]
fn an_attempt_of_the_same_class_in_flight_makes_a_waiting_caller_wait_without_a_record() {
    TestFramework::<LoginAttempts>::with(())
        .given(vec![started("a", false, t0())])
        .when(begin("b", "10.0.0.8", true, t0()))
        .then_expect_events(vec![]);
}

#[test]
fn a_caller_that_may_not_wait_any_longer_is_throttled_and_that_is_recorded() {
    TestFramework::<LoginAttempts>::with(())
        .given(vec![started("a", false, t0())])
        .when(begin("b", "10.0.0.8", false, t0()))
        .then_expect_events(vec![throttled(ThrottleReason::InFlight, "10.0.0.8", false, 1, t0())]);
}

#[test]
fn a_refusal_never_counts_as_a_failure() {
    let (mut events, at) = unfamiliar_failures(1);
    events.push(throttled(ThrottleReason::Delay, "10.0.0.9", false, 1, at - Duration::milliseconds(500)));
    let state = state_after(events);
    assert_eq!(state.unfamiliar.consecutive_failures, 1);
    assert_eq!(state.admission("z", &client("10.0.0.9"), policy(), at), Admission::Started);
}

#[test]
fn an_attempt_inside_the_delay_is_refused_with_the_time_left() {
    let (events, _) = unfamiliar_failures(2);
    // The second failure was at t0 + 1 s; its delay is 3 s.
    let at = t0() + Duration::milliseconds(2500);
    TestFramework::<LoginAttempts>::with(())
        .given(events)
        .when(begin("c", "10.0.0.7", false, at))
        .then_expect_events(vec![throttled(ThrottleReason::Delay, "10.0.0.7", false, 2, at)]);
}

#[test]
fn refusals_are_recorded_at_most_once_per_client_and_minute() {
    let (mut events, locked_at) = locked_unfamiliar();
    let at = locked_at + Duration::seconds(10);
    events.push(throttled(ThrottleReason::Locked, "10.0.0.7", false, 890, at));
    TestFramework::<LoginAttempts>::with(())
        .given(events.clone())
        .when(begin("c", "10.0.0.7", false, at + Duration::seconds(59)))
        .then_expect_events(vec![]);
    // Another client in the same minute is recorded.
    let other = begin("d", "10.0.0.6", false, at + Duration::seconds(1));
    let mut state = state_after(events.clone());
    assert_eq!(state.decide(other).len(), 1);
    // The same client a minute later is recorded again (if still refused).
    state = state_after(events);
    let later = at + Duration::seconds(60);
    assert_eq!(state.decide(begin("e", "10.0.0.7", false, later)).len(), 1);
}

#[test]
fn the_threshold_of_failed_checks_locks_the_class_and_a_lock_refuses_without_a_check() {
    let (mut events, at) = unfamiliar_failures(4);
    events.push(started("a5", false, at));
    TestFramework::<LoginAttempts>::with(())
        .given(events.clone())
        .when(finish("a5", "10.0.0.9", Some(Err(LoginFailure::BadPassword)), at))
        .then_expect_events(vec![
            failed("a5", "10.0.0.9", false, 5, at),
            LoginAttemptEvent::LoginLocked {
                user_id: Some("u".into()),
                personal: client("10.0.0.9"),
                familiar: false,
                failures: 5,
                locked_until: at + LOCKOUT.lock_for,
                locked_at: at,
            },
        ]);
    let mut state = state_after(events);
    for event in state.decide(finish("a5", "10.0.0.9", Some(Err(LoginFailure::BadPassword)), at)) {
        state.apply(event);
    }
    let later = at + Duration::minutes(14);
    assert_eq!(
        state.admission("x", &client("10.0.0.1"), policy(), later),
        Admission::Refused { reason: ThrottleReason::Locked, until: at + LOCKOUT.lock_for }
    );
    // After the lock, the count starts again: one more failure does not lock again.
    let after = at + Duration::minutes(16);
    assert_eq!(state.admission("y", &client("10.0.0.1"), policy(), after), Admission::Started);
    let again = state.decide(finish("y", "10.0.0.1", Some(Err(LoginFailure::BadPassword)), after));
    assert_eq!(again, vec![failed("y", "10.0.0.1", false, 1, after)]);
}

#[test]
fn a_familiar_client_is_not_held_by_the_unfamiliar_class_lock_or_attempt_in_flight() {
    let mut events = vec![started("own", false, t0()), succeeded("own", "10.0.0.1", false, t0())];
    let (storm, at) = locked_unfamiliar();
    events.extend(storm);
    events.push(started("attacker", false, at));
    let state = state_after(events.clone());
    assert!(state.unfamiliar.locked(at).is_some());
    assert!(state.is_familiar(&client("10.0.0.1"), policy(), at));
    TestFramework::<LoginAttempts>::with(())
        .given(events)
        .when(begin("owner", "10.0.0.1", true, at))
        .then_expect_events(vec![started("owner", true, at)]);
}

#[test]
fn a_device_id_that_signed_in_is_familiar_from_any_address_for_thirty_days() {
    let device = SessionPersonal {
        device_id: Some("phone-1".into()),
        ip_address: Some("10.0.0.1".into()),
        ..Default::default()
    };
    let mut state = LoginAttempts::default();
    state.apply(LoginAttemptEvent::LoginCheckSucceeded {
        attempt_id: "a".into(),
        user_id: "u".into(),
        personal: device,
        familiar: false,
        succeeded_at: t0(),
    });
    let roaming = SessionPersonal {
        device_id: Some("phone-1".into()),
        ip_address: Some("10.9.9.9".into()),
        ..Default::default()
    };
    assert!(state.is_familiar(&roaming, policy(), t0() + Duration::days(30)));
    assert!(!state.is_familiar(&roaming, policy(), t0() + Duration::days(31)));
    assert!(!state.is_familiar(&client("10.0.0.1"), policy(), t0() + Duration::days(31)));
    assert!(!state.is_familiar(&client("10.0.0.2"), policy(), t0()));
}

#[test]
fn the_owners_own_failures_delay_and_lock_the_familiar_class_apart() {
    let mut events = vec![started("own", false, t0()), succeeded("own", "10.0.0.1", false, t0())];
    let mut at = t0() + Duration::seconds(1);
    for i in 1..=4 {
        let id = format!("f{i}");
        events.push(started(&id, true, at));
        events.push(failed(&id, "10.0.0.1", true, i, at));
        at += delay_after(i);
    }
    events.push(started("f5", true, at));
    let mut state = state_after(events);
    for event in state.decide(finish("f5", "10.0.0.1", Some(Err(LoginFailure::BadPassword)), at)) {
        state.apply(event);
    }
    assert!(state.familiar.locked(at).is_some(), "the familiar class is locked");
    assert_eq!(state.unfamiliar, ClassState::default(), "the unfamiliar class is untouched");
    assert_eq!(state.admission("x", &client("10.0.0.50"), policy(), at), Admission::Started);
}

#[test]
fn a_success_resets_its_class_and_makes_the_client_familiar() {
    let (mut events, at) = unfamiliar_failures(3);
    events.push(started("ok", false, at));
    TestFramework::<LoginAttempts>::with(())
        .given(events.clone())
        .when(finish("ok", "10.0.0.9", Some(Ok("u".into())), at))
        .then_expect_events(vec![succeeded("ok", "10.0.0.9", false, at)]);
    events.push(succeeded("ok", "10.0.0.9", false, at));
    let state = state_after(events);
    assert_eq!(state.unfamiliar, ClassState::default());
    assert!(state.is_familiar(&client("10.0.0.9"), policy(), at));
}

#[test]
fn an_attempt_whose_lease_ran_out_no_longer_holds_the_class_and_never_counts() {
    let events = vec![started("crashed", false, t0())];
    let state = state_after(events.clone());
    let during = t0() + IN_FLIGHT_LEASE - Duration::milliseconds(1);
    assert!(matches!(state.admission("b", &client("10.0.0.2"), policy(), during), Admission::Busy { .. }));
    let after = t0() + IN_FLIGHT_LEASE;
    TestFramework::<LoginAttempts>::with(())
        .given(events)
        .when(begin("b", "10.0.0.2", true, after))
        .then_expect_events(vec![started("b", false, after)]);
    assert_eq!(state.unfamiliar.consecutive_failures, 0);
}

#[test]
fn an_abandoned_attempt_frees_its_class_without_a_failure() {
    let mut state = state_after(vec![started("a", true, t0())]);
    state.apply(LoginAttemptEvent::LoginAttemptAbandoned { attempt_id: "a".into(), abandoned_at: t0() });
    assert_eq!(state.familiar, ClassState::default());
}

#[test]
fn a_completed_reset_unlocks_every_class_and_an_unlocked_address_records_nothing() {
    let (mut events, at) = locked_unfamiliar();
    TestFramework::<LoginAttempts>::with(())
        .given(events.clone())
        .when(LoginAttemptCommand::Unlock { user_id: Some("u".into()), at })
        .then_expect_events(vec![LoginAttemptEvent::AccountUnlocked {
            user_id: Some("u".into()),
            unlocked_at: at,
        }]);
    events.push(LoginAttemptEvent::AccountUnlocked { user_id: Some("u".into()), unlocked_at: at });
    let state = state_after(events.clone());
    assert_eq!(state.admission("x", &client("10.0.0.9"), policy(), at), Admission::Started);
    TestFramework::<LoginAttempts>::with(())
        .given(events)
        .when(LoginAttemptCommand::Unlock { user_id: Some("u".into()), at })
        .then_expect_events(vec![]);
}

#[test]
fn change_password_checks_are_free_for_four_failures_then_follow_the_delay_schedule_and_never_lock() {
    let session = AttemptPolicy::change_password();
    let mut state = LoginAttempts::default();
    let mut at = t0();
    for i in 1..=8u32 {
        let id = format!("c{i}");
        let begin = LoginAttemptCommand::Begin {
            attempt_id: id.clone(),
            user_id: Some("u".into()),
            personal: client("10.0.0.1"),
            policy: session,
            may_wait: false,
            at,
        };
        for event in state.decide(begin) {
            state.apply(event);
        }
        assert_eq!(state.admission(&id, &client("10.0.0.1"), session, at), Admission::Started, "check {i}");
        let finish = LoginAttemptCommand::Finish {
            attempt_id: id,
            outcome: Some(Err(LoginFailure::BadPassword)),
            user_id: Some("u".into()),
            personal: client("10.0.0.1"),
            policy: session,
            at,
        };
        for event in state.decide(finish) {
            assert!(!matches!(event, LoginAttemptEvent::LoginLocked { .. }), "never locked");
            state.apply(event);
        }
        let next = state.admission("next", &client("10.0.0.1"), session, at);
        if i < 5 {
            assert_eq!(next, Admission::Started, "no delay after {i} failures");
        } else {
            assert_eq!(
                next,
                Admission::Refused { reason: ThrottleReason::Delay, until: at + delay_after(i) },
                "after {i} failures"
            );
        }
        at += delay_after(i);
    }
}

#[test]
fn events_written_before_client_classes_are_read_as_the_unfamiliar_class() {
    // A log of the first release, as its JSON payloads were stored.
    let stored = [
        r#"{"LoginAttemptStarted":{"attempt_id":"a","started_at":"2026-11-29T12:00:00Z"}}"#,
        r#"{"LoginFailed":{"reason":"bad_password","user_id":"u","personal":{"device_id":null,"device_name":null,"ip_address":"10.0.0.9","user_agent":null},"consecutive_failures":1,"failed_at":"2026-11-29T12:00:00Z"}}"#,
        r#"{"LoginFailed":{"reason":"throttled","user_id":"u","personal":{"device_id":null,"device_name":null,"ip_address":"10.0.0.9","user_agent":null},"consecutive_failures":2,"failed_at":"2026-11-29T12:00:00.500Z"}}"#,
        r#"{"AccountLocked":{"user_id":"u","failures":20,"locked_until":"2026-11-29T12:15:00Z","locked_at":"2026-11-29T12:00:00.500Z"}}"#,
        r#"{"LoginAttemptStarted":{"attempt_id":"b","started_at":"2026-11-29T12:00:01Z"}}"#,
    ];
    let events: Vec<LoginAttemptEvent> =
        stored.iter().map(|json| serde_json::from_str(json).expect("an old event decodes")).collect();
    let state = state_after(events);
    assert_eq!(state.familiar, ClassState::default());
    assert_eq!(state.unfamiliar.consecutive_failures, 2);
    assert_eq!(state.unfamiliar.locked_until, Some(t0() + Duration::minutes(15)));
    let lease = state.unfamiliar.in_flight.as_ref().map(|f| f.lease_until);
    assert_eq!(lease, Some(t0() + Duration::seconds(31)));
    let old_success: LoginAttemptEvent = serde_json::from_str(
        r#"{"LoginSucceeded":{"attempt_id":"b","user_id":"u","succeeded_at":"2026-11-29T12:00:02Z"}}"#,
    )
    .expect("decodes");
    let mut state = state;
    state.apply(old_success);
    assert_eq!(state.unfamiliar, ClassState::default());
}
