-- The checksum of every applied revision's upgrade SQL, kept beside Alembic's version table so
-- that an applied migration edited afterwards is caught before anything else runs.

-- name: create_migration_checksums
-- the table, created on first use (runs under the migration lock)
CREATE TABLE IF NOT EXISTS kronos_migrations (
    revision   varchar(32) PRIMARY KEY,
    checksum   char(64) NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by name NOT NULL DEFAULT current_user
);

-- name: select_migration_checksums
-- revision, checksum and when it was applied, for every applied revision
SELECT revision, checksum, applied_at
  FROM kronos_migrations
 ORDER BY revision;

-- name: select_tool_tables
-- whether Alembic's version table and the checksum table exist yet
SELECT to_regclass('alembic_version') IS NOT NULL AS has_versions,
       to_regclass('kronos_migrations') IS NOT NULL AS has_checksums;

-- name: select_current_revisions
-- the revisions the database is at (several only with branches)
SELECT version_num FROM alembic_version ORDER BY version_num;

-- name: upsert_migration_checksum
-- record (or re-record, after a downgrade and upgrade) one applied revision
INSERT INTO kronos_migrations (revision, checksum)
VALUES (%(revision)s::varchar, %(checksum)s::char(64))
ON CONFLICT (revision) DO UPDATE
   SET checksum = excluded.checksum,
       applied_at = now(),
       applied_by = current_user;

-- name: delete_migration_checksum
-- forget a revision that was downgraded
DELETE FROM kronos_migrations WHERE revision = %(revision)s::varchar;

-- name: set_migration_timeouts
-- the session's timeouts for migration statements
SELECT set_config('lock_timeout', %(lock_timeout)s::text, false),
       set_config('statement_timeout', %(statement_timeout)s::text, false);
