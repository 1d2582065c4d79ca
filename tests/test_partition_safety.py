"""Rotation under load: at every instant every acknowledged row is visible through logs once.

Each scenario runs one writer at a fixed rate, one reader counting through logs every ~50ms
(partition_workload.Workload), and rotations in a child process SIGKILLed at varied moments
(a different one each time), then a rotation that runs to the end. After every kill the next
state must hold every row exactly once, with no stray table; at the end no row waits in the
default partition and every archive is recorded once, its file matching its row.
"""

from __future__ import annotations

import dataclasses
import gzip
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Database
from partition_workload import Workload, kill_then_finish
from psycopg import sql

from kronos_db import backups, partman
from kronos_db.checks import Status
from kronos_db.config import PartitionSettings, Settings
from kronos_db.partitions.naming import floor_time, partition_name
from kronos_db.partitions.rotation import rotate
from kronos_db.partitions.status import partition_status

TODAY = floor_time(datetime.now(UTC), "daily")


def policy(**changes: Any) -> Settings:
    return dataclasses.replace(Settings(), partitions=PartitionSettings(**changes))


def fill(conn: psycopg.Connection[Any], start: datetime, rows: int, span: timedelta) -> None:
    conn.execute(
        'INSERT INTO logs (service_name, level, message, "timestamp") '
        "SELECT 'seed', 'info', 'line ' || i, %(start)s::timestamptz "
        "+ (i * %(step)s::float8) * interval '1 second' FROM generate_series(0, %(n)s - 1) AS i",
        {"start": start, "step": span.total_seconds() / rows, "n": rows},
    )


def count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return int(row.fetchone()[0])  # type: ignore[index]


def strays(conn: psycopg.Connection[Any]) -> list[str]:
    """Plain tables named like partitions and not marked by kronos-db: none may ever appear."""
    status = partition_status(conn, Settings(), datetime.now(UTC))
    return [stray.name for stray in status.strays]


@pytest.mark.parametrize("backend", ["native", "partman"])
def test_rescue_of_the_current_range_under_load_and_kills(database: Database, backend: str) -> None:
    """Today's partition is missing: rows pile up in the default partition while services
    write; rotations killed at random points, then one that finishes (on both backends: with
    pg_partman, its run_maintenance follows, and must accept the split day)."""
    # the clock: noon of today in a moved world that advances with the real one
    base, origin = TODAY + timedelta(hours=12), time.monotonic()

    def clock() -> datetime:
        return base + timedelta(seconds=time.monotonic() - origin)

    with database.connect() as conn:
        if backend == "partman":
            conn.execute("CREATE SCHEMA partman")
            conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
            partman.adopt(conn, Settings())
        conn.execute(
            sql.SQL("DROP TABLE {}").format(sql.Identifier(partition_name("logs", TODAY, "daily")))
        )
        fill(conn, TODAY, 20_000, timedelta(hours=12))
        planned = count(conn, "logs_default")
    settings = policy(move_batch_size=2_000, budget=timedelta(seconds=20))
    with Workload(database.url, base=planned, stamp=clock) as load:
        kill_then_finish(database.url, settings, base, origin, kills=4, longest=2.5)
        time.sleep(0.3)
    load.check()
    with database.connect() as conn:
        assert count(conn, "logs_default") == 0
        today = [
            n for n in partitions_of(conn) if n.startswith(partition_name("logs", TODAY, "daily"))
        ]
        # split at a stop point: the rescued rows before it, the new ones after it
        assert len(today) == 2, today
        total = sum(count(conn, name) for name in today)
        assert total == planned + load.acknowledged
        assert strays(conn) == []
        status = partition_status(conn, Settings(), clock())
        assert status.level is Status.OK, status.problems


def partitions_of(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'logs'::regclass ORDER BY 1"
    ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.parametrize("action", ["archive", "drop", "detach"])
def test_past_rescue_and_retirement_under_load_and_kills(
    database: Database, tmp_path: Path, action: str
) -> None:
    """A past day's partition is missing (its rows in the default partition) and five old days
    are due for retirement; services write today's rows meanwhile."""
    now = TODAY + timedelta(days=35, hours=12)
    origin = time.monotonic()
    old_days = [TODAY - timedelta(days=offset) for offset in range(1, 6)]
    lost_day = now - timedelta(days=3)
    lost_day = floor_time(lost_day, "daily")
    with database.connect() as conn:
        # the partitions of the old days, and of now's days, made the usual way
        rotate(conn, policy(premake=60, retention=timedelta(0)), TODAY - timedelta(days=5))
        for day in old_days:
            fill(conn, day, 3_000, timedelta(days=1))
        conn.execute(
            sql.SQL("DROP TABLE {}").format(
                sql.Identifier(partition_name("logs", lost_day, "daily"))
            )
        )
        fill(conn, lost_day, 40_000, timedelta(days=1))
        base = count(conn, "logs") - 3_000 * len(old_days)
    settings = policy(
        retention_action=action,
        archive_directory=str(tmp_path),
        move_batch_size=500,
        budget=timedelta(seconds=20),
    )
    retiring = {day: 3_000 for day in old_days}
    with Workload(
        database.url,
        base=base,
        stamp=lambda: now + timedelta(seconds=time.monotonic() - origin),
        cut=TODAY,
        retiring=retiring,
    ) as load:
        kill_then_finish(database.url, settings, now, origin, kills=3, longest=0.8)
        time.sleep(0.3)
    load.check()
    with database.connect() as conn:
        assert count(conn, "logs_default") == 0
        assert count(conn, partition_name("logs", lost_day, "daily")) == 40_000
        assert strays(conn) == []
        names = [partition_name("logs", day, "daily") for day in old_days]
        attached = set(partitions_of(conn))
        assert not attached & set(names)
        marked = conn.execute(
            "SELECT relname, obj_description(oid, 'pg_class') FROM pg_class "
            "WHERE relname = ANY(%s) ORDER BY 1",
            (names,),
        ).fetchall()
        records = conn.execute(
            "SELECT file_path, size_bytes, sha256, row_counts FROM backups "
            "WHERE kind = 'partition_archive' ORDER BY file_path"
        ).fetchall()
    if action == "detach":
        assert [name for name, _note in marked] == sorted(names)
        assert all("detached from public.logs" in note for _name, note in marked)
        assert records == []
    else:
        assert marked == []
    if action == "archive":
        # exactly one record per retired partition, its file matching it
        retired = {
            partition_name("logs", TODAY + timedelta(days=offset), "daily"): (
                3_000 if offset < 0 else 0
            )
            for offset in range(-5, 5)
        }
        assert sorted(next(iter(r[3])) for r in records) == sorted(f"public.{n}" for n in retired)
        for path, size, sha, row_counts in records:
            ((qualified, rows),) = row_counts.items()
            digest = backups.file_digest(path)
            assert (digest.size_bytes, digest.sha256) == (size, sha)
            with gzip.open(path, "rb") as handle:
                assert handle.read().count(b"\n") == rows == retired[qualified.split(".")[1]]
        assert not list(tmp_path.glob("*.partial"))


def test_a_long_reader_never_makes_an_insert_wait_past_the_bound(database: Database) -> None:
    """A reader holds logs in an open transaction (the nightly report): every exclusive lock
    rotate needs is given up after lock_timeout, retried, then left to the next run, saying
    who was in the way; the services' inserts never wait longer than the bound."""
    now = TODAY + timedelta(days=31, hours=12)
    origin = time.monotonic()
    lost_day = floor_time(now - timedelta(days=2), "daily")
    with database.connect() as conn:
        rotate(conn, policy(premake=40, retention=timedelta(0)), TODAY)
        conn.execute(
            sql.SQL("DROP TABLE {}").format(
                sql.Identifier(partition_name("logs", lost_day, "daily"))
            )
        )
        fill(conn, lost_day, 2_000, timedelta(days=1))
        base = count(conn, "logs")
    settings = policy(
        lock_timeout=timedelta(milliseconds=200),
        hold_timeout=timedelta(milliseconds=50),
        retry_delay=timedelta(milliseconds=100),
        budget=timedelta(seconds=2),
    )
    messages: list[str] = []
    with (
        Workload(
            database.url,
            base=base,
            stamp=lambda: now + timedelta(seconds=time.monotonic() - origin),
            cut=TODAY + timedelta(days=1),  # today's partition is the one retired
            retiring={TODAY: 0},
        ) as load,
        database.connect(autocommit=False) as reader,
        database.connect() as conn,
    ):
        reader.execute("SELECT count(*) FROM logs")  # and keeps its transaction open
        reader_pid = reader.info.backend_pid
        started = time.monotonic()
        blocked = rotate(conn, settings, now, notify=messages.append)
        assert time.monotonic() - started < 10
        reader.rollback()
        done = rotate(conn, settings, now, notify=messages.append)
        time.sleep(0.3)
    load.check()
    # the rescue and the retirement could not get their locks: exit 4, rolled back, said so
    assert blocked.exit_code == 4, blocked.steps
    assert {s.kind for s in blocked.failed} == {"rescue", "retire"}
    assert blocked.failed[0].attempts > 2  # retried with back-off until the run's budget
    assert any("retrying in" in m and f"pid {reader_pid}" in m for m in messages), messages
    assert all("the next run tries again" in (s.error or "") for s in blocked.failed)
    assert not done.failed, done.failed
    # the bound: lock_timeout while queued behind the reader, hold_timeout more at most, plus
    # this loaded machine's scheduling (the benchmark measures it precisely)
    assert max(load.insert_waits) < 0.6, sorted(load.insert_waits)[-5:]
