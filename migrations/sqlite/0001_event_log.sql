-- The event log: the source of truth. Same logical columns as on PostgreSQL. SQLite has a
-- single writer, so `position` order is commit order and `txid` is always 0.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence > 0),
    event_type     TEXT    NOT NULL,
    event_version  TEXT    NOT NULL,
    payload        TEXT    NOT NULL CHECK (json_valid(payload)),
    metadata       TEXT    NOT NULL CHECK (json_valid(metadata)),
    txid           INTEGER NOT NULL DEFAULT 0,
    recorded_at    TEXT    NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, sequence)
);

-- Nothing updates or deletes an event.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only (UPDATE refused)');
END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only (DELETE refused)');
END;

CREATE TABLE projection_checkpoints (
    name       TEXT    PRIMARY KEY,
    txid       INTEGER NOT NULL DEFAULT 0,
    position   INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Projection `streams`: one row per aggregate (event stream) with its version.
CREATE TABLE event_streams (
    aggregate_type    TEXT    NOT NULL,
    aggregate_id      TEXT    NOT NULL,
    version           INTEGER NOT NULL,
    events            INTEGER NOT NULL,
    first_recorded_at TEXT    NOT NULL,
    last_recorded_at  TEXT    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
