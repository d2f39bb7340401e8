-- Issue 11: the hash chain (see the PostgreSQL migration of the same number).
ALTER TABLE events ADD COLUMN hash TEXT;
ALTER TABLE events ADD COLUMN commitments TEXT CHECK (commitments IS NULL OR json_valid(commitments));

CREATE INDEX events_unhashed ON events (aggregate_type, aggregate_id, sequence) WHERE hash IS NULL;

DROP TRIGGER events_no_update;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
WHEN NOT (OLD.hash IS NULL AND NEW.hash IS NOT NULL AND OLD.commitments IS NULL
          AND NEW.position IS OLD.position AND NEW.aggregate_type IS OLD.aggregate_type
          AND NEW.aggregate_id IS OLD.aggregate_id AND NEW.sequence IS OLD.sequence
          AND NEW.event_type IS OLD.event_type AND NEW.event_version IS OLD.event_version
          AND NEW.payload IS OLD.payload AND NEW.metadata IS OLD.metadata
          AND NEW.txid IS OLD.txid AND NEW.recorded_at IS OLD.recorded_at)
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only (UPDATE refused)');
END;

CREATE TABLE personal_keys (
    subject    TEXT PRIMARY KEY,
    key        BLOB NOT NULL CHECK (length(key) = 32),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
