-- Connections: transaction-scoped settings, and what a connection can tell about the pooler
-- between kronos-db and the server.

-- name: set_local_settings
-- sets each named setting for the current transaction only (SET LOCAL): nothing outlives it
SELECT set_config(setting.name, setting.value, true)
  FROM unnest(%(names)s::text[], %(values)s::text[]) AS setting (name, value);

-- name: select_backend_pid
-- the server process serving this transaction; a pooler hands out its own process key at
-- login, so a different pid there means a pooler sits between client and server
SELECT pg_backend_pid() AS pid;
