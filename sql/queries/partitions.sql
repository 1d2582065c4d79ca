-- Partition lifecycle of a range-partitioned table (`kronos-db partitions`).
-- Bounds are read back as timestamptz values (never as text in the session's TimeZone), so they
-- are the same instants whatever the session's time zone is. Queries that need a table name
-- take it as {identifier} placeholders filled by psycopg.sql.Identifier.

-- name: select_partitioned_table
-- the partitioned table: its oid, schema, name, owner, range key column and default partition
SELECT parent.oid::bigint AS oid,
       namespace.nspname AS schema,
       parent.relname AS name,
       pg_get_userbyid(parent.relowner) AS owner,
       partitioned.partstrat::text AS strategy,
       (SELECT attribute.attname
          FROM pg_attribute AS attribute
         WHERE attribute.attrelid = parent.oid
           AND attribute.attnum = partitioned.partattrs[0]) AS key_column,
       (SELECT format_type(attribute.atttypid, attribute.atttypmod)
          FROM pg_attribute AS attribute
         WHERE attribute.attrelid = parent.oid
           AND attribute.attnum = partitioned.partattrs[0]) AS key_type,
       partitioned.partnatts::int AS key_count,
       default_partition.relname AS default_partition
  FROM pg_class AS parent
  JOIN pg_namespace AS namespace ON namespace.oid = parent.relnamespace
  LEFT JOIN pg_partitioned_table AS partitioned ON partitioned.partrelid = parent.oid
  LEFT JOIN pg_class AS default_partition ON default_partition.oid = partitioned.partdefid
 WHERE parent.oid = to_regclass(%(table)s::text);

-- name: select_columns
-- the table's live columns in order, for explicit column lists when rows are moved
SELECT attname AS name
  FROM pg_attribute
 WHERE attrelid = %(oid)s::bigint::oid
   AND attnum > 0
   AND NOT attisdropped
 ORDER BY attnum;

-- name: select_partitions
-- every partition of the table: range (as timestamptz), default flag, pending detach, size
SELECT child.relname AS name,
       namespace.nspname AS schema,
       bounds.lower,
       bounds.upper,
       child.oid = coalesce(partitioned.partdefid, 0) AS is_default,
       inheritance.inhdetachpending AS detach_pending,
       greatest(child.reltuples, 0)::bigint AS row_estimate,
       pg_total_relation_size(child.oid)::bigint AS total_bytes
  FROM pg_inherits AS inheritance
  JOIN pg_class AS child ON child.oid = inheritance.inhrelid
  JOIN pg_namespace AS namespace ON namespace.oid = child.relnamespace
  JOIN pg_partitioned_table AS partitioned ON partitioned.partrelid = inheritance.inhparent
 CROSS JOIN LATERAL (
        SELECT (regexp_match(pg_get_expr(child.relpartbound, child.oid),
                             'FROM \(''([^'']*)''\) TO \(''([^'']*)''\)')) AS parts
       ) AS expression
 CROSS JOIN LATERAL (
        SELECT expression.parts[1]::timestamptz AS lower,
               expression.parts[2]::timestamptz AS upper
       ) AS bounds
 WHERE inheritance.inhparent = %(oid)s::bigint::oid
 ORDER BY bounds.lower NULLS FIRST, child.relname;

-- name: select_retired_tables
-- plain tables left by a retirement that did not finish (marked by a comment), oldest first
SELECT namespace.nspname AS schema,
       class.relname AS name,
       obj_description(class.oid, 'pg_class') AS note
  FROM pg_class AS class
  JOIN pg_namespace AS namespace ON namespace.oid = class.relnamespace
 WHERE class.relkind = 'r'
   AND NOT class.relispartition
   AND obj_description(class.oid, 'pg_class') LIKE %(prefix)s::text || '%%'
 ORDER BY class.relname;

-- name: select_stray_tables
-- plain tables named like the table's partitions (pg_partman's parent_p… names) that are not
-- partitions and not marked by kronos-db (retired or kept detached): their columns compared
-- with the parent's, the range their bounds CHECK constraint states (an older kronos-db left
-- one), and an estimate of their rows (-1: never analyzed)
SELECT class.relname AS name,
       greatest(class.reltuples, -1)::bigint AS row_estimate,
       obj_description(class.oid, 'pg_class') AS note,
       (SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) ORDER BY attname)
          FROM pg_attribute
         WHERE attrelid = class.oid AND attnum > 0 AND NOT attisdropped)
       = (SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) ORDER BY attname)
            FROM pg_attribute
           WHERE attrelid = %(oid)s::bigint::oid AND attnum > 0 AND NOT attisdropped)
       AS same_columns,
       bounds.lower AS check_lower,
       bounds.upper AS check_upper
  FROM pg_class AS class
  JOIN pg_namespace AS namespace ON namespace.oid = class.relnamespace
  LEFT JOIN LATERAL (
        SELECT (regexp_match(pg_get_constraintdef(con.oid),
                             '>= ''([^'']*)''::timestamp with time zone.*< ''([^'']*)''::timestamp with time zone'))
               AS parts
          FROM pg_constraint AS con
         WHERE con.conrelid = class.oid
           AND con.contype = 'c'
           AND con.convalidated
           AND pg_get_constraintdef(con.oid) LIKE '%%' || quote_ident(%(key_column)s::text) || ' >=%%'
         ORDER BY con.conname
         LIMIT 1
       ) AS expression ON true
  LEFT JOIN LATERAL (
        SELECT expression.parts[1]::timestamptz AS lower,
               expression.parts[2]::timestamptz AS upper
       ) AS bounds ON true
 WHERE namespace.nspname = %(schema)s::text
   AND class.relkind = 'r'
   AND NOT class.relispartition
   AND starts_with(class.relname, %(prefix)s::text)
   AND coalesce(obj_description(class.oid, 'pg_class'), '') NOT LIKE 'kronos-db: %%'
 ORDER BY class.relname;

-- name: select_guard_constraint
-- the attach guard an older kronos-db may have left on the default partition (1 when present)
SELECT 1 AS present
  FROM pg_constraint
 WHERE conrelid = to_regclass(%(table)s::text)
   AND conname = %(name)s::text;

-- name: count_default_rows
-- exact row count of the default partition, capped so a huge default cannot stall a check
SELECT count(*)::bigint AS rows
  FROM (SELECT 1 FROM {default_partition} LIMIT %(cap)s::bigint) AS capped;

-- name: count_default_rows_between
-- rows of the default partition in [lower, upper) (the part of a range no partition covers)
SELECT count(*)::bigint AS rows
  FROM {default_partition}
 WHERE {key_column} >= %(lower)s::timestamptz
   AND {key_column} < %(upper)s::timestamptz;

-- name: select_default_buckets
-- the partition-sized UTC ranges that rows of the default partition fall in, with row counts
SELECT date_trunc(%(unit)s::text, {key_column}, 'UTC') AS lower,
       count(*)::bigint AS rows
  FROM {default_partition}
 GROUP BY 1
 ORDER BY 1;

-- name: select_heap_extent
-- a table's heap: its blocks now (where a move's block-range batches stop) and rows per block
SELECT (pg_relation_size(class.oid) / current_setting('block_size')::bigint)::bigint AS blocks,
       CASE WHEN class.relpages > 0 AND class.reltuples > 0
            THEN class.reltuples / class.relpages
            ELSE 100 END::float8 AS rows_per_block
  FROM pg_class AS class
 WHERE class.oid = to_regclass(%(table)s::text);

-- name: move_default_rows_in_blocks
-- moves the rows of [lower, upper) found in heap blocks [first, last) of the default partition
-- into the partition being built: one statement, so a row is deleted and inserted together
WITH moved AS (
    DELETE FROM {default_partition}
     WHERE {key_column} >= %(lower)s::timestamptz
       AND {key_column} < %(upper)s::timestamptz
       AND ctid >= %(first)s::tid
       AND ctid < %(last)s::tid
    RETURNING {columns}
)
INSERT INTO {partition} ({columns})
SELECT {columns} FROM moved;

-- name: move_default_rows
-- moves every row of [lower, upper) still in the default partition (those that arrived during
-- the block-range batches, wherever they were written) into the partition being built
WITH moved AS (
    DELETE FROM {default_partition}
     WHERE {key_column} >= %(lower)s::timestamptz
       AND {key_column} < %(upper)s::timestamptz
    RETURNING {columns}
)
INSERT INTO {partition} ({columns})
SELECT {columns} FROM moved;

-- name: count_rows
-- exact row count of one table (an archived partition, checked against its file)
SELECT count(*)::bigint AS rows FROM {table};

-- name: count_rows_capped
-- row count of one table (a stray holding log rows), capped so a huge one cannot stall a check
SELECT count(*)::bigint AS rows
  FROM (SELECT 1 FROM {table} LIMIT %(cap)s::bigint) AS capped;

-- name: select_lock_holders
-- other sessions in a transaction holding a lock on any of the relations, oldest transaction
-- first: who a lock given up was most likely waiting for (the long reader, not a passing insert)
SELECT activity.pid,
       coalesce(activity.usename, '') AS usename,
       coalesce(activity.application_name, '') AS application_name,
       coalesce(activity.state, '') AS state,
       extract(epoch FROM clock_timestamp() - activity.xact_start)::float8 AS transaction_seconds,
       left(coalesce(activity.query, ''), 200) AS query
  FROM pg_stat_activity AS activity
 WHERE activity.pid <> pg_backend_pid()
   AND activity.xact_start IS NOT NULL
   AND EXISTS (SELECT 1
                 FROM pg_locks AS lock
                WHERE lock.pid = activity.pid
                  AND lock.granted
                  AND lock.relation = ANY(%(oids)s::bigint[]::oid[]))
 ORDER BY activity.xact_start
 LIMIT 2;

-- name: select_archive_records
-- the partition archives already recorded for one file path (an interrupted run's, if any)
SELECT id,
       size_bytes,
       sha256,
       row_counts
  FROM backups
 WHERE kind = 'partition_archive'
   AND file_path = %(file_path)s::text
 ORDER BY id;

-- name: select_table_owner
-- a table's owner (the table may be one this transaction just created)
SELECT pg_get_userbyid(relowner) AS owner
  FROM pg_class
 WHERE oid = to_regclass(%(table)s::text);

-- name: select_table_grants
-- a table's privileges granted to other roles than its owner (PUBLIC included): grantee, privilege
SELECT CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(acl.grantee) END AS grantee,
       acl.privilege_type AS privilege
  FROM pg_class AS class
 CROSS JOIN LATERAL aclexplode(class.relacl) AS acl
 WHERE class.oid = to_regclass(%(table)s::text)
   AND acl.grantee <> class.relowner
 ORDER BY 1, 2;

-- name: select_newest_partition_options
-- the storage parameters (reloptions) of the partition with the highest bounds, the template
SELECT child.reloptions
  FROM pg_inherits AS inheritance
  JOIN pg_class AS child ON child.oid = inheritance.inhrelid
  JOIN pg_partitioned_table AS partitioned ON partitioned.partrelid = inheritance.inhparent
 WHERE inheritance.inhparent = %(oid)s::bigint::oid
   AND child.oid <> partitioned.partdefid
 ORDER BY (regexp_match(pg_get_expr(child.relpartbound, child.oid),
                       'TO \(''([^'']*)''\)'))[1]::timestamptz DESC NULLS LAST
 LIMIT 1;

-- name: select_partman
-- pg_partman's schema and version when the extension is installed
SELECT extension.extnamespace::regnamespace::text AS schema,
       extension.extversion AS version
  FROM pg_extension AS extension
 WHERE extension.extname = 'pg_partman';

-- name: select_partman_config
-- the table's pg_partman configuration (partman schema filled in by psycopg.sql.Identifier)
SELECT CASE partition_interval::interval
            WHEN '1 hour' THEN 'hourly'
            WHEN '1 day' THEN 'daily'
            WHEN '7 days' THEN 'weekly'
            WHEN '1 mon' THEN 'monthly'
       END AS interval_name,
       premake,
       extract(epoch FROM retention::interval)::float8 AS retention_seconds,
       retention_keep_table,
       infinite_time_partitions
  FROM {partman}.part_config
 WHERE parent_table = %(table)s::text;

-- name: create_partman_partition
-- pg_partman builds and attaches one partition (its template table, its names)
SELECT {partman}.create_partition_time(%(table)s::text, ARRAY[%(lower)s::timestamptz],
                                       p_analyze := false);

-- name: run_partman_maintenance
-- pg_partman's own maintenance for one table: premake and retention
SELECT {partman}.run_maintenance(p_parent_table := %(table)s::text, p_analyze := false,
                                 p_jobmon := false);

-- name: select_partman_template
-- the template table pg_partman keeps for the table (schema.name), when it is registered
SELECT template_table
  FROM {partman}.part_config
 WHERE parent_table = %(table)s::text;
