"""Reports and health checks, against the real server: each situation is built for real, found,
and not reported once it is gone."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from conftest import Database, retry_on_eviction, unique_name, url_for
from psycopg import errors as pg_errors
from psycopg import sql

from kronos_db import queue
from kronos_db.checks import Limits
from kronos_db.config import HealthSettings, Settings
from kronos_db.errors import ReportUnavailableError
from kronos_db.reports import (
    activity,
    indexes,
    maintenance,
    queries,
    sequences,
    snapshots,
)
from kronos_db.reports.health import Status, health_report

T = TypeVar("T")
LIMITS = Limits(statement_timeout=timedelta(seconds=5), lock_timeout=timedelta(milliseconds=500))


def now() -> datetime:
    return datetime.now(UTC)


def eventually(probe: Callable[[], T], *, timeout: float = 6.0) -> T:
    """Statistics reach the shared views up to a second after the transaction: poll."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def check(
    conn: psycopg.Connection[Any], name: str, at: datetime | None = None, **thresholds: Any
) -> Any:
    settings = Settings(health=dataclasses.replace(HealthSettings(), **thresholds))
    (result,) = health_report(conn, settings, now=at or now(), only=[name]).checks
    return result


# ----------------------------------------------------------------------------- indexes


def test_fresh_schema_has_no_index_problem(conn: psycopg.Connection[Any]) -> None:
    assert indexes.duplicate_indexes(conn, LIMITS) == []
    assert indexes.invalid_indexes(conn, LIMITS) == []
    # the schema indexes every foreign key, as a DBA expects
    assert indexes.unindexed_foreign_keys(conn, LIMITS) == []
    for name in ("duplicate_indexes", "invalid_indexes", "unindexed_foreign_keys"):
        assert check(conn, name).status is Status.OK


def test_duplicate_and_redundant_indexes(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE INDEX users_email_copy_idx ON users (email)")
    conn.execute("CREATE TABLE pairs (a int, b int)")
    conn.execute("CREATE INDEX pairs_a_idx ON pairs (a)")
    conn.execute("CREATE INDEX pairs_a_b_idx ON pairs (a, b)")
    conn.execute("CREATE INDEX pairs_b_partial_idx ON pairs (b) WHERE a > 0")
    conn.execute("CREATE INDEX pairs_b_idx ON pairs (b)")
    found = {
        (row.index_name, row.covered_by, row.kind)
        for row in indexes.duplicate_indexes(conn, LIMITS)
    }
    assert found == {
        # a plain index on the columns of a unique constraint
        ("users_email_copy_idx", "users_email_key", "duplicate"),
        # a leading prefix of a wider btree
        ("pairs_a_idx", "pairs_a_b_idx", "prefix"),
    }  # the partial index differs by its predicate: not a duplicate
    result = check(conn, "duplicate_indexes")
    assert result.status is Status.WARNING
    assert "pairs_a_idx" in result.summary
    conn.execute("DROP INDEX users_email_copy_idx, pairs_a_idx")
    assert indexes.duplicate_indexes(conn, LIMITS) == []
    assert check(conn, "duplicate_indexes").status is Status.OK


def test_unused_index_found_until_scanned(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE readings (id int, value int)")
    conn.execute("INSERT INTO readings SELECT g, g FROM generate_series(1, 20000) g")
    conn.execute("CREATE INDEX readings_value_idx ON readings (value)")
    conn.execute("ANALYZE readings")

    def unused() -> set[str]:
        return {row.index_name for row in indexes.unused_indexes(conn, LIMITS)}

    assert "readings_value_idx" in unused()
    # it is large enough for the threshold set here: a WARNING
    result = check(conn, "unused_indexes", unused_index_minimum_bytes=1)
    assert result.status is Status.WARNING
    assert "readings_value_idx" in result.summary
    # unique indexes enforce something: never "unused"
    assert "users_email_key" not in unused()
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SELECT * FROM readings WHERE value = 42").fetchall()
    assert eventually(lambda: "readings_value_idx" not in unused())


def test_invalid_index_from_a_failed_concurrent_build(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE codes (code text)")
    conn.execute("INSERT INTO codes VALUES ('a'), ('a')")
    with pytest.raises(pg_errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY codes_code_key ON codes (code)")
    rows = indexes.invalid_indexes(conn, LIMITS)
    assert [row.index_name for row in rows] == ["codes_code_key"]
    result = check(conn, "invalid_indexes")
    assert result.status is Status.WARNING
    assert "codes_code_key" in result.summary
    assert "DROP INDEX CONCURRENTLY" in result.hint
    # an invalid index is not also "unused" or a duplicate: one finding, one place
    assert "codes_code_key" not in {r.index_name for r in indexes.unused_indexes(conn, LIMITS)}
    conn.execute("DROP INDEX codes_code_key")
    assert check(conn, "invalid_indexes").status is Status.OK


def test_unindexed_foreign_key(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE audit (id serial PRIMARY KEY, "
        "user_id int REFERENCES users (id), route_id int REFERENCES routes (id))"
    )
    conn.execute("CREATE INDEX audit_route_id_partial_idx ON audit (route_id) WHERE id > 0")
    found = {(row.table_name, row.columns) for row in indexes.unindexed_foreign_keys(conn, LIMITS)}
    # a partial index does not serve the foreign key's lookups
    assert found == {("audit", "user_id"), ("audit", "route_id")}
    assert check(conn, "unindexed_foreign_keys").status is Status.WARNING
    conn.execute("CREATE INDEX audit_user_id_route_id_idx ON audit (user_id, route_id)")
    conn.execute("CREATE INDEX audit_route_id_idx ON audit (route_id)")
    assert indexes.unindexed_foreign_keys(conn, LIMITS) == []


# ----------------------------------------------------------------------------- maintenance


def test_dead_tuples_with_autovacuum_disabled(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE churn (id int) WITH (autovacuum_enabled = off)")
    conn.execute("INSERT INTO churn SELECT generate_series(1, 20000)")
    conn.execute("DELETE FROM churn WHERE id > 5000")

    def churn() -> maintenance.VacuumStats | None:
        rows = maintenance.vacuum_stats(conn, LIMITS, limit=100)
        row = next((r for r in rows if r.table_name == "churn"), None)
        return row if row is not None and row.dead_tuples >= 15000 else None

    row = eventually(churn)
    assert row is not None
    assert not row.autovacuum_enabled
    assert row.vacuum_overdue
    result = check(conn, "dead_tuples")
    assert result.status is Status.CRITICAL  # 75% dead, over 50%
    assert "churn" in result.summary
    assert "autovacuum disabled on public.churn" in result.summary
    conn.execute("VACUUM churn")
    assert eventually(lambda: check(conn, "dead_tuples").status is Status.OK)


def test_wraparound_and_xmin_checks_read_the_cluster(conn: psycopg.Connection[Any]) -> None:
    databases = maintenance.database_wraparound(conn, LIMITS)
    assert conn.info.dbname in {row.database_name for row in databases}
    assert all(0 <= row.xid_percent < 50 for row in databases)
    assert check(conn, "transaction_wraparound").status is Status.OK
    assert check(conn, "multixact_wraparound").status is Status.OK
    # a threshold of 0% makes any age a finding: the check does compare
    assert (
        check(
            conn, "transaction_wraparound", wraparound_warning=0.0, wraparound_critical=100.0
        ).status
        is Status.WARNING
    )


def test_bloat_estimate_flags_missing_statistics(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE wide (id int, payload text) WITH (fillfactor = 70)")
    conn.execute("INSERT INTO wide SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
    rows = [r for r in maintenance.bloat(conn, LIMITS, minimum_bytes=0) if r.table_name == "wide"]
    assert rows
    assert not rows[0].reliable
    conn.execute("ANALYZE wide")
    (fresh,) = [
        r for r in maintenance.bloat(conn, LIMITS, minimum_bytes=0) if r.table_name == "wide"
    ]
    assert fresh.reliable
    assert fresh.fillfactor == 70
    assert fresh.bloat_percent < 20  # freshly loaded: little to no bloat
    conn.execute("DELETE FROM wide WHERE id % 10 <> 0")
    conn.execute("ANALYZE wide")
    (bloated,) = [
        r for r in maintenance.bloat(conn, LIMITS, minimum_bytes=0) if r.table_name == "wide"
    ]
    assert bloated.reliable
    assert bloated.bloat_percent > 70
    result = check(conn, "bloat", bloat_minimum_bytes=0)
    assert result.status is Status.CRITICAL
    assert "wide" in result.summary
    # too small to matter under the default minimum: not judged at all
    assert check(conn, "bloat").status is Status.OK


# ----------------------------------------------------------------------------- activity


@pytest.fixture
def other(database: Database) -> Iterator[psycopg.Connection[Any]]:
    with database.connect() as connection:
        yield connection


def test_blocked_session_and_its_blocker(
    conn: psycopg.Connection[Any], database: Database, other: psycopg.Connection[Any]
) -> None:
    assert activity.blocking_chains(conn, LIMITS, now=now()) == []
    assert check(conn, "blocked_sessions").status is Status.OK
    other.execute("BEGIN")
    other.execute("LOCK TABLE routes IN SHARE MODE")
    blocker_pid = other.info.backend_pid
    errors: list[BaseException] = []

    def insert() -> None:
        try:
            with database.connect() as waiting:
                waiting.execute("SET statement_timeout = '20s'")
                waiting.execute(
                    "INSERT INTO routes (path, service, method) VALUES ('/x', 'svc', 'GET')"
                )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=insert)
    thread.start()
    try:
        rows = eventually(lambda: activity.blocking_chains(conn, LIMITS, now=now()))
        assert len(rows) == 1
        (row,) = rows
        assert row.blocking_pid == blocker_pid
        assert row.blocking_is_root
        assert "INSERT INTO routes" in row.blocked_query
        assert "routes RowExclusiveLock" in row.wanted_lock
        result = check(conn, "blocked_sessions", blocked_warning=timedelta(0))
        assert result.status is Status.WARNING
        assert f"blocked by pid {blocker_pid}" in result.summary
        # the blocker is also a session idle in transaction
        idle = activity.idle_in_transaction(conn, LIMITS, now=now(), threshold=timedelta(0))
        assert blocker_pid in {r.pid for r in idle}
    finally:
        other.execute("ROLLBACK")
        thread.join(timeout=20)
    assert not errors
    assert activity.blocking_chains(conn, LIMITS, now=now()) == []


def test_idle_in_transaction_ages_against_thresholds(
    conn: psycopg.Connection[Any], other: psycopg.Connection[Any]
) -> None:
    thresholds = {
        "idle_in_transaction_warning": timedelta(0),
        "idle_in_transaction_critical": timedelta(seconds=1),
    }
    assert check(conn, "idle_in_transaction", **thresholds).status is Status.OK
    other.execute("BEGIN")
    other.execute("SELECT 1")
    assert eventually(
        lambda: check(conn, "idle_in_transaction", **thresholds).status is Status.WARNING
    )
    time.sleep(1.1)
    result = check(conn, "idle_in_transaction", **thresholds)
    assert result.status is Status.CRITICAL
    assert str(other.info.backend_pid) in result.summary
    # the default thresholds (1 minute) see nothing yet: they do compare the age
    assert check(conn, "idle_in_transaction").status is Status.OK
    other.execute("COMMIT")
    assert check(conn, "idle_in_transaction", **thresholds).status is Status.OK


def test_catalog_checks_do_not_hang_behind_a_ddl_lock(
    conn: psycopg.Connection[Any], other: psycopg.Connection[Any]
) -> None:
    other.execute("BEGIN")
    other.execute("LOCK TABLE cache IN ACCESS EXCLUSIVE MODE")
    try:
        started = time.monotonic()
        settings = Settings(
            health=dataclasses.replace(HealthSettings(), lock_timeout=timedelta(milliseconds=200))
        )
        report = health_report(conn, settings, now=now(), only=["expired_rows", "connections"])
        elapsed = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
    statuses = {r.name: r for r in report.checks}
    assert statuses["expired_rows"].status is Status.UNKNOWN
    assert "lock" in statuses["expired_rows"].summary
    assert statuses["connections"].status is Status.OK  # the other checks still ran
    assert elapsed < 5


# ----------------------------------------------------------------------------- sequences


def test_sequence_near_its_maximum_and_its_column_type(conn: psycopg.Connection[Any]) -> None:
    assert check(conn, "sequences").status is Status.OK
    conn.execute("SELECT setval('roles_id_seq', 2000000000)")  # int4 serial: 93% used
    rows = {row.sequence_name: row for row in sequences.sequence_headroom(conn, LIMITS)}
    assert rows["roles_id_seq"].used_percent == pytest.approx(93.13, abs=0.01)
    assert rows["roles_id_seq"].values_left == str(2147483647 - 2000000000)
    result = check(conn, "sequences")
    assert result.status is Status.CRITICAL
    assert "roles_id_seq" in result.summary
    conn.execute("SELECT setval('roles_id_seq', 1)")
    # a bigint sequence behind an int4 column runs out at the column's limit
    conn.execute("CREATE TABLE tickets (id int)")
    conn.execute("CREATE SEQUENCE tickets_id_seq AS bigint OWNED BY tickets.id")
    conn.execute("SELECT setval('tickets_id_seq', 1700000000)")
    rows = {row.sequence_name: row for row in sequences.sequence_headroom(conn, LIMITS)}
    assert rows["tickets_id_seq"].limited_by == "column type"
    assert rows["tickets_id_seq"].used_percent == pytest.approx(79.16, abs=0.01)
    result = check(conn, "sequences")
    assert result.status is Status.WARNING
    assert "tickets_id_seq" in result.summary


# ----------------------------------------------------------------------------- Kronos checks


def test_log_partitions_reports_the_partitions_modules_verdict(
    conn: psycopg.Connection[Any],
) -> None:
    from kronos_db.config import Settings
    from kronos_db.partitions.status import partition_status

    result = check(conn, "log_partitions")
    assert result.status is Status.OK
    assert result.metrics[0].value == 7  # partitions ready ahead of today's
    # a row waits in the default partition: the same WARNING as `partitions status`
    conn.execute(
        'INSERT INTO logs (service_name, level, message, "timestamp") '
        "VALUES ('auth', 'INFO', 'in a gap', now() + interval '20 days')"
    )
    result = check(conn, "log_partitions")
    status = partition_status(conn, Settings(), now())
    assert (result.status, status.level) == (Status.WARNING, Status.WARNING)
    assert result.summary == "; ".join(status.problems)
    assert "1 row(s) wait in the default partition logs_default" in result.summary
    assert result.data == (dataclasses.replace(status, now=result.data[0].now),)
    # a stray table holding log rows, and an archive left pending: WARNING too, both said
    conn.execute("CREATE TABLE logs_p2001_01_01 (LIKE logs)")
    conn.execute(
        'INSERT INTO logs_p2001_01_01 (id, service_name, level, message, "timestamp") '
        "VALUES (1, 'auth', 'INFO', 'stranded', '2001-01-01T00:00:00Z')"
    )
    conn.execute("CREATE TABLE logs_p2001_01_02 (LIKE logs)")
    conn.execute(
        "COMMENT ON TABLE logs_p2001_01_02 IS "
        "'kronos-db: retired from public.logs: archive pending'"
    )
    result = check(conn, "log_partitions")
    assert result.status is Status.WARNING
    assert "stray table public.logs_p2001_01_01 holds 1 row(s)" in result.summary
    assert "finish retiring logs_p2001_01_02: archive pending" in result.summary


def test_log_partition_coverage_ahead(conn: psycopg.Connection[Any]) -> None:
    today = now()
    assert check(conn, "log_partitions", today).status is Status.OK
    # the clock moves: six days later fewer than three partitions remain ahead
    assert check(conn, "log_partitions", today + timedelta(days=6)).status is Status.WARNING
    late = check(conn, "log_partitions", today + timedelta(days=30))
    assert late.status is Status.CRITICAL
    assert "no partition covers now" in late.summary
    # a hole between partitions: coverage stops at it
    (middle,) = conn.execute(
        "SELECT 'logs_p' || to_char((now() AT TIME ZONE 'UTC')::date + 3, 'YYYY_MM_DD')"
    ).fetchone() or ("",)
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(middle)))
    holed = check(conn, "log_partitions", today)
    assert holed.metrics[0].value == 2
    assert holed.status is Status.WARNING


def test_expired_rows_queue_and_backups(conn: psycopg.Connection[Any]) -> None:
    moment = now()
    assert check(conn, "expired_rows", moment).status is Status.OK
    conn.execute(
        "INSERT INTO cache (key, value, expires_at) "
        "SELECT 'k' || g, 'v', %(at)s::timestamptz - interval '1 hour' "
        "FROM generate_series(1, 3) g",
        {"at": moment},
    )
    result = check(conn, "expired_rows", moment, expired_rows_warning=2)
    assert result.status is Status.WARNING
    assert "cache 3" in result.summary
    assert check(conn, "message_queue", moment).status is Status.OK
    conn.execute(
        "INSERT INTO message_queue (topic, payload, created_at) VALUES "
        "('mail', '{}', %(at)s::timestamptz - interval '10 minutes'), "
        "('mail', '{}', %(at)s::timestamptz), "
        "('sms', '{}', %(at)s::timestamptz - interval '2 hours')",
        {"at": moment},
    )
    conn.execute("UPDATE message_queue SET status = 'processed' WHERE topic = 'sms'")
    topics = queue.pending_messages(conn, LIMITS)
    assert [(t.topic, t.pending) for t in topics] == [("mail", 2)]
    result = check(conn, "message_queue", moment)
    assert result.status is Status.WARNING
    assert "10m" in result.summary
    # no verified backup: the backups module's verdict (tests/test_health_owners.py)
    assert check(conn, "last_backup", moment).status is Status.CRITICAL


# ----------------------------------------------------------------------------- statements


def _my_statements(conn: psycopg.Connection[Any], **kwargs: Any) -> list[queries.SlowQuery]:
    return list(queries.slow_queries(conn, now=now(), limits=LIMITS, limit=100, **kwargs).queries)


def test_slow_query_recorded_in_pg_stat_statements(conn: psycopg.Connection[Any]) -> None:
    assert not [q for q in _my_statements(conn) if "pg_sleep" in q.query]
    assert check(conn, "slow_queries").status is Status.OK

    def scenario(attempt: int) -> None:
        conn.execute("SELECT pg_sleep(0.6)")
        (slow,) = [q for q in _my_statements(conn, order="mean") if "pg_sleep" in q.query]
        if attempt == 0:
            assert slow.calls == 1
        assert slow.mean_ms >= 600
        assert slow.role_name == "postgres"
        assert slow.percent_of_total is not None
        assert slow.percent_of_total > 50
        result = check(conn, "slow_queries", slow_query_minimum_calls=1)
        assert result.status is Status.WARNING
        assert "pg_sleep" in result.summary
        critical = check(
            conn,
            "slow_queries",
            slow_query_minimum_calls=1,
            slow_query_critical=timedelta(milliseconds=550),
        )
        assert critical.status is Status.CRITICAL

    retry_on_eviction(conn, scenario)


def test_windows_come_from_snapshots(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ReportUnavailableError, match="no snapshot"):
        queries.slow_queries(conn, now=now(), limits=LIMITS, since=timedelta(hours=1))

    def scenario(attempt: int) -> None:
        # each attempt lives ten hours after the previous one: its own snapshot is the newest
        start = now() + timedelta(hours=10 * attempt)
        conn.execute("SELECT pg_sleep(0.05)")
        result = snapshots.take_snapshot(conn, now=start, limits=LIMITS)
        assert result.taken
        assert result.statements > 0
        assert result.tables > 0
        conn.execute("SELECT pg_sleep(0.05)")
        conn.execute("SELECT pg_sleep(0.05)")
        later = start + timedelta(hours=2)
        window = queries.slow_queries(
            conn, now=later, limits=LIMITS, since=timedelta(hours=1), limit=100
        )
        (sleeps,) = [q for q in window.queries if "pg_sleep" in q.query]
        assert sleeps.calls == 2  # the call before the snapshot is not in the window
        totals = [q for q in _my_statements(conn) if "pg_sleep" in q.query]
        assert totals[0].calls > sleeps.calls  # the totals do include it
        conn.execute("CREATE TABLE IF NOT EXISTS grows (id int)")
        conn.execute("INSERT INTO grows SELECT generate_series(1, 1000)")
        _snapshot, growth = snapshots.table_growth(
            conn, now=later, since=timedelta(hours=1), limits=LIMITS
        )
        assert any(row.table_name == "grows" and row.new_since_snapshot for row in growth)
        # retention
        kept = snapshots.take_snapshot(conn, now=later, limits=LIMITS, keep=timedelta(minutes=30))
        assert kept.deleted >= 1
        remaining = snapshots.snapshot_before(conn, start, LIMITS)
        assert remaining is not None
        assert remaining.taken_at == later  # the older one is gone

    retry_on_eviction(conn, scenario)


def test_statements_extension_in_another_schema_and_missing(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP EXTENSION pg_stat_statements")
    with pytest.raises(ReportUnavailableError) as caught:
        queries.slow_queries(conn, now=now(), limits=LIMITS)
    assert "not installed" in caught.value.message
    assert "CREATE EXTENSION" in caught.value.hint
    result = check(conn, "slow_queries")
    assert result.status is Status.UNKNOWN
    assert "CREATE EXTENSION" in result.hint
    conn.execute("CREATE SCHEMA monitoring")
    conn.execute("CREATE EXTENSION pg_stat_statements SCHEMA monitoring")

    def scenario(_attempt: int) -> None:
        conn.execute("SELECT pg_sleep(0.01)")
        assert [q for q in _my_statements(conn) if "pg_sleep" in q.query]

    retry_on_eviction(conn, scenario)


def test_shorten_query() -> None:
    text = "SELECT *\n  FROM t WHERE id IN ($1, $2, $3, $4, $5, $6)   AND x = $7"
    assert queries.shorten_query(text) == "SELECT * FROM t WHERE id IN ($1, …) AND x = $7"
    assert queries.shorten_query("x" * 50, 10) == "x" * 9 + "…"
    commented = "-- name: select_x\n-- what it returns\nSELECT 1 -- trailing\nFROM t"
    assert queries.shorten_query(commented) == "SELECT 1 -- trailing FROM t"
    assert queries.shorten_query("/* app=api */ SELECT 1") == "SELECT 1"


# ----------------------------------------------------------------------------- health overall


def test_health_with_only_pg_monitor(database: Database) -> None:
    role = unique_name("kronos_monitor")
    with psycopg.connect(url_for(database.name), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(role))
        )
        # a row waits in the default partition, which pg_monitor alone cannot read
        admin.execute(
            'INSERT INTO logs (service_name, level, message, "timestamp") '
            "VALUES ('auth', 'INFO', 'in a gap', now() + interval '20 days')"
        )
        admin.execute("ANALYZE logs_default")
    try:
        with psycopg.connect(url_for(database.name, user=role), autocommit=True) as monitor:
            report = health_report(monitor, Settings(), now=now(), with_charts=True)
        by_name = {r.name: r for r in report.checks}
        # catalog and statistics checks work for pg_monitor
        for name in (
            "connections",
            "long_queries",
            "idle_in_transaction",
            "blocked_sessions",
            "xmin_horizon",
            "transaction_wraparound",
            "dead_tuples",
            "bloat",
            "invalid_indexes",
            "duplicate_indexes",
            "unused_indexes",
            "unindexed_foreign_keys",
            "slow_queries",
            "log_partitions",
        ):
            assert by_name[name].status is not Status.UNKNOWN, by_name[name]
        # the Kronos data is not readable with pg_monitor alone: UNKNOWN, with the GRANT to run
        for name in ("expired_rows", "message_queue", "last_backup"):
            assert by_name[name].status is Status.UNKNOWN
            assert "GRANT SELECT" in by_name[name].hint
        assert by_name["sequences"].status is Status.UNKNOWN
        assert "GRANT SELECT ON ALL SEQUENCES" in by_name["sequences"].hint
        assert "planner estimate" in by_name["log_partitions"].summary
        assert report.largest_tables  # the HTML charts still have data
    finally:
        with psycopg.connect(url_for(database.name), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_migration_0010_downgrade_keeps_the_extension(database: Database) -> None:
    from kronos_db import migrations
    from kronos_db.config import Settings

    tables = (
        "SELECT count(*) FROM pg_class WHERE relname IN "
        "('kronos_stat_snapshots', 'kronos_statement_snapshots', 'kronos_table_snapshots')"
    )
    extension = "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
    with database.connect() as connection:
        assert connection.execute(tables).fetchone() == (3,)
        assert connection.execute(extension).fetchone() == (1,)
    migrations.downgrade(Settings(), database.target, "0009")
    with database.connect() as connection:
        assert connection.execute(tables).fetchone() == (0,)
        # left on purpose: server-level monitoring others may rely on (docs/reports.md)
        assert connection.execute(extension).fetchone() == (1,)
    migrations.upgrade(Settings(), database.target, "head")  # and again: IF NOT EXISTS
    with database.connect() as connection:
        assert connection.execute(tables).fetchone() == (3,)


def test_xmin_horizon_held_by_a_snapshot(
    conn: psycopg.Connection[Any], other: psycopg.Connection[Any]
) -> None:
    thresholds = {"xmin_horizon_warning": timedelta(0), "xmin_horizon_critical": timedelta(hours=1)}
    pid = other.info.backend_pid
    assert str(pid) not in {h.name for h in maintenance.xmin_holders(conn, LIMITS, now=now())}
    other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    other.execute("SELECT count(*) FROM users")  # the snapshot is kept until the end
    try:
        holders = maintenance.xmin_holders(conn, LIMITS, now=now())
        assert str(pid) in {h.name for h in holders if h.kind == "session"}
        result = check(conn, "xmin_horizon", **thresholds)
        assert result.status is Status.WARNING
        assert f"session {pid} holds it" in result.summary
    finally:
        other.execute("ROLLBACK")
    assert str(pid) not in {h.name for h in maintenance.xmin_holders(conn, LIMITS, now=now())}
