//! A realistic event mix, for the catch-up benchmark (`mana-core-auth-bench catchup
//! --realistic`) and the projection tests: per user, a registration (claim, user,
//! verification request, first session, credit account and signup bonus), a failed login,
//! refreshes, and spends, with consistent balances, serialized exactly as the service
//! writes them.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::{Credits, TokenHash};
use crate::events::auth::{
    EmailClaimEvent, LoginAttemptEvent, LoginFailure, Role, SessionEvent, SessionOrigin, SessionPersonal,
    UserEvent, UserPersonal,
};
use crate::events::credits::{Balances, CreditEvent, GrantSource, Pool};
use crate::events::{EventMetadata, NewEvent};

/// Spends per user in the mix.
pub const SPENDS_PER_USER: i64 = 15;

/// One event as the service writes it (metadata stamped `bench`).
pub fn event<E: cqrs_es::DomainEvent>(
    kind: &str,
    id: &str,
    sequence: i64,
    payload: &E,
    at: DateTime<Utc>,
) -> NewEvent {
    NewEvent {
        aggregate_type: kind.to_owned(),
        aggregate_id: id.to_owned(),
        sequence,
        event_type: payload.event_type(),
        event_version: payload.event_version(),
        payload: serde_json::to_value(payload).unwrap_or(Value::Null),
        metadata: EventMetadata {
            actor: id.to_owned(),
            request_id: Some("bench".into()),
            ..EventMetadata::system(at)
        }
        .to_json(),
        recorded_at: at,
    }
}

/// The events of user number `n` (24 events).
pub fn user_events(n: usize, at: DateTime<Utc>) -> Vec<NewEvent> {
    let user = format!("user-{n:08}");
    let session = format!("session-{n:08}");
    let claim = format!("claim-{n:08}");
    let personal = SessionPersonal {
        ip_address: Some("198.51.100.7".into()),
        user_agent: Some("bench/1.0".into()),
        ..Default::default()
    };
    let hash = |i: usize| TokenHash(format!("hash-{n}-{i}"));
    let mut events = vec![
        event(
            "email_claim",
            &claim,
            1,
            &EmailClaimEvent::EmailClaimed { user_id: user.clone(), claimed_at: at },
            at,
        ),
        event(
            "user",
            &user,
            1,
            &UserEvent::UserRegistered {
                user_id: user.clone(),
                personal: UserPersonal { email: format!("{user}@example.com"), name: Some("Bench".into()) },
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
                role: Role::User,
                registered_at: at,
            },
            at,
        ),
        event(
            "user",
            &user,
            2,
            &UserEvent::EmailVerificationRequested { token_hash: hash(0), expires_at: at, requested_at: at },
            at,
        ),
        event(
            "session",
            &session,
            1,
            &SessionEvent::SessionStarted {
                session_id: session.clone(),
                user_id: user.clone(),
                origin: SessionOrigin::Registration,
                refresh_hash: hash(1),
                refresh_expires_at: at,
                remember_me: false,
                personal: personal.clone(),
                started_at: at,
            },
            at,
        ),
    ];
    for i in 0..2 {
        let refreshed = SessionEvent::SessionRefreshed {
            user_id: user.clone(),
            previous_hash: hash(i + 1),
            refresh_hash: hash(i + 2),
            refresh_expires_at: at,
            personal: personal.clone(),
            refreshed_at: at,
        };
        events.push(event("session", &session, 2 + i as i64, &refreshed, at));
    }
    // The registering client becomes familiar; later a wrong password from elsewhere.
    let signed_in = LoginAttemptEvent::LoginCheckSucceeded {
        attempt_id: session.clone(),
        user_id: user.clone(),
        personal: personal.clone(),
        familiar: false,
        succeeded_at: at,
    };
    events.push(event("login_attempts", &claim, 1, &signed_in, at));
    let attempt = format!("{user}-attempt");
    let started = LoginAttemptEvent::LoginCheckStarted {
        attempt_id: attempt.clone(),
        familiar: false,
        lease_until: at + chrono::Duration::seconds(5),
        started_at: at,
    };
    events.push(event("login_attempts", &claim, 2, &started, at));
    let failed = LoginAttemptEvent::LoginCheckFailed {
        attempt_id: attempt,
        reason: LoginFailure::BadPassword,
        user_id: Some(user.clone()),
        personal: SessionPersonal { ip_address: Some("198.51.100.7".into()), ..personal },
        familiar: false,
        consecutive_failures: 1,
        failed_at: at,
    };
    events.push(event("login_attempts", &claim, 3, &failed, at));
    let opened = CreditEvent::CreditAccountOpened {
        user_id: user.clone(),
        granted_day: at.date_naive(),
        opened_at: at,
    };
    events.push(event("credit_account", &user, 1, &opened, at));
    let mut balances = Balances { free: Credits::new(150), paid: Credits::ZERO };
    let bonus = CreditEvent::CreditsGranted {
        transaction_id: format!("{user}-bonus"),
        source: GrantSource::SignupBonus,
        pool: Pool::Free,
        amount: Credits::new(150),
        before: Balances::default(),
        after: balances,
        description: "Signup bonus".into(),
        key: None,
        granted_at: at,
    };
    events.push(event("credit_account", &user, 2, &bonus, at));
    for i in 0..SPENDS_PER_USER {
        let before = balances;
        balances = Balances { free: before.free - Credits::new(1), ..before };
        let spent = CreditEvent::CreditsSpent {
            transaction_id: format!("{user}-spend-{i}"),
            amount: Credits::new(1),
            from_free: Credits::new(1),
            from_paid: Credits::ZERO,
            before,
            after: balances,
            total_spent_after: Credits::new(i + 1),
            app_id: if i % 3 == 0 { "picture".into() } else { "chat".into() },
            description: "bench spend".into(),
            metadata: Some(serde_json::json!({"model": "bench"})),
            key: None,
            spent_at: at,
        };
        events.push(event("credit_account", &user, 3 + i, &spent, at));
    }
    events
}
