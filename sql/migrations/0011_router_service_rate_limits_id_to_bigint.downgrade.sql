-- undo: rate_limits.id back to integer, online, the same way it became a bigint (a new
-- column kept in sync, backfilled in batches, its NOT NULL and unique index built without
-- blocking writes, a short swap). Refused when an id or the sequence is already beyond the
-- int4 range: those rows could not be kept.
-- kronos: no-transaction

-- 0. what cannot go back
DO $$
DECLARE
    too_big bigint;
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'rate_limits'::regclass AND attname = 'id') = 'integer'::regtype THEN
        RETURN;  -- swapped back already
    END IF;
    SELECT greatest((SELECT max(id) FROM rate_limits),
                    (SELECT last_value FROM rate_limits_id_seq)) INTO too_big;
    IF too_big > 2147483647 THEN
        RAISE EXCEPTION 'rate_limits.id has reached % (above the int4 range): it cannot go back '
                        'to integer without losing rows', too_big;
    END IF;
END
$$;

-- 1. the int4 column and its trigger
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'rate_limits'::regclass AND attname = 'id') = 'integer'::regtype THEN
        RETURN;
    END IF;
    ALTER TABLE rate_limits ADD COLUMN IF NOT EXISTS id_int4 integer;
    CREATE OR REPLACE FUNCTION rate_limits_id_int4_sync() RETURNS trigger
    LANGUAGE plpgsql AS $body$
    BEGIN
        NEW.id_int4 := NEW.id;
        RETURN NEW;
    END
    $body$;
    CREATE OR REPLACE TRIGGER rate_limits_id_int4_sync
        BEFORE INSERT OR UPDATE ON rate_limits
        FOR EACH ROW WHEN (NEW.id_int4 IS DISTINCT FROM NEW.id)
        EXECUTE FUNCTION rate_limits_id_int4_sync();
END
$$;

-- 2. backfill, 5,000 ids per transaction
DO $$
DECLARE
    batch constant bigint := 5000;
    next_id bigint;
    last_id bigint;
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'rate_limits'::regclass AND attname = 'id') = 'integer'::regtype THEN
        RETURN;
    END IF;
    SELECT min(id), max(id) INTO next_id, last_id FROM rate_limits WHERE id_int4 IS NULL;
    WHILE next_id <= last_id LOOP
        UPDATE rate_limits SET id_int4 = id
         WHERE id >= next_id AND id < next_id + batch AND id_int4 IS DISTINCT FROM id;
        COMMIT;
        next_id := next_id + batch;
    END LOOP;
END
$$;

-- 3. NOT NULL, proven without blocking writes
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'rate_limits'::regclass AND attname = 'id') = 'integer'::regtype THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'rate_limits'::regclass
                      AND conname = 'rate_limits_id_int4_not_null') THEN
        ALTER TABLE rate_limits ADD CONSTRAINT rate_limits_id_int4_not_null
            CHECK (id_int4 IS NOT NULL) NOT VALID;
    END IF;
END
$$;

ALTER TABLE rate_limits VALIDATE CONSTRAINT rate_limits_id_int4_not_null;

-- 4. the primary key's index
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS rate_limits_id_int4_key ON rate_limits (id_int4);

-- 5. the swap back
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'rate_limits'::regclass AND attname = 'id') = 'integer'::regtype THEN
        RETURN;
    END IF;
    LOCK TABLE rate_limits IN ACCESS EXCLUSIVE MODE;
    ALTER TABLE rate_limits ALTER COLUMN id_int4 SET NOT NULL;
    ALTER TABLE rate_limits DROP CONSTRAINT rate_limits_id_int4_not_null;
    ALTER TABLE rate_limits DROP CONSTRAINT rate_limits_pkey;
    ALTER TABLE rate_limits ALTER COLUMN id DROP DEFAULT;
    ALTER SEQUENCE rate_limits_id_seq AS integer OWNED BY rate_limits.id_int4;
    ALTER TABLE rate_limits ALTER COLUMN id_int4
        SET DEFAULT nextval('rate_limits_id_seq'::regclass);
    DROP TRIGGER rate_limits_id_int4_sync ON rate_limits;
    DROP FUNCTION rate_limits_id_int4_sync();
    ALTER TABLE rate_limits DROP COLUMN id;
    ALTER TABLE rate_limits RENAME COLUMN id_int4 TO id;
    ALTER TABLE rate_limits ADD CONSTRAINT rate_limits_pkey
        PRIMARY KEY USING INDEX rate_limits_id_int4_key;
END
$$;
