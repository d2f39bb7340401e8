-- Projection `credit_transactions`: rows carry their event's sequence in the account's
-- stream, and the history is listed in that order (the order the account applied them),
-- not by each request's clock reading. Existing rows take it from their event.
ALTER TABLE credit_transactions ADD COLUMN sequence bigint;
UPDATE credit_transactions t SET sequence = e.sequence FROM events e WHERE e.position = t.position;
ALTER TABLE credit_transactions ALTER COLUMN sequence SET NOT NULL;
DROP INDEX credit_transactions_user;
CREATE INDEX credit_transactions_user ON credit_transactions (user_id, sequence DESC);
