-- Security: accounts (`kronos-db users`) and the checks of `kronos-db report security`.

-- name: insert_user
-- create an account; the role is looked up by name (NULL: no role); returns the account
INSERT INTO users (username, email, password_hash, role_id)
VALUES (%(username)s::text, %(email)s::text, %(password_hash)s::text,
        (SELECT id FROM roles WHERE name = %(role)s::text))
RETURNING id, username, email, role_id, created_at

-- name: select_role_exists
-- whether a role of the user-service exists: one row when it does
SELECT 1 FROM roles WHERE name = %(role)s::text

-- name: update_user_password
-- replace an account's password hash; returns the account, nothing when there is no such user
UPDATE users
   SET password_hash = %(password_hash)s::text
 WHERE username = %(username)s::text
RETURNING id, username, email, role_id, created_at

-- name: select_user_password_hash
-- the stored hash of one account
SELECT password_hash FROM users WHERE username = %(username)s::text

-- name: select_current_role
-- who we are connected as: role, superuser
SELECT current_user::text AS role_name,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser

-- name: select_login_superusers
-- roles that are superusers and can log in: role
SELECT rolname AS role_name FROM pg_roles WHERE rolsuper AND rolcanlogin ORDER BY rolname

-- name: select_trust_rules
-- pg_hba.conf lines that let a client in without a password (needs superuser): line, type, database, user, address, method
SELECT line_number,
       type AS connection_type,
       array_to_string(database, ',') AS database_names,
       array_to_string(user_name, ',') AS user_names,
       coalesce(address, '') AS address,
       auth_method
  FROM pg_hba_file_rules
 WHERE auth_method = 'trust'
 ORDER BY line_number

-- name: select_passwordless_logins
-- roles that can log in with no password or an MD5 one (needs superuser): role, problem
SELECT rolname AS role_name,
       CASE WHEN rolpassword IS NULL THEN 'no password' ELSE 'MD5 password' END AS problem
  FROM pg_authid
 WHERE rolcanlogin
   AND (rolpassword IS NULL OR rolpassword LIKE 'md5%%')
 ORDER BY rolname

-- name: select_public_schema_privileges
-- privileges PUBLIC holds on user schemas: schema, privilege
SELECT n.nspname AS schema_name, acl.privilege_type AS privilege
  FROM pg_namespace AS n
 CROSS JOIN LATERAL aclexplode(n.nspacl) AS acl
 WHERE acl.grantee = 0
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%%'
 ORDER BY 1, 2

-- name: select_public_relation_privileges
-- privileges PUBLIC holds on tables, views and sequences of user schemas: relation, privilege
-- (an extension's own grants are left out: pg_stat_statements grants SELECT on its views to
-- PUBLIC and shows each role only its own queries' text)
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS relation_name,
       acl.privilege_type AS privilege
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL aclexplode(c.relacl) AS acl
 WHERE acl.grantee = 0
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype = 'e')
 ORDER BY 1, 2

-- name: select_public_database_privileges
-- privileges PUBLIC holds on the current database: privilege
SELECT acl.privilege_type AS privilege
  FROM pg_database AS d
 CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) AS acl
 WHERE d.datname = current_database()
   AND acl.grantee = 0
 ORDER BY 1

-- name: select_unsafe_security_definer_functions
-- SECURITY DEFINER functions of user schemas without a pinned search_path: function
SELECT p.oid::regprocedure::text AS function_name
  FROM pg_proc AS p
  JOIN pg_namespace AS n ON n.oid = p.pronamespace
 WHERE p.prosecdef
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) AS c
                    WHERE c LIKE 'search\_path=%%')
   AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                      AND d.deptype = 'e')
 ORDER BY 1

-- name: select_extensions
-- installed extensions of the current database: name, version
SELECT extname AS name, extversion AS version FROM pg_extension ORDER BY extname

-- name: select_untrusted_languages
-- procedural languages that can reach the server's operating system: language
SELECT lanname AS language
  FROM pg_language
 WHERE lanispl
   AND NOT lanpltrusted
 ORDER BY lanname

-- name: select_security_settings
-- the settings a DBA reviews for security and integrity: name, value
SELECT name, setting AS value
  FROM pg_settings
 WHERE name IN ('ssl', 'password_encryption', 'log_statement', 'fsync', 'full_page_writes',
                'data_checksums', 'log_connections', 'listen_addresses')
 ORDER BY name

-- name: select_argon2_constraint
-- the users_password_hash_argon2 CHECK: whether it exists and is validated
SELECT con.convalidated AS validated
  FROM pg_constraint AS con
 WHERE con.conrelid = to_regclass('users')
   AND con.conname = 'users_password_hash_argon2'

-- name: count_raw_session_tokens
-- sessions whose token is not a hex SHA-256 digest (counted up to a limit): raw, sampled
SELECT count(*) AS raw_tokens
  FROM (SELECT 1
          FROM sessions
         WHERE token !~ '^[0-9a-f]{64}$'
         LIMIT %(limit)s::int) AS raw
