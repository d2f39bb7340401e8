-- Private signing keys, sealed (ChaCha20-Poly1305 under a key derived from
-- KEY_ENCRYPTION_SECRET). Not part of the log; the keyring aggregate holds the public parts.
CREATE TABLE signing_key_secrets (
    kid        TEXT        PRIMARY KEY,
    sealed     BLOB       NOT NULL,
    created_at TEXT NOT NULL
);

-- Projection `users`.
CREATE TABLE users (
    id                      TEXT        PRIMARY KEY,
    email                   TEXT        NOT NULL,
    name                    text,
    role                    TEXT        NOT NULL,
    email_verified          INTEGER     NOT NULL DEFAULT 0,
    disabled                INTEGER     NOT NULL DEFAULT 0,
    sessions_revoked_before TEXT,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL
);
CREATE INDEX users_email ON users (email);

-- Projection `sessions`.
CREATE TABLE sessions (
    id                 TEXT        PRIMARY KEY,
    user_id            TEXT        NOT NULL,
    origin             TEXT        NOT NULL,
    device_id          text,
    device_name        text,
    ip_address         text,
    user_agent         text,
    remember_me        INTEGER     NOT NULL,
    created_at         TEXT NOT NULL,
    last_active_at     TEXT NOT NULL,
    refresh_expires_at TEXT NOT NULL,
    revoked_at         TEXT,
    revoked_reason     text
);
CREATE INDEX sessions_user ON sessions (user_id, created_at DESC);
CREATE INDEX sessions_revoked ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Owned by projection `sessions`: per user, sessions started up to this instant are
-- revoked (role change, disable), also those projected after the cutoff.
CREATE TABLE session_cutoffs (
    user_id        TEXT        PRIMARY KEY,
    revoked_before TEXT NOT NULL
);

-- Projection `security_events`: one row per security-relevant event of the log.
CREATE TABLE security_events (
    position    INTEGER      PRIMARY KEY,
    user_id     text,
    session_id  text,
    event_type  TEXT        NOT NULL,
    ip_address  text,
    user_agent  text,
    metadata    TEXT       NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX security_events_user ON security_events (user_id, created_at DESC, position DESC);
CREATE INDEX security_events_type ON security_events (event_type, created_at);
