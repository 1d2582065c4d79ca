-- user-service: roles and the accounts that belong to them.

CREATE TABLE roles (
    id          serial PRIMARY KEY,
    name        varchar(100) NOT NULL,
    permissions text[] NOT NULL,
    CONSTRAINT roles_name_key UNIQUE (name),
    -- a NULL inside the array is never a permission, and would make `'x' = ANY(permissions)`
    -- return NULL instead of false
    CONSTRAINT roles_permissions_no_null CHECK (array_position(permissions, NULL) IS NULL)
);

COMMENT ON TABLE roles IS 'user-service: named roles with their permissions';

CREATE TABLE users (
    id            serial PRIMARY KEY,
    username      varchar(255) NOT NULL,
    email         varchar(255) NOT NULL,
    password_hash text NOT NULL,
    role_id       integer REFERENCES roles (id),
    created_at    timestamptz DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email),
    -- Argon2 only, as a PHC string: $argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>
    -- (v= is optional: the oldest Argon2 hashes have none; salt and hash are unpadded base64)
    CONSTRAINT users_password_hash_argon2 CHECK (
        password_hash ~ '^\$argon2(id|i|d)\$(v=[0-9]+\$)?m=[0-9]+,t=[0-9]+,p=[0-9]+(,[a-z]+=[A-Za-z0-9+/]*)*\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$'
    )
);

COMMENT ON TABLE users IS 'user-service: accounts; each belongs to exactly one role';

-- foreign keys get an index: deleting a role must not scan users
CREATE INDEX users_role_id_idx ON users (role_id);
