-- Projection `users`: the session kept by the last password change.
ALTER TABLE users ADD COLUMN kept_session TEXT;
-- Projection `sessions`: the same for its own cutoffs.
ALTER TABLE session_cutoffs ADD COLUMN kept_session TEXT;

-- Transactional outbox: messages written in the same transaction as the events that
-- cause them, delivered after the commit with retries. A delivered message's body (which
-- may hold a single-use token) is erased; so is an undelivered one past `expires_at`.
CREATE TABLE outbox (
    id              TEXT        PRIMARY KEY,
    kind            TEXT        NOT NULL,
    recipient       TEXT        NOT NULL,
    subject         TEXT        NOT NULL,
    body            TEXT,
    created_at      TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    claimed_until   TEXT,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    last_error      TEXT,
    sent_at         TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE sent_at IS NULL;

-- The development mailer's mailbox (APP_ENV=development without SMTP_URL): what would
-- have been sent. Tests read it.
CREATE TABLE dev_mailbox (
    id           TEXT        PRIMARY KEY,
    seq          INTEGER     UNIQUE,
    kind         TEXT        NOT NULL,
    recipient    TEXT        NOT NULL,
    subject      TEXT        NOT NULL,
    body         TEXT        NOT NULL,
    delivered_at TEXT NOT NULL
);
