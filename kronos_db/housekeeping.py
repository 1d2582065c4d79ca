"""Housekeeping for cron: expiring sessions and cache rows, resetting rate-limit counters.

Every job runs against a busy database, so each one:

* works in **batches sized by time** (:mod:`kronos_db.batching`): each batch is one short
  transaction that takes about ``batch_time`` (25 ms), so a service that needs a row a batch
  holds waits at most about that long, and the run goes about as fast as one big statement;
* expires rows in **one physical pass** over the table (page ranges, then a sweep for rows an
  update moved behind the cursor), never visiting a row twice or re-reading an index's dead
  entries;
* never waits on a row a service holds (``FOR UPDATE SKIP LOCKED`` when a batch meets one):
  the row is skipped, retried once at the end, and otherwise left to the next run;
* holds a job-level lease (``housekeeping:<job>``, :mod:`kronos_db.locks`) for the run: a
  second, overlapping run returns at once with ``skipped=True`` and does nothing;
* runs under ``lock_timeout`` (fail fast behind DDL instead of queueing and blocking the
  services behind it) and ``statement_timeout`` (a bound on each batch), both set LOCAL in
  each batch's transaction, so that nothing stays behind on a pooled server connection;
* takes the clock as a parameter (``now``, tz-aware); nothing reads the server's ``now()``.

The message-queue jobs live in :mod:`kronos_db.queue` and use the same batches.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Literal, LiteralString

import psycopg
from psycopg.rows import dict_row

from kronos_db import batching, db, logs, replication
from kronos_db.batching import BatchPolicy, ProgressCallback, Totals, rows_being_committed
from kronos_db.checks import (
    Context,
    Finding,
    Limits,
    Metric,
    Outcome,
    Status,
    Threshold,
    data_hint,
    fetch,
    health_threshold,
)
from kronos_db.config import HousekeepingSettings, Settings
from kronos_db.durations import format_duration, postgres_interval
from kronos_db.errors import ReplicationLagError, UsageError
from kronos_db.locks import try_advisory_lock
from kronos_db.resources import query

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """How a job runs its batches (from the ``[housekeeping]`` section, or options)."""

    batch_size: int = 0  # rows per batch; 0: sized so that a batch takes about batch_time
    batch_time: timedelta = timedelta(milliseconds=25)
    pause: timedelta = timedelta(0)
    lock_timeout: timedelta = timedelta(seconds=2)
    statement_timeout: timedelta = timedelta(seconds=60)
    dry_run: bool = False
    # a real run on a standby: skip it (exit 0) or fail (StandbyError); see kronos_db.replication
    on_standby: Literal["skip", "fail"] = "skip"
    # before each batch: wait while a standby or a slot is too far behind (None: no pacing)
    pacer: replication.Pacer | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.batch_size < 0:
            raise UsageError(f"the batch size cannot be negative, got {self.batch_size}")
        if self.batch_time <= timedelta(0):
            raise UsageError("the batch time must be longer than 0")
        if self.pause < timedelta(0):
            raise UsageError("the pause between batches cannot be negative")

    @classmethod
    def from_settings(
        cls, settings: HousekeepingSettings, *, dry_run: bool = False
    ) -> BatchOptions:
        return cls(
            batch_size=settings.batch_size,
            batch_time=settings.batch_time,
            pause=settings.batch_pause,
            lock_timeout=settings.lock_timeout,
            statement_timeout=settings.statement_timeout,
            dry_run=dry_run,
        )

    def policy(self, *, idempotent: bool = False) -> BatchPolicy:
        """The batch policy of a job; ``idempotent`` jobs (deleting expired rows) commit
        without waiting for the WAL flush (a crash can only bring back rows the next run
        deletes again)."""
        return BatchPolicy(
            duration=self.batch_time,
            rows=self.batch_size,
            pause=self.pause,
            lock_timeout=self.lock_timeout,
            statement_timeout=self.statement_timeout,
            synchronous_commit=not idempotent,
            before_batch=self.pacer,
        )


DEFAULT_OPTIONS = BatchOptions()


def job_options(
    conn: psycopg.Connection[Any], settings: Settings, job: str, *, dry_run: bool = False
) -> BatchOptions:
    """A job's options from the configuration: ``[housekeeping]``'s batches, and from
    ``[replication]`` what it does on a standby and its pacer on ``conn``."""
    return dataclasses.replace(
        BatchOptions.from_settings(settings.housekeeping, dry_run=dry_run),
        on_standby=settings.replication.on_standby,
        pacer=None if dry_run else replication.pacer(conn, settings.replication, job),
    )


@dataclasses.dataclass(frozen=True)
class JobResult:
    """What one run of a job did (or, with ``dry_run``, would do)."""

    job: str
    rows: int  # rows deleted or updated; with dry_run, rows that would be
    batches: int  # batches (transactions) run
    seconds: float
    now: datetime
    dry_run: bool = False
    skipped: bool = False  # nothing was done: another run held the job's lease, or a standby
    details: Mapping[str, int] = dataclasses.field(default_factory=dict)  # rows per kind
    rows_in_use: int = 0  # rows services held during the run: left to the next run
    reason: str = ""  # why it was skipped, when not for the lease ("standby: skipped: …")
    paced_seconds: float = 0.0  # time spent waiting for standbys and slots to catch up

    def summary(self) -> str:
        """One line for logs and cron mail: ``expire-sessions: 812 rows in 1 batch, 0.04s``."""
        if self.skipped:
            return f"{self.job}: {self.reason or 'skipped, another run holds its lock'}"
        kinds = ", ".join(f"{name} {count}" for name, count in self.details.items())
        kinds = f" ({kinds})" if kinds and self.rows else ""
        rows = f"{self.rows} row" + ("" if self.rows == 1 else "s")
        if self.dry_run:
            return f"{self.job}: {rows} would be affected{kinds} (dry run)"
        batches = f"{self.batches} batch" + ("" if self.batches == 1 else "es")
        in_use = f"; {self.rows_in_use} in use, left for the next run" if self.rows_in_use else ""
        paced = f"; waited {self.paced_seconds:.1f}s for the standbys" if self.paced_seconds else ""
        return f"{self.job}: {rows}{kinds} in {batches}, {self.seconds:.2f}s{in_use}{paced}"


def check_now(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise UsageError("now must be a timezone-aware datetime (UTC)")
    return now


def lock_name(job: str) -> str:
    return f"housekeeping:{job}"


def _require_autocommit(conn: psycopg.Connection[Any]) -> None:
    if not conn.autocommit:
        raise UsageError(
            "housekeeping jobs need an autocommit connection (one transaction per batch)"
        )


def job_settings(options: BatchOptions) -> dict[str, str]:
    """The settings every statement of a job runs under."""
    return {
        "lock_timeout": postgres_interval(options.lock_timeout),
        "statement_timeout": postgres_interval(options.statement_timeout),
    }


@contextmanager
def job_timeouts(conn: psycopg.Connection[Any], options: BatchOptions) -> Iterator[None]:
    """One transaction under the job's ``lock_timeout`` and ``statement_timeout`` (SET LOCAL).

    Nothing outlives the transaction: the session, or the pooled server connection behind it,
    keeps its own values.
    """
    _require_autocommit(conn)
    with db.transaction_settings(conn, job_settings(options)):
        yield


def count_rows(
    conn: psycopg.Connection[Any], statement: LiteralString, params: Mapping[str, Any]
) -> dict[str, int]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(statement, dict(params)).fetchone()
    assert row is not None
    return {key: int(value) for key, value in row.items()}


def interrupted_state(totals: Totals) -> str:
    """What an interrupted job leaves, for its one line: the committed batches, and the one an
    interrupt caught in its COMMIT (the server may have committed it: rows gone, not counted)."""
    state = f"{totals.rows} rows done in {totals.batches} committed batches"
    committing = rows_being_committed()
    if committing:
        state += f", and maybe the {committing} rows of the batch it was committing"
    return f"{state}, nothing half-done; the next run carries on"


def run_job(
    conn: psycopg.Connection[Any],
    job: str,
    now: datetime,
    options: BatchOptions,
    work: Callable[[Totals], None],
    count: Callable[[], Mapping[str, int]],
) -> JobResult:
    """The frame every job shares: dry run, or lock + timeouts + batches, timed."""
    check_now(now)
    started = time.monotonic()
    with logs.job(job):
        if options.dry_run:
            # read-only: no lock needed, and a dry run never makes a real run skip
            with job_timeouts(conn, options):
                counts = dict(count())
            rows = counts.pop("rows")
            return JobResult(
                job, rows, 0, time.monotonic() - started, now, dry_run=True, details=counts
            )
        _require_autocommit(conn)
        totals = Totals()
        # before the lease, the first write: on a standby, skip (or fail) in one line
        standby = replication.standby_skip(conn, job, on_standby=options.on_standby)
        if standby is not None:
            return JobResult(
                job, 0, 0, time.monotonic() - started, now, skipped=True, reason=standby
            )
        with try_advisory_lock(conn, lock_name(job)) as acquired:
            if not acquired:
                logger.info("%s: another run holds the lock %s; nothing to do", job, lock_name(job))
                return JobResult(job, 0, 0, time.monotonic() - started, now, skipped=True)
            with logs.step(
                job,
                interrupted=lambda: interrupted_state(totals),
                locks=f"lease {lock_name(job)}, lock_timeout "
                f"{format_duration(options.lock_timeout)}",
                log=logger,
            ):
                try:
                    work(totals)
                except ReplicationLagError as exc:
                    raise ReplicationLagError(
                        f"{exc.message}; the {totals.rows} rows done in {totals.batches} "
                        "batches stay done, the rest is left for the next run",
                        waited_seconds=exc.waited_seconds,
                    ) from exc
    seconds = time.monotonic() - started
    logger.info("%s: %d rows in %d batches, %.2fs", job, totals.rows, totals.batches, seconds)
    return JobResult(
        job,
        totals.rows,
        totals.batches,
        seconds,
        now,
        details=dict(totals.details),
        rows_in_use=totals.skipped,
        paced_seconds=options.pacer.waited if options.pacer is not None else 0.0,
    )


def expire_sessions(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    idle_timeout: timedelta = timedelta(hours=1),
    options: BatchOptions = DEFAULT_OPTIONS,
    on_progress: ProgressCallback | None = None,
) -> JobResult:
    """Delete the sessions past ``expires_at``, then those idle for longer than ``idle_timeout``.

    ``idle_timeout`` of zero turns the idle rule off. Details: ``expired`` and ``idle`` rows.
    """
    if idle_timeout < timedelta(0):
        raise UsageError("the idle timeout cannot be negative")
    params: dict[str, Any] = {"now": now, "idle_before": now - idle_timeout}
    idle = idle_timeout > timedelta(0)

    def work(totals: Totals) -> None:
        totals.details["expired"] = totals.details["idle"] = 0
        policy = options.policy(idempotent=True)
        batching.delete_before(
            conn,
            "sessions",
            "expires_at",
            now,
            key="id",
            policy=policy,
            totals=totals,
            detail="expired",
            on_progress=on_progress,
        )
        if idle:
            batching.delete_before(
                conn,
                "sessions",
                "last_active_at",
                now - idle_timeout,
                key="id",
                policy=policy,
                totals=totals,
                detail="idle",
                on_progress=on_progress,
            )

    def count() -> dict[str, int]:
        expired = count_rows(conn, query("housekeeping", "count_expired_sessions"), params)["rows"]
        idle_rows = (
            count_rows(conn, query("housekeeping", "count_idle_sessions"), params)["rows"]
            if idle
            else 0
        )
        return {"rows": expired + idle_rows, "expired": expired, "idle": idle_rows}

    return run_job(conn, "expire-sessions", now, options, work, count)


def expire_cache(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    options: BatchOptions = DEFAULT_OPTIONS,
    on_progress: ProgressCallback | None = None,
) -> JobResult:
    """Delete the cache rows past ``expires_at`` (rows without an expiry never go)."""
    params = {"now": now}

    def work(totals: Totals) -> None:
        batching.delete_before(
            conn,
            "cache",
            "expires_at",
            now,
            key="key",
            policy=options.policy(idempotent=True),
            totals=totals,
            on_progress=on_progress,
        )

    def count() -> dict[str, int]:
        return count_rows(conn, query("housekeeping", "count_expired_cache"), params)

    return run_job(conn, "expire-cache", now, options, work, count)


def reset_rate_limits(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    older_than: timedelta = timedelta(hours=1),
    options: BatchOptions = DEFAULT_OPTIONS,
    on_progress: ProgressCallback | None = None,
) -> JobResult:
    """Set back to 0 the counters whose last request is older than ``older_than``.

    The rows stay (the router upserts them); a counter already at 0 is left alone.
    """
    if older_than <= timedelta(0):
        raise UsageError("the rate-limit window must be longer than 0")
    params = {"window_start": now - older_than}

    def work(totals: Totals) -> None:
        statement = query("housekeeping", "reset_rate_limits")
        batching.keyset_pass(
            conn,
            statement,
            statement,  # it claims with SKIP LOCKED already
            params,
            options.policy(),
            cursor_columns=("after_request", "after_id"),
            totals=totals,
            on_progress=on_progress,
        )

    def count() -> dict[str, int]:
        return count_rows(conn, query("housekeeping", "count_stale_rate_limits"), params)

    return run_job(conn, "reset-ratelimits", now, options, work, count)


# ----------------------------------------------------------------------------- check

EXPIRED_COUNT_CAP = 10_000_000


@dataclasses.dataclass(frozen=True)
class ExpiredRows:
    table_name: str
    expired_rows: int  # counted up to EXPIRED_COUNT_CAP
    oldest_expiry: datetime | None


def expired_rows(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime
) -> list[ExpiredRows]:
    """Sessions and cache rows past their expiry, still waiting for the expiry jobs."""
    return fetch(
        conn,
        query("housekeeping", "select_expired_rows"),
        {"now": now, "cap": EXPIRED_COUNT_CAP},
        ExpiredRows,
        limits,
        privilege_hint=data_hint("sessions, cache"),
    )


def expired_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "expired_rows"),)


def check_expired_rows(ctx: Context) -> Outcome:
    """Are the expiry jobs keeping up? Expired rows still waiting to be deleted."""
    (threshold,) = expired_thresholds(ctx.settings)
    rows = expired_rows(ctx.conn, ctx.limits, now=ctx.now)
    top = max(rows, key=lambda row: row.expired_rows, default=None)
    metric = Metric("expired_rows", float(top.expired_rows if top else 0), "count", threshold)
    status = metric.grade()
    shown = ", ".join(f"{row.table_name} {row.expired_rows:,}" for row in rows)
    return Outcome(
        status,
        f"expired rows waiting to be deleted: {shown}",
        (metric,),
        tuple(
            Finding(
                f"table {row.table_name}",
                f"{row.expired_rows:,} expired row(s), the oldest expired "
                f"{row.oldest_expiry:%Y-%m-%d %H:%M %Z}",
            )
            for row in rows
            if row.expired_rows and row.oldest_expiry is not None
        )
        if status is not Status.OK
        else (),
        ""
        if status is Status.OK
        else "is the expiry job running? `kronos-db expire sessions` / `expire cache` (or "
        "`kronos-db maintain`) from cron",
        tuple(rows),
    )


__all__ = [
    "DEFAULT_OPTIONS",
    "BatchOptions",
    "ExpiredRows",
    "JobResult",
    "ProgressCallback",
    "check_expired_rows",
    "expire_cache",
    "expire_sessions",
    "expired_rows",
    "job_options",
    "job_settings",
    "job_timeouts",
    "lock_name",
    "reset_rate_limits",
    "run_job",
]
