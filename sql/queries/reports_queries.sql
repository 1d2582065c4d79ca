-- Reports on statements (pg_stat_statements). The extension may live in any schema and its
-- columns changed names across versions (total_time → total_exec_time in 1.8, toplevel in 1.9,
-- blk_read_time → shared_blk_read_time in 1.11): queries holding {placeholders} are composed
-- with psycopg.sql identifiers chosen by kronos_db.reports.queries from the installed version.
--
-- A utility statement (VACUUM, CREATE INDEX, COPY, a DO block, EXPLAIN…) is anything that is not
-- SELECT/INSERT/UPDATE/DELETE/MERGE/WITH/VALUES/TABLE once its leading comments are skipped:
-- pg_stat_statements 1.10 has no column saying so. With include_utility false they are left
-- out; with toplevel_only the statements run inside a function or DO block are too (the
-- calling statement's time holds theirs).

-- name: select_statements_extension
-- where pg_stat_statements is installed in this database (schema, version), if it is
SELECT namespace.nspname::text AS schema_name,
       extension.extversion::text AS version,
       coalesce(current_setting('shared_preload_libraries', true), '') ~ '(^|[ ,])"?pg_stat_statements"?($|[ ,])' AS preloaded,
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements') AS available
  FROM (SELECT 1) AS one
  LEFT JOIN pg_extension AS extension ON extension.extname = 'pg_stat_statements'
  LEFT JOIN pg_namespace AS namespace ON namespace.oid = extension.extnamespace;

-- name: select_statements_info
-- when pg_stat_statements was last reset, and how many entries it had to evict (1.9+)
SELECT stats_reset, dealloc FROM {info};

-- name: select_slow_queries
-- this database's statements (every role's), ordered by total or mean time, calls or I/O
WITH statements AS (
    SELECT statement.userid,
           statement.queryid,
           {toplevel} AS toplevel,
           statement.calls,
           statement.rows,
           statement.{total_time}::float8 AS total_ms,
           statement.{mean_time}::float8 AS mean_ms,
           statement.{stddev_time}::float8 AS stddev_ms,
           statement.shared_blks_hit,
           statement.shared_blks_read,
           (statement.{read_time} + statement.{write_time})::float8 AS io_ms,
           statement.query,
           regexp_replace(statement.query, '^(\s|/\*([^*]|\*+[^*/])*\*+/|--[^\n]*(\n|$))*', '')
               !~* '^(select|insert|update|delete|merge|with|values|table)\M|^\(' AS is_utility
      FROM {statements} AS statement
     WHERE (%(all_databases)s::boolean
            OR statement.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()))
)
SELECT coalesce(pg_get_userbyid(userid)::text, userid::text) AS role_name,
       queryid,
       toplevel,
       calls,
       rows,
       total_ms,
       mean_ms,
       stddev_ms,
       shared_blks_hit,
       shared_blks_read,
       io_ms,
       CASE WHEN shared_blks_hit + shared_blks_read > 0
            THEN 100.0 * shared_blks_hit / (shared_blks_hit + shared_blks_read) END::float8 AS hit_percent,
       (100.0 * total_ms / nullif(sum(total_ms) FILTER (WHERE toplevel) OVER (), 0))::float8 AS percent_of_total,
       coalesce(query, '') AS query
  FROM statements
 WHERE calls >= %(minimum_calls)s::bigint
   AND (%(include_utility)s::boolean OR NOT is_utility)
   AND (NOT %(toplevel_only)s::boolean OR toplevel)
 ORDER BY CASE %(order)s::text
              WHEN 'total' THEN total_ms
              WHEN 'mean' THEN mean_ms
              WHEN 'calls' THEN calls::float8
              WHEN 'io' THEN (shared_blks_read::float8 * 1e6 + io_ms)
          END DESC NULLS LAST,
          queryid
 LIMIT %(limit)s::integer;

-- name: select_slow_queries_since
-- what each statement of this database did since a snapshot (differences of the counters)
WITH current_statements AS (
    SELECT statement.userid,
           statement.queryid,
           {toplevel} AS toplevel,
           statement.calls,
           statement.rows,
           statement.{total_time}::float8 AS total_ms,
           statement.shared_blks_hit,
           statement.shared_blks_read,
           (statement.{read_time} + statement.{write_time})::float8 AS io_ms,
           statement.query,
           regexp_replace(statement.query, '^(\s|/\*([^*]|\*+[^*/])*\*+/|--[^\n]*(\n|$))*', '')
               !~* '^(select|insert|update|delete|merge|with|values|table)\M|^\(' AS is_utility
      FROM {statements} AS statement
     WHERE statement.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
),
differences AS (
    -- a statement whose counters went down was reset (or evicted and seen again) after the
    -- snapshot: its current totals are all that happened in the window that we can know
    SELECT current_statements.userid,
           current_statements.queryid,
           current_statements.toplevel,
           CASE WHEN before.calls IS NULL OR current_statements.calls < before.calls
                THEN current_statements.calls
                ELSE current_statements.calls - before.calls END AS calls,
           CASE WHEN before.calls IS NULL OR current_statements.calls < before.calls
                THEN current_statements.rows
                ELSE current_statements.rows - before.rows END AS rows,
           CASE WHEN before.calls IS NULL OR current_statements.calls < before.calls
                THEN current_statements.total_ms
                ELSE current_statements.total_ms - before.total_time_ms END AS total_ms,
           CASE WHEN before.calls IS NULL OR current_statements.calls < before.calls
                THEN current_statements.shared_blks_hit
                ELSE current_statements.shared_blks_hit - before.shared_blks_hit END AS shared_blks_hit,
           CASE WHEN before.calls IS NULL OR current_statements.calls < before.calls
                THEN current_statements.shared_blks_read
                ELSE current_statements.shared_blks_read - before.shared_blks_read END AS shared_blks_read,
           current_statements.io_ms,
           current_statements.query,
           current_statements.is_utility
      FROM current_statements
      LEFT JOIN kronos_statement_snapshots AS before
             ON before.snapshot_id = %(snapshot_id)s::bigint
            AND before.userid = current_statements.userid
            AND before.queryid = current_statements.queryid
            AND before.toplevel = current_statements.toplevel
)
SELECT coalesce(pg_get_userbyid(userid)::text, userid::text) AS role_name,
       queryid,
       toplevel,
       calls,
       rows,
       total_ms,
       (total_ms / calls)::float8 AS mean_ms,
       NULL::float8 AS stddev_ms,
       shared_blks_hit,
       shared_blks_read,
       NULL::float8 AS io_ms,
       CASE WHEN shared_blks_hit + shared_blks_read > 0
            THEN 100.0 * shared_blks_hit / (shared_blks_hit + shared_blks_read) END::float8 AS hit_percent,
       (100.0 * total_ms / nullif(sum(total_ms) FILTER (WHERE toplevel) OVER (), 0))::float8 AS percent_of_total,
       coalesce(query, '') AS query
  FROM differences
 WHERE calls >= greatest(%(minimum_calls)s::bigint, 1)
   AND (%(include_utility)s::boolean OR NOT is_utility)
   AND (NOT %(toplevel_only)s::boolean OR toplevel)
 ORDER BY CASE %(order)s::text
              WHEN 'total' THEN total_ms
              WHEN 'mean' THEN total_ms / calls
              WHEN 'calls' THEN calls::float8
              WHEN 'io' THEN shared_blks_read::float8
          END DESC NULLS LAST,
          queryid
 LIMIT %(limit)s::integer;

-- name: reset_statements
-- resets pg_stat_statements for this database only (every role, every statement)
SELECT {reset}(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0);
