-- Sequences: how many values are left before an id runs out, against both the sequence's own
-- maximum and the type of the column it feeds (a bigint sequence behind an int4 serial column
-- fails at 2^31 - 1, whatever the sequence says).

-- name: select_sequence_headroom
-- every sequence with its owning column, its effective limit and the share already used;
-- last_value is NULL when the role may not read the sequence (readable = false)
WITH sequences AS (
    SELECT sequence_class.oid AS sequence_oid,
           sequence.schemaname::text AS schema_name,
           sequence.sequencename::text AS sequence_name,
           sequence.data_type::text AS sequence_type,
           sequence.increment_by,
           sequence.min_value,
           sequence.max_value,
           sequence.cycle,
           sequence.last_value,
           has_sequence_privilege(sequence_class.oid, 'SELECT,USAGE') AS readable,
           owner_table.relname::text AS table_name,
           owner_column.attname::text AS column_name,
           format_type(owner_column.atttypid, owner_column.atttypmod) AS column_type,
           CASE owner_column.atttypid
                WHEN 'int2'::regtype THEN 32767
                WHEN 'int4'::regtype THEN 2147483647
                WHEN 'int8'::regtype THEN 9223372036854775807
           END::numeric AS column_max,
           CASE owner_column.atttypid
                WHEN 'int2'::regtype THEN -32768
                WHEN 'int4'::regtype THEN -2147483648
                WHEN 'int8'::regtype THEN -9223372036854775808
           END::numeric AS column_min
      FROM pg_sequences AS sequence
      JOIN pg_namespace AS namespace ON namespace.nspname = sequence.schemaname
      JOIN pg_class AS sequence_class
        ON sequence_class.relname = sequence.sequencename
       AND sequence_class.relnamespace = namespace.oid
      LEFT JOIN pg_depend AS dependency
             ON dependency.classid = 'pg_class'::regclass
            AND dependency.objid = sequence_class.oid
            AND dependency.refclassid = 'pg_class'::regclass
            AND dependency.refobjsubid > 0
            AND dependency.deptype IN ('a', 'i')
      LEFT JOIN pg_class AS owner_table ON owner_table.oid = dependency.refobjid
      LEFT JOIN pg_attribute AS owner_column
             ON owner_column.attrelid = dependency.refobjid
            AND owner_column.attnum = dependency.refobjsubid
),
limits AS (
    SELECT *,
           CASE WHEN increment_by > 0
                THEN least(max_value::numeric, coalesce(column_max, max_value::numeric))
                ELSE greatest(min_value::numeric, coalesce(column_min, min_value::numeric)) END AS effective_limit,
           CASE WHEN increment_by > 0 THEN min_value::numeric ELSE max_value::numeric END AS first_value
      FROM sequences
)
SELECT schema_name,
       sequence_name,
       coalesce(table_name, '') AS table_name,
       coalesce(column_name, '') AS column_name,
       coalesce(column_type, '') AS column_type,
       sequence_type,
       increment_by,
       last_value,
       effective_limit::text AS effective_limit,
       CASE WHEN increment_by > 0 AND coalesce(column_max, max_value::numeric) < max_value::numeric THEN 'column type'
            WHEN increment_by < 0 AND coalesce(column_min, min_value::numeric) > min_value::numeric THEN 'column type'
            ELSE 'sequence' END AS limited_by,
       cycle,
       readable,
       CASE WHEN NOT readable THEN NULL
            WHEN last_value IS NULL THEN 0
            ELSE 100.0 * (last_value::numeric - first_value) / nullif(effective_limit - first_value, 0)
       END::float8 AS used_percent,
       CASE WHEN last_value IS NULL THEN NULL
            ELSE floor((effective_limit - last_value::numeric) / increment_by)
       END::text AS values_left
  FROM limits
 ORDER BY used_percent DESC NULLS LAST, schema_name, sequence_name;
