"""A busy ``logs`` table for the partition safety tests: a writer at a fixed rate, a reader that
counts through ``logs`` several times a second and notes every instant a row is missing or
doubled, and rotations run in a child process that the test SIGKILLs at chosen moments.

Kept out of the test module so that the forkserver's children import it, not pytest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import psycopg

from kronos_db.config import Settings
from kronos_db.partitions.rotation import rotate
from kronos_db.partitions.status import partition_status

INSERT = (
    'INSERT INTO logs (service_name, level, message, "timestamp") '
    "VALUES ('writer', 'info', 'line', %s)"
)
# one snapshot: per retiring day (ranges before `cut`) and for the rest, rows and distinct ids
COUNT = """
SELECT CASE WHEN "timestamp" < %(cut)s THEN date_trunc('day', "timestamp", 'UTC') END AS day,
       count(*) AS rows,
       count(DISTINCT id) AS ids
  FROM logs
 GROUP BY 1
"""


@dataclasses.dataclass
class Workload:
    """A writer at ``rate`` rows/s stamped by ``stamp()``, and a reader counting every ~50ms.

    ``base``: rows visible at the start outside the retiring days. ``retiring``: rows of each
    day before ``cut`` (each is either all visible or, once retired, none). Every count must
    hold ``base`` plus the rows acknowledged before it started, at most those sent when it
    ended, each once.
    """

    url: str
    base: int
    stamp: Callable[[], datetime]
    rate: float = 200.0
    cut: datetime = datetime.min
    retiring: dict[datetime, int] = dataclasses.field(default_factory=dict)
    acknowledged: int = 0
    # rows whose INSERT was sent: committed or not yet, they may be visible already
    sent: int = 0
    probes: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)
    errors: list[BaseException] = dataclasses.field(default_factory=list)
    insert_waits: list[float] = dataclasses.field(default_factory=list)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _threads: list[threading.Thread] = dataclasses.field(default_factory=list)

    def __enter__(self) -> Workload:
        for target in (self._write, self._read):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _write(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                interval = 1 / self.rate
                next_at = time.monotonic()
                while not self._stop.is_set():
                    started = time.monotonic()
                    self.sent += 1
                    conn.execute(INSERT, (self.stamp(),))
                    self.insert_waits.append(time.monotonic() - started)
                    self.acknowledged += 1  # committed: autocommit
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # the test fails with the cause
            self.errors.append(exc)

    def _read(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self._stop.is_set():
                    low = self.acknowledged
                    rows = conn.execute(COUNT, {"cut": self.cut}).fetchall()
                    high = self.sent
                    self.probes += 1
                    self._judge(low, high, rows)
                    time.sleep(0.05)
        except BaseException as exc:
            self.errors.append(exc)

    def _judge(self, low: int, high: int, rows: list[tuple[Any, int, int]]) -> None:
        moment = f"probe {self.probes}"
        seen = {day: (count, ids) for day, count, ids in rows}
        count, ids = seen.pop(None, (0, 0))
        if not self.base + low <= count <= self.base + high:
            self.violations.append(
                f"{moment}: {count} rows visible, expected {self.base + low}..{self.base + high}"
            )
        if ids != count:
            self.violations.append(f"{moment}: {count - ids} row(s) visible twice")
        for day, (count, ids) in seen.items():
            expected = self.retiring.get(day)
            if count not in (expected, 0) or ids != count:
                self.violations.append(
                    f"{moment}: {count} rows ({ids} ids) of the retiring day {day}, "
                    f"expected {expected} or 0"
                )

    def check(self) -> None:
        assert not self.errors, self.errors
        assert not self.violations, self.violations[:5]
        assert self.probes > 5


def _rotate_in_child(
    url: str, settings: Settings, base: datetime, origin: float, ready: Connection
) -> None:
    """The body of a rotation run by the forkserver, for the parent to kill."""
    with psycopg.connect(url, autocommit=True, application_name="kronos-kill-test") as conn:
        ready.send(conn.info.backend_pid)
        now = base + timedelta(seconds=time.monotonic() - origin)
        result = rotate(conn, settings, now)
        ready.send([(s.kind, s.partition, s.ok, s.error) for s in result.steps])


_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["partition_workload", "kronos_db.partitions.rotation"])


def rotate_and_kill(
    url: str, settings: Settings, base: datetime, origin: float, after: float | None
) -> list[Any] | None:
    """Run a rotation in a child; SIGKILL it ``after`` seconds (None: let it finish).

    Returns the steps when it finished. Waits for the killed run's server session to end,
    as the next cron run would find it ended (its transaction rolled back).
    """
    parent_end, child_end = _CONTEXT.Pipe()
    process = _CONTEXT.Process(
        target=_rotate_in_child, args=(url, settings, base, origin, child_end), daemon=True
    )
    process.start()
    assert parent_end.poll(30), "the rotation child did not start"
    backend = parent_end.recv()
    if after is None:
        assert parent_end.poll(120), "the rotation did not finish"
        steps: list[Any] = parent_end.recv()
        process.join(30)
        return steps
    time.sleep(after)
    finished = parent_end.poll(0)
    with contextlib.suppress(ProcessLookupError):  # it may have finished just now
        os.kill(process.pid or 0, signal.SIGKILL)
    process.join(30)
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 20
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone():
            assert time.monotonic() < deadline, f"backend {backend} of the killed run lingers"
            time.sleep(0.05)
    return parent_end.recv() if finished else None


def kill_then_finish(
    url: str, settings: Settings, base: datetime, origin: float, *, kills: int, longest: float
) -> list[Any]:
    """Rotations SIGKILLed at ``kills`` jittered moments over ``longest`` seconds (a different
    set each run), each followed by a check that no stray table appeared; then one rotation
    that finishes, whose steps must all succeed. Returns them."""
    rng = random.Random(origin)
    interrupted = 0
    for index in range(kills):
        # the first kill early in its share of the window: a rotation done in a fifth of a
        # second (the past-rescue scenario) was otherwise finished before every kill about one
        # run in four, and later kills only meet rotations with nothing left to do
        share = 0.25 if index == 0 else 1.0
        after = longest * (index + share * rng.random()) / kills
        interrupted += rotate_and_kill(url, settings, base, origin, after) is None
        with psycopg.connect(url, autocommit=True) as conn:
            strays = partition_status(conn, Settings(), datetime.now(UTC)).strays
            assert strays == (), strays
    assert interrupted, "no kill landed inside a rotation"
    steps = rotate_and_kill(url, settings, base, origin, None)
    assert steps is not None
    assert all(ok for _kind, _name, ok, _error in steps), steps
    return steps
