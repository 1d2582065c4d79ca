-- `kronos-db report snapshot`: statement and table statistics kept in kronos-db's own tables,
-- so that reports can show what changed over a window instead of totals since a reset.

-- name: insert_snapshot
-- a new snapshot row; returns its id
INSERT INTO kronos_stat_snapshots (taken_at, statements_reset, tables_reset)
VALUES (%(taken_at)s::timestamptz,
        %(statements_reset)s::timestamptz,
        (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()))
RETURNING id;

-- name: insert_statement_snapshots
-- copies this database's pg_stat_statements counters into the snapshot
INSERT INTO kronos_statement_snapshots
       (snapshot_id, userid, queryid, toplevel, calls, total_time_ms, rows,
        shared_blks_hit, shared_blks_read, query)
SELECT %(snapshot_id)s::bigint,
       statement.userid,
       statement.queryid,
       {toplevel},
       sum(statement.calls),
       sum(statement.{total_time}),
       sum(statement.rows),
       sum(statement.shared_blks_hit),
       sum(statement.shared_blks_read),
       min(statement.query)
  FROM {statements} AS statement
 WHERE statement.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND statement.queryid IS NOT NULL
 GROUP BY statement.userid, statement.queryid, {toplevel};

-- name: insert_table_snapshots
-- copies every user table's size and counters into the snapshot
INSERT INTO kronos_table_snapshots
       (snapshot_id, schema_name, table_name, total_bytes, live_tuples, dead_tuples,
        seq_scans, index_scans, inserted, updated, deleted)
SELECT %(snapshot_id)s::bigint,
       stat.schemaname,
       stat.relname,
       pg_total_relation_size(stat.relid),
       stat.n_live_tup,
       stat.n_dead_tup,
       coalesce(stat.seq_scan, 0),
       coalesce(stat.idx_scan, 0),
       stat.n_tup_ins,
       stat.n_tup_upd,
       stat.n_tup_del
  FROM pg_stat_user_tables AS stat
 WHERE stat.schemaname NOT LIKE 'pg\_temp%%';

-- name: delete_old_snapshots
-- retention: drops snapshots older than the cut-off (their rows go with them)
DELETE FROM kronos_stat_snapshots WHERE taken_at < %(before)s::timestamptz;

-- name: select_snapshot_before
-- the newest snapshot taken at or before a moment (the start of a window), else the oldest
SELECT id, taken_at, statements_reset, tables_reset
  FROM kronos_stat_snapshots
 ORDER BY taken_at <= %(at)s::timestamptz DESC,
          CASE WHEN taken_at <= %(at)s::timestamptz THEN taken_at END DESC,
          taken_at
 LIMIT 1;

-- name: select_table_growth
-- how much each table grew (bytes, rows) since a snapshot
SELECT stat.schemaname::text AS schema_name,
       stat.relname::text AS table_name,
       pg_total_relation_size(stat.relid) AS total_bytes,
       pg_total_relation_size(stat.relid) - before.total_bytes AS growth_bytes,
       stat.n_live_tup AS live_tuples,
       stat.n_live_tup - before.live_tuples AS growth_tuples,
       before.total_bytes IS NULL AS new_since_snapshot
  FROM pg_stat_user_tables AS stat
  LEFT JOIN kronos_table_snapshots AS before
         ON before.snapshot_id = %(snapshot_id)s::bigint
        AND before.schema_name = stat.schemaname
        AND before.table_name = stat.relname
 WHERE stat.schemaname NOT LIKE 'pg\_temp%%'
 ORDER BY coalesce(pg_total_relation_size(stat.relid) - before.total_bytes,
                   pg_total_relation_size(stat.relid)) DESC,
          stat.schemaname, stat.relname
 LIMIT %(limit)s::integer;
