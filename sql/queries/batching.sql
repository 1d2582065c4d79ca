-- Batches: what the batch loop (kronos_db/batching.py) asks the server, whatever the job.

-- name: select_relation_pages
-- the relation's heap size in pages, now (the physical pass walks pages [0, this))
SELECT (pg_relation_size(%(relation)s::regclass) / current_setting('block_size')::integer)::bigint
       AS pages;

-- name: select_relation_rows
-- the planner's estimate of the relation's rows (reltuples; -1 before its first ANALYZE)
SELECT greatest(reltuples, 0)::bigint AS rows
  FROM pg_class
 WHERE oid = %(relation)s::regclass;

-- The statements below are templates: {table}, {column} (a timestamp, indexed) and {key} (a
-- unique column) are identifiers composed by kronos_db.batching.delete_before.

-- name: count_rows_before
-- how many rows have {column} before the cutoff (an index-only count where the visibility map
-- allows): the census a physical pass must account for, and what picks the walk
SELECT count(*)::bigint AS rows
  FROM {table}
 WHERE {column} < %(cutoff)s::timestamptz;

-- name: delete_before_in_pages
-- one batch of a physical pass: deletes the rows on heap pages [first_page, end_page) whose
-- {column} is before the cutoff (a plain DELETE: the row count is the result)
DELETE FROM {table}
 WHERE ctid >= %(first_page)s::tid
   AND ctid < %(end_page)s::tid
   AND {column} < %(cutoff)s::timestamptz;

-- name: delete_before_in_pages_skip_locked
-- the same batch when a service holds one of its rows: claims with SKIP LOCKED (a row in use
-- is left, never waited on), deletes what it claimed, and says how many it left
WITH claimed AS (
    SELECT ctid
      FROM {table}
     WHERE ctid >= %(first_page)s::tid
       AND ctid < %(end_page)s::tid
       AND {column} < %(cutoff)s::timestamptz
       FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM {table}
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM claimed))
       AND {column} < %(cutoff)s::timestamptz
    RETURNING 1
)
SELECT (SELECT count(*) FROM deleted)::integer AS rows,
       greatest(0, (SELECT count(*)
                      FROM {table}
                     WHERE ctid >= %(first_page)s::tid
                       AND ctid < %(end_page)s::tid
                       AND {column} < %(cutoff)s::timestamptz)
                   - (SELECT count(*) FROM claimed))::integer AS skipped;

-- name: delete_before_after_key
-- one batch in key order: deletes the next limit rows whose {column} is before the cutoff,
-- after the previous batch's last ({column}, {key}); returns how many it took, deleted, and the
-- new last key
WITH batch AS (
    SELECT ctid, {column} AS after_value, {key} AS after_key
      FROM {table}
     WHERE {column} < %(cutoff)s::timestamptz
       AND (%(after_value)s::timestamptz IS NULL
            OR ({column}, {key}) > (%(after_value)s::timestamptz, %(after_key)s))
     ORDER BY {column}, {key}
     LIMIT %(limit)s::integer
),
deleted AS (
    DELETE FROM {table}
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM batch))
       AND {column} < %(cutoff)s::timestamptz
    RETURNING 1
),
last_key AS (
    SELECT after_value, after_key FROM batch ORDER BY after_value DESC, after_key DESC LIMIT 1
)
SELECT (SELECT count(*) FROM batch)::integer AS scanned,
       (SELECT count(*) FROM deleted)::integer AS rows,
       (SELECT after_value FROM last_key) AS after_value,
       (SELECT after_key FROM last_key) AS after_key;

-- name: delete_before_after_key_skip_locked
-- the same batch when a service holds one of its rows: the key range is taken as above, its
-- rows claimed with SKIP LOCKED (a row in use is left), and how many were left is returned
WITH batch AS (
    SELECT ctid, {column} AS after_value, {key} AS after_key
      FROM {table}
     WHERE {column} < %(cutoff)s::timestamptz
       AND (%(after_value)s::timestamptz IS NULL
            OR ({column}, {key}) > (%(after_value)s::timestamptz, %(after_key)s))
     ORDER BY {column}, {key}
     LIMIT %(limit)s::integer
),
claimed AS (
    SELECT ctid
      FROM {table}
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM batch))
       AND {column} < %(cutoff)s::timestamptz
       FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM {table}
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM claimed))
       AND {column} < %(cutoff)s::timestamptz
    RETURNING 1
),
last_key AS (
    SELECT after_value, after_key FROM batch ORDER BY after_value DESC, after_key DESC LIMIT 1
)
SELECT (SELECT count(*) FROM batch)::integer AS scanned,
       (SELECT count(*) FROM deleted)::integer AS rows,
       greatest(0, (SELECT count(*) FROM batch) - (SELECT count(*) FROM claimed))::integer
           AS skipped,
       (SELECT after_value FROM last_key) AS after_value,
       (SELECT after_key FROM last_key) AS after_key;
