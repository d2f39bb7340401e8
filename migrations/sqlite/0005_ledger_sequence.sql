-- Projection `credit_transactions`: rows carry their event's sequence in the account's
-- stream, and the history is listed in that order (the order the account applied them),
-- not by each request's clock reading. Existing rows take it from their event.
ALTER TABLE credit_transactions ADD COLUMN sequence INTEGER NOT NULL DEFAULT 0;
UPDATE credit_transactions
   SET sequence = (SELECT e.sequence FROM events e WHERE e.position = credit_transactions.position);
DROP INDEX credit_transactions_user;
CREATE INDEX credit_transactions_user ON credit_transactions (user_id, sequence DESC);
