-- What `kronos-db lint` reads from a live database to tell a finding on a 500-row table from
-- the same finding on a 50M-row table written all day.

-- name: select_table_activity
-- per table name asked for: whether it exists, rows (estimate), bytes, cumulative writes, and
-- its partitioning (a partitioned table is summed over its leaf partitions)
WITH wanted AS (
    SELECT name, to_regclass(name) AS oid
      FROM unnest(%(tables)s::text[]) AS name
)
SELECT w.name,
       w.oid IS NOT NULL AS present,
       -- the planner's estimate once analyzed; the statistics' live count before that
       coalesce(sum(CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint
                         ELSE coalesce(s.n_live_tup, 0) END), 0)::bigint AS rows,
       coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint AS bytes,
       coalesce(sum(s.n_tup_ins + s.n_tup_upd + s.n_tup_del), 0)::bigint AS writes,
       coalesce((SELECT p.relkind = 'p' FROM pg_class AS p WHERE p.oid = w.oid), false)
           AS partitioned,
       (SELECT d.relname::text
          FROM pg_partitioned_table AS pt
          JOIN pg_class AS d ON d.oid = pt.partdefid
         WHERE pt.partrelid = w.oid) AS default_partition
  FROM wanted AS w
  -- the leaves: the partitions of a partitioned table, or a plain table itself (for which
  -- pg_partition_tree has no row)
  LEFT JOIN LATERAL (
        SELECT tree.relid FROM pg_partition_tree(w.oid) AS tree WHERE tree.isleaf
        UNION ALL
        SELECT w.oid WHERE NOT EXISTS (SELECT 1 FROM pg_partition_tree(w.oid))
       ) AS t ON w.oid IS NOT NULL
  LEFT JOIN pg_class AS c ON c.oid = t.relid
  LEFT JOIN pg_stat_user_tables AS s ON s.relid = t.relid
 GROUP BY w.name, w.oid
 ORDER BY w.name;

-- name: select_stats_age
-- seconds since this database's statistics were reset (or the server started)
SELECT extract(epoch FROM now() - coalesce(
           (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),
           pg_postmaster_start_time()))::float8 AS seconds;
