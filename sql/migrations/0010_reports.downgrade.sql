-- undo: reports: pg_stat_statements when available, and the snapshot tables
--
-- The pg_stat_statements extension is left in place on purpose: it is cluster-level
-- monitoring that a DBA or another tool may rely on (it may even have existed before this
-- migration ran, and nothing records whether it did). Dropping it would silently blind
-- their monitoring; keeping it costs nothing. Drop it by hand if you really want it gone:
--     DROP EXTENSION pg_stat_statements;
DROP TABLE kronos_table_snapshots;
DROP TABLE kronos_statement_snapshots;
DROP TABLE kronos_stat_snapshots;
