-- Index analysis: unused, duplicate and redundant, invalid indexes, foreign keys without an
-- index, tables read mostly by sequential scans. Catalog and statistics views only: every
-- query works for a role with pg_monitor.

-- name: select_unused_indexes
-- indexes never scanned since the statistics were reset (an index of a partitioned table
-- counts the scans of all its partitions' indexes), leaving out those that enforce a constraint
WITH leaf_indexes AS (
    SELECT coalesce(pg_partition_root(stat.indexrelid), stat.indexrelid) AS index_oid,
           stat.idx_scan,
           pg_relation_size(stat.indexrelid) AS bytes
      FROM pg_stat_user_indexes AS stat
)
SELECT namespace.nspname::text AS schema_name,
       table_class.relname::text AS table_name,
       index_class.relname::text AS index_name,
       sum(leaf_indexes.bytes)::bigint AS bytes,
       sum(leaf_indexes.idx_scan)::bigint AS scans,
       pg_get_indexdef(index_class.oid) AS definition
  FROM leaf_indexes
  JOIN pg_class AS index_class ON index_class.oid = leaf_indexes.index_oid
  JOIN pg_index AS index ON index.indexrelid = index_class.oid
  JOIN pg_class AS table_class ON table_class.oid = index.indrelid
  JOIN pg_namespace AS namespace ON namespace.oid = index_class.relnamespace
 WHERE NOT index.indisunique
   AND index.indisvalid
   AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = index_class.oid)
 GROUP BY namespace.nspname, table_class.relname, index_class.relname, index_class.oid
HAVING sum(leaf_indexes.idx_scan) = 0
 ORDER BY sum(leaf_indexes.bytes) DESC, 1, 2, 3;

-- name: select_statistics_reset
-- when this database's statistics were last reset (an index unused since then is unused)
SELECT stats_reset FROM pg_stat_database WHERE datname = current_database();

-- name: select_duplicate_indexes
-- indexes made useless by another on the same table: same key columns, or (btree) a prefix
-- of another's, same method, expressions, predicate and operator classes; a unique index is
-- only ever covered by a unique index on exactly the same columns
WITH index_info AS (
    SELECT index.indexrelid AS index_oid,
           index.indrelid AS table_oid,
           index.indisunique AS is_unique,
           index.indisprimary AS is_primary,
           EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = index.indexrelid) AS backs_constraint,
           index.indnatts = index.indnkeyatts AS without_include,
           (string_to_array(index.indkey::text, ' ')::int2[])[1:index.indnkeyatts] AS key_columns,
           string_to_array(index.indkey::text, ' ')::int2[] AS all_columns,
           (string_to_array(index.indclass::text, ' ')::oid[])[1:index.indnkeyatts] AS operator_classes,
           coalesce(pg_get_expr(index.indexprs, index.indrelid), '') AS expressions,
           coalesce(pg_get_expr(index.indpred, index.indrelid), '') AS predicate,
           index_class.relam AS access_method,
           index_class.relnamespace,
           index_class.relname
      FROM pg_index AS index
      JOIN pg_class AS index_class ON index_class.oid = index.indexrelid
      JOIN pg_namespace AS namespace ON namespace.oid = index_class.relnamespace
     WHERE index.indisvalid
       AND NOT index_class.relispartition
       AND namespace.nspname NOT IN ('pg_catalog', 'information_schema')
       AND namespace.nspname !~ '^pg_toast'
)
SELECT namespace.nspname::text AS schema_name,
       table_class.relname::text AS table_name,
       redundant.relname::text AS index_name,
       covering.relname::text AS covered_by,
       CASE WHEN redundant.key_columns = covering.key_columns THEN 'duplicate' ELSE 'prefix' END AS kind,
       pg_relation_size(redundant.index_oid) AS bytes,
       pg_get_indexdef(redundant.index_oid) AS definition,
       pg_get_indexdef(covering.index_oid) AS covering_definition
  FROM index_info AS redundant
  JOIN index_info AS covering
    ON covering.table_oid = redundant.table_oid
   AND covering.index_oid <> redundant.index_oid
   AND covering.access_method = redundant.access_method
   AND covering.expressions = redundant.expressions
   AND covering.predicate = redundant.predicate
  JOIN pg_class AS table_class ON table_class.oid = redundant.table_oid
  JOIN pg_namespace AS namespace ON namespace.oid = table_class.relnamespace
 WHERE NOT redundant.is_primary
   AND (
        -- same key columns (and operator classes): one of the two is enough
        (redundant.key_columns = covering.key_columns
         AND redundant.operator_classes = covering.operator_classes
         AND redundant.all_columns <@ covering.all_columns
         AND (NOT redundant.is_unique OR covering.is_unique)
         -- of two equivalent indexes, report only one: keep the primary key, then the one
         -- backing a constraint, then the older
         AND (redundant.is_unique <> covering.is_unique
              OR covering.is_primary
              OR (covering.backs_constraint AND NOT redundant.backs_constraint)
              OR (covering.backs_constraint = redundant.backs_constraint
                  AND redundant.index_oid > covering.index_oid)))
        OR
        -- a btree whose key columns are a leading prefix of another btree's
        (redundant.access_method = (SELECT oid FROM pg_am WHERE amname = 'btree')
         AND NOT redundant.is_unique
         AND NOT redundant.backs_constraint
         AND redundant.without_include
         AND cardinality(redundant.key_columns) < cardinality(covering.key_columns)
         AND redundant.key_columns = covering.key_columns[1:cardinality(redundant.key_columns)]
         AND redundant.operator_classes = covering.operator_classes[1:cardinality(redundant.key_columns)])
   )
 ORDER BY 6 DESC, 1, 2, 3, 4;

-- name: select_invalid_indexes
-- indexes left INVALID by a failed CREATE INDEX CONCURRENTLY (or REINDEX CONCURRENTLY):
-- written on every insert, never read; builds still in progress are left out
SELECT namespace.nspname::text AS schema_name,
       table_class.relname::text AS table_name,
       index_class.relname::text AS index_name,
       pg_relation_size(index_class.oid) AS bytes,
       pg_get_indexdef(index_class.oid) AS definition
  FROM pg_index AS index
  JOIN pg_class AS index_class ON index_class.oid = index.indexrelid
  JOIN pg_class AS table_class ON table_class.oid = index.indrelid
  JOIN pg_namespace AS namespace ON namespace.oid = index_class.relnamespace
 WHERE NOT index.indisvalid
   -- a partitioned table's index stays invalid until every partition has one: its own
   -- report is the partitions' indexes
   AND index_class.relkind = 'i'
   AND index.indexrelid NOT IN (SELECT index_relid FROM pg_stat_progress_create_index
                                 WHERE index_relid IS NOT NULL)
 ORDER BY 1, 2, 3;

-- name: select_unindexed_foreign_keys
-- foreign keys whose columns lead no valid, non-partial index of the referencing table: every
-- DELETE or key UPDATE on the referenced table scans the referencing one
SELECT namespace.nspname::text AS schema_name,
       table_class.relname::text AS table_name,
       fk.conname::text AS constraint_name,
       array_to_string(ARRAY(SELECT attname FROM pg_attribute
                              WHERE attrelid = fk.conrelid AND attnum = ANY (fk.conkey)
                              ORDER BY array_position(fk.conkey, attnum)), ', ') AS columns,
       array_to_string(ARRAY(SELECT quote_ident(attname) FROM pg_attribute
                              WHERE attrelid = fk.conrelid AND attnum = ANY (fk.conkey)
                              ORDER BY array_position(fk.conkey, attnum)), ', ') AS quoted_columns,
       fk.confrelid::regclass::text AS referenced_table,
       pg_total_relation_size(fk.conrelid) AS table_bytes
  FROM pg_constraint AS fk
  JOIN pg_class AS table_class ON table_class.oid = fk.conrelid
  JOIN pg_namespace AS namespace ON namespace.oid = table_class.relnamespace
 WHERE fk.contype = 'f'
   AND fk.conparentid = 0
   AND namespace.nspname NOT IN ('pg_catalog', 'information_schema')
   AND NOT EXISTS (
        SELECT 1
          FROM pg_index AS index
         WHERE index.indrelid = fk.conrelid
           AND index.indpred IS NULL
           AND (string_to_array(index.indkey::text, ' ')::int2[])[1:cardinality(fk.conkey)] @> fk.conkey
           AND (string_to_array(index.indkey::text, ' ')::int2[])[1:cardinality(fk.conkey)] <@ fk.conkey
   )
 ORDER BY 1, 2, 3;

-- name: select_sequential_scan_tables
-- tables of some size read mostly by sequential scans: candidates for a missing index
SELECT stat.schemaname::text AS schema_name,
       stat.relname::text AS table_name,
       coalesce(stat.seq_scan, 0) AS sequential_scans,
       coalesce(stat.seq_tup_read, 0) AS rows_read_sequentially,
       coalesce(stat.idx_scan, 0) AS index_scans,
       stat.n_live_tup AS live_tuples,
       (100.0 * coalesce(stat.idx_scan, 0)
        / nullif(coalesce(stat.seq_scan, 0) + coalesce(stat.idx_scan, 0), 0))::float8 AS index_scan_percent
  FROM pg_stat_user_tables AS stat
 WHERE stat.n_live_tup >= %(minimum_rows)s::bigint
   AND coalesce(stat.seq_scan, 0) > 0
   AND 100.0 * coalesce(stat.idx_scan, 0)
       / (coalesce(stat.seq_scan, 0) + coalesce(stat.idx_scan, 0)) < %(maximum_index_percent)s::float8
 ORDER BY stat.seq_tup_read DESC, 1, 2;
