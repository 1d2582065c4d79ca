-- Introspection for `kronos-db check`: the schema as (kind, name, attribute, value) facts.
-- Covers every user schema; leaves out extension members (they belong to the extension),
-- kronos_quarantine (rows `kronos-db adopt` kept aside, a table that exists only where it was
-- needed), kronos-db's own bookkeeping tables (made as it runs, whatever revision the database
-- is at: a database migrated by an older kronos-db may lack one a newer one adds) and the
-- partitions of a partitioned table themselves (created by rotation over time, under names
-- that change), but records each partitioned table's key and default partition, and whatever a
-- single partition has of its own (an index, a constraint or a trigger it does not inherit).
-- Owners and grantees are the role that migrates (the owner of alembic_version) written as
-- `the migrating role`, so that head built by one role compares with a database run by another.

-- name: select_schema_facts
-- one row per fact: object kind, qualified name, attribute, value
WITH namespaces AS (
    SELECT oid, nspname
      FROM pg_namespace
     WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
       AND nspname NOT LIKE 'pg\_temp\_%'
       AND nspname NOT LIKE 'pg\_toast\_temp\_%'
),
extension_members AS (
    SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
),
migrator AS (
    SELECT coalesce((SELECT relowner FROM pg_class WHERE oid = to_regclass('alembic_version')),
                    (SELECT datdba FROM pg_database WHERE datname = current_database())) AS oid
),
relations AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, c.relowner, c.relacl,
           c.reloptions, c.relrowsecurity, c.relforcerowsecurity,
           quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
      FROM pg_class AS c
      JOIN namespaces AS n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND NOT c.relispartition
       -- kronos-db's quarantine is data kept aside by `adopt`, created only when needed; the
       -- version, checksums, progress and leases are kronos-db's bookkeeping
       AND c.relname NOT IN ('kronos_quarantine', 'kronos_quarantine_id_seq', 'alembic_version',
                             'kronos_migrations', 'kronos_migrations_progress', 'kronos_leases')
       AND NOT EXISTS (SELECT 1 FROM extension_members AS e
                        WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid)
),
partitions AS (
    SELECT c.oid, n.nspname, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name,
           inh.inhparent AS parent
      FROM pg_class AS c
      JOIN namespaces AS n ON n.oid = c.relnamespace
      JOIN pg_inherits AS inh ON inh.inhrelid = c.oid
     WHERE c.relispartition
       AND c.relkind IN ('r', 'p')
),
functions AS (
    SELECT p.oid, p.proowner, p.proacl,
           quote_ident(n.nspname) || '.' || quote_ident(p.proname)
               || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS name
      FROM pg_proc AS p
      JOIN namespaces AS n ON n.oid = p.pronamespace
     WHERE p.prokind IN ('f', 'p')
       AND NOT EXISTS (SELECT 1 FROM extension_members AS e
                        WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid)
),
-- every privilege on tables, sequences, functions and schemas (the defaults written out when
-- none was granted), one row per object and grantee
privileges AS (
    SELECT 'table' AS kind, r.name, r.relowner AS owner,
           acl.grantee, acl.privilege_type, acl.is_grantable
      FROM relations AS r
     CROSS JOIN LATERAL aclexplode(coalesce(
               r.relacl,
               acldefault(CASE WHEN r.relkind = 'S' THEN 's' ELSE 'r' END::"char", r.relowner)
           )) AS acl
    UNION ALL
    SELECT 'function', f.name, f.proowner, acl.grantee, acl.privilege_type, acl.is_grantable
      FROM functions AS f
     CROSS JOIN LATERAL aclexplode(coalesce(f.proacl, acldefault('f'::"char", f.proowner))) AS acl
    UNION ALL
    SELECT 'schema', quote_ident(ns.nspname), ns.nspowner,
           acl.grantee, acl.privilege_type, acl.is_grantable
      FROM pg_namespace AS ns
      JOIN namespaces AS n ON n.oid = ns.oid
     CROSS JOIN LATERAL aclexplode(coalesce(ns.nspacl, acldefault('n'::"char", ns.nspowner))) AS acl
     WHERE NOT EXISTS (SELECT 1 FROM pg_extension AS x
                        WHERE x.extnamespace = ns.oid AND ns.nspname <> 'public')
)
SELECT 'table' AS kind, r.name, 'kind' AS attribute,
       CASE r.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
                      WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                      WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' END AS value
  FROM relations AS r
UNION ALL
SELECT 'table', r.name, 'persistence',
       CASE r.relpersistence WHEN 'p' THEN 'logged' WHEN 'u' THEN 'unlogged' ELSE 'temporary' END
  FROM relations AS r
UNION ALL
SELECT 'table', r.name, 'partition key', pg_get_partkeydef(r.oid)
  FROM relations AS r
 WHERE r.relkind = 'p'
UNION ALL
SELECT 'table', r.name, 'default partition',
       coalesce((SELECT quote_ident(d.relname) FROM pg_class AS d WHERE d.oid = pt.partdefid), 'none')
  FROM relations AS r
  JOIN pg_partitioned_table AS pt ON pt.partrelid = r.oid
UNION ALL
SELECT 'table', r.name, 'owned by', owner.name
  FROM relations AS r
  JOIN pg_depend AS d ON d.classid = 'pg_class'::regclass AND d.objid = r.oid
                     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  JOIN relations AS owner ON owner.oid = d.refobjid
 WHERE r.relkind = 'S'
UNION ALL
SELECT 'table', r.name, 'view definition', pg_get_viewdef(r.oid)
  FROM relations AS r
 WHERE r.relkind IN ('v', 'm')
UNION ALL
SELECT 'table', r.name, 'owner',
       CASE WHEN r.relowner = (SELECT oid FROM migrator) THEN 'the migrating role'
            ELSE pg_get_userbyid(r.relowner) END
  FROM relations AS r
UNION ALL
SELECT 'table', r.name, 'storage parameters',
       coalesce((SELECT string_agg(option, ', ' ORDER BY option) FROM unnest(r.reloptions) AS option),
                'none')
  FROM relations AS r
 WHERE r.relkind IN ('r', 'p', 'm')
UNION ALL
SELECT 'table', r.name, 'row level security',
       CASE WHEN r.relforcerowsecurity THEN 'enabled, forced for the owner'
            WHEN r.relrowsecurity THEN 'enabled' ELSE 'disabled' END
  FROM relations AS r
 WHERE r.relkind IN ('r', 'p')
UNION ALL
SELECT p.kind, p.name,
       -- the owner's own privileges are whoever owns it (its owner is a fact of its own)
       'privileges of ' || CASE WHEN p.grantee = 0 THEN 'PUBLIC'
                                WHEN p.grantee = p.owner THEN 'the owner'
                                WHEN p.grantee = (SELECT oid FROM migrator) THEN 'the migrating role'
                                ELSE pg_get_userbyid(p.grantee) END,
       string_agg(p.privilege_type || CASE WHEN p.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END,
                  ', ' ORDER BY p.privilege_type)
  FROM privileges AS p
 GROUP BY p.kind, p.name, p.grantee, p.owner
UNION ALL
SELECT 'policy', r.name || '.' || quote_ident(pol.polname), property.attribute, property.value
  FROM pg_policy AS pol
  JOIN relations AS r ON r.oid = pol.polrelid
 CROSS JOIN LATERAL (VALUES
        ('command', CASE pol.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
                                    WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END),
        ('kind', CASE WHEN pol.polpermissive THEN 'permissive' ELSE 'restrictive' END),
        ('roles', (SELECT string_agg(CASE WHEN role = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(role) END,
                                     ', ' ORDER BY 1)
                     FROM unnest(pol.polroles) AS role)),
        ('using', coalesce(pg_get_expr(pol.polqual, pol.polrelid), 'none')),
        ('with check', coalesce(pg_get_expr(pol.polwithcheck, pol.polrelid), 'none'))
       ) AS property (attribute, value)
UNION ALL
SELECT 'column', r.name || '.' || quote_ident(a.attname), property.attribute, property.value
  FROM relations AS r
  JOIN pg_attribute AS a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type AS t ON t.oid = a.atttypid
  LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 CROSS JOIN LATERAL (VALUES
        ('type', format_type(a.atttypid, a.atttypmod)),
        ('not null', CASE WHEN a.attnotnull THEN 'yes' ELSE 'no' END),
        ('default', coalesce(pg_get_expr(d.adbin, d.adrelid), 'none')),
        ('identity', CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' ELSE 'no' END),
        ('generated', CASE a.attgenerated WHEN 's' THEN 'stored' ELSE 'no' END),
        ('collation', CASE WHEN a.attcollation = t.typcollation THEN 'default'
                           ELSE (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                                   FROM pg_collation AS co
                                   JOIN pg_namespace AS cn ON cn.oid = co.collnamespace
                                  WHERE co.oid = a.attcollation) END)
       ) AS property (attribute, value)
 WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f')
UNION ALL
SELECT 'constraint', r.name || '.' || quote_ident(con.conname), 'definition',
       pg_get_constraintdef(con.oid)
  FROM pg_constraint AS con
  JOIN relations AS r ON r.oid = con.conrelid
UNION ALL
SELECT 'index', quote_ident(r.nspname) || '.' || quote_ident(ic.relname), property.attribute,
       property.value
  FROM pg_index AS i
  JOIN relations AS r ON r.oid = i.indrelid
  JOIN pg_class AS ic ON ic.oid = i.indexrelid
 CROSS JOIN LATERAL (VALUES
        ('table', r.name),
        ('definition', pg_get_indexdef(i.indexrelid)),
        ('valid', CASE WHEN i.indisvalid THEN 'yes' ELSE 'no (a failed CREATE INDEX CONCURRENTLY?)' END)
       ) AS property (attribute, value)
 WHERE NOT EXISTS (SELECT 1 FROM pg_constraint AS con
                    WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                      AND con.contype IN ('p', 'u', 'x'))
UNION ALL
SELECT 'trigger', r.name || '.' || quote_ident(t.tgname), property.attribute, property.value
  FROM pg_trigger AS t
  JOIN relations AS r ON r.oid = t.tgrelid
 CROSS JOIN LATERAL (VALUES
        ('definition', pg_get_triggerdef(t.oid)),
        ('enabled', CASE t.tgenabled WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica'
                                     WHEN 'A' THEN 'always' ELSE 'origin' END)
       ) AS property (attribute, value)
 WHERE NOT t.tgisinternal
UNION ALL
SELECT 'function', f.name, 'definition', pg_get_functiondef(f.oid)
  FROM functions AS f
UNION ALL
SELECT 'function', f.name, 'owner',
       CASE WHEN f.proowner = (SELECT oid FROM migrator) THEN 'the migrating role'
            ELSE pg_get_userbyid(f.proowner) END
  FROM functions AS f
UNION ALL
-- a partitioned table's index: the partitions with no index attached to it (none once built)
SELECT 'index', quote_ident(r.nspname) || '.' || quote_ident(ic.relname), 'partitions without it',
       coalesce((SELECT string_agg(p.name, ', ' ORDER BY p.name)
                   FROM partitions AS p
                  WHERE p.parent = r.oid
                    AND NOT EXISTS (SELECT 1
                                      FROM pg_inherits AS attached
                                      JOIN pg_index AS child ON child.indexrelid = attached.inhrelid
                                     WHERE attached.inhparent = i.indexrelid
                                       AND child.indrelid = p.oid)),
                'none')
  FROM pg_index AS i
  JOIN relations AS r ON r.oid = i.indrelid AND r.relkind = 'p'
  JOIN pg_class AS ic ON ic.oid = i.indexrelid
 WHERE NOT EXISTS (SELECT 1 FROM pg_constraint AS con
                    WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                      AND con.contype IN ('p', 'u', 'x'))
UNION ALL
-- what one partition has of its own, not from its parent
SELECT 'partition index', quote_ident(p.nspname) || '.' || quote_ident(ic.relname), 'definition',
       pg_get_indexdef(i.indexrelid)
  FROM partitions AS p
  JOIN pg_index AS i ON i.indrelid = p.oid
  JOIN pg_class AS ic ON ic.oid = i.indexrelid
 WHERE NOT EXISTS (SELECT 1 FROM pg_inherits AS inh WHERE inh.inhrelid = i.indexrelid)
UNION ALL
SELECT 'partition constraint', p.name || '.' || quote_ident(con.conname), 'definition',
       pg_get_constraintdef(con.oid)
  FROM partitions AS p
  JOIN pg_constraint AS con ON con.conrelid = p.oid
 WHERE con.coninhcount = 0
   AND con.conparentid = 0
UNION ALL
SELECT 'partition trigger', p.name || '.' || quote_ident(t.tgname), 'definition',
       pg_get_triggerdef(t.oid)
  FROM partitions AS p
  JOIN pg_trigger AS t ON t.tgrelid = p.oid
 WHERE NOT t.tgisinternal
   AND t.tgparentid = 0
UNION ALL
SELECT 'extension', quote_ident(x.extname), 'installed', 'yes'
  FROM pg_extension AS x
 WHERE x.extname <> 'plpgsql'
ORDER BY 1, 2, 3;

-- name: select_extensions_offered
-- the extensions this server offers (installed or not)
SELECT name FROM pg_available_extensions;
