//! Which access tokens must be refused although their signature is good: tokens of
//! revoked sessions, of sessions started before a user-wide cutoff (role change,
//! disable), and of disabled users.
//!
//! Each process keeps this in memory and feeds it from the log: at start from the
//! `users` and `sessions` read models and their checkpoints, then by following the log
//! (woken after local commits, by other processes' `NOTIFY`, and by polling), so a
//! revocation anywhere reaches every process within a poll interval even when Redis is
//! down. Entries older than an access token's lifetime are dropped: such tokens have
//! expired anyway. Checking a token is a few hash lookups.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::tokens::{AccessClaims, TokenError};
use crate::clock::SharedClock;
use crate::events::auth::{SessionEvent, UserEvent};
use crate::events::{EventStore, LogCursor, RecordedEvent};
use crate::projections::{self, Projector};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Cutoff {
    before: DateTime<Utc>,
    kept: Option<String>,
}

impl State {
    fn cut(&mut self, user: String, before: DateTime<Utc>, kept: Option<String>) {
        let newer = self.cutoffs.get(&user).is_none_or(|c| before >= c.before);
        if newer {
            self.cutoffs.insert(user, Cutoff { before, kept });
        }
    }
}

#[derive(Default)]
struct State {
    /// Revoked sessions and when.
    sessions: HashMap<String, DateTime<Utc>>,
    /// Per user: sessions started at or before this millisecond are revoked, except the
    /// kept one (the session that changed the password).
    cutoffs: HashMap<String, Cutoff>,
    disabled: HashSet<String>,
    cursor: LogCursor,
}

/// The revocation index of one process.
pub struct Revocations {
    state: RwLock<State>,
    store: EventStore,
    clock: SharedClock,
    /// How long an entry matters: the access-token lifetime plus leeway.
    window: chrono::Duration,
}

/// The start of a session, from its id (a UUIDv7 made from the clock at the start).
pub fn session_started_ms(session_id: &str) -> Option<i64> {
    let (secs, nanos) = uuid::Uuid::parse_str(session_id).ok()?.get_timestamp()?.to_unix();
    Some(i64::try_from(secs).ok()? * 1000 + i64::from(nanos / 1_000_000))
}

impl Revocations {
    /// Loads the recent revocations from the read models; call [`spawn`](Self::spawn) to
    /// keep following the log from their checkpoints.
    pub async fn bootstrap(
        store: EventStore,
        projector: &Projector,
        clock: SharedClock,
        window: chrono::Duration,
    ) -> anyhow::Result<Arc<Self>> {
        // Checkpoints first: the tables can only be newer, and replaying is idempotent.
        let cursor = projector.checkpoint("users").await?.min(projector.checkpoint("sessions").await?);
        let since = clock.now() - window;
        let mut state = State { cursor, ..State::default() };
        for user in projections::users::revoked_since(store.db(), since).await? {
            if user.disabled {
                state.disabled.insert(user.id.clone());
            }
            if let Some(cutoff) = user.sessions_revoked_before {
                state.cut(user.id, cutoff, user.kept_session);
            }
        }
        for (session, at) in projections::sessions::revoked_since(store.db(), since).await? {
            state.sessions.insert(session, at);
        }
        Ok(Arc::new(Self { state: RwLock::new(state), store, clock, window }))
    }

    /// Refuses a verified token whose session or user no longer admits it.
    pub fn check(&self, claims: &AccessClaims) -> Result<(), TokenError> {
        let state = self.state.read();
        if state.disabled.contains(&claims.sub) {
            return Err(TokenError::UserDisabled);
        }
        if state.sessions.contains_key(&claims.sid) {
            return Err(TokenError::SessionRevoked);
        }
        if let Some(cutoff) = state.cutoffs.get(&claims.sub) {
            let started = session_started_ms(&claims.sid).unwrap_or(i64::MIN);
            let kept = cutoff.kept.as_deref() == Some(claims.sid.as_str());
            if !kept && started <= cutoff.before.timestamp_millis() {
                return Err(TokenError::SessionRevoked);
            }
        }
        Ok(())
    }

    /// Records a revocation this process just committed, before the log follower sees it.
    pub fn revoke_session(&self, session_id: &str, at: DateTime<Utc>) {
        self.state.write().sessions.insert(session_id.to_owned(), at);
    }

    /// Records a user-wide cutoff this process just committed.
    pub fn revoke_user_sessions(&self, user_id: &str, before: DateTime<Utc>, kept: Option<&str>) {
        self.state.write().cut(user_id.to_owned(), before, kept.map(str::to_owned));
    }

    /// Records that this process just disabled or enabled a user.
    pub fn set_disabled(&self, user_id: &str, disabled: bool) {
        let mut state = self.state.write();
        if disabled {
            state.disabled.insert(user_id.to_owned());
        } else {
            state.disabled.remove(user_id);
        }
    }

    /// Follows the log until `shutdown`.
    pub fn spawn(self: &Arc<Self>, tasks: &mut JoinSet<()>, poll: Duration, shutdown: &CancellationToken) {
        let index = Arc::clone(self);
        let shutdown = shutdown.clone();
        tasks.spawn(async move { index.follow(poll, shutdown).await });
    }

    async fn follow(&self, poll: Duration, shutdown: CancellationToken) {
        let mut wake = self.store.signal().subscribe_events();
        while !shutdown.is_cancelled() {
            match self.catch_up().await {
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "revocation index could not read the log")
                }
            }
            self.prune();
            tokio::select! {
                _ = wake.changed() => {}
                () = tokio::time::sleep(poll) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Applies everything readable in the log now.
    pub async fn catch_up(&self) -> anyhow::Result<()> {
        loop {
            let cursor = self.state.read().cursor;
            let events = self.store.read_after(cursor, 1000).await?;
            let Some(last) = events.last().map(|e| e.cursor) else { return Ok(()) };
            // Another process's erasure destroyed a data key this process may still have
            // cached: forget it as soon as the erasure is read.
            for event in events.iter().filter(|e| e.aggregate_type == "user" && e.event_type == "UserErased")
            {
                self.store.personal_keys().forget(&format!("user:{}", event.aggregate_id));
            }
            let mut state = self.state.write();
            for event in &events {
                apply(&mut state, event);
            }
            state.cursor = state.cursor.max(last);
        }
    }

    /// How far this index has read the log.
    pub fn cursor(&self) -> LogCursor {
        self.state.read().cursor
    }

    fn prune(&self) {
        let horizon = self.clock.now() - self.window;
        let mut state = self.state.write();
        state.sessions.retain(|_, at| *at > horizon);
        state.cutoffs.retain(|_, cutoff| cutoff.before > horizon);
    }
}

fn apply(state: &mut State, event: &RecordedEvent) {
    match (event.aggregate_type.as_str(), event.event_type.as_str()) {
        ("session", "SessionRevoked") => {
            if let Ok(SessionEvent::SessionRevoked { revoked_at, .. }) = event.decode() {
                state.sessions.insert(event.aggregate_id.clone(), revoked_at);
            }
        }
        (
            "user",
            "UserRoleChanged"
            | "UserDisabled"
            | "UserEnabled"
            | "PasswordChanged"
            | "PasswordResetCompleted"
            | "UserErased",
        ) => {
            let user = event.aggregate_id.clone();
            match event.decode::<UserEvent>() {
                Ok(UserEvent::UserRoleChanged { sessions_revoked_before, .. })
                | Ok(UserEvent::PasswordResetCompleted { sessions_revoked_before, .. }) => {
                    state.cut(user, sessions_revoked_before, None);
                }
                Ok(UserEvent::PasswordChanged { sessions_revoked_before, kept_session, .. }) => {
                    state.cut(user, sessions_revoked_before, kept_session);
                }
                Ok(UserEvent::UserDisabled { sessions_revoked_before }) => {
                    state.disabled.insert(user.clone());
                    state.cut(user, sessions_revoked_before, None);
                }
                Ok(UserEvent::UserEnabled { .. }) => {
                    state.disabled.remove(&user);
                }
                // An erased account is disabled for good (its sessions and tokens die).
                Ok(UserEvent::UserErased { sessions_revoked_before, .. }) => {
                    state.disabled.insert(user.clone());
                    state.cut(user, sessions_revoked_before, None);
                }
                _ => {}
            }
        }
        _ => {}
    }
}
