-- Private signing keys, sealed (ChaCha20-Poly1305 under a key derived from
-- KEY_ENCRYPTION_SECRET). Not part of the log; the keyring aggregate holds the public parts.
CREATE TABLE signing_key_secrets (
    kid        text        PRIMARY KEY,
    sealed     bytea       NOT NULL,
    created_at timestamptz NOT NULL
);

-- Projection `users`.
CREATE TABLE users (
    id                      text        PRIMARY KEY,
    email                   text        NOT NULL,
    name                    text,
    role                    text        NOT NULL,
    email_verified          boolean     NOT NULL DEFAULT false,
    disabled                boolean     NOT NULL DEFAULT false,
    sessions_revoked_before timestamptz,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL
);
CREATE INDEX users_email ON users (email);

-- Projection `sessions`.
CREATE TABLE sessions (
    id                 text        PRIMARY KEY,
    user_id            text        NOT NULL,
    origin             text        NOT NULL,
    device_id          text,
    device_name        text,
    ip_address         text,
    user_agent         text,
    remember_me        boolean     NOT NULL,
    created_at         timestamptz NOT NULL,
    last_active_at     timestamptz NOT NULL,
    refresh_expires_at timestamptz NOT NULL,
    revoked_at         timestamptz,
    revoked_reason     text
);
CREATE INDEX sessions_user ON sessions (user_id, created_at DESC);
CREATE INDEX sessions_revoked ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Owned by projection `sessions`: per user, sessions started up to this instant are
-- revoked (role change, disable), also those projected after the cutoff.
CREATE TABLE session_cutoffs (
    user_id        text        PRIMARY KEY,
    revoked_before timestamptz NOT NULL
);

-- Projection `security_events`: one row per security-relevant event of the log.
CREATE TABLE security_events (
    position    bigint      PRIMARY KEY,
    user_id     text,
    session_id  text,
    event_type  text        NOT NULL,
    ip_address  text,
    user_agent  text,
    metadata    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX security_events_user ON security_events (user_id, created_at DESC, position DESC);
CREATE INDEX security_events_type ON security_events (event_type, created_at);
