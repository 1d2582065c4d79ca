-- What a step did, for the log lines of -v.

-- name: select_locks_held
-- the locks this session holds now (in a step's transaction, before its commit) on tables,
-- each table's strongest, grouped by mode, strongest first; ACCESS SHARE (every read takes it),
-- indexes, sequences, TOAST, the catalogs and kronos-db's own bookkeeping tables are left out
WITH ranked AS (
    SELECT l.relation::regclass::text AS relation,
           l.mode,
           array_position(ARRAY['AccessExclusiveLock', 'ExclusiveLock',
                                'ShareRowExclusiveLock', 'ShareLock',
                                'ShareUpdateExclusiveLock', 'RowExclusiveLock',
                                'RowShareLock'], l.mode::text) AS strength
      FROM pg_locks AS l
      JOIN pg_class AS c ON c.oid = l.relation
     WHERE l.pid = pg_backend_pid()
       AND l.locktype = 'relation'
       AND l.granted
       AND l.mode <> 'AccessShareLock'
       AND c.relkind IN ('r', 'p', 'm', 'f')
       AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'pg_toast'::regnamespace)
       AND c.relname NOT IN ('alembic_version', 'kronos_migrations',
                             'kronos_migrations_progress', 'kronos_leases')
),
strongest AS (
    SELECT DISTINCT ON (relation) relation, mode, strength
      FROM ranked
     ORDER BY relation, strength
)
SELECT mode,
       string_agg(relation, ', ' ORDER BY relation) AS relations
  FROM strongest
 GROUP BY mode, strength
 ORDER BY strength;
