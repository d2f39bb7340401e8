-- Projection `ledger_postings` (issue 13): the credit ledger in double entry. Every
-- credit-moving event becomes two or more postings that sum to zero, each on an account
-- of the chart (docs/PROJECTIONS.md). The projection starts empty at checkpoint 0 and
-- fills itself from the log on the first start of a build that has it.
CREATE TABLE ledger_postings (
    id             TEXT    PRIMARY KEY,
    transaction_id TEXT    NOT NULL,
    line           INTEGER NOT NULL,
    txid           INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    user_id        TEXT    NOT NULL,
    type           TEXT    NOT NULL,
    account        TEXT    NOT NULL,
    amount         INTEGER NOT NULL,
    app_id         TEXT,
    created_at     TEXT    NOT NULL
);
-- Usage figures per app and period read the postings of spends and refunds only.
CREATE INDEX ledger_postings_usage ON ledger_postings (app_id, created_at) WHERE app_id IS NOT NULL;
