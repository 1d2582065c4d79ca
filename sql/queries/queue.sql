-- The message queue's housekeeping: stats, requeueing messages a dead consumer left in
-- processing, purging processed messages. Batches are sized by time (kronos_db/batching.py);
-- rows a consumer holds are never waited on (FOR UPDATE SKIP LOCKED: a consumer holding a
-- message is alive, its message is left alone); the clock is a parameter.

-- name: select_queue_stats
-- per topic and status: message count, oldest message age, longest time in that status, max attempts
SELECT topic::text AS topic,
       status::text AS status,
       count(*)::bigint AS messages,
       min(created_at) AS oldest_created_at,
       %(now)s::timestamptz - min(created_at) AS oldest_age,
       %(now)s::timestamptz - min(status_changed_at) AS longest_in_status,
       max(attempts)::integer AS max_attempts
  FROM message_queue
 WHERE (%(topic)s::text IS NULL OR topic = %(topic)s::text)
 GROUP BY topic, status
 ORDER BY topic, status;

-- name: requeue_stuck_messages
-- moves one batch of messages in processing since stuck_before back to pending (or to failed
-- at max_attempts), counting the attempt; wakes the consumers of the requeued topics
WITH batch AS (
    SELECT id
      FROM message_queue
     WHERE status = 'processing'
       AND status_changed_at < %(stuck_before)s::timestamptz
     ORDER BY status_changed_at
     LIMIT %(limit)s::integer
       FOR UPDATE SKIP LOCKED
),
moved AS (
    UPDATE message_queue AS m
       SET status = CASE WHEN m.attempts + 1 >= %(max_attempts)s::integer
                         THEN 'failed' ELSE 'pending' END,
           attempts = m.attempts + 1,
           status_changed_at = %(now)s::timestamptz
      FROM batch
     WHERE m.id = batch.id
       AND m.status = 'processing'
       AND m.status_changed_at < %(stuck_before)s::timestamptz
    RETURNING m.topic, m.status
),
woken AS (
    SELECT pg_notify('kronos_message_queue', topic)
      FROM (SELECT DISTINCT topic FROM moved WHERE status = 'pending') AS topics
)
SELECT (SELECT count(*) FROM batch)::integer AS scanned,
       (SELECT count(*) FROM moved)::integer AS rows,
       (SELECT count(*) FROM moved WHERE status = 'pending')::integer AS requeued,
       (SELECT count(*) FROM moved WHERE status = 'failed')::integer AS failed,
       (SELECT count(*) FROM woken)::integer AS topics_woken;

-- name: count_stuck_messages
-- how many messages are stuck in processing, and how many of them would go to failed
SELECT count(*)::bigint AS rows,
       (count(*) FILTER (WHERE attempts + 1 < %(max_attempts)s::integer))::bigint AS requeued,
       (count(*) FILTER (WHERE attempts + 1 >= %(max_attempts)s::integer))::bigint AS failed
  FROM message_queue
 WHERE status = 'processing'
   AND status_changed_at < %(stuck_before)s::timestamptz;

-- name: delete_processed_messages
-- one batch in key order: deletes the next limit processed messages older than processed_before
-- after the previous batch's last (status_changed_at, id), through the partial index; returns
-- how many it took, deleted, and the new last key
WITH batch AS (
    SELECT ctid, status_changed_at, id
      FROM message_queue
     WHERE status = 'processed'
       AND status_changed_at < %(processed_before)s::timestamptz
       AND (%(after_at)s::timestamptz IS NULL
            OR (status_changed_at, id) > (%(after_at)s::timestamptz, %(after_id)s::bigint))
     ORDER BY status_changed_at, id
     LIMIT %(limit)s::integer
),
deleted AS (
    DELETE FROM message_queue
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM batch))
       AND status = 'processed'
       AND status_changed_at < %(processed_before)s::timestamptz
    RETURNING 1
),
last_key AS (
    SELECT status_changed_at, id FROM batch ORDER BY status_changed_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM batch)::integer AS scanned,
       (SELECT count(*) FROM deleted)::integer AS rows,
       (SELECT status_changed_at FROM last_key) AS after_at,
       (SELECT id FROM last_key) AS after_id;

-- name: delete_processed_messages_skip_locked
-- the same batch when a service holds one of its rows: the key range is taken as above, its
-- rows claimed with SKIP LOCKED (a message in use is left), and how many were left is returned
WITH batch AS (
    SELECT ctid, status_changed_at, id
      FROM message_queue
     WHERE status = 'processed'
       AND status_changed_at < %(processed_before)s::timestamptz
       AND (%(after_at)s::timestamptz IS NULL
            OR (status_changed_at, id) > (%(after_at)s::timestamptz, %(after_id)s::bigint))
     ORDER BY status_changed_at, id
     LIMIT %(limit)s::integer
),
claimed AS (
    SELECT ctid
      FROM message_queue
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM batch))
       AND status = 'processed'
       AND status_changed_at < %(processed_before)s::timestamptz
       FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM message_queue
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM claimed))
       AND status = 'processed'
       AND status_changed_at < %(processed_before)s::timestamptz
    RETURNING 1
),
last_key AS (
    SELECT status_changed_at, id FROM batch ORDER BY status_changed_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM batch)::integer AS scanned,
       (SELECT count(*) FROM deleted)::integer AS rows,
       greatest(0, (SELECT count(*) FROM batch) - (SELECT count(*) FROM claimed))::integer
           AS skipped,
       (SELECT status_changed_at FROM last_key) AS after_at,
       (SELECT id FROM last_key) AS after_id;

-- name: count_processed_messages
-- how many processed messages are older than processed_before
SELECT count(*)::bigint AS rows
  FROM message_queue
 WHERE status = 'processed'
   AND status_changed_at < %(processed_before)s::timestamptz;

-- name: select_pending_messages
-- (health's message_queue check: are the consumers keeping up?)
-- pending messages per topic and the oldest one's creation time (the partial index on
-- pending messages by topic and age serves it)
SELECT topic::text,
       count(*)::bigint AS pending,
       min(created_at) AS oldest_created_at
  FROM message_queue
 WHERE status = 'pending'
 GROUP BY topic
 ORDER BY min(created_at) NULLS LAST, topic;
