"""Checks whose situations need server settings the shared server must not be restarted for,
on a server of the test's own (tests/standby.py): a prepared transaction (it needs
max_prepared_transactions > 0), the replication slot of a dead standby that retains WAL but
holds no xmin (wal_level = replica), and WAL archiving that fails (archive_mode = on)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from standby import standalone_server

from kronos_db.checks import Status
from kronos_db.config import HealthSettings, Settings
from kronos_db.reports import formats
from kronos_db.reports.health import health_report

MB = 1024 * 1024
SETTINGS = Settings(
    health=dataclasses.replace(
        HealthSettings(), slot_retained_warning=32 * MB, slot_retained_critical=1024 * MB
    )
)


def check(conn: psycopg.Connection[Any], name: str, at: datetime) -> Any:
    (result,) = health_report(conn, SETTINGS, now=at, only=[name]).checks
    return result


def test_prepared_transaction_dead_slot_and_failing_archiver() -> None:
    extra = "max_prepared_transactions = 4\narchive_command = '/bin/false'\narchive_timeout = 0"
    with standalone_server(extra) as server, server.connect() as conn:
        conn.execute("CREATE TABLE orders (id bigint)")

        # a two-phase commit whose coordinator never came back: it keeps its lock
        with server.connect() as coordinator:
            coordinator.execute("BEGIN")
            coordinator.execute("LOCK TABLE orders IN SHARE MODE")
            coordinator.execute("PREPARE TRANSACTION 'kronos-test-2pc'")
        moment = datetime.now(UTC)
        # judged by its age in seconds (30s, 5m), not by the xmin horizon's 30 minutes
        assert check(conn, "prepared_transactions", moment).status is Status.OK
        later = check(conn, "prepared_transactions", moment + timedelta(minutes=1))
        assert later.status is Status.WARNING, later
        assert check(conn, "xmin_horizon", moment + timedelta(minutes=1)).status is Status.OK
        assert "'kronos-test-2pc'" in later.summary
        assert "orders ShareLock" in later.summary
        (finding,) = later.findings
        assert finding.fix.endswith("ROLLBACK PREPARED 'kronos-test-2pc';")
        (perf,) = later.metrics
        assert (perf.unit, perf.threshold.warning if perf.threshold else None) == ("seconds", 30)
        much_later = moment + timedelta(minutes=10)
        assert check(conn, "prepared_transactions", much_later).status is Status.CRITICAL
        conn.execute(finding.fix.splitlines()[-1])  # the fix it offers ends it
        assert check(conn, "prepared_transactions", much_later).status is Status.OK

        # a dead standby without feedback: its slot retains WAL but holds no xmin
        conn.execute("SELECT pg_create_physical_replication_slot('dead_standby', true)")
        for _ in range(3):
            conn.execute("INSERT INTO orders SELECT generate_series(1, 1000)")
            conn.execute("SELECT pg_switch_wal()")
        slots = check(conn, "replication_slots", datetime.now(UTC))
        assert slots.status is Status.WARNING, slots
        assert "inactive physical slot dead_standby retains" in slots.summary
        assert "xmin" not in slots.summary  # it holds none: xmin_horizon cannot see it
        assert check(conn, "xmin_horizon", datetime.now(UTC)).status is Status.OK
        (fix,) = [f.fix for f in slots.findings]
        assert fix == "SELECT pg_drop_replication_slot('dead_standby');"
        line = formats.nagios_output("KRONOS", (slots,)).splitlines()[0]
        assert "replication_slots=" in line and ";~:33554432;~:1073741824;0;" in line

        # archive_command fails: the archiver has had segments to fail on since the switches
        deadline = time.monotonic() + 30
        while True:
            archiving = check(conn, "wal_archiving", datetime.now(UTC))
            if archiving.status is Status.CRITICAL or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert archiving.status is Status.CRITICAL, archiving
        assert "archiving fails" in archiving.summary
        conn.execute(fix)
        assert check(conn, "replication_slots", datetime.now(UTC)).status is Status.OK
