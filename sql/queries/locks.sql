-- Leases: one row per kronos-db job (migrations, each cron job), so that overlapping runs never
-- do the same work, through a transaction pooler too. Every statement is its own short
-- transaction; times are the server's clock (clock_timestamp()), the one clock all runs share.

-- name: select_lease_table
-- the lease table, or NULL when this database has none yet
SELECT to_regclass('kronos_leases') AS lease_table;

-- name: create_lease_table
-- the table, created on first use like kronos_migrations (owned by whoever first ran kronos-db)
CREATE TABLE IF NOT EXISTS kronos_leases (
    name              text PRIMARY KEY,
    -- a new random owner at every taking: the run holding the lease now
    owner             uuid NOT NULL,
    -- the fencing token: one more at every taking
    token             bigint NOT NULL DEFAULT 1,
    host              text NOT NULL,
    pid               integer NOT NULL,
    -- boot id, PID namespace, PID and start time: a run killed on the same machine is
    -- recognised as gone at once
    process_key       text NOT NULL,
    application_name  text NOT NULL DEFAULT '',
    usename           name NOT NULL DEFAULT current_user,
    acquired_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    renewed_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at        timestamptz NOT NULL,
    released_at       timestamptz
);
COMMENT ON TABLE kronos_leases IS
    'kronos-db: which run holds which job (a lease renewed by a heartbeat; see docs/pooling.md)'

-- name: select_lease
-- the lease row with its remaining time on the server clock
SELECT name,
       owner::text AS owner,
       token,
       host,
       pid,
       process_key,
       application_name,
       usename::text AS usename,
       acquired_at,
       renewed_at,
       expires_at,
       extract(epoch FROM expires_at - clock_timestamp())::float8 AS expires_in,
       released_at IS NOT NULL AS released
  FROM kronos_leases
 WHERE name = %(name)s::text;

-- name: take_lease
-- takes the lease when it is free (absent, released, expired, or held by a known-dead
-- process); returns the new fencing token, or no row when another run holds it
INSERT INTO kronos_leases AS lease
       (name, owner, token, host, pid, process_key, application_name,
        acquired_at, renewed_at, expires_at)
VALUES (%(name)s::text, %(owner)s::uuid, 1, %(host)s::text, %(pid)s::integer,
        %(process_key)s::text, %(application_name)s::text,
        clock_timestamp(), clock_timestamp(), clock_timestamp() + %(ttl)s::interval)
ON CONFLICT (name) DO UPDATE
   SET owner = excluded.owner,
       token = lease.token + 1,
       host = excluded.host,
       pid = excluded.pid,
       process_key = excluded.process_key,
       application_name = excluded.application_name,
       usename = current_user,
       acquired_at = excluded.acquired_at,
       renewed_at = excluded.renewed_at,
       expires_at = excluded.expires_at,
       released_at = NULL
 WHERE lease.released_at IS NOT NULL
    OR lease.expires_at <= clock_timestamp()
    OR lease.owner = %(dead_owner)s::uuid
RETURNING token;

-- name: renew_lease
-- one more ttl from now, while the lease is still this owner's (no row: it was taken over).
-- The heartbeat runs it alone; fencing runs it inside the caller's transaction, whose row lock
-- then keeps anybody from taking the lease over until that transaction ends
UPDATE kronos_leases
   SET renewed_at = clock_timestamp(),
       expires_at = clock_timestamp() + %(ttl)s::interval
 WHERE name = %(name)s::text
   AND owner = %(owner)s::uuid
   AND released_at IS NULL
RETURNING expires_at;

-- name: release_lease
-- frees the lease at once; the row stays as the record of the last run
UPDATE kronos_leases
   SET released_at = clock_timestamp(),
       expires_at = clock_timestamp()
 WHERE name = %(name)s::text
   AND owner = %(owner)s::uuid;

-- name: select_blocking_sessions
-- the sessions blocking a backend's lock request: who they are and what they are doing
SELECT activity.pid,
       coalesce(activity.usename::text, '') AS usename,
       coalesce(activity.application_name, '') AS application_name,
       coalesce(activity.state, '') AS state,
       coalesce(extract(epoch FROM now() - activity.xact_start), 0)::float8 AS transaction_seconds,
       left(regexp_replace(coalesce(activity.query, ''), '\s+', ' ', 'g'), 120) AS query
  FROM pg_stat_activity AS activity
 WHERE activity.pid = ANY (pg_blocking_pids(%(pid)s::integer))
 ORDER BY activity.xact_start NULLS LAST;
