"""kronos-db as a library: every job and check of the command line, with one calling convention.

    from datetime import UTC, datetime
    from kronos_db import api

    settings = api.load_settings()        # the file, KRONOS_* variables, the defaults
    target = api.target(settings)         # which database, as the command line picks it
    api.migrate(target, settings)
    result = api.expire_sessions(target, settings, now=datetime.now(UTC))
    print(result.summary())

Every function takes the database first, the :class:`~kronos_db.config.Settings` second, then
keyword arguments:

* the database is a :class:`~kronos_db.db.Target` (the function connects, and disconnects) or,
  where one connection is all it needs, an open **autocommit** psycopg connection of yours;
  jobs that manage their own connections and locks (migrations, backups, ``maintain``) take a
  target only;
* ``now`` (a timezone-aware datetime) wherever time matters: the clock is a parameter, never
  read inside a job, so a program (or a test) can run a job "as of" any moment;
* the thresholds, batch sizes and timeouts come from the settings, as they do for the command
  line (``api.load_settings`` reads the same file and variables; build a ``Settings`` yourself,
  or ``dataclasses.replace`` one, to change them in code).

Each returns a frozen dataclass (the same the command line renders); each failure is a
:class:`~kronos_db.errors.KronosError` subclass whose ``message`` is one line without any
password. The work is logged through :mod:`logging` (``kronos_db.*`` loggers: each step with its
duration at INFO; :class:`kronos_db.logs.JobFilter` adds the job's name to your records).

``docs/library.md`` documents this module; its examples run as tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kronos_db.config import Settings
from kronos_db.config import load_settings as _load_settings

if TYPE_CHECKING:
    import psycopg

    from kronos_db.backups import Backup, VerifyResult
    from kronos_db.checks import Outcome
    from kronos_db.db import Target
    from kronos_db.housekeeping import JobResult
    from kronos_db.maintenance import MaintenanceReport
    from kronos_db.migrations import MigrationResult, MigrationStatus
    from kronos_db.partitions.rotation import RotationResult
    from kronos_db.partitions.status import PartitionStatus
    from kronos_db.queue import QueueStat
    from kronos_db.reports.health import HealthReport
    from kronos_db.schema import CheckReport

    Source = psycopg.Connection[Any] | Target

ResultT = TypeVar("ResultT")
Progress = Callable[[int, int], None]  # rows so far, batches so far


def load_settings(
    config_file: str | Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings as the command line reads them: ``config_file`` (else ``$KRONOS_CONFIG``,
    else ``./kronos.toml``), overridden by ``KRONOS_<SECTION>_<KEY>`` variables of ``environ``
    (this process's by default)."""
    return _load_settings(config_file, environ=environ)


def target(settings: Settings, url: str | None = None) -> Target:
    """The database to work on: ``url``, else ``$KRONOS_DATABASE_URL``, ``$DATABASE_URL``, the
    settings' ``database.url``, the libpq defaults. Its password is never shown (``describe()``
    leaves it out; ``redact()`` scrubs it from a text)."""
    from kronos_db import db

    return db.resolve_target(url, settings)


def _on_connection(source: Source, work: Callable[[psycopg.Connection[Any]], ResultT]) -> ResultT:
    from kronos_db import db

    if isinstance(source, db.Target):
        with db.connection(source) as conn:
            return work(conn)
    return work(source)


# --------------------------------------------------------------------------- migrations


def migrate(
    target: Target, settings: Settings, revision: str = "head", *, create_database: bool = False
) -> MigrationResult:
    """Apply the migrations up to ``revision`` under the migration lock (``kronos-db migrate``)."""
    from kronos_db import migrations

    return migrations.upgrade(settings, target, revision, create_database=create_database)


def downgrade(target: Target, settings: Settings, revision: str) -> MigrationResult:
    """Revert migrations down to ``revision`` (``kronos-db downgrade``)."""
    from kronos_db import migrations

    return migrations.downgrade(settings, target, revision)


def status(target: Target, settings: Settings) -> MigrationStatus:
    """The current revision, the pending ones and any edited migration (``kronos-db status``)."""
    from kronos_db import migrations

    return migrations.status(settings, target)


def check(target: Target, settings: Settings) -> CheckReport:
    """The differences between the live schema and head's (``kronos-db check``)."""
    from kronos_db import schema

    return schema.check(settings, target)


# --------------------------------------------------------------------------- partitions


def rotate(
    source: Source, settings: Settings, *, now: datetime, dry_run: bool = False
) -> RotationResult:
    """Create the partitions due, move default-partition rows, retire the old ones
    (``kronos-db partitions rotate``)."""
    from kronos_db.partitions import rotation

    return rotation.rotate(source, settings, now, dry_run=dry_run)


def partition_status(source: Source, settings: Settings, *, now: datetime) -> PartitionStatus:
    """Every partition, coverage ahead and the next rotation (``kronos-db partitions status``)."""
    from kronos_db.partitions import status

    return status.partition_status(source, settings, now)


# --------------------------------------------------------------------------- housekeeping


def _job(
    source: Source,
    name: str,
    settings: Settings,
    now: datetime,
    dry_run: bool,
    on_progress: Progress | None,
) -> JobResult:
    """A job of ``maintain`` alone, as its command runs it: [housekeeping]'s batches,
    [replication]'s standby rule and pacing, the settings the job reads."""
    from kronos_db import maintenance
    from kronos_db.housekeeping import job_options

    return _on_connection(
        source,
        lambda conn: maintenance.run_job(
            conn,
            name,
            settings,
            now,
            job_options(conn, settings, name, dry_run=dry_run),
            on_progress,
        ),
    )


def expire_sessions(
    source: Source,
    settings: Settings,
    *,
    now: datetime,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> JobResult:
    """Delete the expired sessions, and those idle longer than ``session_idle_timeout``
    (``kronos-db expire sessions``)."""
    return _job(source, "expire-sessions", settings, now, dry_run, on_progress)


def expire_cache(
    source: Source,
    settings: Settings,
    *,
    now: datetime,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> JobResult:
    """Delete the expired cache rows (``kronos-db expire cache``)."""
    return _job(source, "expire-cache", settings, now, dry_run, on_progress)


def reset_rate_limits(
    source: Source,
    settings: Settings,
    *,
    now: datetime,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> JobResult:
    """Set the counters whose window has passed back to 0 (``kronos-db ratelimits reset``)."""
    return _job(source, "reset-ratelimits", settings, now, dry_run, on_progress)


def queue_stats(
    source: Source, settings: Settings, *, now: datetime, topic: str | None = None
) -> list[QueueStat]:
    """Messages per topic and status, with ages (``kronos-db queue stats``)."""
    from kronos_db import queue

    return _on_connection(
        source,
        lambda conn: queue.stats(
            conn, now, topic=topic, statement_timeout=settings.housekeeping.statement_timeout
        ),
    )


def requeue_stuck(
    source: Source,
    settings: Settings,
    *,
    now: datetime,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> JobResult:
    """Put messages stuck in processing back to pending, or to failed at the retry limit
    (``kronos-db queue requeue-stuck``)."""
    return _job(source, "requeue-stuck", settings, now, dry_run, on_progress)


def purge_processed(
    source: Source,
    settings: Settings,
    *,
    now: datetime,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> JobResult:
    """Delete the messages processed more than ``purge_after`` ago (``kronos-db queue purge``)."""
    return _job(source, "purge-processed", settings, now, dry_run, on_progress)


def maintain(
    target: Target,
    settings: Settings,
    *,
    now: datetime,
    jobs: Iterable[str] = (),
    skip: Iterable[str] = (),
    dry_run: bool = False,
) -> MaintenanceReport:
    """Every periodic job once, each independent of the others (``kronos-db maintain``);
    ``jobs`` restricts them by name, ``skip`` leaves some out."""
    from kronos_db import maintenance

    selected = maintenance.select_jobs(jobs, skip)
    return maintenance.run_maintenance(target, settings, now, jobs=selected, dry_run=dry_run)


# --------------------------------------------------------------------------- health


def health(
    source: Source,
    settings: Settings,
    *,
    now: datetime,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
) -> HealthReport:
    """Every check with its status, thresholds from ``settings.health`` (``kronos-db health``);
    ``report.status`` is the worst, its value the monitoring exit code."""
    from kronos_db.reports import health as health_checks

    return _on_connection(
        source,
        lambda conn: health_checks.health_report(conn, settings, now=now, only=only, skip=skip),
    )


# --------------------------------------------------------------------------- backups


def create_backup(
    target: Target, settings: Settings, *, now: datetime, directory: str | Path | None = None
) -> Backup | None:
    """Dump the database, write the file atomically and record it (``kronos-db backup
    create``); None when another run is already doing it."""
    from kronos_db import backups

    return backups.create_backup(target, settings, now=now, directory=directory)


def verify_backup(
    target: Target, settings: Settings, backup_id: int, *, now: datetime
) -> VerifyResult:
    """Restore a backup into a scratch database and compare row counts (``kronos-db backup
    verify``)."""
    from kronos_db import backups

    return backups.verify_backup(target, settings, backup_id, now=now)


def list_backups(
    source: Source, settings: Settings, *, kind: str | None = None, limit: int = 50
) -> list[Backup]:
    """The recorded backups, newest first (``kronos-db backup list``)."""
    from kronos_db import backups

    del settings  # the same signature as every other function: nothing in it applies here
    return _on_connection(source, lambda conn: backups.list_backups(conn, kind=kind, limit=limit))


def backup_status(source: Source, settings: Settings, *, now: datetime) -> Outcome:
    """Whether a recent backup passed verification and its file still matches its record
    (``kronos-db backup status``; health's last_backup gives the same answer)."""
    from kronos_db import backups

    return _on_connection(source, lambda conn: backups.backup_status(conn, settings, now=now))


__all__ = [
    "Settings",
    "backup_status",
    "check",
    "create_backup",
    "downgrade",
    "expire_cache",
    "expire_sessions",
    "health",
    "list_backups",
    "load_settings",
    "maintain",
    "migrate",
    "partition_status",
    "purge_processed",
    "queue_stats",
    "requeue_stuck",
    "reset_rate_limits",
    "rotate",
    "status",
    "target",
    "verify_backup",
]
