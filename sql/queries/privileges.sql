-- Permission errors: what the connected role lacks, to name the GRANT that fixes it.

-- name: select_relation
-- a relation named in an error (as the search path finds it): schema-qualified name, owner
SELECT format('%%I.%%I', n.nspname, c.relname) AS qualified,
       pg_get_userbyid(c.relowner) AS owner
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.oid = to_regclass(%(name)s::text)

-- name: has_relation_privilege
-- whether the connected role holds the privilege on the table, view or sequence
SELECT CASE WHEN (SELECT relkind FROM pg_class WHERE oid = to_regclass(%(relation)s::text)) = 'S'
            THEN has_sequence_privilege(%(relation)s::text, %(privilege)s::text)
            ELSE has_table_privilege(%(relation)s::text, %(privilege)s::text)
       END AS held

-- name: has_schema_privilege
-- whether the connected role holds the privilege on the schema
SELECT has_schema_privilege(%(schema)s::text, %(privilege)s::text) AS held
