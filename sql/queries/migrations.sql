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

-- name: set_lock_timeout
-- the session's lock_timeout, for one statement of a no-transaction revision
SELECT set_config('lock_timeout', %(lock_timeout)s::text, false);

-- name: create_migration_progress
-- the statements of a no-transaction revision already done, so that a run killed half-way
-- resumes after them (rows go when the revision is recorded applied)
CREATE TABLE IF NOT EXISTS kronos_migrations_progress (
    script      text NOT NULL,
    direction   text NOT NULL,
    statement   integer NOT NULL,
    sha256      char(64) NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (script, direction, statement)
);

-- name: select_migration_progress
-- the statements of one script and direction already done, with the checksum of each
SELECT statement, sha256
  FROM kronos_migrations_progress
 WHERE script = %(script)s::text
   AND direction = %(direction)s::text
 ORDER BY statement;

-- name: insert_migration_progress
-- one statement of a no-transaction revision done
INSERT INTO kronos_migrations_progress (script, direction, statement, sha256)
VALUES (%(script)s::text, %(direction)s::text, %(statement)s::integer, %(sha256)s::char(64))
ON CONFLICT (script, direction, statement) DO UPDATE
   SET sha256 = excluded.sha256,
       finished_at = now();

-- name: delete_migration_progress
-- forget a script's progress once its revision is recorded (in the same transaction)
DELETE FROM kronos_migrations_progress WHERE script = %(script)s::text;

-- name: select_partial_scripts
-- scripts of no-transaction revisions part-way done: how many statements, and when last
SELECT script, direction, count(*)::integer AS statements, max(finished_at) AS last_finished_at
  FROM kronos_migrations_progress
 GROUP BY script, direction
 ORDER BY script, direction;

-- name: select_invalid_index
-- schema, name and validity of an index given by (possibly qualified) name; no row if none
SELECT n.nspname, c.relname, NOT i.indisvalid AS invalid, i.indrelid
  FROM pg_index AS i
  JOIN pg_class AS c ON c.oid = i.indexrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE i.indexrelid = to_regclass(%(name)s::text);

-- name: select_relation
-- a table given by (possibly qualified) name: oid, schema, name, kind; no row if none
SELECT c.oid, n.nspname, c.relname, c.relkind::text AS relkind
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.oid = to_regclass(%(name)s::text);

-- name: select_index_in_schema
-- an index by schema and name: its oid, table and validity; no row if none
SELECT i.indexrelid, i.indrelid, i.indisvalid
  FROM pg_index AS i
  JOIN pg_class AS c ON c.oid = i.indexrelid
 WHERE c.relnamespace = %(schema)s::regnamespace
   AND c.relname = %(name)s::text;

-- name: select_partitions_without_index
-- the partitions of a partitioned table that have no index attached to the given parent index
SELECT p.oid, n.nspname, p.relname, p.relkind::text AS relkind
  FROM pg_inherits AS inh
  JOIN pg_class AS p ON p.oid = inh.inhrelid
  JOIN pg_namespace AS n ON n.oid = p.relnamespace
 WHERE inh.inhparent = %(table)s::oid
   AND NOT EXISTS (SELECT 1
                     FROM pg_inherits AS attached
                     JOIN pg_index AS child ON child.indexrelid = attached.inhrelid
                    WHERE attached.inhparent = %(index)s::oid
                      AND child.indrelid = p.oid)
 ORDER BY p.relname;

-- name: select_progress_table
-- whether the progress table of no-transaction revisions exists yet
SELECT to_regclass('kronos_migrations_progress') IS NOT NULL AS has_progress;

-- name: select_setting
-- the current value of one setting
SELECT current_setting(%(name)s::text) AS value;

-- name: set_session_setting
-- sets one setting for the session: only for a no-transaction revision, which runs on a session
-- of its own (never behind a transaction pooler), and always restored afterwards
SELECT set_config(%(name)s::text, %(value)s::text, false);

-- name: select_present_kronos_tables
-- which of the Kronos tables exist in the current schema, in the order given
SELECT wanted.name
  FROM unnest(%(tables)s::text[]) WITH ORDINALITY AS wanted (name, position)
 WHERE to_regclass(quote_ident(current_schema()) || '.' || quote_ident(wanted.name)) IS NOT NULL
 ORDER BY wanted.position;

-- name: select_drop_target
-- whether a table (and a column of it) a downgrade would drop exists now
SELECT to_regclass(%(table)s::text) IS NOT NULL AS table_exists,
       EXISTS (SELECT 1 FROM pg_attribute
                WHERE attrelid = to_regclass(%(table)s::text)
                  AND attname = %(column)s::text AND NOT attisdropped) AS column_exists;

-- name: count_table_rows
-- the rows of a table a downgrade would drop (its partitions included)
SELECT count(*) FROM {table};

-- name: count_column_values
-- the values of a column a downgrade would drop
SELECT count(*) FROM {table} WHERE {column} IS NOT NULL;

-- name: select_extensions_creatable
-- of the named extensions the server offers: installed here already, or creatable by this role
-- (a superuser; or a trusted extension and CREATE on the database)
SELECT extension.name,
       extension.installed_version IS NOT NULL AS installed,
       coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
       OR (coalesce((SELECT bool_or(version.trusted)
                       FROM pg_available_extension_versions AS version
                      WHERE version.name = extension.name
                        AND version.version = extension.default_version), false)
           AND has_database_privilege(current_database(), 'CREATE')) AS creatable
  FROM pg_available_extensions AS extension
 WHERE extension.name = ANY(%(names)s::text[]);
