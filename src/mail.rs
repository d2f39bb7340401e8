//! Outgoing mail: message rendering, transports (SMTP, or the development mailer), and
//! the dispatcher that delivers the transactional outbox after commits.
//!
//! Messages are written to `outbox` in the same transaction as the events that cause
//! them (`EventStore::append_with_mail`), so a crash never loses a reset request's mail
//! nor sends mail for a request that did not commit. Every process runs a dispatcher; a
//! message is claimed for a minute before it is sent, so two processes do not send it
//! twice in the normal case. Delivery is retried with a growing delay; a delivered
//! message's body (and the single-use token in it) is erased, and so is an undelivered one
//! once its token expired.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::{AppEnv, Secret};
use crate::db::{Db, DbTime};
use crate::events::{LogSignal, OutgoingMail};

/// Kinds of messages.
pub mod kinds {
    pub const PASSWORD_RESET: &str = "password_reset";
    pub const EMAIL_VERIFICATION: &str = "email_verification";
}

/// A message to deliver, as claimed from the outbox.
#[derive(Clone)]
pub struct Mail {
    pub id: String,
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
}

/// The password-reset message.
pub fn password_reset(
    id: String,
    recipient: &str,
    link: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> OutgoingMail {
    OutgoingMail {
        id,
        kind: kinds::PASSWORD_RESET.to_owned(),
        recipient: recipient.to_owned(),
        subject: "Reset your Mana password".to_owned(),
        body: format!(
            "Someone asked to reset the password of your Mana account.\n\n\
             To choose a new password, open this link within one hour:\n{link}\n\n\
             If it was not you, ignore this message; your password stays as it is.\n"
        ),
        created_at: now,
        expires_at,
    }
}

/// The e-mail verification message.
pub fn email_verification(
    id: String,
    recipient: &str,
    link: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> OutgoingMail {
    OutgoingMail {
        id,
        kind: kinds::EMAIL_VERIFICATION.to_owned(),
        recipient: recipient.to_owned(),
        subject: "Confirm your e-mail address".to_owned(),
        body: format!("Welcome to Mana.\n\nConfirm your e-mail address by opening this link:\n{link}\n"),
        created_at: now,
        expires_at,
    }
}

/// Something that delivers mail.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, mail: &Mail) -> anyhow::Result<()>;
}

/// SMTP through lettre (`SMTP_URL`).
pub struct Smtp {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl Smtp {
    /// A transport for `smtp://user:password@host:port` (or `smtps://`).
    pub fn new(url: &Secret, from: &str) -> anyhow::Result<Self> {
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url.expose())?
            .timeout(Some(Duration::from_secs(20)))
            .build();
        Ok(Self { transport, from: from.parse()? })
    }
}

#[async_trait]
impl Transport for Smtp {
    async fn send(&self, mail: &Mail) -> anyhow::Result<()> {
        use lettre::AsyncTransport;
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(mail.recipient.parse()?)
            .subject(&mail.subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(mail.body.clone())?;
        self.transport.send(message).await?;
        Ok(())
    }
}

/// The development mailer (no `SMTP_URL`): logs each message and, in development,
/// keeps it in `dev_mailbox` (tests read it). In production it logs without the body,
/// so no token reaches the logs, and keeps nothing.
pub struct DevMailer {
    db: Db,
    env: AppEnv,
    clock: SharedClock,
}

impl DevMailer {
    pub fn new(db: Db, env: AppEnv, clock: SharedClock) -> Self {
        Self { db, env, clock }
    }
}

#[async_trait]
impl Transport for DevMailer {
    async fn send(&self, mail: &Mail) -> anyhow::Result<()> {
        if self.env == AppEnv::Production {
            tracing::warn!(kind = %mail.kind, subject = %mail.subject, "no SMTP_URL: message dropped (body not logged)");
            return Ok(());
        }
        tracing::info!(kind = %mail.kind, to = %mail.recipient, subject = %mail.subject, body = %mail.body, "development mailer");
        let sql = match &self.db {
            Db::Postgres(_) => {
                "INSERT INTO dev_mailbox (id, kind, recipient, subject, body, delivered_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING"
            }
            Db::Sqlite { .. } => {
                "INSERT INTO dev_mailbox (id, kind, recipient, subject, body, delivered_at, seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, (SELECT COALESCE(max(seq), 0) + 1 FROM dev_mailbox)) \
                 ON CONFLICT (id) DO NOTHING"
            }
        };
        let now = DbTime(self.clock.now());
        macro_rules! insert {
            ($pool:expr) => {
                sqlx::query(sql)
                    .bind(&mail.id)
                    .bind(&mail.kind)
                    .bind(&mail.recipient)
                    .bind(&mail.subject)
                    .bind(&mail.body)
                    .bind(now)
                    .execute($pool)
                    .await?
            };
        }
        match &self.db {
            Db::Postgres(pool) => insert!(pool).rows_affected(),
            Db::Sqlite { writer, .. } => insert!(writer).rows_affected(),
        };
        Ok(())
    }
}

/// Delivers the outbox.
pub struct Dispatcher {
    db: Db,
    transport: Arc<dyn Transport>,
    clock: SharedClock,
}

/// How long a claimed message is reserved for the process that claimed it.
const CLAIM_FOR: chrono::Duration = chrono::Duration::seconds(60);
/// Messages claimed per round.
const BATCH: i64 = 10;

impl Dispatcher {
    pub fn new(db: Db, transport: Arc<dyn Transport>, clock: SharedClock) -> Self {
        Self { db, transport, clock }
    }

    /// Delivers until `shutdown`, woken by commits and polling every `poll`.
    pub async fn run(self, signal: LogSignal, poll: Duration, shutdown: CancellationToken) {
        let mut wake = signal.subscribe_events();
        while !shutdown.is_cancelled() {
            match self.deliver_due().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "mail dispatcher could not read the outbox")
                }
            }
            tokio::select! {
                _ = wake.changed() => {}
                () = tokio::time::sleep(poll) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Claims and delivers the messages due now; returns how many were attempted.
    pub async fn deliver_due(&self) -> anyhow::Result<usize> {
        self.erase_expired().await?;
        let due = self.claim().await?;
        for mail in &due {
            match self.transport.send(mail).await {
                Ok(()) => self.delivered(&mail.id).await?,
                Err(error) => {
                    tracing::warn!(id = %mail.id, kind = %mail.kind, error = format!("{error:#}"), "mail delivery failed; will retry");
                    self.failed(&mail.id, &format!("{error:#}")).await?;
                }
            }
        }
        Ok(due.len())
    }

    async fn claim(&self) -> anyhow::Result<Vec<Mail>> {
        let now = self.clock.now();
        let skip_locked = match &self.db {
            Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Db::Sqlite { .. } => "",
        };
        let sql = format!(
            "UPDATE outbox SET claimed_until = $2, attempts = attempts + 1 WHERE id IN ( \
                 SELECT id FROM outbox WHERE sent_at IS NULL AND body IS NOT NULL AND next_attempt_at <= $1 \
                   AND (claimed_until IS NULL OR claimed_until < $1) \
                 ORDER BY created_at LIMIT {BATCH}{skip_locked}) \
             RETURNING id, kind, recipient, subject, body"
        );
        macro_rules! claim {
            ($pool:expr) => {
                sqlx::query(&sql)
                    .bind(DbTime(now))
                    .bind(DbTime(now + CLAIM_FOR))
                    .fetch_all($pool)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(Mail {
                            id: r.try_get(0)?,
                            kind: r.try_get(1)?,
                            recipient: r.try_get(2)?,
                            subject: r.try_get(3)?,
                            body: r.try_get(4)?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            };
        }
        Ok(match &self.db {
            Db::Postgres(pool) => claim!(pool),
            Db::Sqlite { writer, .. } => claim!(writer),
        })
    }

    async fn delivered(&self, id: &str) -> anyhow::Result<()> {
        let sql = "UPDATE outbox SET sent_at = $2, body = NULL, claimed_until = NULL, last_error = $3 WHERE id = $1";
        self.execute(sql, id, DbTime(self.clock.now()), None).await
    }

    async fn failed(&self, id: &str, error: &str) -> anyhow::Result<()> {
        // 10 s, 20 s, 40 s, ... up to an hour; the claim's attempt count drives it.
        let sql = "UPDATE outbox SET claimed_until = NULL, last_error = $3, \
                   next_attempt_at = $2 WHERE id = $1";
        let attempts = self.attempts(id).await?;
        let delay = chrono::Duration::seconds((10i64 << attempts.clamp(0, 9)).min(3600));
        let error: String = error.chars().take(500).collect();
        self.execute(sql, id, DbTime(self.clock.now() + delay), Some(error)).await
    }

    async fn attempts(&self, id: &str) -> anyhow::Result<i64> {
        let sql = "SELECT attempts FROM outbox WHERE id = $1";
        let attempts: i32 = match &self.db {
            Db::Postgres(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await?,
            Db::Sqlite { reader, .. } => sqlx::query_scalar(sql).bind(id).fetch_one(reader).await?,
        };
        Ok(i64::from(attempts) - 1)
    }

    async fn execute(&self, sql: &str, id: &str, at: DbTime, text: Option<String>) -> anyhow::Result<()> {
        match &self.db {
            Db::Postgres(pool) => {
                sqlx::query(sql).bind(id).bind(at).bind(text).execute(pool).await.map(drop)?
            }
            Db::Sqlite { writer, .. } => {
                sqlx::query(sql).bind(id).bind(at).bind(text).execute(writer).await.map(drop)?
            }
        };
        Ok(())
    }

    /// Undelivered messages whose token expired are useless: erase their bodies.
    async fn erase_expired(&self) -> anyhow::Result<()> {
        let sql = "UPDATE outbox SET body = NULL, last_error = COALESCE(last_error, 'expired before delivery') \
                   WHERE sent_at IS NULL AND body IS NOT NULL AND expires_at < $1";
        let now = DbTime(self.clock.now());
        match &self.db {
            Db::Postgres(pool) => sqlx::query(sql).bind(now).execute(pool).await.map(drop)?,
            Db::Sqlite { writer, .. } => sqlx::query(sql).bind(now).execute(writer).await.map(drop)?,
        };
        Ok(())
    }
}
