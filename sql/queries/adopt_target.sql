-- What `kronos-db adopt` adds to a database built from the original design so that its schema
-- equals revision 0010's, written the way a live database can take it:
--   * constraints are added NOT VALID (a brief lock, existing rows not scanned) and validated
--     by a separate statement that lets reads and writes go on;
--   * indexes are built CONCURRENTLY;
--   * columns are added without a default that would rewrite the table.
-- Each statement is named after the object it creates, and kronos_db/adopt/steps.py orders
-- them. Functions, triggers, comments and the partitioned logs come from the released revision
-- files themselves.

-- ---------------------------------------------------------------- CHECK constraints

-- name: add_roles_permissions_no_null
-- 0001: a NULL inside the array is never a permission
ALTER TABLE roles ADD CONSTRAINT roles_permissions_no_null
    CHECK (array_position(permissions, NULL) IS NULL) NOT VALID;

-- name: add_users_password_hash_argon2
-- 0001: Argon2 PHC strings only
ALTER TABLE users ADD CONSTRAINT users_password_hash_argon2 CHECK (
    password_hash ~ '^\$argon2(id|i|d)\$(v=[0-9]+\$)?m=[0-9]+,t=[0-9]+,p=[0-9]+(,[a-z]+=[A-Za-z0-9+/]*)*\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$'
) NOT VALID;

-- name: add_routes_method_check
-- 0005: an upper-case HTTP method token, or *
ALTER TABLE routes ADD CONSTRAINT routes_method_check
    CHECK (method ~ '^([A-Z][A-Z-]*|\*)$') NOT VALID;

-- name: add_rate_limits_request_count_check
-- 0005: counters are never negative
ALTER TABLE rate_limits ADD CONSTRAINT rate_limits_request_count_check
    CHECK (request_count >= 0) NOT VALID;

-- name: add_message_queue_status_check
-- 0006: the statuses consumers know
ALTER TABLE message_queue ADD CONSTRAINT message_queue_status_check
    CHECK (status IN ('pending', 'processing', 'processed', 'failed')) NOT VALID;

-- name: add_backups_constraints
-- 0009: what makes a backup row trustworthy (the columns are new: every row has the defaults)
ALTER TABLE backups
    ADD CONSTRAINT backups_kind_check
        CHECK (kind IN ('pg_dump', 'partition_archive', 'unknown')) NOT VALID,
    ADD CONSTRAINT backups_status_check
        CHECK (status IN ('available', 'pruned')) NOT VALID,
    ADD CONSTRAINT backups_pruned_at_check
        CHECK ((status = 'pruned') = (pruned_at IS NOT NULL)) NOT VALID,
    ADD CONSTRAINT backups_size_bytes_check CHECK (size_bytes >= 0) NOT VALID,
    ADD CONSTRAINT backups_sha256_check CHECK (sha256 ~ '^[0-9a-f]{64}$') NOT VALID,
    ADD CONSTRAINT backups_row_counts_check CHECK (jsonb_typeof(row_counts) = 'object') NOT VALID,
    ADD CONSTRAINT backups_verify_result_check
        CHECK (verify_result IN ('passed', 'failed')) NOT VALID,
    ADD CONSTRAINT backups_verified_check
        CHECK ((verified_at IS NULL) = (verify_result IS NULL)) NOT VALID,
    ADD CONSTRAINT backups_pg_dump_complete_check CHECK (
        kind <> 'pg_dump'
        OR (size_bytes IS NOT NULL AND sha256 IS NOT NULL AND row_counts IS NOT NULL)
    ) NOT VALID;


-- name: add_sessions_user_id_fkey
-- 0002: deleting a user ends their sessions
ALTER TABLE sessions ADD CONSTRAINT sessions_user_id_fkey_kronos_new
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE NOT VALID;

-- name: add_rate_limits_user_id_fkey
-- 0005: a counter does not outlive its user
ALTER TABLE rate_limits ADD CONSTRAINT rate_limits_user_id_fkey_kronos_new
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE NOT VALID;

-- name: add_rate_limits_route_id_fkey
-- 0005: nor its route
ALTER TABLE rate_limits ADD CONSTRAINT rate_limits_route_id_fkey_kronos_new
    FOREIGN KEY (route_id) REFERENCES routes (id) ON DELETE CASCADE NOT VALID;


-- name: add_columns_sessions
-- 0008: when the session was last used (a now() default is stored once, no rewrite)
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS last_active_at timestamptz DEFAULT now();

-- name: add_columns_message_queue
-- 0008: requeue attempts and when the status last changed (constant defaults, no rewrite)
ALTER TABLE message_queue
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS status_changed_at timestamptz NOT NULL DEFAULT now();

-- name: add_columns_backups
-- 0009: what makes a backup verifiable (nullable or constant defaults, no rewrite)
ALTER TABLE backups
    ADD COLUMN IF NOT EXISTS kind            text NOT NULL DEFAULT 'unknown',
    ADD COLUMN IF NOT EXISTS status          text NOT NULL DEFAULT 'available',
    ADD COLUMN IF NOT EXISTS database_name   text,
    ADD COLUMN IF NOT EXISTS size_bytes      bigint,
    ADD COLUMN IF NOT EXISTS sha256          char(64),
    ADD COLUMN IF NOT EXISTS compression     text,
    ADD COLUMN IF NOT EXISTS row_counts      jsonb,
    ADD COLUMN IF NOT EXISTS server_version  text,
    ADD COLUMN IF NOT EXISTS tool_version    text,
    ADD COLUMN IF NOT EXISTS started_at      timestamptz,
    ADD COLUMN IF NOT EXISTS finished_at     timestamptz,
    ADD COLUMN IF NOT EXISTS verified_at     timestamptz,
    ADD COLUMN IF NOT EXISTS verify_result   text,
    ADD COLUMN IF NOT EXISTS verify_message  text,
    ADD COLUMN IF NOT EXISTS pruned_at       timestamptz;


-- name: create_index_rate_limits_user_id_route_id_key
-- 0005: one counter per (user, route), built without blocking writes, then made a constraint
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS rate_limits_user_id_route_id_key
    ON rate_limits (user_id, route_id);

-- name: add_sessions_token_excl
-- 0002: token uniqueness through a hash index. An exclusion constraint cannot be built
-- concurrently nor from an existing index: this one holds ACCESS EXCLUSIVE for its build.
ALTER TABLE sessions ADD CONSTRAINT sessions_token_excl EXCLUDE USING hash (token WITH =);


-- name: create_index_users_role_id_idx
-- 0001
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_role_id_idx ON users (role_id);

-- name: create_index_sessions_user_id_idx
-- 0002
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_user_id_idx ON sessions (user_id);

-- name: create_index_sessions_expires_at_idx
-- 0002
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_expires_at_idx ON sessions (expires_at);

-- name: create_index_sessions_last_active_at_idx
-- 0008
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_last_active_at_idx ON sessions (last_active_at);

-- name: create_index_cache_expires_at_idx
-- 0004
CREATE INDEX CONCURRENTLY IF NOT EXISTS cache_expires_at_idx
    ON cache (expires_at) WHERE expires_at IS NOT NULL;

-- name: create_index_rate_limits_route_id_idx
-- 0005
CREATE INDEX CONCURRENTLY IF NOT EXISTS rate_limits_route_id_idx ON rate_limits (route_id);

-- name: create_index_rate_limits_last_request_idx
-- 0005
CREATE INDEX CONCURRENTLY IF NOT EXISTS rate_limits_last_request_idx
    ON rate_limits (last_request);

-- name: create_index_message_queue_pending_topic_created_at_idx
-- 0006
CREATE INDEX CONCURRENTLY IF NOT EXISTS message_queue_pending_topic_created_at_idx
    ON message_queue (topic, created_at) WHERE status = 'pending';

-- name: create_index_message_queue_processing_status_changed_at_idx
-- 0008
CREATE INDEX CONCURRENTLY IF NOT EXISTS message_queue_processing_status_changed_at_idx
    ON message_queue (status_changed_at) WHERE status = 'processing';

-- name: create_index_message_queue_processed_status_changed_at_idx
-- 0008
CREATE INDEX CONCURRENTLY IF NOT EXISTS message_queue_processed_status_changed_at_idx
    ON message_queue (status_changed_at) WHERE status = 'processed';

-- name: create_index_backups_created_at_idx
-- 0007
CREATE INDEX CONCURRENTLY IF NOT EXISTS backups_created_at_idx ON backups (created_at);

-- name: create_index_logs_default_service_name_timestamp_idx
-- 0003's (service_name, "timestamp") index, built on the table that becomes the default
-- partition, under the name PostgreSQL gives it there: the attach then adopts it
CREATE INDEX CONCURRENTLY IF NOT EXISTS logs_default_service_name_timestamp_idx
    ON logs (service_name, "timestamp");

-- name: create_index_logs_default_timestamp_idx
-- 0003's BRIN index on "timestamp", likewise
CREATE INDEX CONCURRENTLY IF NOT EXISTS logs_default_timestamp_idx
    ON logs USING brin ("timestamp");


-- name: attach_logs_default
-- the old table, whole, as the default partition. It holds the partition key's NOT NULL and
-- every index the parent has, so the attach neither scans it nor builds anything.
ALTER TABLE logs ATTACH PARTITION logs_default DEFAULT;
