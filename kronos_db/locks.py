"""Advisory locks that keep overlapping kronos-db runs from doing the same work twice.

Locks are session-level and held on a connection of their own that stays idle while the work
runs on another. An idle session has no snapshot, so it can never deadlock with
``CREATE INDEX CONCURRENTLY`` (which waits for every older snapshot: the failure Flyway and
golang-migrate have with transaction-level locks). Waiting is by polling
``pg_try_advisory_lock`` with a bounded wait, so a waiting run can say who holds the lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row

from kronos_db.errors import LockBusyError
from kronos_db.resources import query


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for a lock name (the same in every process and version)."""
    digest = hashlib.blake2b(f"kronos-db:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclasses.dataclass(frozen=True)
class LockHolder:
    pid: int
    usename: str
    application_name: str
    client: str
    backend_start: datetime
    state: str

    def describe(self) -> str:
        app = f" ({self.application_name})" if self.application_name else ""
        return f"pid {self.pid}{app}, user {self.usename or '?'} from {self.client}"


@dataclasses.dataclass(frozen=True)
class BlockingSession:
    pid: int
    usename: str
    application_name: str
    state: str
    transaction_seconds: float
    query: str

    def describe(self) -> str:
        app = f" {self.application_name!r}" if self.application_name else ""
        return (
            f"pid {self.pid}{app} (user {self.usename or '?'}, {self.state or 'unknown state'}, "
            f"transaction open {self.transaction_seconds:.0f}s, last query: {self.query!r})"
        )


def lock_holders(conn: psycopg.Connection[Any], key: int) -> list[LockHolder]:
    with conn.cursor(row_factory=class_row(LockHolder)) as cur:
        return cur.execute(query("locks", "select_advisory_lock_holders"), {"key": key}).fetchall()


def blocking_sessions(conn: psycopg.Connection[Any], pid: int) -> list[BlockingSession]:
    with conn.cursor(row_factory=class_row(BlockingSession)) as cur:
        return cur.execute(query("locks", "select_blocking_sessions"), {"pid": pid}).fetchall()


def try_lock(conn: psycopg.Connection[Any], key: int) -> bool:
    row = conn.execute(query("locks", "try_advisory_lock"), {"key": key}).fetchone()
    return bool(row and row[0])


def unlock(conn: psycopg.Connection[Any], key: int) -> None:
    conn.execute(query("locks", "advisory_unlock"), {"key": key})


def wait_for_lock(
    conn: psycopg.Connection[Any],
    name: str,
    *,
    wait: timedelta,
    poll_interval: float = 0.2,
    on_wait: Callable[[list[LockHolder]], None] | None = None,
    report_every: float = 10.0,
) -> int:
    """Take the lock ``name`` on ``conn``, polling for at most ``wait``; return its key.

    ``on_wait`` is told who holds the lock when the wait starts and then every ``report_every``
    seconds. Raises ``LockBusyError`` naming the holder when the wait runs out.
    """
    key = advisory_key(name)
    deadline = time.monotonic() + wait.total_seconds()
    next_report = time.monotonic()
    while not try_lock(conn, key):
        now = time.monotonic()
        if now >= deadline:
            holders = lock_holders(conn, key)
            who = "; ".join(h.describe() for h in holders) or "a session that just released it"
            raise LockBusyError(
                f"the {name} lock is held by {who}; gave up after {wait.total_seconds():g}s"
            )
        if on_wait is not None and now >= next_report:
            on_wait(lock_holders(conn, key))
            next_report = now + report_every
        time.sleep(min(poll_interval, max(0.0, deadline - now)))
    return key


@contextmanager
def advisory_lock(
    conn: psycopg.Connection[Any],
    name: str,
    *,
    wait: timedelta = timedelta(0),
    on_wait: Callable[[list[LockHolder]], None] | None = None,
) -> Iterator[int]:
    """Hold the session-level lock ``name`` on ``conn`` for the block.

    With ``wait=0`` it is a single try: ``LockBusyError`` at once when another run holds it.
    """
    key = wait_for_lock(conn, name, wait=wait, on_wait=on_wait)
    try:
        yield key
    finally:
        if not conn.closed:
            unlock(conn, key)


@contextmanager
def try_advisory_lock(conn: psycopg.Connection[Any], name: str) -> Iterator[bool]:
    """For cron jobs: yields False (and holds nothing) when another run has the lock."""
    key = advisory_key(name)
    acquired = try_lock(conn, key)
    try:
        yield acquired
    finally:
        if acquired and not conn.closed:
            unlock(conn, key)
