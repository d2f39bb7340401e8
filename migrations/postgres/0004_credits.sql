-- Projection `balances`: one row per credit account.
CREATE TABLE balances (
    user_id                text        PRIMARY KEY,
    balance                bigint      NOT NULL,
    free_credits_remaining bigint      NOT NULL,
    total_earned           bigint      NOT NULL,
    total_spent            bigint      NOT NULL,
    last_daily_grant_day   date,
    updated_at             timestamptz NOT NULL
);

-- Projection `credit_transactions`: the ledger, one row per credit-moving event.
CREATE TABLE credit_transactions (
    id              text        PRIMARY KEY,
    position        bigint      NOT NULL,
    user_id         text        NOT NULL,
    type            text        NOT NULL,
    status          text        NOT NULL,
    amount          bigint      NOT NULL,
    balance_before  bigint      NOT NULL,
    balance_after   bigint      NOT NULL,
    app_id          text        NOT NULL,
    description     text        NOT NULL,
    metadata        jsonb,
    idempotency_key text,
    created_at      timestamptz NOT NULL,
    completed_at    timestamptz NOT NULL
);
CREATE INDEX credit_transactions_user ON credit_transactions (user_id, created_at DESC, position DESC);
CREATE INDEX credit_transactions_app ON credit_transactions (app_id, created_at);

-- Projection `usage_stats`: per user, app and UTC day.
CREATE TABLE usage_stats (
    user_id      text   NOT NULL,
    app_id       text   NOT NULL,
    day          date   NOT NULL,
    credits_used bigint NOT NULL,
    spends       bigint NOT NULL,
    PRIMARY KEY (user_id, app_id, day)
);
CREATE INDEX usage_stats_app ON usage_stats (app_id, day);
