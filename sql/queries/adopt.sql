-- `kronos-db adopt`: read what a database holds before kronos-db takes it over, find the rows
-- that break what head adds, and the statements that bring it there without a long lock.
-- Everything is read in current_schema(), where the services (and the migrations) create the
-- Kronos tables. The DDL that reaches revision 0010 is in adopt_target.sql.
--
-- A rule is a boolean expression over the table aliased `t`: true for a row head would refuse.
-- A fix is the SET list of an UPDATE that makes such a row acceptable, with the expression that
-- says which rows it can fix. The code wraps them in batched statements that keep a
-- copy of every row they change or move in kronos_quarantine.

-- name: select_adoption_tables
-- each Kronos table that exists: kind, owner, size and the statistics the estimates use
SELECT c.relname AS name,
       c.oid::bigint AS oid,
       c.relkind::text AS kind,
       pg_get_userbyid(c.relowner)::text AS owner,
       greatest(c.reltuples, 0)::bigint AS row_estimate,
       pg_total_relation_size(c.oid) AS total_bytes,
       coalesce((SELECT d.relname::text
                   FROM pg_partitioned_table AS pt
                   JOIN pg_class AS d ON d.oid = pt.partdefid
                  WHERE pt.partrelid = c.oid), '') AS default_partition,
       c.reltuples >= 0 AS analyzed,
       coalesce(obj_description(c.oid, 'pg_class'), '') AS comment
  FROM unnest(%(tables)s::text[]) AS wanted (name)
  JOIN pg_class AS c ON c.relname = wanted.name
                    AND c.relnamespace = current_schema()::regnamespace
 WHERE c.relkind IN ('r', 'p');

-- name: select_adoption_columns
-- the columns of those tables: type, nullability, default, identity
SELECT c.relname AS table_name,
       a.attname AS name,
       format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null,
       coalesce(pg_get_expr(d.adbin, d.adrelid), '') AS default_expression,
       a.attidentity::text AS identity,
       coalesce(col_description(c.oid, a.attnum), '') AS comment
  FROM pg_class AS c
  JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = current_schema()::regnamespace
   AND c.relname = ANY(%(tables)s::text[])
 ORDER BY c.relname, a.attnum;

-- name: select_adoption_constraints
-- the constraints of those tables, with whether they are validated and what a FK does on delete
SELECT c.relname AS table_name,
       con.conname AS name,
       con.contype::text AS kind,
       con.convalidated AS validated,
       pg_get_constraintdef(con.oid) AS definition,
       con.confdeltype::text AS on_delete
  FROM pg_constraint AS con
  JOIN pg_class AS c ON c.oid = con.conrelid
 WHERE c.relnamespace = current_schema()::regnamespace
   AND c.relname = ANY(%(tables)s::text[])
 ORDER BY c.relname, con.conname;

-- name: select_adoption_indexes
-- the indexes of those tables; an invalid one is the leftover of an interrupted concurrent build
SELECT c.relname AS table_name,
       ic.relname AS name,
       i.indisvalid AS valid,
       i.indisunique AS is_unique,
       pg_get_indexdef(i.indexrelid) AS definition
  FROM pg_index AS i
  JOIN pg_class AS c ON c.oid = i.indrelid
  JOIN pg_class AS ic ON ic.oid = i.indexrelid
 WHERE c.relnamespace = current_schema()::regnamespace
   AND c.relname = ANY(%(tables)s::text[])
 ORDER BY ic.relname;

-- name: select_adoption_triggers
-- the triggers of those tables (not the internal ones that enforce foreign keys)
SELECT c.relname AS table_name, t.tgname AS name
  FROM pg_trigger AS t
  JOIN pg_class AS c ON c.oid = t.tgrelid
 WHERE c.relnamespace = current_schema()::regnamespace
   AND c.relname = ANY(%(tables)s::text[])
   AND NOT t.tgisinternal
 ORDER BY c.relname, t.tgname;

-- name: select_adoption_functions
-- the functions of the schema, by name
SELECT p.proname AS name
  FROM pg_proc AS p
 WHERE p.pronamespace = current_schema()::regnamespace
 ORDER BY p.proname;

-- name: select_adoption_sequences
-- every sequence of the schema: the column that owns it, its type and where it stands
SELECT s.relname AS name,
       coalesce(owner.relname::text, '') AS owned_by_table,
       coalesce(a.attname::text, '') AS owned_by_column,
       coalesce(d.deptype::text, '') AS dependency,
       format_type(seq.seqtypid, NULL) AS data_type,
       ps.last_value
  FROM pg_class AS s
  JOIN pg_sequence AS seq ON seq.seqrelid = s.oid
  LEFT JOIN pg_sequences AS ps ON ps.schemaname = current_schema() AND ps.sequencename = s.relname
  LEFT JOIN pg_depend AS d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  LEFT JOIN pg_class AS owner ON owner.oid = d.refobjid
  LEFT JOIN pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE s.relkind = 'S'
   AND s.relnamespace = current_schema()::regnamespace
 ORDER BY s.relname;

-- name: select_relation_grants
-- the privileges granted on a table or sequence (the owner's own are implicit), one per row;
-- grantee '' is PUBLIC
SELECT CASE WHEN acl.grantee = 0 THEN '' ELSE pg_get_userbyid(acl.grantee)::text END AS grantee,
       acl.privilege_type,
       acl.is_grantable
  FROM pg_class AS c
 CROSS JOIN LATERAL aclexplode(c.relacl) AS acl
 WHERE c.relnamespace = current_schema()::regnamespace
   AND c.relname = %(name)s::text
   AND acl.grantee <> c.relowner
 ORDER BY 1, 2;

-- name: select_column_grants
-- the privileges granted on one column, one per row; grantee '' is PUBLIC
SELECT CASE WHEN acl.grantee = 0 THEN '' ELSE pg_get_userbyid(acl.grantee)::text END AS grantee,
       acl.privilege_type,
       acl.is_grantable
  FROM pg_class AS c
  JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = %(column)s::text
 CROSS JOIN LATERAL aclexplode(a.attacl) AS acl
 WHERE c.relnamespace = current_schema()::regnamespace
   AND c.relname = %(table)s::text
 ORDER BY 1, 2;

-- name: select_dependent_objects
-- what depends on a table and would block or outlive its conversion: views, foreign keys from
-- other tables, publications, row-level security policies, rules
SELECT 'view' AS kind, v.relname::text AS name
  FROM pg_depend AS d
  JOIN pg_rewrite AS r ON r.oid = d.objid
  JOIN pg_class AS v ON v.oid = r.ev_class
 WHERE d.classid = 'pg_rewrite'::regclass
   AND d.refobjid = to_regclass(%(table)s::text)
   AND v.oid <> d.refobjid
UNION
SELECT 'foreign key', con.conname || ' on ' || con.conrelid::regclass::text
  FROM pg_constraint AS con
 WHERE con.contype = 'f'
   AND con.confrelid = to_regclass(%(table)s::text)
   AND con.conrelid <> con.confrelid
UNION
SELECT 'publication', p.pubname::text
  FROM pg_publication_rel AS pr
  JOIN pg_publication AS p ON p.oid = pr.prpubid
 WHERE pr.prrelid = to_regclass(%(table)s::text)
UNION
SELECT 'policy', pol.polname::text
  FROM pg_policy AS pol
 WHERE pol.polrelid = to_regclass(%(table)s::text)
ORDER BY 1, 2;

-- name: select_referencing_keys
-- the single-column foreign keys that point at a table: who would be left dangling by a delete
SELECT child.relname AS table_name,
       a.attname AS column_name,
       con.conname AS constraint_name
  FROM pg_constraint AS con
  JOIN pg_class AS child ON child.oid = con.conrelid
  JOIN pg_attribute AS a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
 WHERE con.contype = 'f'
   AND con.confrelid = to_regclass(%(table)s::text)
   AND cardinality(con.conkey) = 1
   AND con.conrelid <> con.confrelid
 ORDER BY child.relname, a.attname;

-- name: select_database_facts
-- what the adoption needs to know of the database as a whole
SELECT current_setting('TimeZone') AS session_time_zone,
       coalesce((SELECT split_part(setting, '=', 2)
                   FROM pg_db_role_setting AS s
                  CROSS JOIN LATERAL unnest(s.setconfig) AS setting
                  WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND s.setrole = 0
                    AND lower(split_part(setting, '=', 1)) = 'timezone'
                  LIMIT 1), '') AS database_time_zone,
       to_regclass('alembic_version') IS NOT NULL AS has_version_table,
       to_regclass('kronos_migrations') IS NOT NULL AS has_checksum_table,
       EXISTS (SELECT 1
                 FROM pg_namespace AS n
                CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS acl
                WHERE n.nspname = 'public' AND acl.grantee = 0 AND acl.privilege_type = 'CREATE')
           AS public_can_create,
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements')
           AS statements_available,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')
           AS statements_installed;

-- name: select_time_zone
-- the canonical name of a time zone, matched case-insensitively; no row when unknown
SELECT name
  FROM pg_timezone_names
 WHERE lower(name) = lower(%(zone)s::text)
 ORDER BY name = %(zone)s::text DESC
 LIMIT 1;

-- name: select_recorded_checksums
-- the revisions kronos-db recorded as applied (empty when the table is missing)
SELECT revision FROM kronos_migrations ORDER BY revision;


-- name: violation_roles_permissions_no_null
-- a NULL inside the permissions array
array_position(t.permissions, NULL) IS NOT NULL

-- name: fix_roles_permissions_no_null
-- drop the NULL elements: a NULL was never a permission
permissions = array_remove(t.permissions, NULL)

-- name: violation_users_password_hash_argon2
-- a password hash that is not an Argon2 PHC string (bcrypt, plain text…)
NOT (t.password_hash ~ '^\$argon2(id|i|d)\$(v=[0-9]+\$)?m=[0-9]+,t=[0-9]+,p=[0-9]+(,[a-z]+=[A-Za-z0-9+/]*)*\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$')

-- name: violation_sessions_token_excl
-- a session whose token a newer session (higher id) also has
EXISTS (SELECT 1 FROM sessions AS newer WHERE newer.token = t.token AND newer.id > t.id)

-- name: violation_logs_timestamp_not_null
-- a log line without a time
t."timestamp" IS NULL

-- name: fix_logs_timestamp_not_null
-- the time of the nearest earlier line (ids follow insertion order), else of the nearest later one
"timestamp" = coalesce(
    (SELECT before."timestamp" FROM logs AS before
      WHERE before.id < t.id AND before."timestamp" IS NOT NULL
      ORDER BY before.id DESC LIMIT 1),
    (SELECT after."timestamp" FROM logs AS after
      WHERE after.id > t.id AND after."timestamp" IS NOT NULL
      ORDER BY after.id LIMIT 1))

-- name: fixable_logs_timestamp_not_null
-- a line can take a neighbour's time when the table has a line with a time
EXISTS (SELECT 1 FROM logs AS other WHERE other."timestamp" IS NOT NULL)

-- name: violation_routes_method_check
-- a method that is not an upper-case HTTP token nor *
NOT (t.method ~ '^([A-Z][A-Z-]*|\*)$')

-- name: fix_routes_method_check
-- upper case, surrounding blanks removed: `get ` becomes `GET`
method = upper(btrim(t.method))

-- name: fixable_routes_method_check
-- only when the result is a method token
upper(btrim(t.method)) ~ '^([A-Z][A-Z-]*|\*)$'

-- name: violation_rate_limits_request_count_check
-- a negative request counter
t.request_count < 0

-- name: fix_rate_limits_request_count_check
-- a negative count is garbage: start the window again from 0
request_count = 0

-- name: violation_rate_limits_user_id_route_id_key
-- a counter of a (user, route) pair that has a newer counter (higher id)
EXISTS (SELECT 1 FROM rate_limits AS newer
         WHERE newer.user_id = t.user_id AND newer.route_id = t.route_id AND newer.id > t.id)

-- name: violation_message_queue_status_check
-- a status no consumer knows
t.status NOT IN ('pending', 'processing', 'processed', 'failed')

-- name: fix_message_queue_status_check
-- a known status written in another case keeps its meaning; anything else becomes failed, so
-- that nothing is delivered twice and a DBA can requeue it on purpose
status = CASE WHEN lower(btrim(t.status)) IN ('pending', 'processing', 'processed', 'failed')
              THEN lower(btrim(t.status)) ELSE 'failed' END

-- name: violation_message_queue_status_not_null
-- a message without a status: no consumer ever picks it up
t.status IS NULL

-- name: fix_message_queue_status_not_null
-- failed: it was never delivered, and delivering it now, late, must be a decision
status = 'failed'


-- name: select_violating_keys
-- the keys of the rows that break a rule, in key order
SELECT t.{key} AS key
  FROM {table} AS t
 WHERE {violation}
 ORDER BY t.{key};

-- name: select_violation_sample
-- a few of those rows, whole, for the plan; and how many a fix can repair
SELECT to_jsonb(t) AS row_data, ({fixable}) AS fixable
  FROM {table} AS t
 WHERE t.{key} = ANY(%(keys)s)
 ORDER BY t.{key};

-- name: count_fixable
-- how many of the given rows the fix can repair
SELECT count(*)
  FROM {table} AS t
 WHERE t.{key} = ANY(%(keys)s) AND {violation} AND ({fixable});

-- name: fix_rows
-- one batch of a fix: the rows still breaking the rule are changed, and their old version kept
WITH old AS (
    SELECT t.{key} AS key, to_jsonb(t) AS row_data
      FROM {table} AS t
     WHERE t.{key} = ANY(%(keys)s) AND {violation} AND ({fixable})
       FOR UPDATE
),
fixed AS (
    UPDATE {table} AS t
       SET {assignments}
      FROM old
     WHERE t.{key} = old.key
 RETURNING t.{key} AS key
)
INSERT INTO kronos_quarantine (batch, depth, table_name, rule, action, row_data, timestamps_in)
SELECT %(batch)s::uuid, 0, %(table_name)s::text, %(rule)s::text, 'fixed', old.row_data,
       %(timestamps_in)s::text
  FROM old
  JOIN fixed USING (key);

-- name: select_rows_to_move
-- the rows of a batch still to move, locked so that nobody changes them meanwhile
SELECT t.{key} AS key
  FROM {table} AS t
 WHERE t.{column} = ANY(%(keys)s) AND {condition}
   FOR UPDATE;

-- name: move_rows
-- move rows into kronos_quarantine, each in its batch: deleted from their table, kept whole
WITH target AS (
    SELECT * FROM unnest(%(keys)s, %(batches)s::uuid[]) AS target (key, batch)
),
moved AS (
    DELETE FROM {table} AS t
     USING target
     WHERE t.{key} = target.key
 RETURNING target.batch AS kronos_batch, t.*
)
INSERT INTO kronos_quarantine (batch, depth, table_name, rule, action, row_data, timestamps_in)
SELECT moved.kronos_batch, %(depth)s::smallint, %(table_name)s::text, %(rule)s::text,
       %(action)s::text, to_jsonb(moved) - 'kronos_batch', %(timestamps_in)s::text
  FROM moved;

-- name: merge_rate_limit_counters
-- the newest counter of each (user, route) pair takes the requests of the older ones it
-- absorbs; its old version is kept
WITH absorbed AS (
    SELECT newest.id, sum(old.request_count) AS requests, max(old.last_request) AS last_request
      FROM rate_limits AS old
      JOIN LATERAL (SELECT n.id FROM rate_limits AS n
                     WHERE n.user_id = old.user_id AND n.route_id = old.route_id
                     ORDER BY n.id DESC LIMIT 1) AS newest ON newest.id <> old.id
     WHERE old.id = ANY(%(keys)s)
     GROUP BY newest.id
),
old AS (
    SELECT t.id, to_jsonb(t) AS row_data
      FROM rate_limits AS t
      JOIN absorbed USING (id)
       FOR UPDATE OF t
),
merged AS (
    -- joined with `old`, so that the old versions are read (and locked) before the update
    UPDATE rate_limits AS t
       SET request_count = greatest(coalesce(t.request_count, 0) + coalesce(absorbed.requests, 0), 0),
           last_request = greatest(t.last_request, absorbed.last_request)
      FROM absorbed
      JOIN old USING (id)
     WHERE t.id = absorbed.id
 RETURNING t.id
)
INSERT INTO kronos_quarantine (batch, depth, table_name, rule, action, row_data, timestamps_in)
SELECT %(batch)s::uuid, 0, 'rate_limits', %(rule)s::text, 'fixed', old.row_data,
       %(timestamps_in)s::text
  FROM old
  JOIN merged USING (id);


-- name: create_quarantine
-- kronos-db's own table for the rows adopt changed or moved out (created on first use)
CREATE TABLE IF NOT EXISTS kronos_quarantine (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- rows moved together: a row that broke a rule and the rows that referenced it
    batch         uuid NOT NULL,
    -- 0: the row that broke the rule; 1: a row that referenced it; 2: a row referencing that…
    depth         smallint NOT NULL DEFAULT 0,
    table_name    text NOT NULL,
    rule          text NOT NULL,
    -- quarantined: moved out, restorable; fixed: the row before its fix, for the record;
    -- merged: a duplicate whose counts went into the newest row, for the record
    action        text NOT NULL CHECK (action IN ('quarantined', 'fixed', 'merged')),
    row_data      jsonb NOT NULL,
    -- the time zone the naive timestamps of row_data were written in
    timestamps_in text NOT NULL,
    moved_at      timestamptz NOT NULL DEFAULT now(),
    moved_by      name NOT NULL DEFAULT current_user
);

-- name: comment_quarantine
-- say whose table it is
COMMENT ON TABLE kronos_quarantine IS
    'kronos-db: rows `kronos-db adopt` moved out (restorable with `kronos-db quarantine restore`) or changed (their old version)';

-- name: select_quarantine
-- what the quarantine holds, oldest first
SELECT id, batch::text AS batch, depth, table_name, rule, action, row_data, timestamps_in,
       moved_at, moved_by::text AS moved_by
  FROM kronos_quarantine
 WHERE (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
 ORDER BY id;

-- name: select_quarantine_batch
-- every row of one batch, parents first (restored in that order)
SELECT id, table_name, row_data, timestamps_in
  FROM kronos_quarantine
 WHERE batch = %(batch)s::uuid AND action = 'quarantined'
 ORDER BY depth, id
   FOR UPDATE;

-- name: restore_row
-- put one quarantined row back, with the columns it has (the others take their defaults)
INSERT INTO {table} ({columns})
SELECT {columns} FROM jsonb_populate_record(NULL::{table}, %(row_data)s::jsonb);

-- name: delete_quarantined
-- forget restored rows
DELETE FROM kronos_quarantine WHERE id = ANY(%(ids)s::bigint[]);

-- name: select_referencing_rows
-- the rows of a table that reference some keys through a foreign key column, with the key each
-- references
SELECT {key} AS key, {column} AS referenced
  FROM {table}
 WHERE {column} = ANY(%(keys)s);

-- name: select_quarantine_exists
-- whether kronos_quarantine exists yet
SELECT to_regclass('kronos_quarantine') IS NOT NULL;

-- name: select_table_columns
-- the column names of a table (a restored row fills those it has)
SELECT attname::text
  FROM pg_attribute
 WHERE attrelid = to_regclass(%(table)s::text) AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;


-- name: select_first_keys
-- the first batch of keys of a table, in key order
SELECT {key} FROM {table} ORDER BY {key} LIMIT %(size)s;

-- name: select_next_keys
-- the next batch of keys after the last one done
SELECT {key} FROM {table} WHERE {key} > %(after)s ORDER BY {key} LIMIT %(size)s;

-- name: fill_shadow_columns
-- one batch: the shadow columns take their value from the columns they replace
UPDATE {table} SET {assignments} WHERE {key} = ANY(%(keys)s);

-- name: set_session_time_zone
-- the time zone naive timestamps are read in, for this transaction only
SELECT set_config('TimeZone', %(zone)s::text, true);

-- name: set_step_timeouts
-- the lock and statement timeouts of one step, for this transaction only
SELECT set_config('lock_timeout', %(lock_timeout)s::text, true),
       set_config('statement_timeout', %(statement_timeout)s::text, true);

-- name: set_session_timeouts
-- the same, for statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY)
SELECT set_config('lock_timeout', %(lock_timeout)s::text, false),
       set_config('statement_timeout', %(statement_timeout)s::text, false);

-- name: reset_session_timeouts
-- back to the session's defaults once such a statement is done
RESET lock_timeout;
RESET statement_timeout;
