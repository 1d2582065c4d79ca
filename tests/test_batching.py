"""Batches sized by time: the walk a job picks, the sweep that finds moved rows, rows in use.

Against the real server: rows are moved behind a physical pass's cursor by real updates (the
free space map sends them there), and concurrent writers touch rows while the pass runs.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from kronos_db import batching
from kronos_db.batching import Batch, BatchPolicy, Sizer, Totals

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


def load_sessions(conn: psycopg.Connection[Any], rows: int, expired_every: int = 2) -> None:
    """``rows`` sessions, one in ``expired_every`` expired, packed into full pages."""
    conn.execute(
        "INSERT INTO sessions (id, token, expires_at, last_active_at)"
        " SELECT n, 'token-' || n || '-' || md5(n::text),"
        "        %(now)s::timestamptz + CASE WHEN n %% %(every)s = 0 THEN -1 ELSE 1 END"
        "                               * (n %% 600 + 1) * interval '1 second',"
        "        %(now)s"
        "   FROM generate_series(1, %(rows)s::integer) AS n",
        {"rows": rows, "every": expired_every, "now": NOW},
    )
    conn.execute("ANALYZE sessions")


def expired_left(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM sessions WHERE expires_at < %(now)s", {"now": NOW}
    ).fetchone()
    assert row is not None
    return int(row[0])


def free_the_first_pages(conn: psycopg.Connection[Any], pages: int = 3) -> None:
    """Empty the first pages and vacuum: the free space map now sends new row versions there,
    behind any cursor that has passed them."""
    conn.execute("DELETE FROM sessions WHERE ctid < %(end)s::tid", {"end": f"({pages},0)"})
    conn.execute("VACUUM sessions")


def page_of(conn: psycopg.Connection[Any], session_id: int) -> int:
    row = conn.execute(
        "SELECT (ctid::text::point)[0]::integer FROM sessions WHERE id = %(id)s",
        {"id": session_id},
    ).fetchone()
    assert row is not None
    return int(row[0])


def expire(conn: psycopg.Connection[Any], policy: BatchPolicy) -> Totals:
    return batching.delete_before(
        conn, "sessions", "expires_at", NOW, key="id", policy=policy, totals=Totals()
    )


def test_a_row_moved_behind_the_cursor_is_found_by_the_sweep(
    conn: psycopg.Connection[Any], database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    load_sessions(conn, 4000)
    free_the_first_pages(conn)
    expired = expired_left(conn)
    full_page = batching.relation_pages(conn, "sessions") - 5  # not the last: that has room
    victim = conn.execute(
        "SELECT id FROM sessions WHERE ctid >= %(page)s::tid AND expires_at < %(now)s LIMIT 1",
        {"page": f"({full_page},0)", "now": NOW},
    ).fetchone()
    assert victim is not None
    batches: list[int] = []
    moved_to: list[int] = []

    def service_touches_the_victim() -> None:
        # once the cursor is past the free pages, the auth service updates an expired session
        # on a full page: its new version goes where the free space map points, behind it
        if len(batches) == 4:
            with database.connect() as service:
                service.execute(
                    "UPDATE sessions SET last_active_at = %(now)s WHERE id = %(id)s",
                    {"now": NOW, "id": victim[0]},
                )
                moved_to.append(page_of(service, victim[0]))
        batches.append(1)

    caplog.set_level(logging.INFO, logger="kronos_db.batching")
    totals = expire(conn, BatchPolicy(rows=40, before_batch=service_touches_the_victim))
    assert moved_to, "the update did not run"
    assert moved_to[0] < 3, f"the new version went to page {moved_to[0]}, not behind the cursor"
    assert "by pages" in caplog.text
    assert "1 of" in caplog.text
    assert "sweeping" in caplog.text
    assert expired_left(conn) == 0
    assert totals.rows == expired


def test_when_the_count_balances_there_is_no_sweep(
    conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    load_sessions(conn, 3000)
    caplog.set_level(logging.INFO, logger="kronos_db.batching")
    totals = expire(conn, BatchPolicy())
    assert totals.rows == 1500
    assert expired_left(conn) == 0
    assert "by pages" in caplog.text
    assert "sweeping" not in caplog.text


def test_few_rows_are_deleted_in_key_order_through_the_index(
    conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    load_sessions(conn, 3000, expired_every=50)
    caplog.set_level(logging.INFO, logger="kronos_db.batching")
    totals = expire(conn, BatchPolicy(rows=7))
    assert totals.rows == 60
    assert totals.batches == 9  # 7 rows each, the last one finds 4
    assert expired_left(conn) == 0
    assert "by key" in caplog.text
    row = conn.execute("SELECT count(*) FROM sessions").fetchone()
    assert row == (2940,)


@pytest.mark.parametrize("walk", ["pages", "key"])
def test_a_row_a_service_holds_is_skipped_then_retried(
    walk: str, conn: psycopg.Connection[Any], database: Any
) -> None:
    load_sessions(conn, 2000, expired_every=2 if walk == "pages" else 40)
    held = conn.execute(
        "SELECT id FROM sessions WHERE expires_at < %(now)s ORDER BY id LIMIT 1", {"now": NOW}
    ).fetchone()
    assert held is not None
    with database.connect(autocommit=False) as service:
        service.execute("SELECT 1 FROM sessions WHERE id = %(id)s FOR UPDATE", {"id": held[0]})
        started = time.monotonic()
        totals = expire(conn, BatchPolicy(rows=25))
        elapsed = time.monotonic() - started
        service.rollback()
    assert elapsed < 5, f"waited {elapsed:.1f}s on a row in use"
    assert totals.skipped == 1  # still held at the retry: left to the next run
    assert expired_left(conn) == 1
    assert expire(conn, BatchPolicy()).rows == 1


@pytest.mark.parametrize("interval", [0.001, 0.004])
def test_rows_touched_while_the_pass_runs_are_all_expired(
    interval: float, conn: psycopg.Connection[Any], database: Any
) -> None:
    """The auth service touches random sessions, expired ones included, at a fixed rate while
    a physical pass runs: every session expired at the start is gone at the end, wherever the
    updates moved it, and no update failed."""
    load_sessions(conn, 12_000)
    free_the_first_pages(conn, pages=20)
    ids = [row[0] for row in conn.execute("SELECT id FROM sessions").fetchall()]
    stop = threading.Event()
    errors: list[BaseException] = []
    updates: list[float] = []

    def auth_service() -> None:
        try:
            with database.connect() as service:
                while not stop.is_set():
                    started = time.monotonic()
                    service.execute(
                        "UPDATE sessions SET last_active_at = %(now)s WHERE id = %(id)s",
                        {"now": NOW, "id": random.choice(ids)},
                    )
                    updates.append(time.monotonic() - started)
                    time.sleep(interval)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=auth_service)
    writer.start()
    try:
        time.sleep(0.05)
        totals = expire(conn, BatchPolicy(duration=timedelta(milliseconds=5)))
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not errors, errors
    assert updates
    assert expired_left(conn) == 0
    assert totals.rows >= 5000


def test_the_hook_runs_before_each_batch(conn: psycopg.Connection[Any]) -> None:
    load_sessions(conn, 3000, expired_every=30)
    calls: list[int] = []
    totals = expire(conn, BatchPolicy(rows=10, before_batch=lambda: calls.append(1)))
    assert len(calls) == totals.batches > 1


def test_the_sizer_aims_at_the_target_duration() -> None:
    policy = BatchPolicy(duration=timedelta(milliseconds=20))
    sizer = Sizer(policy, initial=100)
    sizer.observe(Batch(units=100, rows=100), seconds=0.080)  # four times too slow
    assert sizer.size == 50  # halfway (in log scale) toward 25
    sizer.observe(Batch(units=50, rows=50), seconds=0.020)  # on target
    assert sizer.size == 50
    sizer.observe(Batch(units=50, rows=50), seconds=0.000001)  # a fluke: at most 4 times more
    assert sizer.size == 200
    fixed = Sizer(BatchPolicy(rows=1000), initial=10)  # pages sized for about 1000 rows
    fixed.observe(Batch(units=10, rows=250), seconds=1.0)
    assert fixed.size == 20


def test_a_hook_that_asks_for_smaller_batches_gets_them_for_good() -> None:
    # the pacer's way to keep a batch's WAL small: a share below 1 caps every later batch
    sizes: list[int] = []
    shares = iter([None, None, 0.25])

    def step(size: int) -> Batch:
        sizes.append(size)
        return Batch(units=size, rows=size, last=len(sizes) == 6)

    policy = BatchPolicy(duration=timedelta(seconds=10), before_batch=lambda: next(shares, None))
    batching.run(step, policy, sizer=Sizer(policy, initial=100), totals=Totals())
    # each batch is far under its 10 s target: the sizer grows 4x at a time until the share
    assert sizes[:2] == [100, 400]
    assert sizes[2:] == [100, 100, 100, 100]  # a quarter of the last (400), never more
