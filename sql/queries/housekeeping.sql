-- Housekeeping: expiring sessions and cache rows, resetting rate-limit counters.
-- Every change runs in bounded batches, one statement (one short transaction) per batch. A
-- batch claims its rows with FOR UPDATE SKIP LOCKED, so a row a service holds right now is
-- skipped (a later run takes it) instead of waited on; the outer statement repeats the
-- predicate, so a row changed between the snapshot and the claim is re-checked on its newest
-- version. The clock is always a parameter (%(now)s and the cut-offs computed from it).

-- name: reset_session_settings
-- back to the session's defaults after a job, before the next job reuses the connection
RESET ALL;

-- name: release_session_locks
-- releases any session-level advisory lock a job still held (each job releases its own)
SELECT pg_advisory_unlock_all();

-- name: delete_expired_sessions
-- deletes one batch of sessions past expires_at, oldest first; returns claimed and deleted counts
WITH batch AS (
    SELECT id
      FROM sessions
     WHERE expires_at < %(now)s::timestamptz
     ORDER BY expires_at
     LIMIT %(batch_size)s::integer
       FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM sessions AS s
     USING batch
     WHERE s.id = batch.id
       AND s.expires_at < %(now)s::timestamptz
    RETURNING s.id
)
SELECT (SELECT count(*) FROM batch)::integer AS claimed,
       (SELECT count(*) FROM deleted)::integer AS rows;

-- name: delete_idle_sessions
-- deletes one batch of sessions unused since idle_before, least recent first; returns counts
WITH batch AS (
    SELECT id
      FROM sessions
     WHERE last_active_at < %(idle_before)s::timestamptz
     ORDER BY last_active_at
     LIMIT %(batch_size)s::integer
       FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM sessions AS s
     USING batch
     WHERE s.id = batch.id
       AND s.last_active_at < %(idle_before)s::timestamptz
    RETURNING s.id
)
SELECT (SELECT count(*) FROM batch)::integer AS claimed,
       (SELECT count(*) FROM deleted)::integer AS rows;

-- name: count_expired_sessions
-- how many sessions are past expires_at (what a run would delete, locked rows included)
SELECT count(*)::bigint AS rows
  FROM sessions
 WHERE expires_at < %(now)s::timestamptz;

-- name: count_idle_sessions
-- how many sessions are idle but not yet expired (each session is counted once)
SELECT count(*)::bigint AS rows
  FROM sessions
 WHERE last_active_at < %(idle_before)s::timestamptz
   AND (expires_at IS NULL OR expires_at >= %(now)s::timestamptz);

-- name: delete_expired_cache
-- deletes one batch of cache rows past expires_at, oldest first; returns claimed and deleted counts
WITH batch AS (
    SELECT key
      FROM cache
     WHERE expires_at < %(now)s::timestamptz
     ORDER BY expires_at
     LIMIT %(batch_size)s::integer
       FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM cache AS c
     USING batch
     WHERE c.key = batch.key
       AND c.expires_at < %(now)s::timestamptz
    RETURNING c.key
)
SELECT (SELECT count(*) FROM batch)::integer AS claimed,
       (SELECT count(*) FROM deleted)::integer AS rows;

-- name: count_expired_cache
-- how many cache rows are past expires_at
SELECT count(*)::bigint AS rows
  FROM cache
 WHERE expires_at < %(now)s::timestamptz;

-- name: reset_rate_limits
-- sets one batch of counters idle since window_start back to 0, walking last_request forward
-- from the previous batch's last key (reset rows stay in the range: no re-scanning them)
WITH batch AS (
    SELECT id, last_request
      FROM rate_limits
     WHERE last_request < %(window_start)s::timestamptz
       AND request_count IS DISTINCT FROM 0
       AND (%(after_request)s::timestamptz IS NULL
            OR (last_request, id) > (%(after_request)s::timestamptz, %(after_id)s::integer))
     ORDER BY last_request, id
     LIMIT %(batch_size)s::integer
       FOR UPDATE SKIP LOCKED
),
updated AS (
    UPDATE rate_limits AS r
       SET request_count = 0
      FROM batch
     WHERE r.id = batch.id
       AND r.last_request < %(window_start)s::timestamptz
       AND r.request_count IS DISTINCT FROM 0
    RETURNING r.id
),
last_claimed AS (
    SELECT last_request, id FROM batch ORDER BY last_request DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM batch)::integer AS claimed,
       (SELECT count(*) FROM updated)::integer AS rows,
       (SELECT last_request FROM last_claimed) AS after_request,
       (SELECT id FROM last_claimed) AS after_id;

-- name: count_stale_rate_limits
-- how many counters are idle since window_start and not yet 0
SELECT count(*)::bigint AS rows
  FROM rate_limits
 WHERE last_request < %(window_start)s::timestamptz
   AND request_count IS DISTINCT FROM 0;
