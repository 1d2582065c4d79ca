"""A check's performance data never contradicts its verdict.

Nagios graphers and Prometheus alert rules read a metric against its warning and critical
levels: a check that says OK while its own figure is past a level tells them two things. Each
check's figure is the one it judged by (a table too small to be judged is not the figure).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from kronos_db.checks import Status
from kronos_db.config import Settings
from kronos_db.reports.health import health_report


def test_an_ok_check_reports_no_figure_past_its_levels(conn: psycopg.Connection[Any]) -> None:
    # a small table, mostly dead: 2 of its 3 rows, far below dead_tuples_minimum (10,000)
    conn.execute("CREATE TABLE scratch_small (id int)")
    conn.execute("INSERT INTO scratch_small SELECT generate_series(1, 3)")
    conn.execute("DELETE FROM scratch_small WHERE id > 1")
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")  # the flush happens when this session next goes idle
    with psycopg.connect(conn.info.dsn, autocommit=True) as reader:
        dead = reader.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'scratch_small'"
        ).fetchone()
        assert dead == (2,), dead
        report = health_report(reader, Settings(), now=datetime.now(UTC))
    by_name = {result.name: result for result in report.checks}
    assert by_name["dead_tuples"].status is Status.OK
    contradictions = [
        (result.name, metric.name, metric.value)
        for result in report.checks
        if result.status is Status.OK
        for metric in result.metrics
        if metric.grade() is not Status.OK
    ]
    assert contradictions == []


def test_no_figure_is_graded_worse_than_its_check(conn: psycopg.Connection[Any]) -> None:
    """With problems planted (a sequence near its end, a duplicate and an invalid index, an
    expired session), each check is at least as bad as its figures say."""
    from test_health_outputs import plant_problems

    plant_problems(conn)
    conn.execute(
        "INSERT INTO sessions (token, expires_at) VALUES ('gone', now() - interval '1 day')"
    )
    report = health_report(conn, Settings(), now=datetime.now(UTC))
    assert report.status is Status.CRITICAL
    contradictions = [
        (result.name, result.status.name, metric.name, metric.value, metric.grade().name)
        for result in report.checks
        if result.status is not Status.UNKNOWN
        for metric in result.metrics
        if metric.grade() > result.status
    ]
    assert contradictions == []
