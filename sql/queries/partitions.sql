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

-- name: select_table_comment
-- the comment of a table, NULL when it has none
SELECT obj_description(to_regclass(%(table)s::text), 'pg_class') AS note;

-- name: count_default_rows
-- exact row count of the default partition, capped so a huge default cannot stall a check
SELECT count(*)::bigint AS rows
  FROM (SELECT 1 FROM {default_partition} LIMIT %(cap)s::bigint) AS capped;

-- name: select_default_buckets
-- the partition-sized UTC ranges that rows of the default partition fall in, with row counts
SELECT date_trunc(%(unit)s::text, {key_column}, 'UTC') AS lower,
       count(*)::bigint AS rows
  FROM {default_partition}
 GROUP BY 1
 ORDER BY 1;

-- name: move_default_rows
-- moves one batch of the default partition's rows in [lower, upper) into a new partition
WITH batch AS (
    SELECT ctid
      FROM {default_partition}
     WHERE {key_column} >= %(lower)s::timestamptz
       AND {key_column} < %(upper)s::timestamptz
     LIMIT %(batch_size)s::integer
       FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM {default_partition}
     WHERE ctid IN (SELECT ctid FROM batch)
    RETURNING {columns}
)
INSERT INTO {partition} ({columns})
SELECT {columns} FROM moved;

-- name: count_rows
-- exact row count of one table (an archived partition, checked against its file)
SELECT count(*)::bigint AS rows FROM {table};

-- name: select_partman
-- pg_partman's schema when the extension is installed, with the table's part_config row if any
SELECT extension.extnamespace::regnamespace::text AS schema,
       extension.extversion AS version
  FROM pg_extension AS extension
 WHERE extension.extname = 'pg_partman';

-- name: select_partman_config
-- the table's pg_partman configuration (partman schema filled in by psycopg.sql.Identifier)
SELECT partition_interval,
       premake,
       retention,
       retention_keep_table,
       infinite_time_partitions
  FROM {partman}.part_config
 WHERE parent_table = %(table)s::text;

-- name: run_partman_maintenance
-- pg_partman's own maintenance for one table: premake and retention
SELECT {partman}.run_maintenance(p_parent_table := %(table)s::text, p_analyze := false,
                                 p_jobmon := false);

-- name: create_partman_parent
-- registers the table with pg_partman (native partitioning, its existing children adopted)
SELECT {partman}.create_parent(p_parent_table := %(table)s::text,
                               p_control := %(control)s::text,
                               p_type := 'native',
                               p_interval := %(interval)s::text,
                               p_premake := %(premake)s::integer,
                               p_jobmon := false);

-- name: update_partman_config
-- pushes the kronos-db policy into the table's part_config row
UPDATE {partman}.part_config
   SET premake = %(premake)s::integer,
       retention = %(retention)s::text,
       retention_keep_table = %(keep_table)s::boolean,
       retention_keep_index = true,
       infinite_time_partitions = true
 WHERE parent_table = %(table)s::text;

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
