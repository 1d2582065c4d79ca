-- Buffer cache hit rates for tables and indexes (shared buffers only: the OS cache is not seen).

-- name: select_cache_hit_rates
-- this database's hit rate for table and index blocks
SELECT 'tables' AS kind,
       coalesce(sum(heap_blks_hit), 0)::bigint AS hits,
       coalesce(sum(heap_blks_read), 0)::bigint AS reads,
       (100.0 * sum(heap_blks_hit) / nullif(sum(heap_blks_hit) + sum(heap_blks_read), 0))::float8 AS hit_percent
  FROM pg_statio_user_tables
UNION ALL
SELECT 'indexes',
       coalesce(sum(idx_blks_hit), 0)::bigint,
       coalesce(sum(idx_blks_read), 0)::bigint,
       (100.0 * sum(idx_blks_hit) / nullif(sum(idx_blks_hit) + sum(idx_blks_read), 0))::float8
  FROM pg_statio_user_indexes;

-- name: select_table_cache_hit_rates
-- per table: blocks read from disk and the hit rate, most disk reads first
SELECT schemaname::text AS schema_name,
       relname::text AS table_name,
       coalesce(heap_blks_hit, 0) + coalesce(idx_blks_hit, 0) AS hits,
       coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0) AS reads,
       (100.0 * (coalesce(heap_blks_hit, 0) + coalesce(idx_blks_hit, 0))
        / nullif(coalesce(heap_blks_hit, 0) + coalesce(idx_blks_hit, 0)
                 + coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0), 0))::float8 AS hit_percent
  FROM pg_statio_user_tables
 ORDER BY 4 DESC, 1, 2
 LIMIT %(limit)s::integer;
