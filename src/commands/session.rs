//! The session aggregate: one login and the family of refresh tokens descended from it.
//!
//! Rotation: presenting the current token spends it and makes its successor current.
//! Presenting the token spent just before, within the grace window, while its successor
//! is still current, changes nothing (the caller hands out that same successor): two
//! concurrent refreshes by one client both succeed. Presenting any other spent token is
//! reuse: the session is revoked.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use crate::domain::TokenHash;
use crate::events::auth::{RevokeReason, SessionEvent, SessionOrigin, SessionPersonal};

/// How long a refresh token lives (sliding: each refresh restarts it).
pub const REFRESH_TTL: Duration = Duration::days(7);
/// The same with "remember me".
pub const REMEMBER_ME_REFRESH_TTL: Duration = Duration::days(30);

/// A session as the write model sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: Option<String>,
    pub user_id: String,
    pub origin: Option<SessionOrigin>,
    pub started_at: Option<DateTime<Utc>>,
    pub last_active_at: Option<DateTime<Utc>>,
    pub remember_me: bool,
    pub refresh_expires_at: Option<DateTime<Utc>>,
    pub personal: SessionPersonal,
    pub revoked: Option<(RevokeReason, DateTime<Utc>)>,
    current: Option<TokenHash>,
    previous: Option<(TokenHash, DateTime<Utc>)>,
    spent: Vec<TokenHash>,
}

impl Session {
    /// Whether the session was started.
    pub fn exists(&self) -> bool {
        self.id.is_some()
    }

    /// Whether the session may still be used (not revoked, refresh token not expired).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.exists() && self.revoked.is_none() && self.refresh_expires_at.is_some_and(|t| now <= t)
    }

    fn ttl(&self) -> Duration {
        if self.remember_me { REMEMBER_ME_REFRESH_TTL } else { REFRESH_TTL }
    }
}

/// What can be asked of a session.
#[derive(Clone, Debug)]
pub enum SessionCommand {
    Start {
        session_id: String,
        user_id: String,
        origin: SessionOrigin,
        refresh_hash: TokenHash,
        remember_me: bool,
        personal: SessionPersonal,
        at: DateTime<Utc>,
    },
    /// Spends `presented` for `successor`. `user_admits` says whether the user still
    /// admits this session (not disabled, no later cutoff); when not, the session is
    /// revoked instead.
    Refresh {
        presented: TokenHash,
        successor: TokenHash,
        grace: Duration,
        user_admits: bool,
        personal: SessionPersonal,
        at: DateTime<Utc>,
    },
    Revoke {
        reason: RevokeReason,
        at: DateTime<Utc>,
    },
}

/// Refusals. The API answers each of them alike (401 `INVALID_REFRESH_TOKEN` for refresh).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("no such session")]
    NotFound,
    #[error("the session was already started")]
    AlreadyStarted,
    #[error("the session is revoked")]
    Revoked,
    #[error("the refresh token has expired")]
    Expired,
    #[error("the refresh token is not valid for this session")]
    InvalidToken,
}

impl Aggregate for Session {
    const TYPE: &'static str = "session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SessionCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SessionError> {
        match command {
            SessionCommand::Start {
                session_id,
                user_id,
                origin,
                refresh_hash,
                remember_me,
                personal,
                at,
            } => {
                if self.exists() {
                    return Err(SessionError::AlreadyStarted);
                }
                let ttl = if remember_me { REMEMBER_ME_REFRESH_TTL } else { REFRESH_TTL };
                let event = SessionEvent::SessionStarted {
                    session_id,
                    user_id,
                    origin,
                    refresh_hash,
                    refresh_expires_at: at + ttl,
                    remember_me,
                    personal,
                    started_at: at,
                };
                sink.write(event, self).await;
                Ok(())
            }
            SessionCommand::Refresh { presented, successor, grace, user_admits, personal, at } => {
                let events = self.refresh(presented, successor, grace, user_admits, personal, at)?;
                for event in events {
                    sink.write(event, self).await;
                }
                Ok(())
            }
            SessionCommand::Revoke { reason, at } => {
                if !self.exists() {
                    return Err(SessionError::NotFound);
                }
                if self.revoked.is_none() {
                    let user_id = self.user_id.clone();
                    sink.write(SessionEvent::SessionRevoked { user_id, reason, revoked_at: at }, self).await;
                }
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::SessionStarted {
                session_id,
                user_id,
                origin,
                refresh_hash,
                refresh_expires_at,
                remember_me,
                personal,
                started_at,
            } => {
                self.id = Some(session_id);
                self.user_id = user_id;
                self.origin = Some(origin);
                self.started_at = Some(started_at);
                self.last_active_at = Some(started_at);
                self.remember_me = remember_me;
                self.refresh_expires_at = Some(refresh_expires_at);
                self.personal = personal;
                self.current = Some(refresh_hash);
            }
            SessionEvent::SessionRefreshed {
                previous_hash,
                refresh_hash,
                refresh_expires_at,
                refreshed_at,
                ..
            } => {
                self.spent.push(previous_hash.clone());
                self.previous = Some((previous_hash, refreshed_at));
                self.current = Some(refresh_hash);
                self.refresh_expires_at = Some(refresh_expires_at);
                self.last_active_at = Some(refreshed_at);
            }
            SessionEvent::RefreshTokenReuseDetected { .. } => {}
            SessionEvent::SessionRevoked { reason, revoked_at, .. } => {
                self.revoked = Some((reason, revoked_at))
            }
        }
    }
}

impl Session {
    /// Decides a refresh; returns the events to write.
    fn refresh(
        &self,
        presented: TokenHash,
        successor: TokenHash,
        grace: Duration,
        user_admits: bool,
        personal: SessionPersonal,
        at: DateTime<Utc>,
    ) -> Result<Vec<SessionEvent>, SessionError> {
        if !self.exists() {
            return Err(SessionError::NotFound);
        }
        if self.revoked.is_some() {
            return Err(SessionError::Revoked);
        }
        let is_current = self.current.as_ref().is_some_and(|c| c.matches(&presented));
        let in_grace = self
            .previous
            .as_ref()
            .is_some_and(|(hash, rotated_at)| hash.matches(&presented) && at - *rotated_at <= grace)
            && self.current.as_ref().is_some_and(|c| c.matches(&successor));
        if is_current || in_grace {
            if !user_admits {
                return Ok(vec![SessionEvent::SessionRevoked {
                    user_id: self.user_id.clone(),
                    reason: RevokeReason::UserChanged,
                    revoked_at: at,
                }]);
            }
            if self.refresh_expires_at.is_none_or(|t| at > t) {
                return Err(SessionError::Expired);
            }
            if in_grace {
                return Ok(Vec::new());
            }
            return Ok(vec![SessionEvent::SessionRefreshed {
                user_id: self.user_id.clone(),
                previous_hash: presented,
                refresh_hash: successor,
                refresh_expires_at: at + self.ttl(),
                personal,
                refreshed_at: at,
            }]);
        }
        if self.spent.iter().any(|s| s.matches(&presented)) {
            return Ok(vec![
                SessionEvent::RefreshTokenReuseDetected {
                    user_id: self.user_id.clone(),
                    presented_hash: presented,
                    personal,
                    detected_at: at,
                },
                SessionEvent::SessionRevoked {
                    user_id: self.user_id.clone(),
                    reason: RevokeReason::RefreshTokenReuse,
                    revoked_at: at,
                },
            ]);
        }
        Err(SessionError::InvalidToken)
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn hash(n: u8) -> TokenHash {
        TokenHash(format!("hash-{n}"))
    }

    fn started(at: DateTime<Utc>) -> SessionEvent {
        SessionEvent::SessionStarted {
            session_id: "s1".into(),
            user_id: "u1".into(),
            origin: SessionOrigin::Login,
            refresh_hash: hash(1),
            refresh_expires_at: at + REFRESH_TTL,
            remember_me: false,
            personal: SessionPersonal::default(),
            started_at: at,
        }
    }

    fn refreshed(from: u8, to: u8, at: DateTime<Utc>) -> SessionEvent {
        SessionEvent::SessionRefreshed {
            user_id: "u1".into(),
            previous_hash: hash(from),
            refresh_hash: hash(to),
            refresh_expires_at: at + REFRESH_TTL,
            personal: SessionPersonal::default(),
            refreshed_at: at,
        }
    }

    fn refresh(presented: u8, successor: u8, at: DateTime<Utc>) -> SessionCommand {
        SessionCommand::Refresh {
            presented: hash(presented),
            successor: hash(successor),
            grace: Duration::seconds(10),
            user_admits: true,
            personal: SessionPersonal::default(),
            at,
        }
    }

    #[test]
    fn the_current_token_rotates_to_its_successor_with_a_sliding_expiry() {
        let t0 = Utc::now();
        let t1 = t0 + Duration::minutes(20);
        TestFramework::<Session>::with(())
            .given(vec![started(t0)])
            .when(refresh(1, 2, t1))
            .then_expect_events(vec![refreshed(1, 2, t1)]);
    }

    #[test]
    fn the_previous_token_within_the_grace_window_changes_nothing() {
        let t0 = Utc::now();
        let t1 = t0 + Duration::minutes(20);
        TestFramework::<Session>::with(())
            .given(vec![started(t0), refreshed(1, 2, t1)])
            .when(refresh(1, 2, t1 + Duration::seconds(5)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_spent_token_after_the_grace_window_revokes_the_session() {
        let t0 = Utc::now();
        let t1 = t0 + Duration::minutes(20);
        let t2 = t1 + Duration::seconds(11);
        TestFramework::<Session>::with(())
            .given(vec![started(t0), refreshed(1, 2, t1)])
            .when(refresh(1, 2, t2))
            .then_expect_events(vec![
                SessionEvent::RefreshTokenReuseDetected {
                    user_id: "u1".into(),
                    presented_hash: hash(1),
                    personal: SessionPersonal::default(),
                    detected_at: t2,
                },
                SessionEvent::SessionRevoked {
                    user_id: "u1".into(),
                    reason: RevokeReason::RefreshTokenReuse,
                    revoked_at: t2,
                },
            ]);
    }

    #[test]
    fn an_older_spent_token_is_reuse_even_within_the_grace_window() {
        let t0 = Utc::now();
        let t1 = t0 + Duration::minutes(20);
        TestFramework::<Session>::with(())
            .given(vec![started(t0), refreshed(1, 2, t1), refreshed(2, 3, t1)])
            .when(refresh(1, 2, t1))
            .inspect_result()
            .map(|events| assert_eq!(events.len(), 2))
            .expect("reuse is recorded");
    }

    #[test]
    fn unknown_and_expired_tokens_and_revoked_sessions_are_refused() {
        let t0 = Utc::now();
        TestFramework::<Session>::with(())
            .given(vec![started(t0)])
            .when(refresh(9, 10, t0))
            .then_expect_error(SessionError::InvalidToken);
        TestFramework::<Session>::with(())
            .given(vec![started(t0)])
            .when(refresh(1, 2, t0 + REFRESH_TTL + Duration::seconds(1)))
            .then_expect_error(SessionError::Expired);
        TestFramework::<Session>::with(())
            .given(vec![
                started(t0),
                SessionEvent::SessionRevoked {
                    user_id: "u1".into(),
                    reason: RevokeReason::Logout,
                    revoked_at: t0,
                },
            ])
            .when(refresh(1, 2, t0))
            .then_expect_error(SessionError::Revoked);
        TestFramework::<Session>::with(())
            .given_no_previous_events()
            .when(refresh(1, 2, t0))
            .then_expect_error(SessionError::NotFound);
    }

    #[test]
    fn a_user_who_no_longer_admits_the_session_gets_it_revoked() {
        let t0 = Utc::now();
        let mut command = refresh(1, 2, t0);
        if let SessionCommand::Refresh { user_admits, .. } = &mut command {
            *user_admits = false;
        }
        TestFramework::<Session>::with(()).given(vec![started(t0)]).when(command).then_expect_events(vec![
            SessionEvent::SessionRevoked {
                user_id: "u1".into(),
                reason: RevokeReason::UserChanged,
                revoked_at: t0,
            },
        ]);
    }

    #[test]
    fn revoking_twice_writes_once() {
        let t0 = Utc::now();
        TestFramework::<Session>::with(())
            .given(vec![
                started(t0),
                SessionEvent::SessionRevoked {
                    user_id: "u1".into(),
                    reason: RevokeReason::Logout,
                    revoked_at: t0,
                },
            ])
            .when(SessionCommand::Revoke { reason: RevokeReason::Logout, at: t0 })
            .then_expect_events(vec![]);
    }
}
