-- Connections: how many, in which state, from whom, against the server's limit.

-- name: select_connection_usage
-- client connections in use against max_connections minus the reserved slots
SELECT count(*) FILTER (WHERE backend_type = 'client backend')::integer AS used,
       current_setting('max_connections')::integer AS max_connections,
       current_setting('superuser_reserved_connections')::integer AS reserved,
       (100.0 * count(*) FILTER (WHERE backend_type = 'client backend')
        / greatest(current_setting('max_connections')::integer
                   - current_setting('superuser_reserved_connections')::integer, 1))::float8 AS used_percent
  FROM pg_stat_activity;

-- name: select_connections
-- client connections grouped by database, role, application and state
SELECT coalesce(datname::text, '') AS database_name,
       coalesce(usename::text, '') AS role_name,
       coalesce(application_name, '') AS application_name,
       coalesce(state, 'unknown') AS state,
       count(*)::integer AS connections,
       coalesce(max(extract(epoch FROM %(now)s::timestamptz - backend_start)), 0)::float8 AS oldest_seconds
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'
 GROUP BY 1, 2, 3, 4
 ORDER BY 5 DESC, 1, 2, 3, 4;
