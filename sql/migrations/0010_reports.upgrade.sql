-- reports: pg_stat_statements when the server offers it, and the tables `kronos-db report
-- snapshot` fills so that reports can show what changed over a window.

-- The slow-queries report reads pg_stat_statements. A managed server that does not ship it
-- must still migrate: the reports then say how to enable it instead of failing.
-- (CREATE EXTENSION needs the library in shared_preload_libraries only to collect, not to
-- create; the reports check both.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements') THEN
        CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
    ELSE
        RAISE NOTICE 'pg_stat_statements is not available on this server: '
                     'the slow-queries report will say how to enable it';
    END IF;
END
$$;

-- one row per `kronos-db report snapshot`
CREATE TABLE kronos_stat_snapshots (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    taken_at           timestamptz NOT NULL DEFAULT now(),
    -- pg_stat_statements_info.stats_reset when the snapshot was taken: a later reset makes
    -- differences against this snapshot meaningless, and the reports say so
    statements_reset   timestamptz,
    -- pg_stat_database.stats_reset of this database, for the table statistics
    tables_reset       timestamptz
);

COMMENT ON TABLE kronos_stat_snapshots IS
    'kronos-db: one row per `report snapshot` (statement and table statistics at a moment)';

-- "the newest snapshot taken before now - window" and retention both read by time
CREATE INDEX kronos_stat_snapshots_taken_at_idx ON kronos_stat_snapshots (taken_at);

-- pg_stat_statements counters of this database at the snapshot (cumulative values)
CREATE TABLE kronos_statement_snapshots (
    snapshot_id         bigint NOT NULL REFERENCES kronos_stat_snapshots (id) ON DELETE CASCADE,
    userid              oid NOT NULL,
    queryid             bigint NOT NULL,
    toplevel            boolean NOT NULL DEFAULT true,
    calls               bigint NOT NULL,
    total_time_ms       double precision NOT NULL,
    rows                bigint NOT NULL,
    shared_blks_hit     bigint NOT NULL,
    shared_blks_read    bigint NOT NULL,
    query               text NOT NULL,
    PRIMARY KEY (snapshot_id, userid, queryid, toplevel)
);

COMMENT ON TABLE kronos_statement_snapshots IS
    'kronos-db: pg_stat_statements counters of this database at a snapshot';

-- table sizes and statistics at the snapshot (growth reports)
CREATE TABLE kronos_table_snapshots (
    snapshot_id   bigint NOT NULL REFERENCES kronos_stat_snapshots (id) ON DELETE CASCADE,
    schema_name   name NOT NULL,
    table_name    name NOT NULL,
    total_bytes   bigint NOT NULL,
    live_tuples   bigint NOT NULL,
    dead_tuples   bigint NOT NULL,
    seq_scans     bigint NOT NULL,
    index_scans   bigint NOT NULL,
    inserted      bigint NOT NULL,
    updated       bigint NOT NULL,
    deleted       bigint NOT NULL,
    PRIMARY KEY (snapshot_id, schema_name, table_name)
);

COMMENT ON TABLE kronos_table_snapshots IS
    'kronos-db: table sizes and statistics at a snapshot';
