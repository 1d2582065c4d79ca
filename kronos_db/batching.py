"""Batches sized by time: the one batch loop of every job that changes many rows.

A job that deletes or moves a million rows must neither hold a million row locks (a service
updating one of them would wait for the whole statement) nor crawl in tiny fixed batches. Here
each batch is one short transaction whose size (heap pages or rows) is chosen from the previous
batches' durations so that it takes about ``BatchPolicy.duration``: the size adapts to the
rows' width, the indexes to maintain and the machine's load as the run goes. A service that
needs a row a batch holds waits at most about one batch.

Two walks over a table, neither of which visits a row twice:

* :func:`physical_pass` walks the heap in page ranges (``ctid`` range scans, PostgreSQL 14+):
  a batch reads exactly its pages, in file order, so deleting half a table costs about what one
  ``DELETE`` costs; rows an update moves behind the cursor are caught by a sweep;
* :func:`keyset_pass` walks an index in key order, each batch from the last key of the previous
  one (never re-reading the index entries of rows already deleted).

:func:`delete_before` picks between them for the common case, "delete the rows whose timestamp
is before a cutoff": by key when they are few, by pages when they are many.

Each batch first runs as plain statements under a short ``lock_timeout``; a batch that meets a
row a service holds runs again claiming rows with ``FOR UPDATE SKIP LOCKED`` (a row in use is
skipped, never waited on). :func:`run` is the loop itself, with a hook before each batch
(``BatchPolicy.before_batch``) for whoever must pace the work (replication lag, a window).
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import dict_row

from kronos_db import db, logs
from kronos_db.durations import postgres_interval
from kronos_db.errors import UsageError
from kronos_db.resources import query

logger = logging.getLogger(__name__)

Statement = LiteralString | sql.Composed
# Called after each batch with the rows changed so far and the batches run so far.
ProgressCallback = Callable[[int, int], None]

# A walk by key costs a random heap read per row, a physical pass a sequential read of every
# page: past this share of the table's rows, the pass is cheaper.
PHYSICAL_PASS_SHARE = 0.10


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    """How big a batch is, and what runs around it."""

    duration: timedelta = timedelta(milliseconds=25)  # the target duration of one batch
    rows: int = 0  # a fixed number of rows per batch instead of sizing by time (0: by time)
    pause: timedelta = timedelta(0)  # between two batches
    # the lock_timeout of a batch's plain statements: past it, the batch runs again with SKIP
    # LOCKED (None: half the target duration)
    lock_wait: timedelta | None = None
    # the job's: a batch that waits longer for a lock (DDL on the table) fails the job
    lock_timeout: timedelta = timedelta(seconds=2)
    statement_timeout: timedelta = timedelta(seconds=60)  # a bound on one batch (0: none)
    # idempotent work (deleting expired rows) may commit without waiting for the WAL flush: a
    # crash can only bring back rows that the next run deletes again
    synchronous_commit: bool = True
    # runs before each batch and may wait (pacing); a number below 1 it returns shrinks the
    # batches to that share of the last one, for good (the last one wrote too much WAL)
    before_batch: Callable[[], float | None] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.duration <= timedelta(0):
            raise UsageError("the batch time must be longer than 0")
        if self.rows < 0:
            raise UsageError(f"the batch size cannot be negative, got {self.rows}")
        if self.pause < timedelta(0):
            raise UsageError("the pause between batches cannot be negative")

    @property
    def plain_lock_wait(self) -> timedelta:
        if self.lock_wait is not None:
            return min(self.lock_wait, self.lock_timeout)
        return min(max(timedelta(milliseconds=1), self.duration / 2), self.lock_timeout)

    def settings(self, *, lock_wait: timedelta | None = None) -> dict[str, str]:
        """What a batch's transaction sets LOCAL (nothing outlives it on a pooled connection)."""
        return {
            "lock_timeout": postgres_interval(lock_wait or self.lock_timeout),
            "statement_timeout": postgres_interval(self.statement_timeout),
            "synchronous_commit": "on" if self.synchronous_commit else "off",
        }


@dataclasses.dataclass(frozen=True)
class Batch:
    """What one batch did: ``units`` of the walk (pages or rows) covered, ``rows`` changed."""

    units: int
    rows: int
    skipped: int = 0  # rows a service held: left alone by this batch
    last: bool = False  # the walk is done


@dataclasses.dataclass
class Totals:
    """What a walk (or several) did; ``details`` counts rows per kind, as the job names them."""

    rows: int = 0
    batches: int = 0
    skipped: int = 0
    seconds: float = 0.0
    details: Counter[str] = dataclasses.field(default_factory=Counter)

    def add(self, batch: Batch, seconds: float, detail: str | None = None) -> None:
        self.rows += batch.rows
        self.batches += 1
        self.skipped += batch.skipped
        self.seconds += seconds
        if detail is not None:
            self.details[detail] += batch.rows


class Sizer:
    """The next batch's size, from how long the last one took (or how many rows it held).

    The size moves toward ``units * target / measured`` of the last batch, damped (halfway, in
    log scale) and clamped to 4 times either way, so one slow batch (a checkpoint, a hiccup)
    does not collapse the size and one fast one does not blow it up.
    """

    def __init__(self, policy: BatchPolicy, *, initial: int, maximum: int = 1 << 30) -> None:
        self.policy = policy
        self.maximum = max(1, maximum)
        self.size = max(1, min(initial, self.maximum))
        self.last = self.size  # the units the last batch covered

    def shrink(self, share: float) -> None:
        """From now on, batches at most ``share`` of the last one (never fewer than 1 unit)."""
        self.maximum = max(1, min(self.maximum, math.floor(self.last * share)))
        self.size = min(self.size, self.maximum)

    def observe(self, batch: Batch, seconds: float) -> None:
        self.last = max(batch.units, 1)
        if self.policy.rows:
            # fixed rows per batch: a page range is sized from the rows the last one held
            factor = 16.0 if batch.rows <= 0 else self.policy.rows / batch.rows
            factor *= max(batch.units, 1) / self.size
        else:
            target = self.policy.duration.total_seconds()
            factor = target / max(seconds, 1e-4) * max(batch.units, 1) / self.size
        factor = math.sqrt(min(16.0, max(1 / 16, factor)))
        self.size = max(1, min(self.maximum, round(self.size * factor)))


def run(
    step: Callable[[int], Batch],
    policy: BatchPolicy,
    *,
    sizer: Sizer,
    totals: Totals,
    detail: str | None = None,
    on_progress: ProgressCallback | None = None,
    where: Callable[[], str] | None = None,
) -> Totals:
    """Run ``step(size)`` batch after batch until one says it was the last.

    The one batch loop of kronos-db: ``policy.before_batch`` runs before each batch (pacing;
    it may ask for smaller batches), ``policy.pause`` after each one, and each batch's duration
    sizes the next. After each batch the step under way (:func:`kronos_db.logs.current_step`)
    is told how far it is: ``where()`` when given ("page 1200 of 26800"), then the rows and
    batches so far.
    """
    current = logs.current_step()
    while True:
        if policy.before_batch is not None:
            share = policy.before_batch()
            if share is not None and share < 1:
                sizer.shrink(share)
        started = time.monotonic()
        batch = step(sizer.size)
        seconds = time.monotonic() - started
        totals.add(batch, seconds, detail)
        logger.debug(
            "batch %d: %d units, %d rows in %.1f ms",
            totals.batches,
            batch.units,
            batch.rows,
            seconds * 1000,
        )
        if on_progress is not None:
            on_progress(totals.rows, totals.batches)
        if current is not None:
            place = f"{where()} · " if where is not None else ""
            current.progress(
                totals.rows, detail=f"{place}{totals.rows:,} rows, {totals.batches} batches"
            )
        if batch.last:
            return totals
        sizer.observe(batch, seconds)
        if policy.pause:
            time.sleep(policy.pause.total_seconds())


class TimedBatches:
    """Batch sizes by time for a loop of someone else's: the ``BatchSizer`` of a partition move.

    ``next_size()`` (called before each batch: it runs ``policy.before_batch`` first) gives the
    rows the next batch should take so that it lasts about ``policy.duration``; ``record()``
    (after each batch) says how many it took and how long that was, and tells the step under way
    how far it is.
    """

    def __init__(self, policy: BatchPolicy, *, initial: int = 1000) -> None:
        self.policy = policy
        self.sizer = Sizer(policy, initial=policy.rows or initial)
        self.totals = Totals()
        self.current = logs.current_step()

    def next_size(self) -> int:
        if self.policy.before_batch is not None:
            share = self.policy.before_batch()  # pacing, as in run()
            if share is not None and share < 1:
                self.sizer.shrink(share)
        return self.sizer.size

    def record(self, rows: int, seconds: float) -> None:
        batch = Batch(units=self.sizer.size, rows=rows)
        self.totals.add(batch, seconds)
        if self.current is not None:
            self.current.progress(
                self.totals.rows,
                detail=f"{self.totals.rows:,} rows, {self.totals.batches} batches",
            )
        self.sizer.observe(batch, seconds)


def _apply(
    conn: psycopg.Connection[Any],
    statement: Statement,
    params: Mapping[str, Any],
    policy: BatchPolicy,
    *,
    lock_wait: timedelta | None,
) -> dict[str, Any]:
    """One batch statement in a transaction of its own; its one row, or ``{"rows": n}``."""
    _committing.set(None)
    with (
        db.transaction_settings(conn, policy.settings(lock_wait=lock_wait)),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        cur.execute(statement, dict(params))
        row = {"rows": cur.rowcount} if cur.description is None else cur.fetchone()
        assert row is not None
        # the COMMIT comes next: interrupted there, the batch may be done without our knowing
        _committing.set(int(row.get("rows") or 0))
    _committing.set(None)
    return row


# the rows of the batch whose COMMIT is under way (None between batches): an interrupt that
# lands in a COMMIT cannot tell whether the server committed it
_committing: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "kronos_batch_committing", default=None
)


def rows_being_committed() -> int | None:
    """The rows of the batch an interrupt caught in its COMMIT (done or not: unknown)."""
    return _committing.get()


def _plain_or_skip_locked(
    conn: psycopg.Connection[Any],
    plain: Statement,
    skip_locked: Statement,
    params: Mapping[str, Any],
    policy: BatchPolicy,
) -> tuple[dict[str, Any], int]:
    """The batch as a plain statement; if it meets a row in use, claiming with SKIP LOCKED.

    Returns the statement's row and the rows skipped because a service held them.
    """
    try:
        return _apply(conn, plain, params, policy, lock_wait=policy.plain_lock_wait), 0
    except pg_errors.LockNotAvailable:
        # a service holds one of the rows (or DDL waits on the table): never wait on it
        row = _apply(conn, skip_locked, params, policy, lock_wait=None)
        return row, int(row.get("skipped") or 0)


def relation_pages(conn: psycopg.Connection[Any], relation: str) -> int:
    """The relation's size in heap pages, now (it grows while services insert)."""
    statement = query("batching", "select_relation_pages")
    row = conn.execute(statement, {"relation": relation}).fetchone()
    return int(row[0]) if row else 0


def _locks(relation: str, policy: BatchPolicy) -> str:
    budget = policy.duration.total_seconds() * 1000
    batch = f"{policy.rows} rows" if policy.rows else f"about {budget:g} ms"
    return f"ROW EXCLUSIVE on {relation}, the row locks of one batch ({batch}) at a time"


def _page_range(params: Mapping[str, Any], low: int, high: int) -> dict[str, Any]:
    return {**params, "first_page": f"({low},0)", "end_page": f"({high},0)"}


def physical_pass(
    conn: psycopg.Connection[Any],
    relation: str,
    plain: Statement,
    skip_locked: Statement,
    params: Mapping[str, Any],
    policy: BatchPolicy,
    *,
    totals: Totals,
    census: int | None = None,
    detail: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> Totals:
    """Run the batch statements over the heap of ``relation`` in page ranges.

    ``plain`` changes the rows of pages ``[%(first_page)s, %(end_page)s)`` (``tid`` values
    ``(page,0)``) and reports its row count; ``skip_locked`` does the same claiming rows with
    ``FOR UPDATE SKIP LOCKED`` and returns one row with ``rows`` and ``skipped``.

    The cursor re-reads the relation's size when it reaches the end, so pages added during the
    run (where most moved rows go) are walked too. But an update that finds no room on its
    row's page writes the new version wherever the free space map points, possibly behind the
    cursor, where the pass would never look again. ``census`` is how many rows matched before
    the pass (the caller counts them, from an index): when the pass changed fewer, a row may
    have escaped, and a **sweep** walks the visited pages once more, batch by batch. When the
    count balances, nothing escaped and the sweep (a second read of every page) is spared.
    Page ranges where rows in use were skipped are retried once at the end; a row a service
    still holds then is left to the next run, as ``SKIP LOCKED`` promises.
    """
    before, skipped_before = totals.rows, totals.skipped
    retry: list[tuple[int, int]] = []

    def walk(label: str) -> None:
        cursor, end = 0, relation_pages(conn, relation)
        sizer = Sizer(policy, initial=8 if policy.rows else 32, maximum=max(1, end))
        rows = totals.rows

        def step(size: int) -> Batch:
            nonlocal cursor, end
            low, high = cursor, cursor + size
            row, skipped = _plain_or_skip_locked(
                conn, plain, skip_locked, _page_range(params, low, high), policy
            )
            if skipped:
                retry.append((low, high))
            cursor = high
            if cursor >= end:
                end = relation_pages(conn, relation)
            return Batch(units=size, rows=int(row["rows"]), skipped=skipped, last=cursor >= end)

        with logs.step(
            f"{relation}: {label} of {end} pages",
            interrupted=lambda: f"page {cursor} of {end} reached, the batches before it kept",
            locks=_locks(relation, policy),
            log=logger,
        ):
            run(
                step,
                policy,
                sizer=sizer,
                totals=totals,
                detail=detail,
                on_progress=on_progress,
                where=lambda: f"page {min(cursor, end):,} of {end:,}",
            )
        logger.info("%s: %s: %d rows", relation, label, totals.rows - rows)

    walk("physical pass")
    changed = totals.rows - before
    if census is None or changed < census:
        logger.info(
            "%s: %s; sweeping the pages already visited",
            relation,
            "no census"
            if census is None
            else f"{census - changed} of {census} matching rows not found by the pass",
        )
        walk("sweep")
    still_skipped = 0
    for low, high in sorted(set(retry)):
        if policy.before_batch is not None:  # a retried range is a batch too: paced
            policy.before_batch()
        started = time.monotonic()
        row, skipped = _plain_or_skip_locked(
            conn, plain, skip_locked, _page_range(params, low, high), policy
        )
        batch = Batch(units=high - low, rows=int(row["rows"]), skipped=skipped)
        totals.add(batch, time.monotonic() - started, detail)
        still_skipped += skipped
    # every skip was in a retried range: what is still skipped is what the retries left
    totals.skipped = skipped_before + still_skipped
    return totals


def keyset_pass(
    conn: psycopg.Connection[Any],
    plain: Statement,
    skip_locked: Statement,
    params: Mapping[str, Any],
    policy: BatchPolicy,
    *,
    cursor_columns: tuple[str, ...],
    totals: Totals,
    detail: str | None = None,
    details: tuple[str, ...] = (),
    on_progress: ProgressCallback | None = None,
) -> Totals:
    """Run the batch statements in key order, each from the last key of the previous one.

    The statements take ``%(limit)s`` rows after the key ``cursor_columns`` (all None for the
    first batch) and return one row with ``scanned`` (rows of the key range taken), ``rows``
    (changed), the new values of ``cursor_columns`` and the ``details`` columns (counted into
    ``totals.details``). The pass ends at the first batch that takes fewer rows than its limit.
    """
    values: dict[str, Any] = dict(params)
    values.update(dict.fromkeys(cursor_columns))

    def step(size: int) -> Batch:
        values["limit"] = size
        row, skipped = _plain_or_skip_locked(conn, plain, skip_locked, values, policy)
        scanned = int(row["scanned"])
        if scanned:
            for column in cursor_columns:
                values[column] = row[column]
        for name in details:
            totals.details[name] += int(row[name])
        return Batch(units=scanned, rows=int(row["rows"]), skipped=skipped, last=scanned < size)

    sizer = Sizer(policy, initial=policy.rows or 500, maximum=1_000_000)
    return run(step, policy, sizer=sizer, totals=totals, detail=detail, on_progress=on_progress)


def _keyset_step(table: str, column: str, policy: BatchPolicy) -> AbstractContextManager[logs.Step]:
    return logs.step(
        f"{table}: by key ({column})",
        interrupted="the batches done are kept",
        locks=_locks(table, policy),
        log=logger,
    )


def _statements(name: str, table: str, column: str, key: str) -> sql.Composed:
    return sql.SQL(query("batching", name)).format(
        table=sql.Identifier(*table.split(".")),
        column=sql.Identifier(column),
        key=sql.Identifier(key),
    )


def delete_before(
    conn: psycopg.Connection[Any],
    table: str,
    column: str,
    cutoff: datetime,
    *,
    key: str,
    policy: BatchPolicy,
    totals: Totals,
    detail: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> Totals:
    """Delete the rows of ``table`` whose timestamp ``column`` is before ``cutoff``.

    ``column`` must be indexed; ``key`` is a unique column, the tie-breaker of the key order.
    The rows are counted first (from the index); when they are a small share of the table
    (under :data:`PHYSICAL_PASS_SHARE`) they are deleted in key order through the index, else
    in one physical pass over the heap, the count telling whether a sweep is needed.
    """
    params = {"cutoff": cutoff}
    with db.transaction_settings(conn, policy.settings()):
        count_statement = _statements("count_rows_before", table, column, key)
        row = conn.execute(count_statement, params).fetchone()
        estimate = conn.execute(query("batching", "select_relation_rows"), {"relation": table})
        rows_in_table = estimate.fetchone()
    matching = int(row[0]) if row else 0
    if matching == 0:
        return totals
    # reltuples is an estimate (0 before the first ANALYZE): never below what was counted
    share = matching / max(matching, float(rows_in_table[0] if rows_in_table else 0))
    if share < PHYSICAL_PASS_SHARE:
        logger.info("%s: %d rows with %s before the cutoff: by key", table, matching, column)
        with _keyset_step(table, column, policy):
            return keyset_pass(
                conn,
                _statements("delete_before_after_key", table, column, key),
                _statements("delete_before_after_key_skip_locked", table, column, key),
                params,
                policy,
                cursor_columns=("after_value", "after_key"),
                totals=totals,
                detail=detail,
                on_progress=on_progress,
            )
    logger.info(
        "%s: %d rows with %s before the cutoff (%.0f%% of the table): by pages",
        table,
        matching,
        column,
        share * 100,
    )
    return physical_pass(
        conn,
        table,
        _statements("delete_before_in_pages", table, column, key),
        _statements("delete_before_in_pages_skip_locked", table, column, key),
        params,
        policy,
        totals=totals,
        census=matching,
        detail=detail,
        on_progress=on_progress,
    )


__all__ = [
    "PHYSICAL_PASS_SHARE",
    "Batch",
    "BatchPolicy",
    "ProgressCallback",
    "Sizer",
    "TimedBatches",
    "Totals",
    "delete_before",
    "keyset_pass",
    "physical_pass",
    "relation_pages",
    "run",
]
