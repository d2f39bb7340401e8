-- Projection `ledger_postings` (issue 13): the credit ledger in double entry. Every
-- credit-moving event becomes two or more postings that sum to zero, each on an account
-- of the chart (docs/PROJECTIONS.md). The projection starts empty at checkpoint 0 and
-- fills itself from the log on the first start of a build that has it.
CREATE TABLE ledger_postings (
    id             text        PRIMARY KEY,
    transaction_id text        NOT NULL,
    line           integer     NOT NULL,
    txid           bigint      NOT NULL,
    position       bigint      NOT NULL,
    user_id        text        NOT NULL,
    type           text        NOT NULL,
    account        text        NOT NULL,
    amount         bigint      NOT NULL,
    app_id         text,
    created_at     timestamptz NOT NULL
);
-- Usage figures per app and period read the postings of spends and refunds only.
CREATE INDEX ledger_postings_usage ON ledger_postings (app_id, created_at) WHERE app_id IS NOT NULL;
