-- Advisory locks: one key per kronos-db job, so that overlapping runs never do the same work.
-- A bigint key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.

-- name: try_advisory_lock
-- true when this session now holds the session-level advisory lock
SELECT pg_try_advisory_lock(%(key)s::bigint) AS acquired;

-- name: advisory_unlock
-- releases one hold of the session-level advisory lock
SELECT pg_advisory_unlock(%(key)s::bigint) AS released;

-- name: select_advisory_lock_holders
-- the sessions (other than this one) holding the advisory lock in the current database
SELECT activity.pid,
       coalesce(activity.usename::text, '') AS usename,
       coalesce(activity.application_name, '') AS application_name,
       coalesce(host(activity.client_addr), 'local') AS client,
       activity.backend_start,
       coalesce(activity.state, '') AS state
  FROM pg_locks AS lock
  JOIN pg_stat_activity AS activity ON activity.pid = lock.pid
 WHERE lock.locktype = 'advisory'
   AND lock.granted
   AND lock.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND lock.classid::bigint = ((%(key)s::bigint >> 32) & 4294967295)
   AND lock.objid::bigint = (%(key)s::bigint & 4294967295)
   AND lock.objsubid = 1
   AND lock.pid <> pg_backend_pid();

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
