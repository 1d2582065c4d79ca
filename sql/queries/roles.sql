-- Roles: the catalog facts `kronos-db roles check/apply` compare with kronos_db/roles.toml.
-- Every query takes the role names as %(roles)s::text[] and reads the current database only.

-- name: select_role_attributes
-- the attributes of the roles that exist: name, superuser, createdb, createrole, login, replication, bypassrls, inherit
SELECT rolname AS role_name,
       rolsuper AS superuser,
       rolinherit AS inherit,
       rolcreatedb AS createdb,
       rolcreaterole AS createrole,
       rolcanlogin AS login,
       rolreplication AS replication,
       rolbypassrls AS bypassrls
  FROM pg_roles
 WHERE rolname = ANY(%(roles)s::text[])

-- name: select_schema_relations
-- the tables, views and partitioned tables of a schema (not partitions): name
SELECT c.relname AS relation_name
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s::text
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND NOT c.relispartition

-- name: select_schema_partitions
-- the partitions (at any level) of a schema's partitioned tables: name
SELECT c.relname AS relation_name
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s::text
   AND c.relkind IN ('r', 'p')
   AND c.relispartition

-- name: select_owned_sequences
-- the sequences behind serial and identity columns of a schema's tables: table, sequence schema, sequence
SELECT t.relname AS table_name,
       sn.nspname AS sequence_schema,
       s.relname AS sequence_name
  FROM pg_depend AS d
  JOIN pg_class AS s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_namespace AS sn ON sn.oid = s.relnamespace
  JOIN pg_class AS t ON t.oid = d.refobjid
  JOIN pg_namespace AS tn ON tn.oid = t.relnamespace
 WHERE d.classid = 'pg_class'::regclass
   AND d.refclassid = 'pg_class'::regclass
   AND d.deptype IN ('a', 'i')
   AND tn.nspname = %(schema)s::text

-- name: select_relation_privileges
-- privileges granted to the roles on any table, view or sequence: role, schema, relation, kind, privilege, grantable
SELECT grantee.rolname AS role_name,
       n.nspname AS schema_name,
       c.relname AS relation_name,
       CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END AS relation_kind,
       acl.privilege_type AS privilege,
       acl.is_grantable AS grantable
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL aclexplode(c.relacl) AS acl
  JOIN pg_roles AS grantee ON grantee.oid = acl.grantee
 WHERE grantee.rolname = ANY(%(roles)s::text[])
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')

-- name: select_column_privileges
-- column-level privileges granted to the roles: role, schema, relation, column, privilege
SELECT grantee.rolname AS role_name,
       n.nspname AS schema_name,
       c.relname AS relation_name,
       a.attname AS column_name,
       acl.privilege_type AS privilege
  FROM pg_attribute AS a
  JOIN pg_class AS c ON c.oid = a.attrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL aclexplode(a.attacl) AS acl
  JOIN pg_roles AS grantee ON grantee.oid = acl.grantee
 WHERE grantee.rolname = ANY(%(roles)s::text[])
   AND a.attnum > 0
   AND NOT a.attisdropped

-- name: select_schema_privileges
-- schema privileges granted to the roles: role, schema, privilege, grantable
SELECT grantee.rolname AS role_name,
       n.nspname AS schema_name,
       acl.privilege_type AS privilege,
       acl.is_grantable AS grantable
  FROM pg_namespace AS n
 CROSS JOIN LATERAL aclexplode(n.nspacl) AS acl
  JOIN pg_roles AS grantee ON grantee.oid = acl.grantee
 WHERE grantee.rolname = ANY(%(roles)s::text[])

-- name: select_database_privileges
-- privileges on the current database granted to the roles: role, privilege, grantable
SELECT grantee.rolname AS role_name,
       acl.privilege_type AS privilege,
       acl.is_grantable AS grantable
  FROM pg_database AS d
 CROSS JOIN LATERAL aclexplode(d.datacl) AS acl
  JOIN pg_roles AS grantee ON grantee.oid = acl.grantee
 WHERE d.datname = current_database()
   AND grantee.rolname = ANY(%(roles)s::text[])

-- name: select_role_memberships
-- roles the mapping's roles are members of: role, granted role
SELECT member.rolname AS role_name,
       granted.rolname AS granted_role
  FROM pg_auth_members AS m
  JOIN pg_roles AS member ON member.oid = m.member
  JOIN pg_roles AS granted ON granted.oid = m.roleid
 WHERE member.rolname = ANY(%(roles)s::text[])

-- name: select_owned_object_counts
-- how many objects of the current database each role owns: role, objects
SELECT r.rolname AS role_name,
       count(*) AS objects
  FROM pg_shdepend AS d
  JOIN pg_roles AS r ON r.oid = d.refobjid
 WHERE d.refclassid = 'pg_authid'::regclass
   AND d.deptype = 'o'
   AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND r.rolname = ANY(%(roles)s::text[])
 GROUP BY r.rolname

-- name: select_current_role_attributes
-- whether the connected role is a superuser, and whether it may create roles
SELECT rolsuper AS superuser,
       rolcreaterole AS createrole
  FROM pg_roles
 WHERE rolname = current_user

-- name: select_objects_not_owned_by
-- the schema itself and its objects (relations, partitions included; functions; types) that
-- another role than %(owner)s owns, extension members and column-owned sequences (they follow
-- their table) left out: kind (as ALTER … OWNER TO spells it), schema, name, function
-- signature, owner
WITH extension_members AS (
    SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
),
objects AS (
    SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                          WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE'
                          ELSE 'TABLE' END AS object_kind,
           n.nspname AS schema_name,
           c.relname AS object_name,
           NULL::text AS signature,
           pg_get_userbyid(c.relowner) AS owner_name
      FROM pg_class AS c
      JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE n.nspname = %(schema)s::text
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
       AND ('pg_class'::regclass, c.oid) NOT IN (SELECT classid, objid FROM extension_members)
       AND NOT (c.relkind = 'S' AND EXISTS (
                SELECT 1 FROM pg_depend AS d
                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                   AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
    UNION ALL
    SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
           n.nspname,
           p.proname,
           p.oid::regprocedure::text,
           pg_get_userbyid(p.proowner)
      FROM pg_proc AS p
      JOIN pg_namespace AS n ON n.oid = p.pronamespace
     WHERE n.nspname = %(schema)s::text
       AND p.prokind IN ('f', 'p')
       AND ('pg_proc'::regclass, p.oid) NOT IN (SELECT classid, objid FROM extension_members)
    UNION ALL
    SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
           n.nspname,
           t.typname,
           NULL::text,
           pg_get_userbyid(t.typowner)
      FROM pg_type AS t
      JOIN pg_namespace AS n ON n.oid = t.typnamespace
     WHERE n.nspname = %(schema)s::text
       AND (t.typtype IN ('e', 'd', 'r', 'm')
            OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
       AND ('pg_type'::regclass, t.oid) NOT IN (SELECT classid, objid FROM extension_members)
    UNION ALL
    SELECT 'SCHEMA', n.nspname, n.nspname, NULL::text, pg_get_userbyid(n.nspowner)
      FROM pg_namespace AS n
     WHERE n.nspname = %(schema)s::text
)
SELECT object_kind, schema_name, object_name, signature, owner_name
  FROM objects
 WHERE owner_name <> %(owner)s::text
 ORDER BY object_kind, schema_name, object_name

-- name: select_extensions
-- which of the named extensions the server offers, and whether this database has each
SELECT name,
       installed_version IS NOT NULL AS installed
  FROM pg_available_extensions
 WHERE name = ANY(%(names)s::text[])
 ORDER BY name

-- name: select_public_create_on_schema
-- whether every role (PUBLIC) may create objects in the schema
SELECT EXISTS (
       SELECT 1
         FROM pg_namespace AS n
        CROSS JOIN LATERAL aclexplode(n.nspacl) AS acl
        WHERE n.nspname = %(schema)s::text
          AND acl.grantee = 0
          AND acl.privilege_type = 'CREATE'
       ) AS public_create
