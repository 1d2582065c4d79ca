"""``kronos-db maintain``: every periodic job in one run, so that one cron line does it all.

The jobs are the entries of :data:`JOBS`, run in that order. Each job is independent: one that
fails (an SQL error, a lost connection, even a bug) is recorded as failed and the next one runs,
on a fresh connection (the jobs share one while they succeed). Each job keeps its own advisory
lock, so a job that another run is still doing is reported as ``skipped``, not failed.

Adding a job is adding ONE entry to :data:`JOBS`: a :class:`MaintenanceJob` whose ``run``
takes ``(conn, now, settings, options, on_progress)`` (``options``: the job's batches, dry
run, standby rule and pacer, from :func:`~kronos_db.housekeeping.job_options`) and returns a
:class:`~kronos_db.housekeeping.JobResult`. Partition rotation runs first.

The results can be written in the Prometheus text exposition format for the node exporter's
textfile collector (:func:`write_metrics`), atomically (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.pq import TransactionStatus

from kronos_db import db, housekeeping, logs, queue, replication
from kronos_db.config import Settings
from kronos_db.errors import KronosError, PartitionError, UsageError
from kronos_db.housekeeping import BatchOptions, JobResult, ProgressCallback, check_now

JobRunner = Callable[
    [psycopg.Connection[Any], datetime, Settings, BatchOptions, ProgressCallback | None],
    JobResult,
]


@dataclasses.dataclass(frozen=True)
class MaintenanceJob:
    name: str
    description: str
    run: JobRunner = dataclasses.field(repr=False)


def _expire_sessions(
    conn: psycopg.Connection[Any],
    now: datetime,
    settings: Settings,
    options: BatchOptions,
    on_progress: ProgressCallback | None,
) -> JobResult:
    return housekeeping.expire_sessions(
        conn,
        now,
        idle_timeout=settings.housekeeping.session_idle_timeout,
        options=options,
        on_progress=on_progress,
    )


def _expire_cache(
    conn: psycopg.Connection[Any],
    now: datetime,
    settings: Settings,
    options: BatchOptions,
    on_progress: ProgressCallback | None,
) -> JobResult:
    return housekeeping.expire_cache(conn, now, options=options, on_progress=on_progress)


def _requeue_stuck(
    conn: psycopg.Connection[Any],
    now: datetime,
    settings: Settings,
    options: BatchOptions,
    on_progress: ProgressCallback | None,
) -> JobResult:
    return queue.requeue_stuck(
        conn,
        now,
        older_than=settings.housekeeping.stuck_after,
        max_attempts=settings.housekeeping.max_attempts,
        options=options,
        on_progress=on_progress,
    )


def _purge_processed(
    conn: psycopg.Connection[Any],
    now: datetime,
    settings: Settings,
    options: BatchOptions,
    on_progress: ProgressCallback | None,
) -> JobResult:
    return queue.purge_processed(
        conn,
        now,
        older_than=settings.housekeeping.purge_after,
        options=options,
        on_progress=on_progress,
    )


def _reset_rate_limits(
    conn: psycopg.Connection[Any],
    now: datetime,
    settings: Settings,
    options: BatchOptions,
    on_progress: ProgressCallback | None,
) -> JobResult:
    return housekeeping.reset_rate_limits(
        conn,
        now,
        older_than=settings.housekeeping.ratelimit_window,
        options=options,
        on_progress=on_progress,
    )


def _rotate_partitions(
    conn: psycopg.Connection[Any],
    now: datetime,
    settings: Settings,
    options: BatchOptions,
    on_progress: ProgressCallback | None,
) -> JobResult:
    # the rotation's modules only when it runs: `expire sessions` goes through run_job too
    from kronos_db.partitions.rotation import rotate

    started = time.monotonic()
    result = rotate(conn, settings, now, dry_run=options.dry_run, pacer=options.pacer)
    if result.failed:
        raise PartitionError("; ".join(f"{step.partition}: {step.error}" for step in result.failed))
    done = [step for step in result.steps if step.ok]
    return JobResult(
        job="rotate-partitions",
        rows=len(done),
        batches=len(done),
        seconds=time.monotonic() - started,
        now=now,
        dry_run=options.dry_run,
        skipped=result.skipped,
        details=dict(Counter(step.kind for step in done)),
        reason=result.reason,
        paced_seconds=options.pacer.waited if options.pacer is not None else 0.0,
    )


# The registry of periodic jobs, run in this order by `kronos-db maintain`.
JOBS: tuple[MaintenanceJob, ...] = (
    # first: a missing partition makes the services' log rows land in the default partition
    MaintenanceJob(
        "rotate-partitions",
        "create upcoming log partitions, retire expired ones",
        _rotate_partitions,
    ),
    MaintenanceJob("expire-sessions", "delete expired and idle sessions", _expire_sessions),
    MaintenanceJob("expire-cache", "delete expired cache rows", _expire_cache),
    MaintenanceJob(
        "requeue-stuck",
        "requeue messages stuck in processing (failed at the retry limit)",
        _requeue_stuck,
    ),
    MaintenanceJob("purge-processed", "delete old processed messages", _purge_processed),
    MaintenanceJob(
        "reset-ratelimits", "reset rate-limit counters whose window has passed", _reset_rate_limits
    ),
)


def job_names() -> tuple[str, ...]:
    return tuple(job.name for job in JOBS)


def run_job(
    conn: psycopg.Connection[Any],
    name: str,
    settings: Settings,
    now: datetime,
    options: BatchOptions,
    on_progress: ProgressCallback | None = None,
) -> JobResult:
    """One job of :data:`JOBS`, with the settings it reads: the one place that says which
    (``maintain``, the single commands and :mod:`kronos_db.api` all come here)."""
    (job,) = (job for job in JOBS if job.name == name)
    return job.run(conn, now, settings, options, on_progress)


JobStatus = Literal["ok", "skipped", "failed"]


@dataclasses.dataclass(frozen=True)
class JobOutcome:
    job: str
    status: JobStatus
    seconds: float
    result: JobResult | None = None
    error: str | None = None
    reason: str | None = None  # why it was skipped without running (a standby)
    paced_seconds: float = 0.0  # time spent waiting for standbys and slots to catch up

    @property
    def rows(self) -> int:
        return self.result.rows if self.result else 0

    @property
    def batches(self) -> int:
        return self.result.batches if self.result else 0

    def summary(self) -> str:
        if self.reason is not None:
            return f"{self.job}: {self.reason}"
        if self.error is not None:
            return f"{self.job}: FAILED after {self.seconds:.2f}s: {self.error}"
        assert self.result is not None
        return self.result.summary()


@dataclasses.dataclass(frozen=True)
class MaintenanceReport:
    now: datetime
    finished_at: float  # Unix time the run ended (for the metrics)
    seconds: float
    dry_run: bool
    jobs: tuple[JobOutcome, ...]
    # "standby: skipped (…)": the server is a standby, so no job ran (only the primary acts)
    skipped: str | None = None

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(outcome.job for outcome in self.jobs if outcome.status == "failed")

    @property
    def ok(self) -> bool:
        return not self.failed


def select_jobs(only: Iterable[str] = (), skip: Iterable[str] = ()) -> tuple[MaintenanceJob, ...]:
    """The registry's jobs, restricted to ``only`` (when given) and without ``skip``."""
    only, skip = tuple(only), tuple(skip)
    known = job_names()
    unknown = [name for name in (*only, *skip) if name not in known]
    if unknown:
        raise UsageError(f"unknown job {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    return tuple(job for job in JOBS if (not only or job.name in only) and job.name not in skip)


def run_maintenance(
    target: db.Target,
    settings: Settings,
    now: datetime,
    *,
    jobs: Sequence[MaintenanceJob] = JOBS,
    dry_run: bool = False,
    on_start: Callable[[MaintenanceJob], None] | None = None,
    on_progress: Callable[[MaintenanceJob, int, int], None] | None = None,
    on_done: Callable[[JobOutcome], None] | None = None,
) -> MaintenanceReport:
    """Run ``jobs`` one after the other; never stop at a failure.

    The jobs share one connection while they succeed (a cron run every few minutes need not
    start six server processes); a job that fails leaves its connection behind, and the next
    job gets a fresh one, so a broken or dirty session never reaches another job.
    """
    check_now(now)
    started = time.monotonic()
    outcomes: list[JobOutcome] = []
    conn: psycopg.Connection[Any] | None = None
    try:
        # the same crontab runs on every node: on a standby, every job is skipped up front
        # (a dry run only reads, so it may run there)
        conn, standby = _standby(target, settings, dry_run)
        if standby is not None:
            for job in jobs:
                outcome = JobOutcome(job.name, "skipped", 0.0, reason=standby)
                outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome)
            return MaintenanceReport(
                now,
                time.time(),
                time.monotonic() - started,
                dry_run,
                tuple(outcomes),
                skipped=standby,
            )
        for job in jobs:
            if on_start is not None:
                on_start(job)
            progress: ProgressCallback | None = None
            if on_progress is not None:

                def progress(rows: int, batches: int, job: MaintenanceJob = job) -> None:
                    assert on_progress is not None
                    on_progress(job, rows, batches)

            job_started = time.monotonic()
            options: BatchOptions | None = None
            try:
                if conn is None:
                    conn = db.connect(target)
                options = housekeeping.job_options(conn, settings, job.name, dry_run=dry_run)
                with logs.job(job.name):
                    result = job.run(conn, now, settings, options, progress)
                conn = _reset_session(conn)
                outcome = JobOutcome(
                    job.name,
                    "skipped" if result.skipped else "ok",
                    time.monotonic() - job_started,
                    result=result,
                    reason=result.reason or None,
                    paced_seconds=result.paced_seconds,
                )
            except Exception as exc:  # a failure (or a bug) in one job must not stop the others
                _discard(conn)
                conn = None
                outcome = JobOutcome(
                    job.name,
                    "failed",
                    time.monotonic() - job_started,
                    error=_failure(exc, target),
                    paced_seconds=options.pacer.waited if options and options.pacer else 0.0,
                )
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome)
    finally:
        _discard(conn)
    return MaintenanceReport(now, time.time(), time.monotonic() - started, dry_run, tuple(outcomes))


def _standby(
    target: db.Target, settings: Settings, dry_run: bool
) -> tuple[psycopg.Connection[Any] | None, str | None]:
    """The first job's connection, and why the jobs are skipped when the server is a standby.

    ``[replication] on_standby = "fail"`` raises ``StandbyError`` instead. A server that cannot
    be reached is left for the jobs to report, one by one, as before.
    """
    if dry_run:
        return None, None
    try:
        conn = db.connect(target)
    except KronosError:
        return None, None
    try:
        return conn, replication.standby_skip(
            conn,
            "maintain",
            on_standby=settings.replication.on_standby,
            source=db.url_setting(target),
        )
    except BaseException:
        _discard(conn)
        raise


def _reset_session(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any] | None:
    """The connection, fit for the next job, or None to reconnect.

    Every job sets its timeouts with ``SET LOCAL`` and holds its lease in ``kronos_leases``, so a
    finished job leaves nothing in the session to undo. What can be left is a transaction a job
    did not end: then the next job gets a new connection. Nothing session-wide is reset here:
    behind a transaction pooler, ``RESET ALL`` or ``pg_advisory_unlock_all()`` would act on
    whatever server connection the pooler lends, and could release a service's own locks.
    """
    if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
        _discard(conn)
        return None
    return conn


def _discard(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def _failure(exc: Exception, target: db.Target) -> str:
    """One line saying why a job failed, the password never in it."""
    if isinstance(exc, psycopg.Error):
        return db.database_error(exc, target).message
    if isinstance(exc, KronosError):
        return target.redact(exc.message)
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return (
        f"internal error: {type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
    )


# --- Prometheus textfile -------------------------------------------------------------------

METRIC_PREFIX = "kronos_maintenance"
_LAST_SUCCESS = re.compile(
    r'^kronos_maintenance_job_last_success_timestamp_seconds\{job="(?P<job>[^"\\]*)"\}\s+'
    r"(?P<value>[0-9.eE+-]+)\s*$",
    re.MULTILINE,
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def previous_successes(text: str) -> dict[str, float]:
    """The last-success timestamps of a previous metrics file (kept for failed jobs)."""
    return {m.group("job"): float(m.group("value")) for m in _LAST_SUCCESS.finditer(text)}


def render_metrics(report: MaintenanceReport, previous: str = "") -> str:
    """The report in the Prometheus text exposition format (version 0.0.4).

    ``kronos_maintenance_job_last_success_timestamp_seconds`` carries over from ``previous``
    (the file this one replaces) for a job that failed or was skipped, so that an alert on
    ``time() - …last_success… > 3600`` fires when a job keeps failing.
    """
    last_success = previous_successes(previous)
    for outcome in report.jobs:
        if outcome.status == "ok" and not report.dry_run:
            last_success[outcome.job] = report.finished_at
    families: list[tuple[str, str, str, list[tuple[str | None, float]]]] = [
        (
            "last_run_timestamp_seconds",
            "gauge",
            "Unix time at which the last kronos-db maintain run finished.",
            [(None, report.finished_at)],
        ),
        (
            "last_run_duration_seconds",
            "gauge",
            "Wall time of the last kronos-db maintain run.",
            [(None, report.seconds)],
        ),
        (
            "last_run_failed_jobs",
            "gauge",
            "Jobs that failed in the last run (the run exits 1 when this is not 0).",
            [(None, float(len(report.failed)))],
        ),
        (
            "last_run_standby",
            "gauge",
            "1 when the last run found a standby and left every job to the primary.",
            [(None, 1.0 if report.skipped else 0.0)],
        ),
        (
            "job_success",
            "gauge",
            "1 when the job succeeded in the last run (or was skipped because another run "
            "held its lock), 0 when it failed.",
            [(o.job, 0.0 if o.status == "failed" else 1.0) for o in report.jobs],
        ),
        (
            "job_skipped",
            "gauge",
            "1 when the job did not run: another run held its lock, or the server is a standby.",
            [(o.job, 1.0 if o.status == "skipped" else 0.0) for o in report.jobs],
        ),
        (
            "job_rows",
            "gauge",
            "Rows the job deleted or updated in the last run (would, in a dry run).",
            [(o.job, float(o.rows)) for o in report.jobs],
        ),
        (
            "job_batches",
            "gauge",
            "Batches (transactions) the job ran in the last run.",
            [(o.job, float(o.batches)) for o in report.jobs],
        ),
        (
            "job_pacing_wait_seconds",
            "gauge",
            "Time the job spent in the last run waiting for standbys and replication slots "
            "to catch up ([replication] pacing).",
            [(o.job, o.paced_seconds) for o in report.jobs],
        ),
        (
            "job_duration_seconds",
            "gauge",
            "Wall time of the job in the last run.",
            [(o.job, o.seconds) for o in report.jobs],
        ),
        (
            "job_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the job's last successful run.",
            sorted(last_success.items()),
        ),
    ]
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        if not samples:
            continue
        metric = f"{METRIC_PREFIX}_{name}"
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        for job, value in samples:
            labels = f'{{job="{_label(job)}"}}' if job is not None else ""
            lines.append(f"{metric}{labels} {value:.17g}")
    return "\n".join(lines) + "\n"


def write_metrics(path: Path, report: MaintenanceReport) -> None:
    """Write the metrics file atomically: a temporary file beside it, then a rename.

    The node exporter never reads a half-written file, and a crash leaves the old one whole.
    """
    try:
        previous = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        previous = ""
    except OSError as exc:
        raise KronosError(f"cannot read the metrics file {path}: {exc.strerror}") from None
    text = render_metrics(report, previous)
    directory = path.parent if str(path.parent) else Path()
    try:
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=directory
        )
    except OSError as exc:
        raise KronosError(f"cannot write the metrics file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; the exporter runs as another user
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise KronosError(f"cannot write the metrics file {path}: {exc.strerror}") from None


__all__ = [
    "JOBS",
    "JobOutcome",
    "MaintenanceJob",
    "MaintenanceReport",
    "job_names",
    "render_metrics",
    "run_maintenance",
    "select_jobs",
    "write_metrics",
]
