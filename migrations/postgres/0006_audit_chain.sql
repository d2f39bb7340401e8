-- Issue 11: the hash chain. Every event carries `hash` = SHA-256(previous hash of its
-- stream ‖ canonical form) and the commitments of its personal fields (docs/AUDIT.md).
-- Both are written with the event; rows written before this migration get theirs once,
-- from the audit backfill the service runs at start-up (`hash IS NULL` marks them).
ALTER TABLE events ADD COLUMN hash text, ADD COLUMN commitments jsonb;

CREATE INDEX events_unhashed ON events (aggregate_type, aggregate_id, sequence) WHERE hash IS NULL;

-- Still append-only; the one update allowed fills the hash of a row that has none, and
-- changes nothing else.
CREATE OR REPLACE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.hash IS NULL AND NEW.hash IS NOT NULL AND OLD.commitments IS NULL
           AND (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type,
                NEW.event_version, NEW.payload, NEW.metadata, NEW.position, NEW.txid,
                NEW.recorded_at)
               IS NOT DISTINCT FROM
               (OLD.aggregate_type, OLD.aggregate_id, OLD.sequence, OLD.event_type,
                OLD.event_version, OLD.payload, OLD.metadata, OLD.position, OLD.txid,
                OLD.recorded_at) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'the event log is append-only (% refused)', TG_OP;
END;
$$;

-- The keys that commit personal data, one per person (`user:<id>`) or, for data that
-- belongs to no account, per day (`day:<date>`). Outside the log: destroying a key
-- leaves every hash intact.
CREATE TABLE personal_keys (
    subject    text        PRIMARY KEY,
    key        bytea       NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
