//! Password checks under the brute-force guard (`commands::login_attempts`): take a turn
//! behind the attempt in flight on the same stream and client class, begin, verify,
//! finish.
//!
//! Attempts of this process on one stream and class first queue here, in order
//! ([`TurnQueue`]), so they wait for each other without asking the store. An attempt in
//! flight in another process is waited for by asking the aggregate again every
//! [`POLL`]. Either wait ends after `LOGIN_QUEUE_WAIT_MS`; the attempt then answers 429
//! `LOGIN_THROTTLED` unless its class has become free.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use super::input::Password;
use super::{AuthError, AuthService, ClientInfo, infra, uuid_at};
use crate::commands::login_attempts::{Admission, AttemptPolicy, LoginAttemptCommand, LoginAttempts};
use crate::commands::user::User;
use crate::commands::{CommandBus, CommandContext};
use crate::events::auth::{LoginFailure, SessionPersonal};
use crate::events::{LogCursor, SYSTEM_ACTOR};

/// How often an attempt asks again while another process's attempt is in flight.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// What a guarded check is about: a stream of the login-attempts aggregate and its rules.
pub(super) struct Guarded<'a> {
    /// The address's claim id, or `session:<id>` for change-password.
    pub stream: &'a str,
    pub policy: AttemptPolicy,
    /// The client as recorded (IP address, user agent, device).
    pub personal: SessionPersonal,
}

impl AuthService {
    /// Checks `password` for `user` (or, when `None`, against a dummy hash, so that an
    /// unknown address costs the same). `Ok(Some(user))` when it may sign in; `Ok(None)`
    /// for a failed check (unknown address, wrong password, disabled), all alike;
    /// `Err(AuthError::Throttled)` when the attempt was refused without a check.
    pub(super) async fn guarded_check(
        &self,
        guarded: Guarded<'_>,
        user: Option<User>,
        password: Password,
        client: &ClientInfo,
    ) -> Result<Option<User>, AuthError> {
        let Some((user, attempt)) = self.guarded_verify(guarded, user, password, client).await? else {
            return Ok(None);
        };
        let user_id = user.id.clone().unwrap_or_default();
        attempt.finish(Some(Ok(user_id)), self.now()).await?;
        Ok(Some(user))
    }

    /// [`Self::guarded_check`] up to a right password: a failed check is recorded and
    /// answers `Ok(None)`; a right one answers the user with the attempt still open, for
    /// the caller to record its success together with what the success does (a login
    /// starts its session in the same append). An attempt dropped unfinished is recorded
    /// as abandoned.
    pub(super) async fn guarded_verify(
        &self,
        guarded: Guarded<'_>,
        user: Option<User>,
        password: Password,
        client: &ClientInfo,
    ) -> Result<Option<(User, Attempt)>, AuthError> {
        let user_id = user.as_ref().and_then(|u| u.id.clone());
        let attempt = self.admit(&guarded, user_id.clone(), client).await?;
        let password = password.into_inner();
        let verified = match &user {
            Some(user) => self.passwords.verify(password, &user.password_hash).await,
            None => self.passwords.verify_dummy(password).await,
        };
        let verified = match verified {
            Ok(verified) => verified,
            Err(error) => {
                attempt.finish(None, self.now()).await?;
                return Err(error.into());
            }
        };
        let outcome = match &user {
            None => Err(LoginFailure::UnknownEmail),
            Some(_) if !verified => Err(LoginFailure::BadPassword),
            Some(user) if user.disabled => Err(LoginFailure::Disabled),
            Some(_) => Ok(user_id.clone().unwrap_or_default()),
        };
        match (outcome, user) {
            (Ok(_), Some(user)) => Ok(Some((user, attempt))),
            (outcome, _) => {
                let cursor = attempt.finish(Some(outcome), self.now()).await?;
                self.settle(cursor).await;
                Ok(None)
            }
        }
    }

    /// Waits for a turn and begins an attempt: the attempt in flight of its class, or a
    /// refusal (`Throttled`) once waiting cannot help or has lasted long enough.
    async fn admit(
        &self,
        guarded: &Guarded<'_>,
        user_id: Option<String>,
        client: &ClientInfo,
    ) -> Result<Attempt, AuthError> {
        let deadline = Instant::now() + self.settings.login_queue_wait;
        let (stream, policy, personal) = (guarded.stream, guarded.policy, &guarded.personal);
        let now = self.now();
        let familiar = self
            .aggregates
            .attempts
            .peek(stream, |a| a.is_familiar(personal, policy, now))
            .await
            .map_err(infra)?;
        let turn = self.turns.take(format!("{stream}|{familiar}"), deadline).await;
        let attempt_id = uuid_at(now).to_string();
        let actor = user_id.clone().unwrap_or_else(|| SYSTEM_ACTOR.to_owned());
        loop {
            let now = self.now();
            let may_wait = turn.is_some() && Instant::now() < deadline;
            let begin = LoginAttemptCommand::Begin {
                attempt_id: attempt_id.clone(),
                user_id: user_id.clone(),
                personal: personal.clone(),
                policy,
                may_wait,
                at: now,
            };
            let (id, who) = (attempt_id.clone(), personal.clone());
            let ctx = CommandContext::for_client(client, &actor, now);
            let begun = self
                .aggregates
                .attempts
                .execute_with(stream, begin, &ctx, move |a| a.admission(&id, &who, policy, now))
                .await
                .map_err(infra)?;
            let until = match begun.reply {
                Admission::Started => {
                    return Ok(Attempt {
                        attempts: self.aggregates.attempts.clone(),
                        stream: stream.to_owned(),
                        attempt_id,
                        user_id,
                        personal: personal.clone(),
                        policy,
                        ctx,
                        open: true,
                        _turn: turn,
                    });
                }
                Admission::Busy { .. } if may_wait => {
                    tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
                    continue;
                }
                Admission::Busy { .. } => now + chrono::Duration::seconds(1),
                Admission::Refused { until, .. } => until,
            };
            self.settle(begun.cursor).await;
            return Err(AuthError::Throttled { retry_after_secs: Admission::retry_after_secs(until, now) });
        }
    }
}

/// An attempt in flight. If it is dropped unfinished (the client went away while the
/// password was being checked), it is finished as abandoned in the background, so its
/// class is not held busy; if the process dies, its lease runs out.
pub(super) struct Attempt {
    attempts: CommandBus<LoginAttempts>,
    stream: String,
    attempt_id: String,
    user_id: Option<String>,
    personal: SessionPersonal,
    policy: AttemptPolicy,
    ctx: CommandContext,
    open: bool,
    /// Released with the attempt: the next local attempt of the class may begin.
    _turn: Option<Turn>,
}

impl Attempt {
    /// The login-attempts stream the attempt is on.
    pub(super) fn stream(&self) -> &str {
        &self.stream
    }

    /// The command that finishes the attempt with `outcome` at `at`.
    pub(super) fn command(
        &self,
        outcome: Option<Result<String, LoginFailure>>,
        at: DateTime<Utc>,
    ) -> LoginAttemptCommand {
        LoginAttemptCommand::Finish {
            attempt_id: self.attempt_id.clone(),
            outcome,
            user_id: self.user_id.clone(),
            personal: self.personal.clone(),
            policy: self.policy,
            at,
        }
    }

    pub(super) async fn finish(
        mut self,
        outcome: Option<Result<String, LoginFailure>>,
        at: DateTime<Utc>,
    ) -> Result<Option<LogCursor>, AuthError> {
        self.open = false;
        let command = self.command(outcome, at);
        let ctx = CommandContext { now: at, ..self.ctx.clone() };
        let committed = self.attempts.execute(&self.stream, command, &ctx).await.map_err(infra)?;
        Ok(committed.cursor)
    }

    /// Marks the attempt finished by the caller's own append of [`Self::command`].
    pub(super) fn close(mut self) {
        self.open = false;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let command = self.command(None, self.ctx.now);
        let (attempts, stream, ctx) = (self.attempts.clone(), self.stream.clone(), self.ctx.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = attempts.execute(&stream, command, &ctx).await;
            });
        }
    }
}

/// Per-process queues, one per key, served in arrival order.
#[derive(Default)]
pub(crate) struct TurnQueue {
    queues: Arc<parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A turn of one key's queue; the next waiter's turn comes when it is dropped.
pub(crate) struct Turn {
    guard: Option<OwnedMutexGuard<()>>,
    key: String,
    queues: Arc<parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl TurnQueue {
    /// Waits for the turn of `key` until `deadline`; `None` if it did not come by then.
    pub(crate) async fn take(&self, key: String, deadline: Instant) -> Option<Turn> {
        let queue = Arc::clone(self.queues.lock().entry(key.clone()).or_default());
        let guard = tokio::time::timeout_at(deadline, queue.lock_owned()).await.ok();
        let turn = Turn { guard, key, queues: Arc::clone(&self.queues) };
        if turn.guard.is_some() { Some(turn) } else { None }
    }

    /// How many keys have a queue (queues are dropped when unused).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queues.lock().len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut queues = self.queues.lock();
        // Only the map holds the queue: nobody waits for it any more.
        if queues.get(&self.key).is_some_and(|q| Arc::strong_count(q) == 1) {
            queues.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_come_in_arrival_order_and_unused_queues_are_dropped() {
        let turns = Arc::new(TurnQueue::default());
        let far = Instant::now() + std::time::Duration::from_secs(10);
        let first = turns.take("k".into(), far).await.expect("free");
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for i in 0..5 {
            let (turns, order) = (Arc::clone(&turns), Arc::clone(&order));
            waiting.push(tokio::spawn(async move {
                let turn = turns.take("k".into(), far).await.expect("turn");
                order.lock().push(i);
                drop(turn);
            }));
            tokio::task::yield_now().await;
        }
        drop(first);
        for task in waiting {
            task.await.expect("task");
        }
        assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
        assert_eq!(turns.len(), 0);
    }

    #[tokio::test]
    async fn a_turn_that_does_not_come_by_the_deadline_is_none() {
        let turns = TurnQueue::default();
        let held = turns.take("k".into(), Instant::now() + std::time::Duration::from_secs(1)).await;
        assert!(held.is_some());
        let soon = Instant::now() + std::time::Duration::from_millis(30);
        assert!(turns.take("k".into(), soon).await.is_none());
        assert!(turns.take("other".into(), soon).await.is_some(), "keys are independent");
    }
}
