-- Issue 15: personal data sealed per person (see the PostgreSQL migration of the same number).
CREATE TABLE data_keys (
    subject    TEXT PRIMARY KEY,
    sealed     BLOB NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE erasures (
    subject         TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    erased_at       TEXT NOT NULL,
    legacy_claim_id TEXT,
    scrubbed_at     TEXT
);

DROP TRIGGER events_no_update;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
WHEN NOT (OLD.hash IS NULL AND NEW.hash IS NOT NULL AND OLD.commitments IS NULL
          AND NEW.position IS OLD.position AND NEW.aggregate_type IS OLD.aggregate_type
          AND NEW.aggregate_id IS OLD.aggregate_id AND NEW.sequence IS OLD.sequence
          AND NEW.event_type IS OLD.event_type AND NEW.event_version IS OLD.event_version
          AND NEW.payload IS OLD.payload AND NEW.metadata IS OLD.metadata
          AND NEW.txid IS OLD.txid AND NEW.recorded_at IS OLD.recorded_at)
 AND NOT (OLD.hash IS NOT NULL AND NEW.hash IS OLD.hash
          AND NEW.position IS OLD.position AND NEW.aggregate_type IS OLD.aggregate_type
          AND NEW.sequence IS OLD.sequence AND NEW.event_type IS OLD.event_type
          AND NEW.event_version IS OLD.event_version AND NEW.txid IS OLD.txid
          AND NEW.recorded_at IS OLD.recorded_at
          AND EXISTS (SELECT 1 FROM erasures e
                       WHERE e.scrubbed_at IS NULL
                         AND ((json_extract(OLD.commitments, '$.key') = e.subject
                               AND NEW.aggregate_id IS OLD.aggregate_id)
                              OR (OLD.aggregate_type IN ('email_claim', 'login_attempts')
                                  AND OLD.aggregate_id = e.legacy_claim_id))))
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only (UPDATE refused)');
END;

-- When the user was erased (their personal columns are blanked).
ALTER TABLE users ADD COLUMN erased_at TEXT;

-- The events an erasure must scrub: those written before sealing, by subject.
CREATE INDEX events_plaintext_subject ON events (json_extract(commitments, '$.key'))
 WHERE commitments IS NOT NULL AND json_extract(commitments, '$.sealed') IS NULL;

-- One-off maintenance steps the service runs outside migrations (a VACUUM cannot run in
-- a transaction): `vacuum-secure-delete` rewrites a file created before secure_delete, so
-- that no free page keeps content deleted earlier.
CREATE TABLE maintenance (
    step    TEXT PRIMARY KEY,
    done_at TEXT NOT NULL
);
