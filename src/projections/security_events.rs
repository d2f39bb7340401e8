//! Projection `security_events` (table `security_events`): one row per security-relevant
//! event of the log, keyed by the event's global position, with the user, session, IP
//! address, user agent, time and type. `GET /auth/security-events` reads it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::types::Json;

use super::Projection;
use crate::commands::keyring::KEYRING_ID;
use crate::db::{Db, DbTime, DbTx};
use crate::events::RecordedEvent;
use crate::events::auth::{
    KeyringEvent, LoginAttemptEvent, RevokeReason, SecurityNoticeEvent, SessionEvent, SessionPersonal,
    UserEvent,
};
use crate::events::credits::CreditEvent;
use crate::events::purchases::PurchaseEvent;
use crate::{exec, insert_rows};

/// The security event types this projection records.
pub mod kinds {
    pub const ACCOUNT_CREATED: &str = "account_created";
    pub const LOGIN_SUCCESS: &str = "login_success";
    pub const LOGIN_FAILURE: &str = "login_failure";
    pub const LOGOUT: &str = "logout";
    pub const TOKEN_REFRESHED: &str = "token_refreshed";
    pub const REFRESH_TOKEN_REUSE_DETECTED: &str = "refresh_token_reuse_detected";
    pub const SESSION_REVOKED: &str = "session_revoked";
    pub const SIGNING_KEY_ROTATED: &str = "signing_key_rotated";
    pub const ROLE_CHANGED: &str = "role_changed";
    pub const ACCOUNT_DISABLED: &str = "account_disabled";
    pub const ACCOUNT_ENABLED: &str = "account_enabled";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const PASSWORD_CHANGED: &str = "password_changed";
    pub const PASSWORD_RESET_REQUESTED: &str = "password_reset_requested";
    pub const PASSWORD_RESET_COMPLETED: &str = "password_reset_completed";
    pub const EMAIL_VERIFIED: &str = "email_verified";
    pub const ACCOUNT_LOCKED: &str = "account_locked";
    pub const ACCOUNT_UNLOCKED: &str = "account_unlocked";
    pub const LOGIN_THROTTLED: &str = "login_throttled";
    pub const ACCOUNT_ERASED: &str = "account_erased";
    pub const PURCHASE_COMPLETED: &str = "purchase_completed";
    pub const PURCHASE_FAILED: &str = "purchase_failed";
    pub const PURCHASE_REFUNDED: &str = "purchase_refunded";
}

/// The `security_events` read model: one row per security-relevant event, for
/// `GET /auth/security-events`.
pub struct SecurityEvents;

/// One row to write.
struct Row_ {
    position: i64,
    user_id: Option<String>,
    session_id: Option<String>,
    event_type: &'static str,
    ip_address: Option<String>,
    user_agent: Option<String>,
    metadata: Value,
    created_at: DbTime,
}

#[async_trait]
impl Projection for SecurityEvents {
    fn name(&self) -> &'static str {
        "security_events"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["security_events"]
    }

    async fn apply_batch(&self, tx: &mut DbTx, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        for event in events {
            if let Some(row) = row_for(event)? {
                rows.push(row);
            }
            if event.aggregate_type == "user" && event.event_type == "UserErased" {
                insert(tx, std::mem::take(&mut rows)).await?;
                blank(tx, &event.aggregate_id).await?;
            }
        }
        insert(tx, rows).await
    }
}

/// An erased user's rows keep their types and times; the client (address, agent,
/// device) goes.
async fn blank(tx: &mut DbTx, user_id: &str) -> anyhow::Result<()> {
    let sql = match tx {
        DbTx::Postgres(_) => {
            "UPDATE security_events SET ip_address = NULL, user_agent = NULL, \
             metadata = metadata - 'deviceId' - 'deviceName' WHERE user_id = $1"
        }
        DbTx::Sqlite(_) => {
            "UPDATE security_events SET ip_address = NULL, user_agent = NULL, \
             metadata = json_remove(metadata, '$.deviceId', '$.deviceName') WHERE user_id = $1"
        }
    };
    exec!(tx, sql, user_id)?;
    Ok(())
}

async fn insert(tx: &mut DbTx, rows: Vec<Row_>) -> anyhow::Result<()> {
    {
        insert_rows!(tx, "security_events", &rows, |r| {
            "position": "bigint" = r.position,
            "user_id": "text" = r.user_id.clone(),
            "session_id": "text" = r.session_id.clone(),
            "event_type": "text" = r.event_type,
            "ip_address": "text" = r.ip_address.clone(),
            "user_agent": "text" = r.user_agent.clone(),
            "metadata": "jsonb" = Json(r.metadata.clone()),
            "created_at": "timestamptz" = r.created_at,
        })?;
        Ok(())
    }
}

fn row_for(event: &RecordedEvent) -> anyhow::Result<Option<Row_>> {
    let row = |kind,
               user: Option<String>,
               session: Option<String>,
               personal: Option<&SessionPersonal>,
               metadata| Row_ {
        position: event.cursor.position,
        user_id: user,
        session_id: session,
        event_type: kind,
        ip_address: personal.and_then(|p| p.ip_address.clone()),
        user_agent: personal.and_then(|p| p.user_agent.clone()),
        metadata,
        created_at: DbTime(event.recorded_at),
    };
    let id = Some(event.aggregate_id.clone());
    Ok(Some(match event.aggregate_type.as_str() {
        "credit_account" => match event.decode::<CreditEvent>()? {
            CreditEvent::CreditsPurchased { purchase_id, amount, .. } => row(
                kinds::PURCHASE_COMPLETED,
                id,
                None,
                None,
                json!({"purchaseId": purchase_id, "credits": amount}),
            ),
            CreditEvent::PurchaseCreditsReversed { purchase_id, amount, cause, .. } => row(
                kinds::PURCHASE_REFUNDED,
                id,
                None,
                None,
                json!({"purchaseId": purchase_id, "credits": amount, "cause": cause}),
            ),
            _ => return Ok(None),
        },
        "purchase" => match event.decode::<PurchaseEvent>()? {
            PurchaseEvent::PurchaseFailed { user_id, reason, .. } => row(
                kinds::PURCHASE_FAILED,
                Some(user_id),
                None,
                None,
                json!({"purchaseId": event.aggregate_id, "reason": reason}),
            ),
            _ => return Ok(None),
        },
        "user" => match event.decode::<UserEvent>()? {
            UserEvent::UserRegistered { .. } => row(kinds::ACCOUNT_CREATED, id, None, None, json!({})),
            UserEvent::UserRoleChanged { role, previous, .. } => {
                row(kinds::ROLE_CHANGED, id, None, None, json!({"role": role, "previous": previous}))
            }
            UserEvent::UserDisabled { .. } => row(kinds::ACCOUNT_DISABLED, id, None, None, json!({})),
            UserEvent::UserEnabled { .. } => row(kinds::ACCOUNT_ENABLED, id, None, None, json!({})),
            UserEvent::PasswordChanged { kept_session, .. } => {
                row(kinds::PASSWORD_CHANGED, id, kept_session, None, json!({}))
            }
            UserEvent::PasswordResetRequested { .. } => {
                row(kinds::PASSWORD_RESET_REQUESTED, id, None, None, json!({}))
            }
            UserEvent::PasswordResetCompleted { .. } => {
                row(kinds::PASSWORD_RESET_COMPLETED, id, None, None, json!({}))
            }
            UserEvent::EmailVerified { .. } => row(kinds::EMAIL_VERIFIED, id, None, None, json!({})),
            UserEvent::EmailVerificationRequested { .. } => return Ok(None),
            UserEvent::UserErased { plaintext_events, .. } => {
                row(kinds::ACCOUNT_ERASED, id, None, None, json!({"plaintextEvents": plaintext_events}))
            }
        },
        "session" => match event.decode::<SessionEvent>()? {
            SessionEvent::SessionStarted { user_id, origin, remember_me, personal, .. } => row(
                kinds::LOGIN_SUCCESS,
                Some(user_id),
                id,
                Some(&personal),
                json!({"origin": origin, "deviceId": personal.device_id, "deviceName": personal.device_name,
                       "rememberMe": remember_me}),
            ),
            SessionEvent::SessionRefreshed { user_id, personal, .. } => {
                row(kinds::TOKEN_REFRESHED, Some(user_id), id, Some(&personal), json!({}))
            }
            SessionEvent::RefreshTokenReuseDetected { user_id, personal, .. } => {
                row(kinds::REFRESH_TOKEN_REUSE_DETECTED, Some(user_id), id, Some(&personal), json!({}))
            }
            SessionEvent::SessionRevoked { user_id, reason, .. } => {
                let kind =
                    if reason == RevokeReason::Logout { kinds::LOGOUT } else { kinds::SESSION_REVOKED };
                row(kind, Some(user_id), id, None, json!({"reason": reason.as_str()}))
            }
        },
        "login_attempts" => {
            // Change-password checks run on a stream of their own per session.
            let session = event.aggregate_id.strip_prefix("session:").map(str::to_owned);
            let context = if session.is_some() { "change_password" } else { "login" };
            match event.decode::<LoginAttemptEvent>()? {
                LoginAttemptEvent::LoginCheckFailed {
                    reason,
                    user_id,
                    personal,
                    familiar,
                    consecutive_failures,
                    ..
                } => row(
                    kinds::LOGIN_FAILURE,
                    user_id,
                    session,
                    Some(&personal),
                    json!({"reason": reason, "consecutiveFailures": consecutive_failures, "familiar": familiar,
                       "context": context}),
                ),
                LoginAttemptEvent::LoginThrottled {
                    reason,
                    user_id,
                    personal,
                    familiar,
                    retry_after_secs,
                    ..
                } => row(
                    kinds::LOGIN_THROTTLED,
                    user_id,
                    session,
                    Some(&personal),
                    json!({"reason": reason, "familiar": familiar, "retryAfter": retry_after_secs, "context": context}),
                ),
                LoginAttemptEvent::LoginLocked {
                    user_id,
                    personal,
                    familiar,
                    failures,
                    locked_until,
                    ..
                } => row(
                    kinds::ACCOUNT_LOCKED,
                    user_id,
                    session,
                    Some(&personal),
                    json!({"failures": failures, "lockedUntil": locked_until, "familiar": familiar}),
                ),
                LoginAttemptEvent::LoginFailed {
                    reason, user_id, personal, consecutive_failures, ..
                } => row(
                    kinds::LOGIN_FAILURE,
                    user_id,
                    None,
                    Some(&personal),
                    json!({"reason": reason, "consecutiveFailures": consecutive_failures}),
                ),
                LoginAttemptEvent::AccountLocked { user_id, failures, locked_until, .. } => row(
                    kinds::ACCOUNT_LOCKED,
                    user_id,
                    None,
                    None,
                    json!({"failures": failures, "lockedUntil": locked_until}),
                ),
                LoginAttemptEvent::AccountUnlocked { user_id, .. } => {
                    row(kinds::ACCOUNT_UNLOCKED, user_id, None, None, json!({}))
                }
                LoginAttemptEvent::ResetRequestedForUnknownAddress { personal, .. } => row(
                    kinds::PASSWORD_RESET_REQUESTED,
                    None,
                    None,
                    Some(&personal),
                    json!({"knownAddress": false}),
                ),
                LoginAttemptEvent::LoginAttemptStarted { .. }
                | LoginAttemptEvent::AttemptsCleared { .. }
                | LoginAttemptEvent::LoginSucceeded { .. }
                | LoginAttemptEvent::LoginAttemptAbandoned { .. }
                | LoginAttemptEvent::LoginCheckStarted { .. }
                | LoginAttemptEvent::LoginCheckSucceeded { .. } => return Ok(None),
            }
        }
        "security_notice" => {
            let SecurityNoticeEvent::RateLimitExceeded { rule, user_id, personal, .. } = event.decode()?;
            row(kinds::RATE_LIMITED, user_id, None, Some(&personal), json!({"rule": rule}))
        }
        // The audit keyring (`audit-keys`) shares the aggregate: its rotations are not
        // signing-key rotations.
        "keyring" if event.aggregate_id == KEYRING_ID => match event.decode::<KeyringEvent>()? {
            KeyringEvent::SigningKeyActivated { kid, previous_kid: Some(previous), .. } => row(
                kinds::SIGNING_KEY_ROTATED,
                None,
                None,
                None,
                json!({"kid": kid, "previousKid": previous}),
            ),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    }))
}

/// A security event as `GET /auth/security-events` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct SecurityEventRow {
    pub id: i64,
    pub event_type: String,
    pub session_id: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
}

/// A user's security events, newest first.
pub async fn for_user(
    db: &Db,
    user_id: &str,
    limit: i64,
    offset: i64,
) -> anyhow::Result<Vec<SecurityEventRow>> {
    let sql = "SELECT position, event_type, session_id, ip_address, user_agent, metadata, created_at \
               FROM security_events WHERE user_id = $1 \
               ORDER BY created_at DESC, position DESC LIMIT $2 OFFSET $3";
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(user_id)
                .bind(limit)
                .bind(offset)
                .fetch_all($pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(SecurityEventRow {
                        id: r.try_get(0)?,
                        event_type: r.try_get(1)?,
                        session_id: r.try_get(2)?,
                        ip_address: r.try_get(3)?,
                        user_agent: r.try_get(4)?,
                        metadata: r.try_get::<Json<Value>, _>(5)?.0,
                        created_at: r.try_get::<DbTime, _>(6)?.0,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        };
    }
    Ok(match db {
        Db::Postgres(pool) => fetch!(pool),
        Db::Sqlite { reader, .. } => fetch!(reader),
    })
}

/// Blanks the client of the rows that belong to no account, recorded before `day`: their
/// events are sealed under per-day keys, which are destroyed after `DAY_KEY_DAYS` days
/// (docs/PRIVACY.md), so the read model forgets them too, as a rebuild would.
pub async fn blank_days_before(db: &Db, day: chrono::NaiveDate) -> anyhow::Result<u64> {
    let midnight = DbTime(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    let mut tx = db.begin_write().await?;
    let sql = match &tx {
        DbTx::Postgres(_) => {
            "UPDATE security_events SET ip_address = NULL, user_agent = NULL, \
             metadata = metadata - 'deviceId' - 'deviceName' \
             WHERE user_id IS NULL AND created_at < $1 AND (ip_address IS NOT NULL OR user_agent IS NOT NULL)"
        }
        DbTx::Sqlite(_) => {
            "UPDATE security_events SET ip_address = NULL, user_agent = NULL, \
             metadata = json_remove(metadata, '$.deviceId', '$.deviceName') \
             WHERE user_id IS NULL AND created_at < $1 AND (ip_address IS NOT NULL OR user_agent IS NOT NULL)"
        }
    };
    let blanked = exec!(&mut tx, sql, midnight)?;
    tx.commit().await?;
    Ok(blanked)
}
