-- Projection `purchases`: one row per purchase of paid credits, with its package as bought.
CREATE TABLE purchases (
    id                       TEXT        PRIMARY KEY,
    user_id                  TEXT        NOT NULL,
    package_id               TEXT        NOT NULL,
    package_name             TEXT        NOT NULL,
    credits                  INTEGER     NOT NULL,
    price_euro_cents         INTEGER     NOT NULL,
    currency                 TEXT        NOT NULL,
    status                   TEXT        NOT NULL,
    failure_reason           TEXT,
    stripe_payment_intent_id TEXT,
    credits_refunded         INTEGER     NOT NULL,
    needs_review             INTEGER     NOT NULL,
    created_at               TEXT        NOT NULL,
    completed_at             TEXT       ,
    updated_at               TEXT        NOT NULL
);
CREATE INDEX purchases_user ON purchases (user_id, created_at DESC);
CREATE INDEX purchases_status ON purchases (status, created_at);

-- Projection `purchases`: every Stripe event received, with what was done with it.
CREATE TABLE stripe_events (
    id                TEXT        PRIMARY KEY,
    position          INTEGER     NOT NULL,
    event_type        TEXT        NOT NULL,
    created           INTEGER     NOT NULL,
    payment_intent_id TEXT,
    purchase_id       TEXT,
    outcome           TEXT        NOT NULL,
    received_at       TEXT        NOT NULL
);
CREATE INDEX stripe_events_outcome ON stripe_events (outcome, position);
