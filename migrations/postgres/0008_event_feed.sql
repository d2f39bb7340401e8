-- The change feed (docs/FEED.md): one row per JetStream stream the log is published to.
-- `txid`/`position` is the last event JetStream acknowledged (the checkpoint moves only
-- after the acknowledgement), `stream_sequence` its sequence in the stream. `leader` and
-- `lease_until_ms` (database clock, Unix milliseconds) say which process publishes: one
-- at a time; another takes over once the lease runs out unrenewed.
CREATE TABLE event_feed (
    stream          text        PRIMARY KEY,
    txid            bigint      NOT NULL DEFAULT 0,
    position        bigint      NOT NULL DEFAULT 0,
    stream_sequence bigint      NOT NULL DEFAULT 0,
    leader          text,
    lease_until_ms  bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
