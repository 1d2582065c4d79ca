"""health answers its checks on several connections at once: the same answers as one after
another, connections closed afterwards, and fewer connections when the server refuses more."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from conftest import Database, drop_roles, unique_name, url_for, wait_for
from psycopg import sql
from test_health_outputs import plant_problems

from kronos_db.config import HealthSettings, Settings
from kronos_db.reports.health import HealthReport, health_report

# what differs between two runs whatever the connections: how many there are, and timings
VOLATILE = {
    "connections",
    "slow_queries",
    "cache_hit_rate",
    "transaction_wraparound",
    "multixact_wraparound",
}


def on(connections: int) -> Settings:
    return Settings(health=dataclasses.replace(HealthSettings(), parallel_connections=connections))


def answers(report: HealthReport) -> list[tuple[str, str, str]]:
    return [
        (result.name, result.status.name, "" if result.name in VOLATILE else result.summary)
        for result in report.checks
    ]


def backends(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_parallel_answers_are_the_serial_ones(
    conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    plant_problems(conn)
    moment = datetime.now(UTC)
    caplog.set_level(logging.DEBUG, logger="kronos_db.reports.health")
    with psycopg.connect(conn.info.dsn, autocommit=True) as observer:
        serial = health_report(conn, on(1), now=moment)
        parallel = health_report(conn, on(3), now=moment)
        # the report's own connection only: the others closed (their backends end just after)
        wait_for(lambda: backends(observer) == 1, "health's extra connections to end")
    assert [r.getMessage() for r in caplog.records] == [
        f"health: {len(serial.checks)} check(s) on 1 connection(s)",
        f"health: {len(serial.checks)} check(s) on 3 connection(s)",
    ]
    assert answers(parallel) == answers(serial)
    assert parallel.status == serial.status
    assert [r.name for r in parallel.checks] == [r.name for r in serial.checks]
    assert {r.status.name for r in parallel.checks} >= {"OK", "WARNING", "CRITICAL"}


def test_a_role_allowed_one_connection_still_gets_every_answer(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    role = unique_name("kronos_one_conn")
    admin_url = url_for(database.name)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 1 IN ROLE pg_monitor").format(
                sql.Identifier(role)
            )
        )
    try:
        with psycopg.connect(url_for(database.name, user=role), autocommit=True) as monitor:
            moment = datetime.now(UTC)
            caplog.set_level(logging.DEBUG, logger="kronos_db.reports.health")
            parallel = health_report(monitor, on(4), now=moment)
            messages = [r.getMessage() for r in caplog.records]
            *refusals, summary = messages
            assert refusals and all("too many connections for role" in m for m in refusals)
            assert summary.endswith("on 1 connection(s)"), messages
            serial = health_report(monitor, on(1), now=moment)
        assert answers(parallel) == answers(serial)
        assert all(result.summary for result in parallel.checks)
    finally:
        drop_roles([admin_url], [role])
