-- housekeeping: what the cron jobs of `kronos-db expire/queue/ratelimits/maintain` need.
--
-- Runs outside a transaction, one statement at a time, because the indexes are built with
-- CREATE INDEX CONCURRENTLY: sessions and message_queue are written all the time, and a plain
-- CREATE INDEX would block every INSERT/UPDATE/DELETE for the whole build. Every statement can
-- run again (IF NOT EXISTS, OR REPLACE), so a run killed half-way is finished by the next one.
--
-- Adding the columns does not rewrite the tables: since PostgreSQL 11 a column added with a
-- non-volatile default (a constant, or now(), which is STABLE and evaluated once by the ALTER)
-- stores that value in the catalog (pg_attribute.attmissingval) and existing rows read it from
-- there. The ALTER holds ACCESS EXCLUSIVE only for the catalog change, under the migration's
-- lock_timeout. Existing rows therefore read the migration's time: existing sessions count as
-- active "now" (none is expired as idle by the first run), and messages already in processing
-- start their stuck clock at the migration (none is requeued early).
-- kronos: no-transaction

-- auth-service: the last time a session was used. The auth service sets it when it sees the
-- session (ideally at most once a minute, see docs/housekeeping.md); new sessions start active.
-- NULL (a writer that sets it so explicitly) means "unknown": only expires_at applies.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS last_active_at timestamptz DEFAULT now();

COMMENT ON COLUMN sessions.last_active_at IS
    'last time the session was used; `kronos-db expire sessions` deletes sessions idle longer than housekeeping.session_idle_timeout';

-- scanned by `kronos-db expire sessions` (the idle rule), oldest first
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_last_active_at_idx
    ON sessions (last_active_at);

-- messaging-service: how many times a message was found stuck in processing and requeued;
-- at housekeeping.max_attempts it goes to failed instead (a poison message stops looping)
ALTER TABLE message_queue ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;

-- when the status last changed: "stuck in processing for 15 minutes" and "processed 7 days
-- ago" are measured from it
ALTER TABLE message_queue ADD COLUMN IF NOT EXISTS status_changed_at timestamptz NOT NULL DEFAULT now();

COMMENT ON COLUMN message_queue.attempts IS
    'times the message was found stuck in processing and requeued by `kronos-db queue requeue-stuck`';

COMMENT ON COLUMN message_queue.status_changed_at IS
    'when status last changed (set by the message_queue_status_changed trigger)';

-- Services change the status without knowing about status_changed_at: the trigger keeps it
-- right. A writer that sets status_changed_at itself in the same UPDATE (kronos-db's requeue,
-- which runs on the clock it is given) keeps its value.
CREATE OR REPLACE FUNCTION message_queue_status_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status_changed_at IS NOT DISTINCT FROM OLD.status_changed_at THEN
        NEW.status_changed_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER message_queue_status_changed
    BEFORE UPDATE OF status ON message_queue
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION message_queue_status_changed();

-- scanned by `kronos-db queue requeue-stuck`: only the messages in processing, by age
CREATE INDEX CONCURRENTLY IF NOT EXISTS message_queue_processing_status_changed_at_idx
    ON message_queue (status_changed_at) WHERE status = 'processing';

-- scanned by `kronos-db queue purge`: only the processed messages, by age
CREATE INDEX CONCURRENTLY IF NOT EXISTS message_queue_processed_status_changed_at_idx
    ON message_queue (status_changed_at) WHERE status = 'processed';
