-- Space: the largest tables (a partitioned table counts its partitions) and indexes.

-- name: select_largest_tables
-- tables, materialized views and partitioned tables by total size (heap + indexes + TOAST)
WITH sizes AS (
    SELECT table_class.oid,
           table_class.relkind,
           CASE WHEN table_class.relkind = 'p'
                THEN (SELECT coalesce(sum(pg_total_relation_size(tree.relid)), 0) FROM pg_partition_tree(table_class.oid) AS tree)
                ELSE pg_total_relation_size(table_class.oid) END AS total_bytes,
           CASE WHEN table_class.relkind = 'p'
                THEN (SELECT coalesce(sum(pg_relation_size(tree.relid)), 0) FROM pg_partition_tree(table_class.oid) AS tree)
                ELSE pg_relation_size(table_class.oid) END AS table_bytes,
           CASE WHEN table_class.relkind = 'p'
                THEN (SELECT coalesce(sum(pg_indexes_size(tree.relid)), 0) FROM pg_partition_tree(table_class.oid) AS tree)
                ELSE pg_indexes_size(table_class.oid) END AS index_bytes,
           CASE WHEN table_class.relkind = 'p'
                THEN (SELECT coalesce(sum(greatest(child.reltuples, 0)), 0) FROM pg_partition_tree(table_class.oid) AS tree
                        JOIN pg_class AS child ON child.oid = tree.relid)
                ELSE greatest(table_class.reltuples, 0) END::bigint AS estimated_rows
      FROM pg_class AS table_class
      JOIN pg_namespace AS namespace ON namespace.oid = table_class.relnamespace
     WHERE table_class.relkind IN ('r', 'm', 'p')
       AND NOT table_class.relispartition
       AND namespace.nspname NOT IN ('pg_catalog', 'information_schema')
       AND namespace.nspname !~ '^pg_(toast|temp_)'
)
SELECT namespace.nspname::text AS schema_name,
       table_class.relname::text AS table_name,
       CASE sizes.relkind WHEN 'p' THEN 'partitioned' WHEN 'm' THEN 'materialized view' ELSE 'table' END AS kind,
       sizes.total_bytes::bigint,
       sizes.table_bytes::bigint,
       sizes.index_bytes::bigint,
       (sizes.total_bytes - sizes.table_bytes - sizes.index_bytes)::bigint AS toast_bytes,
       sizes.estimated_rows
  FROM sizes
  JOIN pg_class AS table_class ON table_class.oid = sizes.oid
  JOIN pg_namespace AS namespace ON namespace.oid = table_class.relnamespace
 ORDER BY sizes.total_bytes DESC, 1, 2
 LIMIT %(limit)s::integer;

-- name: select_largest_indexes
-- indexes by size
SELECT namespace.nspname::text AS schema_name,
       table_class.relname::text AS table_name,
       index_class.relname::text AS index_name,
       pg_relation_size(index_class.oid) AS bytes
  FROM pg_index AS index
  JOIN pg_class AS index_class ON index_class.oid = index.indexrelid
  JOIN pg_class AS table_class ON table_class.oid = index.indrelid
  JOIN pg_namespace AS namespace ON namespace.oid = index_class.relnamespace
 WHERE index_class.relkind = 'i'
   AND namespace.nspname NOT IN ('pg_catalog', 'information_schema')
   AND namespace.nspname !~ '^pg_(toast|temp_)'
 ORDER BY 4 DESC, 1, 2, 3
 LIMIT %(limit)s::integer;

-- name: select_database_size
-- this database's size on disk
SELECT current_database()::text AS database_name, pg_database_size(current_database()) AS bytes;
