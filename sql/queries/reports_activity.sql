-- Activity: who blocks whom, long-running queries, sessions idle in transaction.
-- pg_stat_activity shows other roles' queries to members of pg_read_all_stats (pg_monitor).

-- name: select_blocking_chains
-- every session waiting for a lock, each session blocking it, and for how long
SELECT waiting.pid AS blocked_pid,
       coalesce(waiting.usename::text, '') AS blocked_role,
       coalesce(waiting.application_name, '') AS blocked_application,
       coalesce(extract(epoch FROM %(now)s::timestamptz
                - coalesce((SELECT min(lock.waitstart) FROM pg_locks AS lock
                             WHERE lock.pid = waiting.pid AND NOT lock.granted),
                           waiting.state_change)), 0)::float8 AS waiting_seconds,
       left(regexp_replace(coalesce(waiting.query, ''), '\s+', ' ', 'g'), 200) AS blocked_query,
       coalesce((SELECT string_agg(DISTINCT coalesce(lock.relation::regclass::text, lock.locktype) || ' ' || lock.mode, ', ')
                   FROM pg_locks AS lock
                  WHERE lock.pid = waiting.pid AND NOT lock.granted), '') AS wanted_lock,
       blocking.pid AS blocking_pid,
       coalesce(blocking.usename::text, '') AS blocking_role,
       coalesce(blocking.application_name, '') AS blocking_application,
       coalesce(blocking.state, '') AS blocking_state,
       coalesce(extract(epoch FROM %(now)s::timestamptz - blocking.xact_start), 0)::float8 AS blocking_transaction_seconds,
       left(regexp_replace(coalesce(blocking.query, ''), '\s+', ' ', 'g'), 200) AS blocking_query,
       cardinality(pg_blocking_pids(blocking.pid)) = 0 AS blocking_is_root
  FROM pg_stat_activity AS waiting
  CROSS JOIN LATERAL unnest(pg_blocking_pids(waiting.pid)) AS blocker(pid)
  JOIN pg_stat_activity AS blocking ON blocking.pid = blocker.pid
 WHERE waiting.wait_event_type = 'Lock'
   AND (%(all_databases)s::boolean OR waiting.datname = current_database())
 ORDER BY waiting_seconds DESC, blocked_pid, blocking_pid;

-- name: select_long_queries
-- client queries running for longer than the threshold
SELECT activity.pid,
       coalesce(activity.usename::text, '') AS role_name,
       coalesce(activity.datname::text, '') AS database_name,
       coalesce(activity.application_name, '') AS application_name,
       coalesce(host(activity.client_addr), 'local') AS client,
       activity.state,
       extract(epoch FROM %(now)s::timestamptz - activity.query_start)::float8 AS seconds,
       coalesce(activity.wait_event_type || ':' || activity.wait_event, '') AS waiting_on,
       left(regexp_replace(coalesce(activity.query, ''), '\s+', ' ', 'g'), 200) AS query
  FROM pg_stat_activity AS activity
 WHERE activity.state IN ('active', 'fastpath function call')
   AND activity.backend_type = 'client backend'
   AND activity.pid <> pg_backend_pid()
   AND (%(all_databases)s::boolean OR activity.datname = current_database())
   AND %(now)s::timestamptz - activity.query_start >= %(threshold)s::interval
 ORDER BY seconds DESC, activity.pid;

-- name: select_idle_in_transaction
-- sessions idle inside an open transaction for longer than the threshold: they hold locks
-- and the xmin horizon while doing nothing
SELECT activity.pid,
       coalesce(activity.usename::text, '') AS role_name,
       coalesce(activity.datname::text, '') AS database_name,
       coalesce(activity.application_name, '') AS application_name,
       coalesce(host(activity.client_addr), 'local') AS client,
       activity.state,
       extract(epoch FROM %(now)s::timestamptz - activity.state_change)::float8 AS idle_seconds,
       extract(epoch FROM %(now)s::timestamptz - activity.xact_start)::float8 AS transaction_seconds,
       left(regexp_replace(coalesce(activity.query, ''), '\s+', ' ', 'g'), 200) AS last_query
  FROM pg_stat_activity AS activity
 WHERE activity.state IN ('idle in transaction', 'idle in transaction (aborted)')
   AND activity.pid <> pg_backend_pid()
   AND (%(all_databases)s::boolean OR activity.datname = current_database())
   AND %(now)s::timestamptz - activity.state_change >= %(threshold)s::interval
 ORDER BY idle_seconds DESC, activity.pid;

-- name: select_prepared_transactions
-- prepared transactions (PREPARE TRANSACTION) of every database, oldest first: how long ago
-- they were prepared, and the locks they still hold (no session owns them: they block DDL,
-- VACUUM and the xmin horizon until COMMIT PREPARED or ROLLBACK PREPARED, even across a
-- restart). pg_locks shows their locks with no pid, under the virtual transaction of the lock
-- on their transaction ID; those on this database's tables are named. pg_blocking_pids()
-- shows such a holder as pid 0, so a session waiting on one is not in select_blocking_chains.
WITH prepared AS (
    SELECT prepared.*,
           (SELECT holder.virtualtransaction
              FROM pg_locks AS holder
             WHERE holder.locktype = 'transactionid'
               AND holder.transactionid = prepared.transaction
               AND holder.pid IS NULL
             LIMIT 1) AS virtualtransaction
      FROM pg_prepared_xacts AS prepared
)
SELECT prepared.gid,
       prepared.owner::text AS role_name,
       prepared.database::text AS database_name,
       prepared.prepared AS prepared_at,
       extract(epoch FROM %(now)s::timestamptz - prepared.prepared)::float8 AS seconds,
       age(prepared.transaction)::bigint AS xid_age,
       (SELECT count(*)
          FROM pg_locks AS lock
         WHERE lock.pid IS NULL
           AND lock.virtualtransaction = prepared.virtualtransaction)::bigint AS locks,
       coalesce((SELECT string_agg(DISTINCT lock.relation::regclass::text || ' ' || lock.mode, ', ')
                   FROM pg_locks AS lock
                  WHERE lock.pid IS NULL
                    AND lock.virtualtransaction = prepared.virtualtransaction
                    AND lock.relation IS NOT NULL
                    AND lock.database = (SELECT oid FROM pg_database
                                          WHERE datname = current_database())), '') AS relations
  FROM prepared
 ORDER BY prepared.prepared, prepared.gid;
