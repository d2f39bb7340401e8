-- Projection `balances`: one row per credit account.
CREATE TABLE balances (
    user_id                TEXT        PRIMARY KEY,
    balance                INTEGER      NOT NULL,
    free_credits_remaining INTEGER      NOT NULL,
    total_earned           INTEGER      NOT NULL,
    total_spent            INTEGER      NOT NULL,
    last_daily_grant_day   TEXT,
    updated_at             TEXT NOT NULL
);

-- Projection `credit_transactions`: the ledger, one row per credit-moving event.
CREATE TABLE credit_transactions (
    id              TEXT        PRIMARY KEY,
    position        INTEGER      NOT NULL,
    user_id         TEXT        NOT NULL,
    type            TEXT        NOT NULL,
    status          TEXT        NOT NULL,
    amount          INTEGER      NOT NULL,
    balance_before  INTEGER      NOT NULL,
    balance_after   INTEGER      NOT NULL,
    app_id          TEXT        NOT NULL,
    description     TEXT        NOT NULL,
    metadata        TEXT,
    idempotency_key TEXT,
    created_at      TEXT NOT NULL,
    completed_at    TEXT NOT NULL
);
CREATE INDEX credit_transactions_user ON credit_transactions (user_id, created_at DESC, position DESC);
CREATE INDEX credit_transactions_app ON credit_transactions (app_id, created_at);

-- Projection `usage_stats`: per user, app and UTC day.
CREATE TABLE usage_stats (
    user_id      TEXT   NOT NULL,
    app_id       TEXT   NOT NULL,
    day          TEXT   NOT NULL,
    credits_used INTEGER NOT NULL,
    spends       INTEGER NOT NULL,
    PRIMARY KEY (user_id, app_id, day)
);
CREATE INDEX usage_stats_app ON usage_stats (app_id, day);
