-- backups verification and least privilege
--
-- backups: what `kronos-db backup` needs to trust a file later (size, SHA-256, per-table row
-- counts taken in the dump's own snapshot) and what happened to it since (verified, pruned).
-- Every column is added nullable or with a constant default: no table rewrite, and rows
-- written before this revision (or by a job that only knows the path) stay valid.

ALTER TABLE backups
    -- 'unknown' is the default on purpose: a row inserted with only file_path must never be
    -- mistaken for a pg_dump that `backup prune` may delete.
    ADD COLUMN kind            text NOT NULL DEFAULT 'unknown',
    ADD COLUMN status          text NOT NULL DEFAULT 'available',
    ADD COLUMN database_name   text,
    ADD COLUMN size_bytes      bigint,
    ADD COLUMN sha256          char(64),
    ADD COLUMN compression     text,
    ADD COLUMN row_counts      jsonb,
    ADD COLUMN server_version  text,
    ADD COLUMN tool_version    text,
    ADD COLUMN started_at      timestamptz,
    ADD COLUMN finished_at     timestamptz,
    ADD COLUMN verified_at     timestamptz,
    ADD COLUMN verify_result   text,
    ADD COLUMN verify_message  text,
    ADD COLUMN pruned_at       timestamptz,
    ADD CONSTRAINT backups_kind_check
        CHECK (kind IN ('pg_dump', 'partition_archive', 'unknown')),
    ADD CONSTRAINT backups_status_check
        CHECK (status IN ('available', 'pruned')),
    ADD CONSTRAINT backups_pruned_at_check
        CHECK ((status = 'pruned') = (pruned_at IS NOT NULL)),
    ADD CONSTRAINT backups_size_bytes_check CHECK (size_bytes >= 0),
    ADD CONSTRAINT backups_sha256_check CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    ADD CONSTRAINT backups_row_counts_check CHECK (jsonb_typeof(row_counts) = 'object'),
    ADD CONSTRAINT backups_verify_result_check
        CHECK (verify_result IN ('passed', 'failed')),
    ADD CONSTRAINT backups_verified_check
        CHECK ((verified_at IS NULL) = (verify_result IS NULL)),
    -- a dump is recorded only once its file is complete: it always has these
    ADD CONSTRAINT backups_pg_dump_complete_check CHECK (
        kind <> 'pg_dump'
        OR (size_bytes IS NOT NULL AND sha256 IS NOT NULL AND row_counts IS NOT NULL)
    );

COMMENT ON COLUMN backups.kind IS
    'pg_dump (kronos-db backup create), partition_archive (an archived logs partition), unknown';
COMMENT ON COLUMN backups.row_counts IS
    'rows per table ({"public.users": 12, ...}) counted in the snapshot the file was taken from';
COMMENT ON COLUMN backups.status IS
    'available, or pruned (the file was deleted by kronos-db backup prune; pruned_at says when)';

-- Session tokens: the auth service stores the lowercase hex SHA-256 of the token, never the
-- token itself (docs/security.md). sessions_token_excl (a hash index) already serves
-- `WHERE token = $1` for a 64-character digest; no CHECK yet, because that would reject the
-- raw tokens a not-yet-updated auth service still writes. `kronos-db report security` counts them.
COMMENT ON COLUMN sessions.token IS
    'hex SHA-256 of the session token (64 characters), never the token itself; see docs/security.md';

-- Nobody but the migration role creates objects in public. PostgreSQL 15 already starts so;
-- a database created from an older template or restored from an older dump may not.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
