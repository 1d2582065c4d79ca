-- Housekeeping: expiring sessions and cache rows, resetting rate-limit counters.
-- Every change runs in batches sized by time, one short transaction each: expiry through the
-- templates of batching.sql (kronos_db.batching.delete_before), the rest below. Rows a service
-- holds are skipped (FOR UPDATE SKIP LOCKED), never waited on; the outer statement repeats the
-- predicate, so a row changed after the statement's snapshot is re-checked on its newest
-- version. The clock is always a parameter (%(now)s and the cut-offs computed from it).

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

-- name: count_expired_cache
-- how many cache rows are past expires_at
SELECT count(*)::bigint AS rows
  FROM cache
 WHERE expires_at < %(now)s::timestamptz;

-- name: reset_rate_limits
-- sets one batch of counters idle since window_start back to 0, walking last_request forward
-- from the previous batch's last key (reset rows stay in the range: no re-scanning them);
-- scanned is how many it claimed: fewer than the limit means no counter is left to reset
WITH batch AS (
    SELECT id, last_request
      FROM rate_limits
     WHERE last_request < %(window_start)s::timestamptz
       AND request_count IS DISTINCT FROM 0
       AND (%(after_request)s::timestamptz IS NULL
            OR (last_request, id) > (%(after_request)s::timestamptz, %(after_id)s::integer))
     ORDER BY last_request, id
     LIMIT %(limit)s::integer
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
SELECT (SELECT count(*) FROM batch)::integer AS scanned,
       (SELECT count(*) FROM updated)::integer AS rows,
       (SELECT last_request FROM last_claimed) AS after_request,
       (SELECT id FROM last_claimed) AS after_id;

-- name: count_stale_rate_limits
-- how many counters are idle since window_start and not yet 0
SELECT count(*)::bigint AS rows
  FROM rate_limits
 WHERE last_request < %(window_start)s::timestamptz
   AND request_count IS DISTINCT FROM 0;

-- name: select_expired_rows
-- (health's expired_rows check: are the expiry jobs keeping up?)
-- sessions and cache rows whose expiry has passed and that are still waiting to be deleted,
-- counted up to a cap, with the oldest expiry (both served by the expires_at indexes)
SELECT 'sessions' AS table_name,
       (SELECT count(*) FROM (SELECT 1 FROM sessions WHERE expires_at < %(now)s::timestamptz
                               LIMIT %(cap)s::bigint) AS capped)::bigint AS expired_rows,
       (SELECT min(expires_at) FROM sessions WHERE expires_at < %(now)s::timestamptz) AS oldest_expiry
UNION ALL
SELECT 'cache',
       (SELECT count(*) FROM (SELECT 1 FROM cache WHERE expires_at < %(now)s::timestamptz
                               LIMIT %(cap)s::bigint) AS capped)::bigint,
       (SELECT min(expires_at) FROM cache WHERE expires_at < %(now)s::timestamptz);
