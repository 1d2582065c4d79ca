-- Kronos checks: what only a tool that knows the Kronos schema can say. Partition layout is
-- read from the catalogs (pg_inherits, pg_class.relpartbound), not from any tool's own tables,
-- so it holds whoever created the partitions.

-- name: select_log_partitions
-- the partitions of public.logs with their range bounds (NULL bounds: MINVALUE/MAXVALUE);
-- is_default marks the DEFAULT partition
SELECT child.relname::text AS partition_name,
       child_namespace.nspname::text AS schema_name,
       bound.expression = 'DEFAULT' AS is_default,
       CASE WHEN bound.lower_text IS NOT NULL THEN bound.lower_text::timestamptz END AS lower_bound,
       CASE WHEN bound.upper_text IS NOT NULL THEN bound.upper_text::timestamptz END AS upper_bound,
       greatest(child.reltuples, 0)::bigint AS estimated_rows,
       has_table_privilege(child.oid, 'SELECT') AS readable
  FROM pg_class AS parent
  JOIN pg_namespace AS parent_namespace ON parent_namespace.oid = parent.relnamespace
  JOIN pg_inherits AS inheritance ON inheritance.inhparent = parent.oid
  JOIN pg_class AS child ON child.oid = inheritance.inhrelid
  JOIN pg_namespace AS child_namespace ON child_namespace.oid = child.relnamespace
  CROSS JOIN LATERAL (
        SELECT expression,
               (regexp_match(expression, 'FROM \(''([^'']+)''\)'))[1] AS lower_text,
               (regexp_match(expression, 'TO \(''([^'']+)''\)'))[1] AS upper_text
          FROM (SELECT pg_get_expr(child.relpartbound, child.oid) AS expression) AS raw
       ) AS bound
 WHERE parent.relname = %(table)s::text
   AND parent_namespace.nspname = %(schema)s::text
   AND parent.relkind = 'p'
 ORDER BY lower_bound NULLS FIRST, partition_name;

-- name: select_partitioned
-- whether public.logs exists and is partitioned ('p'), is a plain table ('r'), or is missing
SELECT table_class.relkind::text AS relkind
  FROM pg_class AS table_class
  JOIN pg_namespace AS namespace ON namespace.oid = table_class.relnamespace
 WHERE table_class.relname = %(table)s::text
   AND namespace.nspname = %(schema)s::text;

-- name: count_partition_rows
-- rows in one partition (identifier composed by the caller), counted up to a cap
SELECT count(*)::bigint AS row_count
  FROM (SELECT 1 FROM {partition} LIMIT %(cap)s::bigint) AS capped;

-- name: select_expired_rows
-- sessions and cache rows whose expiry has passed and that are still waiting to be deleted,
-- counted up to a cap, with the oldest expiry (both served by the expires_at indexes)
SELECT 'sessions' AS table_name,
       (SELECT count(*) FROM (SELECT 1 FROM sessions WHERE expires_at < %(now)s::timestamptz
                               LIMIT %(cap)s::bigint) AS capped)::bigint AS expired_rows,
       (SELECT min(expires_at) FROM sessions WHERE expires_at < %(now)s::timestamptz) AS oldest_expiry
UNION ALL
SELECT 'cache',
       (SELECT count(*) FROM (SELECT 1 FROM cache WHERE expires_at < %(now)s::timestamptz
                               LIMIT %(cap)s::bigint) AS capped)::bigint,
       (SELECT min(expires_at) FROM cache WHERE expires_at < %(now)s::timestamptz);

-- name: select_pending_messages
-- pending messages per topic and the oldest one's creation time (the partial index on
-- pending messages by topic and age serves it)
SELECT topic::text,
       count(*)::bigint AS pending,
       min(created_at) AS oldest_created_at
  FROM message_queue
 WHERE status = 'pending'
 GROUP BY topic
 ORDER BY min(created_at) NULLS LAST, topic;

-- name: select_last_backup
-- the newest usable backup of the database, and how many there are: a log partition archive
-- is not a backup of the database, and neither is a pruned file or one that failed verify
WITH usable AS (
    SELECT created_at, file_path
      FROM backups
     WHERE created_at IS NOT NULL
       AND kind <> 'partition_archive'
       AND status = 'available'
       AND verify_result IS DISTINCT FROM 'failed'
)
SELECT (SELECT count(*) FROM usable)::bigint AS backups,
       latest.created_at,
       latest.file_path
  FROM (SELECT 1) AS one
  LEFT JOIN LATERAL (
        SELECT created_at, file_path FROM usable ORDER BY created_at DESC LIMIT 1
       ) AS latest ON true;
