-- Projection `purchases`: one row per purchase of paid credits, with its package as bought.
CREATE TABLE read.purchases (
    id                       TEXT        PRIMARY KEY,
    user_id                  TEXT        NOT NULL,
    package_id               TEXT        NOT NULL,
    package_name             TEXT        NOT NULL,
    credits                  BIGINT      NOT NULL,
    price_euro_cents         BIGINT      NOT NULL,
    currency                 TEXT        NOT NULL,
    status                   TEXT        NOT NULL,
    failure_reason           TEXT,
    stripe_payment_intent_id TEXT,
    credits_refunded         BIGINT      NOT NULL,
    needs_review             BOOLEAN     NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL,
    completed_at             TIMESTAMPTZ,
    updated_at               TIMESTAMPTZ NOT NULL
);
CREATE INDEX purchases_user ON read.purchases (user_id, created_at DESC);
CREATE INDEX purchases_status ON read.purchases (status, created_at);

-- Projection `purchases`: every Stripe event received, with what was done with it.
CREATE TABLE read.stripe_events (
    id                TEXT        PRIMARY KEY,
    position          BIGINT      NOT NULL,
    event_type        TEXT        NOT NULL,
    created           BIGINT      NOT NULL,
    payment_intent_id TEXT,
    purchase_id       TEXT,
    outcome           TEXT        NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX stripe_events_outcome ON read.stripe_events (outcome, position);
