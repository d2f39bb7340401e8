-- Projection `users`: the session kept by the last password change.
ALTER TABLE users ADD COLUMN kept_session text;
-- Projection `sessions`: the same for its own cutoffs.
ALTER TABLE session_cutoffs ADD COLUMN kept_session text;

-- Transactional outbox: messages written in the same transaction as the events that
-- cause them, delivered after the commit with retries. A delivered message's body (which
-- may hold a single-use token) is erased; so is an undelivered one past `expires_at`.
CREATE TABLE outbox (
    id              text        PRIMARY KEY,
    kind            text        NOT NULL,
    recipient       text        NOT NULL,
    subject         text        NOT NULL,
    body            text,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    claimed_until   timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    sent_at         timestamptz
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE sent_at IS NULL;

-- The development mailer's mailbox (APP_ENV=development without SMTP_URL): what would
-- have been sent. Tests read it.
CREATE TABLE dev_mailbox (
    id           text        PRIMARY KEY,
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    kind         text        NOT NULL,
    recipient    text        NOT NULL,
    subject      text        NOT NULL,
    body         text        NOT NULL,
    delivered_at timestamptz NOT NULL
);
