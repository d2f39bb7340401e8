-- Issue 15: personal data sealed per person, erasure by crypto-shredding (docs/PRIVACY.md).

-- The data keys, sealed under a key derived from KEY_ENCRYPTION_SECRET. The service moves
-- the plaintext keys of `personal_keys` here at start-up (it alone holds the secret) and
-- deletes them there.
CREATE TABLE data_keys (
    subject    text        PRIMARY KEY,
    sealed     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per erased person: their subject never gets a key again. While `scrubbed_at`
-- is NULL, the erasure's maintenance step may rewrite that person's events written
-- before sealing existed (plaintext) and rename the legacy, unkeyed e-mail claim and
-- login-protection streams; the trigger below allows exactly that and nothing else.
CREATE TABLE erasures (
    subject         text        PRIMARY KEY,
    user_id         text        NOT NULL,
    erased_at       timestamptz NOT NULL,
    legacy_claim_id text,
    scrubbed_at     timestamptz
);

CREATE OR REPLACE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- The audit backfill: fills the hash of a row that has none.
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
        -- An erasure's scrub of one person's old plaintext events: the hash and the place
        -- in the log stay; payload, metadata and commitments may change; a legacy claim
        -- or login-protection stream may be renamed.
        IF OLD.hash IS NOT NULL AND NEW.hash = OLD.hash
           AND (NEW.aggregate_type, NEW.sequence, NEW.event_type, NEW.event_version,
                NEW.position, NEW.txid, NEW.recorded_at)
               IS NOT DISTINCT FROM
               (OLD.aggregate_type, OLD.sequence, OLD.event_type, OLD.event_version,
                OLD.position, OLD.txid, OLD.recorded_at)
           AND EXISTS (
               SELECT 1 FROM erasures e
                WHERE e.scrubbed_at IS NULL
                  AND ((OLD.commitments ->> 'key' = e.subject AND NEW.aggregate_id = OLD.aggregate_id)
                       OR (OLD.aggregate_type IN ('email_claim', 'login_attempts')
                           AND OLD.aggregate_id = e.legacy_claim_id))) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'the event log is append-only (% refused)', TG_OP;
END;
$$;

-- When the user was erased (their personal columns are blanked).
ALTER TABLE read.users ADD COLUMN erased_at timestamptz;

-- The events an erasure must scrub: those written before sealing, by subject. New events
-- are sealed (their commitments say so) and stay out of the index.
CREATE INDEX events_plaintext_subject ON events ((commitments ->> 'key'))
 WHERE commitments IS NOT NULL AND (commitments ->> 'sealed') IS NULL;
