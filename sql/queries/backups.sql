-- Backups: the `backups` table, and the catalog queries `backup create/verify` count rows with.

-- name: select_data_tables
-- every table that holds rows pg_dump dumps: schema, name (partitions included, extension members left out)
SELECT n.nspname AS schema_name,
       c.relname AS table_name
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_toast%'
   AND n.nspname NOT LIKE 'pg\_temp\_%'
   AND NOT EXISTS (SELECT 1
                     FROM pg_depend AS d
                    WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid
                      AND d.deptype = 'e')
 ORDER BY n.nspname, c.relname

-- name: select_server_version
-- the server's version string, e.g. 15.8
SELECT current_setting('server_version') AS server_version

-- name: insert_backup
-- record a backup; returns the row
INSERT INTO backups (created_at, file_path, kind, database_name, size_bytes, sha256,
                     compression, row_counts, server_version, tool_version, started_at,
                     finished_at)
VALUES (coalesce(%(created_at)s::timestamptz, now()), %(file_path)s::text, %(kind)s::text,
        %(database_name)s::text, %(size_bytes)s::bigint, %(sha256)s::text, %(compression)s::text,
        %(row_counts)s::jsonb, %(server_version)s::text, %(tool_version)s::text,
        %(started_at)s::timestamptz, %(finished_at)s::timestamptz)
RETURNING id, created_at, file_path, kind, status, database_name, size_bytes, sha256::text,
          compression, row_counts, server_version, tool_version, started_at, finished_at,
          verified_at, verify_result, verify_message, pruned_at

-- name: select_backups
-- backups newest first, optionally one kind, pruned ones only when asked
SELECT id, created_at, file_path, kind, status, database_name, size_bytes, sha256::text,
       compression, row_counts, server_version, tool_version, started_at, finished_at,
       verified_at, verify_result, verify_message, pruned_at
  FROM backups
 WHERE (%(kind)s::text IS NULL OR kind = %(kind)s::text)
   AND (%(include_pruned)s::boolean OR status = 'available')
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s::int

-- name: select_backup_paths
-- the file of every backup that is not pruned (to find files in the directory nothing records)
SELECT file_path
  FROM backups
 WHERE status <> 'pruned';

-- name: select_backup
-- one backup by id
SELECT id, created_at, file_path, kind, status, database_name, size_bytes, sha256::text,
       compression, row_counts, server_version, tool_version, started_at, finished_at,
       verified_at, verify_result, verify_message, pruned_at
  FROM backups
 WHERE id = %(id)s::int

-- name: update_backup_verification
-- record the outcome of `backup verify`
UPDATE backups
   SET verified_at = %(verified_at)s::timestamptz,
       verify_result = %(verify_result)s::text,
       verify_message = %(verify_message)s::text
 WHERE id = %(id)s::int

-- name: select_prunable_backups
-- available dumps matched by every given rule, oldest first; never the newest verified one
WITH dumps AS (
    SELECT id, created_at, file_path, kind, status, database_name, size_bytes, sha256::text,
           compression, row_counts, server_version, tool_version, started_at, finished_at,
           verified_at, verify_result, verify_message, pruned_at,
           row_number() OVER (ORDER BY created_at DESC, id DESC) AS newness
      FROM backups
     WHERE kind = 'pg_dump'
       AND status = 'available'
),
newest_verified AS (
    SELECT id
      FROM dumps
     WHERE verify_result = 'passed'
     ORDER BY created_at DESC, id DESC
     LIMIT 1
)
SELECT id, created_at, file_path, kind, status, database_name, size_bytes, sha256,
       compression, row_counts, server_version, tool_version, started_at, finished_at,
       verified_at, verify_result, verify_message, pruned_at
  FROM dumps
 WHERE (%(keep)s::int IS NULL OR newness > %(keep)s::int)
   AND (%(before)s::timestamptz IS NULL OR created_at < %(before)s::timestamptz)
   AND id NOT IN (SELECT id FROM newest_verified)
 ORDER BY created_at, id

-- name: lock_available_backup
-- take one available backup for pruning; nothing when another run holds it
SELECT id
  FROM backups
 WHERE id = %(id)s::int
   AND status = 'available'
   FOR UPDATE SKIP LOCKED

-- name: update_backup_pruned
-- mark a backup whose file was deleted
UPDATE backups
   SET status = 'pruned',
       pruned_at = %(pruned_at)s::timestamptz
 WHERE id = %(id)s::int
