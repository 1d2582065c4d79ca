-- undo: housekeeping: session activity, queue retries and status age.
-- In one transaction: dropping columns needs ACCESS EXCLUSIVE anyway (held briefly, under the
-- migration's lock_timeout); dropping a column drops its indexes with it.

DROP TRIGGER IF EXISTS message_queue_status_changed ON message_queue;
DROP FUNCTION IF EXISTS message_queue_status_changed();
DROP INDEX IF EXISTS message_queue_processed_status_changed_at_idx;
DROP INDEX IF EXISTS message_queue_processing_status_changed_at_idx;
ALTER TABLE message_queue DROP COLUMN IF EXISTS status_changed_at;
ALTER TABLE message_queue DROP COLUMN IF EXISTS attempts;
DROP INDEX IF EXISTS sessions_last_active_at_idx;
ALTER TABLE sessions DROP COLUMN IF EXISTS last_active_at;
