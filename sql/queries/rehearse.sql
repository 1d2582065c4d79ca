-- `kronos-db migrate --rehearse`: copying a sample of the target into a scratch database, and
-- watching the pending revisions run there under a synthetic Kronos workload.

-- name: select_copy_tables
-- the tables holding rows (leaves: partitions rather than their parent), with their columns
-- as COPY needs them (no generated column) and the planner's row estimate
SELECT n.nspname AS schema_name,
       c.relname AS table_name,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns,
       greatest(c.reltuples, 0)::bigint AS estimated_rows
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                        AND a.attgenerated = ''
 WHERE c.relkind = 'r'
   AND c.relpersistence = 'p'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
 GROUP BY n.nspname, c.relname, c.reltuples
 ORDER BY n.nspname, c.relname;

-- name: select_foreign_keys
-- every foreign key: the referencing and referenced tables and columns, in key order
SELECT cn.nspname AS child_schema, child.relname AS child_table,
       array_agg(ca.attname::text ORDER BY k.ordinality) AS child_columns,
       pn.nspname AS parent_schema, parent.relname AS parent_table,
       array_agg(pa.attname::text ORDER BY k.ordinality) AS parent_columns
  FROM pg_constraint AS con
  JOIN pg_class AS child ON child.oid = con.conrelid
  JOIN pg_namespace AS cn ON cn.oid = child.relnamespace
  JOIN pg_class AS parent ON parent.oid = con.confrelid
  JOIN pg_namespace AS pn ON pn.oid = parent.relnamespace
 CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k (child_key, parent_key, ordinality)
  JOIN pg_attribute AS ca ON ca.attrelid = con.conrelid AND ca.attnum = k.child_key
  JOIN pg_attribute AS pa ON pa.attrelid = con.confrelid AND pa.attnum = k.parent_key
 WHERE con.contype = 'f'
   AND NOT child.relispartition
 GROUP BY con.oid, cn.nspname, child.relname, pn.nspname, parent.relname
 ORDER BY cn.nspname, child.relname, con.oid;

-- name: select_sequence_values
-- where every sequence stands (NULL: never used)
SELECT schemaname, sequencename, last_value
  FROM pg_sequences
 WHERE last_value IS NOT NULL;

-- name: set_sequence_value
-- put a sequence of the scratch copy where the target's stands
SELECT setval(format('%%I.%%I', %(schema)s::text, %(name)s::text)::regclass,
              %(value)s::bigint, true);

-- name: select_relfilenodes
-- the storage file of every table: a revision that changes one rewrote the table
SELECT c.oid::bigint AS oid, c.oid::regclass::text AS name, c.relfilenode::bigint AS relfilenode
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%';

-- name: select_migration_locks
-- the relation locks held or awaited in this database: by the migration (its application
-- name) and by the workload waiting behind them
SELECT a.application_name,
       l.pid,
       coalesce(l.relation::regclass::text, l.locktype) AS object,
       l.mode,
       l.granted
  FROM pg_locks AS l
  JOIN pg_stat_activity AS a ON a.pid = l.pid
 WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.locktype = 'relation'
   AND a.application_name IN (%(migration)s::text, %(workload)s::text)
   AND l.pid <> pg_backend_pid();

-- name: select_sample_keys
-- a few existing keys for the workload to look up and update
SELECT (SELECT coalesce(array_agg(id), '{}') FROM (SELECT id FROM users LIMIT 50) AS u) AS users,
       (SELECT coalesce(array_agg(id), '{}') FROM (SELECT id FROM routes LIMIT 50) AS r) AS routes,
       (SELECT coalesce(array_agg(token), '{}')
          FROM (SELECT token FROM sessions LIMIT 200) AS s) AS tokens;

-- name: seed_workload_rows
-- users, routes and sessions for the workload when the copy has none (scratch database only)
WITH new_users AS (
    INSERT INTO users (username, email, password_hash)
    SELECT 'rehearsal-' || i, 'rehearsal-' || i || '@example.invalid',
           '$argon2id$v=19$m=65536,t=3,p=4$cmVoZWFyc2Fs$cmVoZWFyc2FsLWhhc2g'
      FROM generate_series(1, 20) AS i
    ON CONFLICT DO NOTHING
    RETURNING id
), new_routes AS (
    INSERT INTO routes (path, service, method)
    SELECT '/rehearsal/' || i, 'rehearsal', 'GET' FROM generate_series(1, 10) AS i
    ON CONFLICT DO NOTHING
    RETURNING id
)
INSERT INTO sessions (user_id, token)
SELECT u.id, md5('rehearsal' || u.id || '-' || i)
  FROM new_users AS u CROSS JOIN generate_series(1, 5) AS i;
