-- Introspection for `kronos-db check`: the schema as (kind, name, attribute, value) facts.
-- Covers every user schema; leaves out extension members (they belong to the extension), the
-- partitions of a partitioned table (created by rotation over time) and kronos_quarantine (rows
-- `kronos-db adopt` kept aside, a table that exists only where it was needed), but records each
-- partitioned table's key and default partition.

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
relations AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence,
           quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
      FROM pg_class AS c
      JOIN namespaces AS n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND NOT c.relispartition
       -- kronos-db's quarantine is data kept aside by `adopt`, created only when needed
       AND c.relname NOT IN ('kronos_quarantine', 'kronos_quarantine_id_seq')
       AND NOT EXISTS (SELECT 1 FROM extension_members AS e
                        WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid)
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
SELECT 'column', r.name || '.' || quote_ident(a.attname), property.attribute, property.value
  FROM relations AS r
  JOIN pg_attribute AS a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 CROSS JOIN LATERAL (VALUES
        ('type', format_type(a.atttypid, a.atttypmod)),
        ('not null', CASE WHEN a.attnotnull THEN 'yes' ELSE 'no' END),
        ('default', coalesce(pg_get_expr(d.adbin, d.adrelid), 'none')),
        ('identity', CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' ELSE 'no' END),
        ('generated', CASE a.attgenerated WHEN 's' THEN 'stored' ELSE 'no' END)
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
SELECT 'function',
       quote_ident(n.nspname) || '.' || quote_ident(p.proname)
           || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       'definition', md5(pg_get_functiondef(p.oid))
  FROM pg_proc AS p
  JOIN namespaces AS n ON n.oid = p.pronamespace
 WHERE p.prokind IN ('f', 'p')
   AND NOT EXISTS (SELECT 1 FROM extension_members AS e
                    WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid)
UNION ALL
SELECT 'extension', quote_ident(x.extname), 'installed', 'yes'
  FROM pg_extension AS x
 WHERE x.extname <> 'plpgsql'
ORDER BY 1, 2, 3;
