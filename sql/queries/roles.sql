-- Roles: the catalog facts `kronos-db roles check/apply` compare with kronos_db/roles.toml.
-- Every query takes the role names as %(roles)s::text[] and reads the current database only.

-- name: select_role_attributes
-- the attributes of the roles that exist: name, superuser, createdb, createrole, login, replication, bypassrls
SELECT rolname AS role_name,
       rolsuper AS superuser,
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
-- roles the service roles are members of: role, granted role
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
