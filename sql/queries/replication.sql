-- Replication: whether this server is a primary or a standby, how far behind its standbys
-- are, the WAL every replication slot retains, WAL archiving, and on a standby its replay.
--
-- "The position" of a server is where its WAL ends: pg_current_wal_lsn() on a primary; on a
-- standby (whose cascaded standbys and slots follow what it received) the last WAL received,
-- else the last replayed. Lags are byte distances from it (pg_wal_lsn_diff).

-- name: select_server_role
-- whether this server is in recovery (a standby), whether this session may write at all, and
-- on a standby the upstream it streams from (NULL when it does not stream, or the role may not
-- see pg_stat_wal_receiver's details)
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('default_transaction_read_only')::boolean AS read_only,
       current_setting('cluster_name') AS cluster_name,
       current_setting('port')::integer AS server_port,
       receiver.sender_host,
       receiver.sender_port
  FROM (SELECT 1) AS one
  LEFT JOIN pg_stat_wal_receiver AS receiver ON true;

-- name: select_writable
-- whether this session may write: the cheap question the guard asks before every job
SELECT NOT pg_is_in_recovery()
       AND NOT current_setting('default_transaction_read_only')::boolean AS writable;

-- name: select_standbys
-- every standby (or pg_basebackup) streaming from this server: its state, the bytes it has
-- not yet written, flushed and replayed, and the matching times the server measured (NULL
-- when caught up and idle); visible = false when the role may not see the details
WITH position AS (
    SELECT CASE WHEN pg_is_in_recovery()
                THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                ELSE pg_current_wal_lsn()
           END AS lsn
)
SELECT sender.pid,
       coalesce(sender.application_name, '') AS application_name,
       coalesce(host(sender.client_addr), 'local') AS client_address,
       sender.state IS NOT NULL AS visible,
       coalesce(sender.state, '') AS state,
       coalesce(sender.sync_state, '') AS sync_state,
       coalesce(slot.slot_name::text, '') AS slot_name,
       pg_wal_lsn_diff(position.lsn, sender.sent_lsn)::bigint AS send_lag_bytes,
       pg_wal_lsn_diff(position.lsn, sender.write_lsn)::bigint AS write_lag_bytes,
       pg_wal_lsn_diff(position.lsn, sender.flush_lsn)::bigint AS flush_lag_bytes,
       pg_wal_lsn_diff(position.lsn, sender.replay_lsn)::bigint AS replay_lag_bytes,
       extract(epoch FROM sender.write_lag)::float8 AS write_lag_seconds,
       extract(epoch FROM sender.flush_lag)::float8 AS flush_lag_seconds,
       extract(epoch FROM sender.replay_lag)::float8 AS replay_lag_seconds,
       sender.reply_time
  FROM pg_stat_replication AS sender
 CROSS JOIN position
  LEFT JOIN pg_replication_slots AS slot ON slot.active_pid = sender.pid
 ORDER BY pg_wal_lsn_diff(position.lsn, sender.replay_lsn) DESC NULLS FIRST, sender.pid;

-- name: select_slots
-- every replication slot, active or not: the WAL it keeps from being removed (from its
-- restart_lsn), how far its consumer is behind (confirmed_flush_lsn for a logical slot), what
-- PostgreSQL says of its WAL (wal_status, safe_wal_size), and the xmin it holds back
WITH position AS (
    SELECT CASE WHEN pg_is_in_recovery()
                THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                ELSE pg_current_wal_lsn()
           END AS lsn
)
SELECT slot.slot_name::text AS slot_name,
       slot.slot_type,
       coalesce(slot.plugin::text, '') AS plugin,
       coalesce(slot.database::text, '') AS database_name,
       slot.temporary,
       slot.active,
       slot.active_pid,
       coalesce(slot.wal_status, '') AS wal_status,
       slot.safe_wal_size,
       pg_wal_lsn_diff(position.lsn, slot.restart_lsn)::bigint AS retained_bytes,
       pg_wal_lsn_diff(position.lsn, coalesce(slot.confirmed_flush_lsn, slot.restart_lsn))::bigint
           AS lag_bytes,
       age(slot.xmin)::bigint AS xmin_age,
       age(slot.catalog_xmin)::bigint AS catalog_xmin_age
  FROM pg_replication_slots AS slot
 CROSS JOIN position
 ORDER BY pg_wal_lsn_diff(position.lsn, slot.restart_lsn) DESC NULLS LAST, slot.slot_name;

-- name: select_archiver
-- WAL archiving: whether it is on, the last segment archived and the last that failed
SELECT current_setting('archive_mode') AS archive_mode,
       archiver.archived_count,
       coalesce(archiver.last_archived_wal, '') AS last_archived_wal,
       archiver.last_archived_time,
       archiver.failed_count,
       coalesce(archiver.last_failed_wal, '') AS last_failed_wal,
       archiver.last_failed_time,
       archiver.stats_reset
  FROM pg_stat_archiver AS archiver;

-- name: count_archive_ready
-- WAL segments waiting to be archived (.ready files in pg_wal/archive_status; needs pg_monitor)
SELECT count(*)::bigint AS ready
  FROM pg_ls_archive_statusdir() AS status
 WHERE status.name LIKE '%%.ready';

-- name: select_standby_replay
-- on a standby: WAL received but not replayed yet, the last transaction replayed, whether
-- replay is paused, and the WAL receiver (NULL columns: not running, or details not visible)
SELECT pg_get_wal_replay_pause_state() AS pause_state,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint
           AS replay_lag_bytes,
       pg_last_xact_replay_timestamp() AS last_replayed_at,
       extract(epoch FROM %(now)s::timestamptz - pg_last_xact_replay_timestamp())::float8
           AS since_last_replay_seconds,
       receiver.pid IS NOT NULL AS receiver_running,
       receiver.pid IS NULL OR receiver.status IS NOT NULL AS receiver_visible,
       coalesce(receiver.status, '') AS receiver_status,
       receiver.sender_host,
       receiver.sender_port,
       coalesce(receiver.slot_name, '') AS slot_name,
       extract(epoch FROM %(now)s::timestamptz - receiver.last_msg_receipt_time)::float8
           AS since_last_message_seconds
  FROM (SELECT 1) AS one
  LEFT JOIN pg_stat_wal_receiver AS receiver ON true;

-- name: select_pacing_lag
-- before a batch of a bulk job: this server's WAL position (to know what the last batch
-- wrote), the streaming standby furthest behind in replay and the active slot whose consumer
-- is furthest behind, in bytes; hidden counts the standbys whose position the role may not
-- see (one cheap round trip: no catalog lock, no transaction needed)
WITH position AS (
    -- where WAL insertion is, not where it was written out: a batch committed without waiting
    -- for the flush (synchronous_commit = off) has WAL in memory that the standby must replay
    SELECT CASE WHEN pg_is_in_recovery()
                THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                ELSE pg_current_wal_insert_lsn()
           END AS lsn
),
standby AS (
    SELECT coalesce(nullif(sender.application_name, ''), host(sender.client_addr), 'local')
               AS name,
           pg_wal_lsn_diff(position.lsn, sender.replay_lsn)::bigint AS lag_bytes,
           sender.state IS NULL AS hidden
      FROM pg_stat_replication AS sender
     CROSS JOIN position
     WHERE sender.state IS NULL OR sender.state IN ('streaming', 'catchup')
),
slot AS (
    SELECT slot.slot_name::text AS name,
           pg_wal_lsn_diff(position.lsn, coalesce(slot.confirmed_flush_lsn, slot.restart_lsn))::bigint
               AS lag_bytes
      FROM pg_replication_slots AS slot
     CROSS JOIN position
     WHERE slot.active
)
SELECT (SELECT pg_wal_lsn_diff(lsn, '0/0')::bigint FROM position) AS position,
       (SELECT name FROM standby WHERE lag_bytes IS NOT NULL ORDER BY lag_bytes DESC LIMIT 1)
           AS standby_name,
       (SELECT max(lag_bytes) FROM standby) AS standby_lag_bytes,
       (SELECT count(*) FROM standby WHERE hidden)::integer AS hidden_standbys,
       (SELECT name FROM slot WHERE lag_bytes IS NOT NULL ORDER BY lag_bytes DESC LIMIT 1)
           AS slot_name,
       (SELECT max(lag_bytes) FROM slot) AS slot_lag_bytes;
