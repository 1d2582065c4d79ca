-- router-service: rate_limits.id becomes a bigint, online.
--
-- The router upserts its counter on every request (INSERT … ON CONFLICT (user_id, route_id)
-- DO UPDATE): the INSERT draws a value from rate_limits_id_seq even when the row exists and is
-- only updated, so the serial advances once per request, not once per counter. At 1,000
-- requests/s the int4 id (2,147,483,647) runs out in about 25 days; then every request fails.
--
-- A plain ALTER COLUMN … TYPE bigint rewrites the table and its indexes under ACCESS EXCLUSIVE:
-- every request waits for the whole rewrite. Instead, as GitLab's
-- change_column_type_concurrently / cleanup_concurrent_column_type_change and pgroll do:
--   1. a new column id_bigint, kept equal to id by a trigger on every insert and update;
--   2. the existing rows backfilled in batches, each its own short transaction;
--   3. its NOT NULL proven by a CHECK added NOT VALID and then validated (SHARE UPDATE
--      EXCLUSIVE: the router writes on);
--   4. its unique index built CONCURRENTLY;
--   5. the swap, in one short transaction under lock_timeout: NOT NULL (no scan: the
--      validated CHECK proves it), the sequence moved to the new column (and widened to
--      bigint), the old column dropped, the new one renamed id, its index made the primary key.
-- The ids keep their values. Each step checks what is already done, and kronos-db records
-- each statement it finished (no-transaction revision), so a run killed anywhere is finished
-- by the next one.
--
-- The steps are DO blocks so that each can tell whether it is done (the swap renames what the
-- earlier steps look for): squawk does not read inside them; `kronos-db migrate --rehearse`
-- measures them instead (docs/benchmarks.md).
-- kronos: no-transaction

-- 1. the new column, and the trigger that keeps it equal to id from the first row on
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'rate_limits'::regclass AND attname = 'id') = 'bigint'::regtype THEN
        RETURN;  -- swapped already
    END IF;
    ALTER TABLE rate_limits ADD COLUMN IF NOT EXISTS id_bigint bigint;
    CREATE OR REPLACE FUNCTION rate_limits_id_bigint_sync() RETURNS trigger
    LANGUAGE plpgsql AS $body$
    BEGIN
        NEW.id_bigint := NEW.id;
        RETURN NEW;
    END
    $body$;
    CREATE OR REPLACE TRIGGER rate_limits_id_bigint_sync
        BEFORE INSERT OR UPDATE ON rate_limits
        FOR EACH ROW WHEN (NEW.id_bigint IS DISTINCT FROM NEW.id)
        EXECUTE FUNCTION rate_limits_id_bigint_sync();
END
$$;

-- 2. the rows that existed before the trigger, 5,000 ids per transaction (the router waits
-- at most for one batch's row locks)
DO $$
DECLARE
    batch constant bigint := 5000;
    next_id bigint;
    last_id bigint;
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'rate_limits'::regclass AND attname = 'id') = 'bigint'::regtype THEN
        RETURN;
    END IF;
    SELECT min(id), max(id) INTO next_id, last_id FROM rate_limits WHERE id_bigint IS NULL;
    WHILE next_id <= last_id LOOP
        UPDATE rate_limits SET id_bigint = id
         WHERE id >= next_id AND id < next_id + batch AND id_bigint IS DISTINCT FROM id;
        COMMIT;
        next_id := next_id + batch;
    END LOOP;
END
$$;

-- 3. NOT NULL, proven without blocking writes: the CHECK is added NOT VALID (an instant) …
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'rate_limits'::regclass AND attname = 'id') = 'bigint'::regtype THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'rate_limits'::regclass
                      AND conname = 'rate_limits_id_bigint_not_null') THEN
        ALTER TABLE rate_limits ADD CONSTRAINT rate_limits_id_bigint_not_null
            CHECK (id_bigint IS NOT NULL) NOT VALID;
    END IF;
END
$$;

-- … and validated under SHARE UPDATE EXCLUSIVE (reads and writes go on)
ALTER TABLE rate_limits VALIDATE CONSTRAINT rate_limits_id_bigint_not_null;

-- 4. the future primary key's index
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS rate_limits_id_bigint_key
    ON rate_limits (id_bigint);

-- 5. the swap: catalog changes only, in one transaction, under the migration's lock_timeout
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'rate_limits'::regclass AND attname = 'id') = 'bigint'::regtype THEN
        RETURN;
    END IF;
    LOCK TABLE rate_limits IN ACCESS EXCLUSIVE MODE;
    ALTER TABLE rate_limits ALTER COLUMN id_bigint SET NOT NULL;
    ALTER TABLE rate_limits DROP CONSTRAINT rate_limits_id_bigint_not_null;
    ALTER TABLE rate_limits DROP CONSTRAINT rate_limits_pkey;
    ALTER TABLE rate_limits ALTER COLUMN id DROP DEFAULT;
    ALTER SEQUENCE rate_limits_id_seq AS bigint OWNED BY rate_limits.id_bigint;
    ALTER TABLE rate_limits ALTER COLUMN id_bigint
        SET DEFAULT nextval('rate_limits_id_seq'::regclass);
    DROP TRIGGER rate_limits_id_bigint_sync ON rate_limits;
    DROP FUNCTION rate_limits_id_bigint_sync();
    ALTER TABLE rate_limits DROP COLUMN id;
    ALTER TABLE rate_limits RENAME COLUMN id_bigint TO id;
    ALTER TABLE rate_limits ADD CONSTRAINT rate_limits_pkey
        PRIMARY KEY USING INDEX rate_limits_id_bigint_key;
END
$$;
