"""How one step's SQL runs: recorded (or only recorded, in a dry run), every lock request under
``lock_timeout`` and retried after a jittered back-off within the run's budget, the part that
holds a lock services wait on cut off at ``hold_timeout`` (:class:`_Hold`), and the size of
each batch of a move (:class:`BatchSizer`, paced by replication).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import class_row

from kronos_db import batching, db, locks
from kronos_db.config import PartitionSettings
from kronos_db.durations import format_duration, postgres_interval
from kronos_db.errors import LockTimeoutError, PartitionError
from kronos_db.partitions.ddl import _render_with_params
from kronos_db.resources import query

Notify = Callable[[str], None]


T = TypeVar("T")


MAX_RETRY_DELAY = 30.0


def _quiet(_message: str) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One step of a rotation: what it was, whether it worked, the SQL it ran."""

    kind: str
    partition: str
    ok: bool
    description: str
    seconds: float = 0.0
    attempts: int = 0
    rows_moved: int = 0
    rows_planned: int = 0
    archive_file: str | None = None
    archived_rows: int | None = None
    error: str | None = None
    error_code: int = 0
    statements: tuple[str, ...] = ()


class BatchSizer(Protocol):
    """How many rows the next batch of a move should take; told how each batch went.

    The moves of a rotation take their batch sizes from one of these (``rotate(...,
    batch_sizer=...)``), so a time-targeted sizer can replace the fixed one.
    """

    def next_size(self) -> int: ...

    def record(self, rows: int, seconds: float) -> None: ...


@dataclasses.dataclass
class FixedBatches:
    """``size`` rows per batch, whatever happens (``[partitions] move_batch_size``)."""

    size: int

    def next_size(self) -> int:
        return self.size

    def record(self, rows: int, seconds: float) -> None:
        pass


@dataclasses.dataclass
class PacedBatches:
    """A move's batches, each cleared first by the replication pacer: it waits while a standby
    or a slot is too far behind, and may make the batches smaller (kronos_db.replication)."""

    inner: BatchSizer
    pacer: Callable[[], float | None]
    cap: int | None = None
    last: int = 0

    def next_size(self) -> int:
        share = self.pacer()
        size = self.inner.next_size()
        if share is not None and share < 1 and self.last:
            smaller = max(1, math.floor(self.last * share))
            self.cap = smaller if self.cap is None else min(self.cap, smaller)
        self.last = size if self.cap is None else min(size, self.cap)
        return self.last

    def record(self, rows: int, seconds: float) -> None:
        self.inner.record(rows, seconds)


def default_batch_sizer(options: PartitionSettings) -> BatchSizer:
    """``move_batch_size`` rows per statement, or (0, the default) as many as take about
    ``move_batch_time``: the batches of every kronos-db job are sized the same way."""
    if options.move_batch_size:
        return FixedBatches(options.move_batch_size)
    return batching.TimedBatches(batching.BatchPolicy(duration=options.move_batch_time))


def _paced(
    make: Callable[[], BatchSizer], pacer: Callable[[], float | None]
) -> Callable[[], BatchSizer]:
    return lambda: PacedBatches(make(), pacer)


class _HoldExceeded(PartitionError):
    """The part of a step that holds a lock services wait on ran past hold_timeout."""


class _Runner:
    """Runs one step's SQL: records it, runs it (unless dry-run), gives up and retries locks.

    Every transaction it opens sets ``lock_timeout`` LOCAL; a lock not granted in time rolls the
    transaction back (so no lock request stays queued in front of the services) and is retried
    after a jittered back-off until the run's deadline.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        settings: PartitionSettings,
        notify: Notify,
        *,
        dry_run: bool,
        deadline: float,
        log: list[str] | None = None,
        relations: Sequence[int] = (),
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.notify = notify
        self.dry_run = dry_run
        self.deadline = deadline
        self.statements: list[str] = []
        # every statement of the rotation, in the order it ran (what --dry-run prints)
        self.log = log if log is not None else []
        self.attempts = 0
        self.relations = list(relations)
        self._delay = settings.retry_delay.total_seconds()

    def record(self, text: str) -> None:
        self.statements.append(text)
        self.log.append(text)

    def render(self, statement: sql.Composable) -> str:
        return statement.as_string(self.conn)

    def execute(
        self, statement: sql.Composed | sql.SQL, params: dict[str, Any] | None = None
    ) -> int:
        """Record and (unless dry-run) run one statement; returns its rowcount."""
        self.record(
            self.render(statement)
            if params is None
            else _render_with_params(self.conn, statement, params)
        )
        if self.dry_run:
            return 0
        cursor = self.conn.execute(statement, params)
        return int(cursor.rowcount)

    def set_local(self, **settings: timedelta) -> None:
        """Transaction-scoped settings (``set_config(..., true)``): nothing outlives the commit."""
        if self.dry_run:
            for name, value in settings.items():
                self.record(f"SET LOCAL {name} = '{postgres_interval(value)}'")
            return
        db.set_local(
            self.conn, {name: postgres_interval(value) for name, value in settings.items()}
        )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction (a savepoint inside one) with the lock budget set LOCAL."""
        if self.dry_run:
            yield
            return
        with self.conn.transaction():
            self.set_local(lock_timeout=self.settings.lock_timeout)
            yield

    def retrying(self, label: str, work: Callable[[], T]) -> T:
        """Run ``work`` in one transaction; a lock not granted in time rolls it back and retries."""
        while True:
            self.attempts += 1
            try:
                with self.transaction():
                    return work()
            except (pg_errors.LockNotAvailable, _HoldExceeded) as exc:
                self.back_off(label, exc)
            except pg_errors.RaiseException as exc:
                # pg_partman re-raises every error as a plain RAISE EXCEPTION with the message
                if "lock timeout" not in str(exc):
                    raise
                self.back_off(label, exc)

    def back_off(self, label: str, exc: BaseException) -> None:
        """Sleep a jittered, doubling delay before the next attempt, or give up (LockTimeoutError).

        Called after the transaction (or savepoint) that timed out was rolled back: no lock
        request is queued while we sleep.
        """
        held = self.holders()
        who = f" (held by {'; '.join(h.describe() for h in held)})" if held else ""
        reason = (
            exc.message
            if isinstance(exc, _HoldExceeded)
            else f"lock not granted within lock_timeout "
            f"({format_duration(self.settings.lock_timeout)})"
        )
        remaining = self.deadline - time.monotonic()
        wait = min(self._delay * random.uniform(0.5, 1.5), MAX_RETRY_DELAY)
        if remaining <= wait:
            raise LockTimeoutError(
                f"{label}: {reason}{who}, {self.attempts} attempt(s) within the run's budget "
                f"of {format_duration(self.settings.budget)}; rolled back, the next run tries again"
            ) from None
        self.notify(f"{label}: {reason}{who}; rolled back, retrying in {wait:.1f}s")
        time.sleep(wait)
        self._delay *= 2

    def holders(self) -> list[locks.BlockingSession]:
        """The sessions holding locks on the relations this step needs (for the message)."""
        if self.dry_run or not self.relations or self.conn.broken:
            return []
        try:
            # inside a long transaction pg_stat_activity would show its first snapshot
            self.conn.execute("SELECT pg_stat_clear_snapshot()")
            with self.conn.cursor(row_factory=class_row(locks.BlockingSession)) as cur:
                return cur.execute(
                    query("partitions", "select_lock_holders"), {"oids": self.relations}
                ).fetchall()
        except psycopg.Error:
            return []


class _Hold:
    """The part of a transaction that holds a lock services' inserts wait on.

    Every statement in it gets what is left of ``hold_timeout`` as its ``statement_timeout``
    and ``lock_timeout``: whatever happens (a reader in the way, a big default partition), the
    lock is released within ``hold_timeout`` of being granted, by rolling back.
    """

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner
        self.limit = runner.settings.hold_timeout.total_seconds()
        self.started = time.monotonic()

    def execute(
        self, statement: sql.Composed | sql.SQL, params: dict[str, Any] | None = None
    ) -> int:
        remaining = self.limit - (time.monotonic() - self.started)
        if remaining <= 0.001 and not self.runner.dry_run:
            raise _HoldExceeded(
                f"its work under the lock inserts wait on took longer than hold_timeout "
                f"({format_duration(self.runner.settings.hold_timeout)})"
            )
        left = timedelta(seconds=max(remaining, 0.001))
        try:
            if not self.runner.dry_run:
                # a lock wait gives up a little before the statement would be cancelled, so
                # that the message says which of the two happened
                self.runner.set_local(
                    statement_timeout=left, lock_timeout=max(left * 0.8, timedelta(milliseconds=1))
                )
            return self.runner.execute(statement, params)
        except pg_errors.LockNotAvailable as exc:
            raise _HoldExceeded(
                f"lock_timeout: a lock it needed next was not granted within what is left of "
                f"hold_timeout ({format_duration(self.runner.settings.hold_timeout)}) while it "
                "held the one inserts wait on"
            ) from exc
        except pg_errors.QueryCanceled as exc:
            raise _HoldExceeded(
                f"its work under the lock inserts wait on took longer than hold_timeout "
                f"({format_duration(self.runner.settings.hold_timeout)})"
            ) from exc
