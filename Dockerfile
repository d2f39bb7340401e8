# syntax=docker/dockerfile:1
# Multi-stage build of mana-core-auth. Needs BuildKit (the default builder of current
# Docker and of `docker compose`) for the cache mounts below.

# ---- build ----
FROM rust:1-bookworm AS builder
WORKDIR /src

COPY Cargo.toml Cargo.lock ./
# Build settings (the allocator's commit policy), see .cargo/config.toml.
COPY .cargo ./.cargo
COPY src ./src
# The workspace's other member (the benchmarks); not built here, but its manifest is read.
COPY bench ./bench
# sqlx::migrate! embeds these at compile time.
COPY migrations ./migrations

# The registry and target/ are cache mounts, so dependencies are compiled once and
# reused between builds. `touch src/db.rs` forces the crate holding sqlx::migrate! to be
# recompiled, so a newly added migration file is never missed by a stale cached build.
# The binary is copied out in the same step because cache mounts are not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    touch src/db.rs \
    && cargo build --release --locked \
    && cp target/release/mana-core-auth /usr/local/bin/mana-core-auth

# ---- runtime ----
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app/data \
    && chown -R app:app /app

COPY --from=builder /usr/local/bin/mana-core-auth /usr/local/bin/mana-core-auth

WORKDIR /app
# The default SQLite file is ./data/mana-core-auth.db (used when DATABASE_URL is unset).
VOLUME ["/app/data"]

ENV HOST=0.0.0.0 \
    PORT=3001 \
    LOG_FORMAT=json

USER 10001:10001
EXPOSE 3001

# No HEALTHCHECK: the slim image has no HTTP client. Probe GET /api/v1/health (liveness)
# and GET /api/v1/ready (readiness) from the orchestrator instead.
ENTRYPOINT ["/usr/local/bin/mana-core-auth"]
CMD ["serve"]
