-- The event log: the source of truth. The first seven columns and the primary key are
-- postgres-es's `events` table, so its PostgresEventRepository reads this table as is;
-- the last three columns are ours: a global position, the id of the writing transaction
-- (for a reader that never skips a late commit) and the time the event was recorded.
CREATE TABLE events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence > 0),
    event_type     text        NOT NULL,
    event_version  text        NOT NULL,
    payload        jsonb       NOT NULL,
    metadata       jsonb       NOT NULL,
    position       bigint      GENERATED ALWAYS AS IDENTITY,
    txid           bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- Global order for readers: (txid, position), read only below the snapshot's xmin.
CREATE UNIQUE INDEX events_global_order ON events (txid, position);

-- Nothing updates or deletes an event.
CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

-- One row per projection: the last event it applied, written in the same transaction
-- as the projection's own rows.
CREATE TABLE projection_checkpoints (
    name       text        PRIMARY KEY,
    txid       bigint      NOT NULL DEFAULT 0,
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Projection `streams`: one row per aggregate (event stream) with its version.
CREATE TABLE event_streams (
    aggregate_type    text        NOT NULL,
    aggregate_id      text        NOT NULL,
    version           bigint      NOT NULL,
    events            bigint      NOT NULL,
    first_recorded_at timestamptz NOT NULL,
    last_recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
