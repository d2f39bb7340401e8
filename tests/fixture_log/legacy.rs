//! The login-attempt events of the release before client classes, which no current
//! code writes: appended straight to the store with the payloads and metadata that
//! release wrote, between the story's other steps.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::DomainEvent;
use mana_core_auth::commands::Aggregates;
use mana_core_auth::commands::email_claim::legacy_claim_id;
use mana_core_auth::events::auth::{LoginAttemptEvent, LoginFailure, SessionPersonal};
use mana_core_auth::events::{EventMetadata, NewEvent};

use crate::scenario::{FRANK, OLGA, World};

/// An event as an older process wrote it (the envelope and metadata are today's too).
fn legacy_event(
    stream: &str,
    sequence: i64,
    event: &LoginAttemptEvent,
    at: DateTime<Utc>,
    actor: &str,
    ip: &str,
) -> NewEvent {
    NewEvent {
        aggregate_type: "login_attempts".into(),
        aggregate_id: stream.to_owned(),
        sequence,
        event_type: event.event_type(),
        event_version: event.event_version(),
        payload: serde_json::to_value(event).expect("payload"),
        metadata: EventMetadata {
            recorded_at: at,
            request_id: Some(uuid::Uuid::new_v4().to_string()),
            actor: actor.to_owned(),
            client_ip: Some(ip.to_owned()),
        }
        .to_json(),
        recorded_at: at,
    }
}

type Make<'a> = Box<dyn Fn(DateTime<Utc>) -> LoginAttemptEvent + 'a>;

/// One event an older process wrote: `after` seconds after the previous one, for a
/// client at `ip`.
struct Step<'a> {
    after: i64,
    ip: &'static str,
    make: Make<'a>,
}

fn step<'a>(
    after: i64,
    ip: &'static str,
    make: impl Fn(DateTime<Utc>) -> LoginAttemptEvent + 'a,
) -> Step<'a> {
    Step { after, ip, make: Box::new(make) }
}

/// Appends the steps after the stream's last event, straight to the store.
async fn append_legacy(w: &World<'_>, stream: &str, actor: &str, steps: Vec<Step<'_>>) {
    let store = w.app.state.store();
    let (_, head) = Aggregates::new(store).attempts.load(stream).await.expect("load");
    let mut sequence = i64::try_from(head).expect("sequence");
    for step in steps {
        w.tick(step.after);
        sequence += 1;
        let at = w.app.state.now();
        let event = (step.make)(at);
        store.append(&[legacy_event(stream, sequence, &event, at, actor, step.ip)]).await.expect("append");
    }
}

/// During a rolling upgrade, a process of the release before client classes served
/// olga's logins: one success, three wrong guesses from elsewhere, the lock, a refusal
/// while locked, and the unlock when the lock ran out, as that release wrote them.
pub async fn legacy_logins_of_olga(w: &World<'_>, olga_id: &str) {
    let stream = legacy_claim_id(OLGA.email);
    let (home, guesser) = ("127.0.1.6", "127.0.2.40");
    let personal = SessionPersonal {
        ip_address: Some(guesser.into()),
        user_agent: Some("curl/8.5.0".into()),
        ..Default::default()
    };
    let user = Some(olga_id.to_owned());
    let started = |id: &'static str| {
        move |at| LoginAttemptEvent::LoginAttemptStarted { attempt_id: id.into(), started_at: at }
    };
    let failed = |reason, n: u32| {
        let (user, personal) = (user.clone(), personal.clone());
        move |at| LoginAttemptEvent::LoginFailed {
            reason,
            user_id: user.clone(),
            personal: personal.clone(),
            consecutive_failures: n,
            failed_at: at,
        }
    };
    let steps = vec![
        step(1800, home, started("legacy-olga-1")),
        step(1, home, |at| LoginAttemptEvent::LoginSucceeded {
            attempt_id: "legacy-olga-1".into(),
            user_id: olga_id.to_owned(),
            succeeded_at: at,
        }),
        step(1200, guesser, started("legacy-olga-2")),
        step(1, guesser, failed(LoginFailure::BadPassword, 1)),
        step(20, guesser, started("legacy-olga-3")),
        step(1, guesser, failed(LoginFailure::BadPassword, 2)),
        step(20, guesser, started("legacy-olga-4")),
        step(1, guesser, failed(LoginFailure::BadPassword, 3)),
        step(0, guesser, |at| LoginAttemptEvent::AccountLocked {
            user_id: user.clone(),
            failures: 3,
            locked_until: at + Duration::minutes(15),
            locked_at: at,
        }),
        step(60, guesser, failed(LoginFailure::Locked, 3)),
        step(15 * 60, home, |at| LoginAttemptEvent::AccountUnlocked {
            user_id: user.clone(),
            unlocked_at: at,
        }),
    ];
    append_legacy(w, &stream, olga_id, steps).await;
}

/// The release before client classes recorded attempts on frank's address before he
/// registered: an unknown address, a refusal too soon after, an abandoned attempt.
pub async fn legacy_attempts_on_franks_address(w: &World<'_>) {
    let stream = legacy_claim_id(&FRANK.email.to_lowercase());
    let ip = "127.0.1.7";
    let personal = SessionPersonal {
        ip_address: Some(ip.into()),
        user_agent: Some("FixtureApp/0.9 (Frank Fisher)".into()),
        ..Default::default()
    };
    let unknown = |reason| {
        let personal = personal.clone();
        move |at| LoginAttemptEvent::LoginFailed {
            reason,
            user_id: None,
            personal: personal.clone(),
            consecutive_failures: 1,
            failed_at: at,
        }
    };
    let steps = vec![
        step(600, ip, |at| LoginAttemptEvent::LoginAttemptStarted {
            attempt_id: "legacy-frank-1".into(),
            started_at: at,
        }),
        step(1, ip, unknown(LoginFailure::UnknownEmail)),
        step(0, ip, unknown(LoginFailure::Throttled)),
        step(30, ip, |at| LoginAttemptEvent::LoginAttemptStarted {
            attempt_id: "legacy-frank-2".into(),
            started_at: at,
        }),
        step(2, ip, |at| LoginAttemptEvent::LoginAttemptAbandoned {
            attempt_id: "legacy-frank-2".into(),
            abandoned_at: at,
        }),
    ];
    append_legacy(w, &stream, "system", steps).await;
}
