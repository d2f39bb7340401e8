-- Read models move to the schema `read`; the log, the outbox, key material and other
-- internals stay in `public`. Analytics roles (`mana-core-auth analytics-role create`) get
-- `read` and nothing in `public`.
CREATE SCHEMA IF NOT EXISTS read;

ALTER TABLE public.projection_checkpoints SET SCHEMA read;
ALTER TABLE public.event_streams SET SCHEMA read;
ALTER TABLE public.users SET SCHEMA read;
ALTER TABLE public.sessions SET SCHEMA read;
ALTER TABLE public.session_cutoffs SET SCHEMA read;
ALTER TABLE public.security_events SET SCHEMA read;
ALTER TABLE public.balances SET SCHEMA read;
ALTER TABLE public.credit_transactions SET SCHEMA read;
ALTER TABLE public.usage_stats SET SCHEMA read;
ALTER TABLE public.ledger_postings SET SCHEMA read;

-- Unqualified names keep working for the service, operators' SQL and connections through
-- PgBouncer (where a per-connection SET is not possible): the database's own setting.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET search_path = "$user", public, read', current_database());
END
$$;
SET search_path = "$user", public, read;

-- Nothing in `public` for roles that are not given it: PostgreSQL grants USAGE on it to
-- every role by default. The service owns its tables and keeps every right.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO CURRENT_USER;
