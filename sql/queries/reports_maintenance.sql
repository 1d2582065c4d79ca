-- Maintenance: dead tuples and (auto)vacuum per table, transaction ID and multixact
-- wraparound headroom, what holds back the xmin horizon, and estimated bloat.

-- name: select_vacuum_stats
-- per table: live and dead tuples, when it was last (auto)vacuumed and analyzed, whether
-- autovacuum is off for it, and the dead tuple count at which autovacuum should trigger
SELECT stat.schemaname::text AS schema_name,
       stat.relname::text AS table_name,
       stat.n_live_tup AS live_tuples,
       stat.n_dead_tup AS dead_tuples,
       (100.0 * stat.n_dead_tup / nullif(stat.n_live_tup + stat.n_dead_tup, 0))::float8 AS dead_percent,
       stat.n_mod_since_analyze AS modified_since_analyze,
       stat.last_vacuum,
       stat.last_autovacuum,
       stat.last_analyze,
       stat.last_autoanalyze,
       stat.vacuum_count + stat.autovacuum_count AS vacuum_count,
       coalesce(options.autovacuum_enabled, current_setting('autovacuum')::boolean) AS autovacuum_enabled,
       (coalesce(options.vacuum_threshold, current_setting('autovacuum_vacuum_threshold')::float8)
        + coalesce(options.vacuum_scale_factor, current_setting('autovacuum_vacuum_scale_factor')::float8)
          * greatest(table_class.reltuples, 0))::bigint AS autovacuum_trigger
  FROM pg_stat_user_tables AS stat
  JOIN pg_class AS table_class ON table_class.oid = stat.relid
  LEFT JOIN LATERAL (
        SELECT bool_or(option_value::boolean) FILTER (WHERE option_name = 'autovacuum_enabled') AS autovacuum_enabled,
               max(option_value::float8) FILTER (WHERE option_name = 'autovacuum_vacuum_threshold') AS vacuum_threshold,
               max(option_value::float8) FILTER (WHERE option_name = 'autovacuum_vacuum_scale_factor') AS vacuum_scale_factor
          FROM pg_options_to_table(table_class.reloptions)
       ) AS options ON true
 WHERE stat.schemaname NOT LIKE 'pg\_temp%%'
 ORDER BY stat.n_dead_tup DESC, 1, 2
 LIMIT %(limit)s::integer;

-- name: select_database_wraparound
-- per database: age of the oldest unfrozen transaction ID and multixact, and the share of the
-- 2^31 limit they use (at about 2^31 - 3,000,000 the server stops accepting writes)
SELECT datname::text AS database_name,
       age(datfrozenxid)::bigint AS xid_age,
       mxid_age(datminmxid)::bigint AS multixact_age,
       (100.0 * age(datfrozenxid) / 2147483648)::float8 AS xid_percent,
       (100.0 * mxid_age(datminmxid) / 2147483648)::float8 AS multixact_percent,
       current_setting('autovacuum_freeze_max_age')::bigint AS freeze_max_age,
       current_setting('autovacuum_multixact_freeze_max_age')::bigint AS multixact_freeze_max_age
  FROM pg_database
 WHERE datallowconn
 ORDER BY greatest(age(datfrozenxid), mxid_age(datminmxid)) DESC, 1;

-- name: select_table_wraparound
-- this database's tables with the oldest unfrozen transaction IDs and multixacts
SELECT namespace.nspname::text AS schema_name,
       table_class.relname::text AS table_name,
       age(table_class.relfrozenxid)::bigint AS xid_age,
       mxid_age(table_class.relminmxid)::bigint AS multixact_age,
       (100.0 * age(table_class.relfrozenxid) / 2147483648)::float8 AS xid_percent,
       (100.0 * mxid_age(table_class.relminmxid) / 2147483648)::float8 AS multixact_percent,
       pg_total_relation_size(table_class.oid) AS bytes
  FROM pg_class AS table_class
  JOIN pg_namespace AS namespace ON namespace.oid = table_class.relnamespace
 WHERE table_class.relkind IN ('r', 'm', 't')
   AND table_class.relfrozenxid <> '0'::xid
 ORDER BY greatest(age(table_class.relfrozenxid), mxid_age(table_class.relminmxid)) DESC, 1, 2
 LIMIT %(limit)s::integer;

-- name: select_xmin_holders
-- what holds back the xmin horizon (so that vacuum cannot remove dead rows): sessions with an
-- old snapshot or transaction, replication slots, prepared transactions, standbys' feedback
SELECT 'session' AS kind,
       activity.pid::text AS name,
       coalesce(activity.usename::text, '') AS role_name,
       coalesce(activity.application_name, '') AS application_name,
       coalesce(activity.state, '') AS state,
       coalesce(age(activity.backend_xmin), age(activity.backend_xid))::bigint AS xid_age,
       extract(epoch FROM %(now)s::timestamptz - activity.xact_start)::float8 AS seconds,
       left(regexp_replace(coalesce(activity.query, ''), '\s+', ' ', 'g'), 200) AS detail
  FROM pg_stat_activity AS activity
 WHERE (activity.backend_xmin IS NOT NULL OR activity.backend_xid IS NOT NULL)
   AND activity.pid <> pg_backend_pid()
   -- a session holds back vacuum of its own database only (shared catalogs aside)
   AND (%(all_databases)s::boolean OR activity.datname = current_database())
UNION ALL
SELECT 'replication slot',
       slot.slot_name::text,
       '',
       coalesce(slot.plugin::text, 'physical'),
       CASE WHEN slot.active THEN 'active' ELSE 'inactive' END,
       greatest(age(slot.xmin), age(slot.catalog_xmin))::bigint,
       NULL::float8,
       coalesce(slot.database::text, '')
  FROM pg_replication_slots AS slot
 WHERE (slot.xmin IS NOT NULL OR slot.catalog_xmin IS NOT NULL)
   -- a physical slot's xmin holds every database; a logical slot's catalog_xmin its own
   AND (%(all_databases)s::boolean OR slot.database IS NULL OR slot.database = current_database())
UNION ALL
SELECT 'prepared transaction',
       prepared.gid,
       prepared.owner::text,
       '',
       'prepared',
       age(prepared.transaction)::bigint,
       extract(epoch FROM %(now)s::timestamptz - prepared.prepared)::float8,
       prepared.database::text
  FROM pg_prepared_xacts AS prepared
 WHERE %(all_databases)s::boolean OR prepared.database = current_database()
UNION ALL
SELECT 'standby feedback',
       replication.pid::text,
       coalesce(replication.usename::text, ''),
       coalesce(replication.application_name, ''),
       coalesce(replication.state, ''),
       age(replication.backend_xmin)::bigint,
       NULL::float8,
       coalesce(host(replication.client_addr), 'local')
  FROM pg_stat_replication AS replication
 WHERE replication.backend_xmin IS NOT NULL
 ORDER BY 6 DESC NULLS LAST, 7 DESC NULLS LAST;

-- name: select_table_bloat
-- estimated table bloat from the statistics (no scan): the ioguix estimation, aware of each
-- table's fillfactor. Unreliable when a column has no statistics (pg_stats is empty for tables
-- the role cannot read, and before the first ANALYZE) or they are stale.
WITH columns AS (
    SELECT table_class.oid AS table_oid,
           namespace.nspname AS schema_name,
           table_class.relname AS table_name,
           table_class.reltuples,
           table_class.relpages AS heap_pages,
           coalesce(toast.relpages, 0) AS toast_pages,
           coalesce(toast.reltuples, 0) AS toast_tuples,
           coalesce(substring(array_to_string(table_class.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::smallint, 100) AS fillfactor,
           current_setting('block_size')::numeric AS block_size,
           CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64' THEN 8 ELSE 4 END AS max_align,
           24 AS page_header,
           23 + CASE WHEN max(coalesce(stats.null_frac, 0)) > 0 THEN (7 + count(stats.attname)) / 8 ELSE 0::int END AS tuple_header,
           sum((1 - coalesce(stats.null_frac, 0)) * coalesce(stats.avg_width, 0)) AS tuple_data,
           count(*) > count(stats.attname) OR bool_or(attribute.atttypid = 'pg_catalog.name'::regtype) AS statistics_missing
      FROM pg_attribute AS attribute
      JOIN pg_class AS table_class ON table_class.oid = attribute.attrelid
      JOIN pg_namespace AS namespace ON namespace.oid = table_class.relnamespace
      LEFT JOIN pg_stats AS stats
             ON stats.schemaname = namespace.nspname
            AND stats.tablename = table_class.relname
            AND stats.attname = attribute.attname
            AND NOT stats.inherited
      LEFT JOIN pg_class AS toast ON toast.oid = table_class.reltoastrelid
     WHERE attribute.attnum > 0
       AND NOT attribute.attisdropped
       AND table_class.relkind IN ('r', 'm')
       AND namespace.nspname NOT IN ('pg_catalog', 'information_schema')
       AND namespace.nspname !~ '^pg_toast'
       AND table_class.relpages::bigint * current_setting('block_size')::bigint >= %(minimum_bytes)s::bigint
     GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
),
tuple_sizes AS (
    SELECT *,
           4 + tuple_header + tuple_data + (2 * max_align)
             - CASE WHEN tuple_header %% max_align = 0 THEN max_align ELSE tuple_header %% max_align END
             - CASE WHEN ceil(tuple_data)::int %% max_align = 0 THEN max_align ELSE ceil(tuple_data)::int %% max_align END
             AS tuple_size
      FROM columns
),
estimates AS (
    SELECT *,
           heap_pages + toast_pages AS pages,
           ceil(reltuples / ((block_size - page_header) * fillfactor / (tuple_size * 100))) + ceil(toast_tuples / 4) AS expected_pages
      FROM tuple_sizes
)
SELECT estimates.schema_name::text,
       estimates.table_name::text,
       'table' AS kind,
       (estimates.pages * estimates.block_size)::bigint AS bytes,
       greatest((estimates.pages - estimates.expected_pages) * estimates.block_size, 0)::bigint AS bloat_bytes,
       CASE WHEN estimates.pages > 0
            THEN greatest(100 * (estimates.pages - estimates.expected_pages) / estimates.pages, 0) ELSE 0 END::float8 AS bloat_percent,
       estimates.fillfactor::integer,
       concat_ws('; ',
           CASE WHEN NOT has_table_privilege(estimates.table_oid, 'SELECT')
                THEN 'column statistics not readable by this role (pg_stats shows them only to a role that may read the table)'
                WHEN estimates.statistics_missing THEN 'column statistics missing (never analyzed)' END,
           CASE WHEN estimates.reltuples < 0 THEN 'never vacuumed or analyzed' END,
           CASE WHEN stat.n_mod_since_analyze > greatest(estimates.reltuples, 0) * 0.2 + 1000
                THEN 'statistics stale: ' || stat.n_mod_since_analyze || ' rows modified since the last ANALYZE' END
       ) AS unreliable_reason
  FROM estimates
  LEFT JOIN pg_stat_user_tables AS stat ON stat.relid = estimates.table_oid
 ORDER BY 5 DESC, 1, 2;

-- name: select_index_bloat
-- estimated btree index bloat from the statistics (the ioguix estimation, fillfactor-aware)
WITH index_columns AS (
    SELECT index.indexrelid AS index_oid,
           index.indrelid AS table_oid,
           index_class.relname AS index_name,
           index_class.reltuples,
           index_class.relpages,
           coalesce(substring(array_to_string(index_class.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::smallint, 90) AS fillfactor,
           position_number,
           (string_to_array(index.indkey::text, ' ')::int2[])[position_number] AS table_column
      FROM pg_index AS index
      JOIN pg_class AS index_class ON index_class.oid = index.indexrelid
      CROSS JOIN LATERAL generate_series(1, index.indnatts) AS position_number
     WHERE index_class.relam = (SELECT oid FROM pg_am WHERE amname = 'btree')
       AND index_class.relkind = 'i'
       AND index_class.relpages > 0
       AND index_class.relpages::bigint * current_setting('block_size')::bigint >= %(minimum_bytes)s::bigint
),
attributes AS (
    -- a plain column's statistics are the table's; an expression's are the index's own
    SELECT index_columns.*,
           CASE WHEN table_column <> 0 THEN table_column_attribute.attname ELSE expression_attribute.attname END AS column_name,
           CASE WHEN table_column <> 0 THEN table_class.relname ELSE index_columns.index_name END AS statistics_relation,
           coalesce(table_column_attribute.atttypid, expression_attribute.atttypid) AS type_oid,
           table_class.relname AS table_name,
           table_class.relnamespace
      FROM index_columns
      JOIN pg_class AS table_class ON table_class.oid = index_columns.table_oid
      LEFT JOIN pg_attribute AS table_column_attribute
             ON index_columns.table_column <> 0
            AND table_column_attribute.attrelid = index_columns.table_oid
            AND table_column_attribute.attnum = index_columns.table_column
      LEFT JOIN pg_attribute AS expression_attribute
             ON index_columns.table_column = 0
            AND expression_attribute.attrelid = index_columns.index_oid
            AND expression_attribute.attnum = index_columns.position_number
),
widths AS (
    SELECT attributes.index_oid,
           attributes.table_oid,
           namespace.nspname AS schema_name,
           attributes.table_name,
           attributes.index_name,
           attributes.reltuples,
           attributes.relpages,
           attributes.fillfactor,
           current_setting('block_size')::numeric AS block_size,
           CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64' THEN 8 ELSE 4 END AS max_align,
           CASE WHEN max(coalesce(stats.null_frac, 0)) = 0 THEN 8 ELSE 8 + ((32 + 8 - 1) / 8) END AS tuple_header,
           sum((1 - coalesce(stats.null_frac, 0)) * coalesce(stats.avg_width, 1024)) AS data_width,
           count(*) > count(stats.attname) OR bool_or(attributes.type_oid = 'pg_catalog.name'::regtype) AS statistics_missing
      FROM attributes
      JOIN pg_namespace AS namespace ON namespace.oid = attributes.relnamespace
      LEFT JOIN pg_stats AS stats
             ON stats.schemaname = namespace.nspname
            AND stats.tablename = attributes.statistics_relation
            AND stats.attname = attributes.column_name
            AND NOT stats.inherited
     WHERE namespace.nspname NOT IN ('pg_catalog', 'information_schema')
       AND namespace.nspname !~ '^pg_toast'
     GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
),
estimates AS (
    SELECT *,
           coalesce(1 + ceil(reltuples / floor((block_size - 16 - 24) * fillfactor
               / (100 * (4 + (tuple_header + max_align
                   - CASE WHEN tuple_header %% max_align = 0 THEN max_align ELSE tuple_header %% max_align END
                   + data_width + max_align
                   - CASE WHEN data_width = 0 THEN 0
                          WHEN data_width::integer %% max_align = 0 THEN max_align
                          ELSE data_width::integer %% max_align END))::float8))), 0) AS expected_pages
      FROM widths
)
SELECT estimates.schema_name::text,
       (estimates.table_name || '.' || estimates.index_name)::text AS table_name,
       'index' AS kind,
       (estimates.relpages * estimates.block_size)::bigint AS bytes,
       greatest((estimates.relpages - estimates.expected_pages) * estimates.block_size, 0)::bigint AS bloat_bytes,
       greatest(100 * (estimates.relpages - estimates.expected_pages) / estimates.relpages, 0)::float8 AS bloat_percent,
       estimates.fillfactor::integer,
       concat_ws('; ',
           CASE WHEN NOT has_table_privilege(estimates.table_oid, 'SELECT')
                THEN 'column statistics not readable by this role (pg_stats shows them only to a role that may read the table)'
                WHEN estimates.statistics_missing THEN 'column statistics missing (never analyzed)' END,
           CASE WHEN estimates.reltuples < 0 THEN 'never vacuumed or analyzed' END,
           CASE WHEN stat.n_mod_since_analyze > greatest(estimates.reltuples, 0) * 0.2 + 1000
                THEN 'statistics stale: ' || stat.n_mod_since_analyze || ' rows modified since the last ANALYZE' END
       ) AS unreliable_reason
  FROM estimates
  LEFT JOIN pg_stat_user_tables AS stat ON stat.relid = estimates.table_oid
 ORDER BY 5 DESC, 1, 2;

-- name: select_unmaintained_tables
-- tables (and materialized views) of at least a size that were never vacuumed or never
-- analyzed (by hand or by autovacuum) since the statistics were reset: no visibility map (no
-- index-only scans, a whole-table freeze ahead), or no statistics (the planner guesses).
-- A standby runs no VACUUM: nothing is listed there.
SELECT stat.schemaname::text AS schema_name,
       stat.relname::text AS table_name,
       pg_table_size(stat.relid) AS bytes,
       stat.n_live_tup AS live_tuples,
       stat.last_vacuum IS NULL AND stat.last_autovacuum IS NULL AS never_vacuumed,
       stat.last_analyze IS NULL AND stat.last_autoanalyze IS NULL AS never_analyzed,
       (SELECT database.stats_reset FROM pg_stat_database AS database
         WHERE database.datname = current_database()) AS statistics_reset
  FROM pg_stat_user_tables AS stat
  JOIN pg_class AS table_class ON table_class.oid = stat.relid
 WHERE table_class.relkind IN ('r', 'm')
   AND NOT pg_is_in_recovery()
   AND ((stat.last_vacuum IS NULL AND stat.last_autovacuum IS NULL)
        OR (stat.last_analyze IS NULL AND stat.last_autoanalyze IS NULL))
   AND pg_table_size(stat.relid) >= %(minimum_bytes)s::bigint
 ORDER BY pg_table_size(stat.relid) DESC, 1, 2
 LIMIT 50;
