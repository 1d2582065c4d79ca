"""``kronos-db health``: every check in one report, each with a status, as monitoring plugins do.

This module only collects. Each check is answered once, by the module that owns its question
(:mod:`kronos_db.checks` says how): the report modules for the catalog and statistics checks,
:mod:`kronos_db.replication`, :mod:`kronos_db.partitions.status`, :mod:`kronos_db.backups`,
:mod:`kronos_db.housekeeping` and :mod:`kronos_db.queue` for the rest. ``partitions status`` and
``backup status`` give the very same answers, so no two commands can disagree.

Each check's queries run in their own transactions with a short ``statement_timeout`` and
``lock_timeout``; a check that cannot run (a missing privilege or extension, a timeout) is
UNKNOWN with a hint, and the others still run. The overall status is the worst one, ranked
CRITICAL > WARNING > UNKNOWN > OK; the exit code is the Nagios one.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from kronos_db import db
from kronos_db.checks import (
    Check,
    CheckResult,
    Context,
    Limits,
    Status,
    run_check,
    validate,
    worst,
)
from kronos_db.config import Settings
from kronos_db.errors import ReportUnavailableError, UsageError

if TYPE_CHECKING:
    # for the HTML page's charts only: imported when they are asked for (a check that needs
    # them imports them itself), not by every Nagios run
    from kronos_db.reports import queries, space

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "CheckResult",
    "HealthReport",
    "Status",
    "health_report",
    "run_checks",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HealthReport:
    database: str
    checked_at: datetime
    status: Status
    checks: tuple[CheckResult, ...]
    # for the HTML page's charts; empty when not asked for or not available
    largest_tables: tuple[space.TableSize, ...] = ()
    slowest_queries: tuple[queries.SlowQuery, ...] = ()


CHECKS: tuple[Check, ...] = (
    Check(
        "connections",
        "Connections",
        "kronos_db.reports.connections",
        "check_connections",
        "connection_thresholds",
    ),
    Check(
        "long_queries",
        "Long-running queries",
        "kronos_db.reports.activity",
        "check_long_queries",
        "long_query_thresholds",
    ),
    Check(
        "idle_in_transaction",
        "Sessions idle in transaction",
        "kronos_db.reports.activity",
        "check_idle_in_transaction",
        "idle_thresholds",
    ),
    Check(
        "blocked_sessions",
        "Sessions blocked by a lock",
        "kronos_db.reports.activity",
        "check_blocked_sessions",
        "blocked_thresholds",
    ),
    Check(
        "prepared_transactions",
        "Prepared transactions",
        "kronos_db.reports.activity",
        "check_prepared_transactions",
        "prepared_thresholds",
    ),
    Check(
        "xmin_horizon",
        "xmin horizon",
        "kronos_db.reports.maintenance",
        "check_xmin_horizon",
        "xmin_thresholds",
    ),
    Check(
        "transaction_wraparound",
        "Transaction ID wraparound",
        "kronos_db.reports.maintenance",
        "check_transaction_wraparound",
        "wraparound_thresholds",
    ),
    Check(
        "multixact_wraparound",
        "Multixact ID wraparound",
        "kronos_db.reports.maintenance",
        "check_multixact_wraparound",
        "wraparound_thresholds",
    ),
    Check(
        "dead_tuples",
        "Dead tuples",
        "kronos_db.reports.maintenance",
        "check_dead_tuples",
        "dead_tuple_thresholds",
    ),
    Check(
        "unmaintained_tables",
        "Tables never vacuumed or analyzed",
        "kronos_db.reports.maintenance",
        "check_unmaintained_tables",
        "unmaintained_thresholds",
    ),
    Check(
        "bloat",
        "Table and index bloat (estimate)",
        "kronos_db.reports.maintenance",
        "check_bloat",
        "bloat_thresholds",
    ),
    Check(
        "cache_hit_rate",
        "Buffer cache hit rate",
        "kronos_db.reports.cache",
        "check_cache_hit_rate",
        "cache_thresholds",
    ),
    Check(
        "invalid_indexes",
        "Invalid indexes",
        "kronos_db.reports.indexes",
        "check_invalid_indexes",
    ),
    Check(
        "duplicate_indexes",
        "Duplicate and redundant indexes",
        "kronos_db.reports.indexes",
        "check_duplicate_indexes",
    ),
    Check(
        "unused_indexes",
        "Unused indexes",
        "kronos_db.reports.indexes",
        "check_unused_indexes",
    ),
    Check(
        "unindexed_foreign_keys",
        "Foreign keys without an index",
        "kronos_db.reports.indexes",
        "check_unindexed_foreign_keys",
    ),
    Check(
        "sequences",
        "Sequence headroom",
        "kronos_db.reports.sequences",
        "check_sequences",
        "sequence_thresholds",
    ),
    Check(
        "slow_queries",
        "Slow queries (mean time)",
        "kronos_db.reports.queries",
        "check_slow_queries",
        "slow_query_thresholds",
    ),
    Check("settings", "Server settings", "kronos_db.reports.settings", "check_settings"),
    Check(
        "replication_lag",
        "Replication: standby replay lag",
        "kronos_db.replication",
        "check_replication_lag",
        "lag_thresholds",
    ),
    Check(
        "replication_slots",
        "Replication: WAL retained by slots",
        "kronos_db.replication",
        "check_replication_slots",
        "slot_thresholds",
    ),
    Check(
        "wal_archiving",
        "Replication: WAL archiving",
        "kronos_db.replication",
        "check_wal_archiving",
        "archive_thresholds",
    ),
    Check(
        "log_partitions",
        "Kronos: logs partitions",
        "kronos_db.partitions.status",
        "check_partitions",
        "coverage_thresholds",
    ),
    Check(
        "expired_rows",
        "Kronos: expired sessions and cache rows",
        "kronos_db.housekeeping",
        "check_expired_rows",
        "expired_thresholds",
    ),
    Check(
        "message_queue",
        "Kronos: pending messages",
        "kronos_db.queue",
        "check_message_queue",
        "queue_thresholds",
    ),
    Check(
        "last_backup",
        "Kronos: last backup",
        "kronos_db.backups",
        "check_backups",
        "backup_thresholds",
    ),
)

CHECK_NAMES: tuple[str, ...] = tuple(check.name for check in CHECKS)


def select_checks(only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[Check]:
    unknown = [name for name in [*only, *skip] if name not in CHECK_NAMES]
    if unknown:
        raise UsageError(f"unknown check(s) {', '.join(unknown)} (known: {', '.join(CHECK_NAMES)})")
    return [
        check for check in CHECKS if (not only or check.name in only) and check.name not in skip
    ]


def validate_thresholds(settings: Settings, checks: Sequence[Check] = CHECKS) -> None:
    """A critical level milder than its warning level is a typo: ConfigError naming both."""
    validate(checks, settings)


def health_report(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    now: datetime,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    with_charts: bool = False,
) -> HealthReport:
    """Run the checks (all, or ``only`` those, minus ``skip``) and grade them.

    ``settings``: the whole configuration; each check reads its own section (``[health]``,
    ``[partitions]`` for log_partitions, ``[backups]`` for last_backup). The checks run on up
    to ``[health] parallel_connections`` connections at once (:func:`run_checks`).
    """
    selected = select_checks(only, skip)
    validate_thresholds(settings, selected)
    limits = Limits.from_settings(settings)
    ctx = Context(conn, settings, now, limits)
    results = run_checks(selected, ctx, settings.health.parallel_connections)
    largest: tuple[space.TableSize, ...] = ()
    slowest: tuple[queries.SlowQuery, ...] = ()
    if with_charts:
        from kronos_db.reports import queries, space

        try:
            largest = tuple(space.largest_tables(conn, limits, limit=10))
        except ReportUnavailableError:
            largest = ()
        try:
            slowest = queries.slow_queries(
                conn, now=now, limits=limits, order="total", limit=10, query_width=0
            ).queries
        except ReportUnavailableError:
            slowest = ()
    database = str(conn.info.dbname)
    return HealthReport(
        database, now, worst([r.status for r in results]), results, largest, slowest
    )


def run_checks(checks: Sequence[Check], ctx: Context, connections: int) -> tuple[CheckResult, ...]:
    """Each check's answer, in ``checks``' order, on up to ``connections`` connections at once.

    On a catalog of a thousand partitions health's queries take most of its time, one after
    another; the server answers two or three at once about as fast as one. The extra
    connections (:func:`kronos_db.db.opener`, to the very server ``ctx.conn`` reached) are
    opened by their threads while ``ctx.conn`` already answers, and closed with the report; one
    that cannot be opened (``max_connections``, the role's ``CONNECTION LIMIT``, a pooler's
    limit) leaves its share to the others, down to ``ctx.conn`` alone. Each connection takes
    the next check from one queue, so a slow check does not hold others back.
    """
    wanted = min(connections, len(checks)) - 1
    if wanted <= 0:
        logger.debug("health: %d check(s) on 1 connection(s)", len(checks))
        return tuple(run_check(check, ctx) for check in checks)
    open_another = db.opener(ctx.conn, same_server=True)
    pending: queue.SimpleQueue[tuple[int, Check]] = queue.SimpleQueue()
    for item in enumerate(checks):
        pending.put(item)
    results: list[CheckResult | None] = [None] * len(checks)
    failures: list[BaseException] = []
    opened: list[psycopg.Connection[Any]] = []

    def answer(conn: psycopg.Connection[Any]) -> None:
        own = dataclasses.replace(ctx, conn=conn)
        while not failures:
            try:
                index, check = pending.get_nowait()
            except queue.Empty:
                return
            try:
                results[index] = run_check(check, own)
            except BaseException as exc:  # a broken connection: the report fails as a whole
                failures.append(exc)
                return

    def extra() -> None:
        try:
            conn = open_another()
        except psycopg.Error as exc:  # the others, and ctx.conn, take its share
            logger.debug("health: one connection fewer (%s)", str(exc).strip())
            return
        opened.append(conn)
        with conn:
            answer(conn)

    threads = [
        threading.Thread(target=extra, name=f"kronos-health-{n}", daemon=True)
        for n in range(1, wanted + 1)
    ]
    try:
        for thread in threads:
            thread.start()
        answer(ctx.conn)
        for thread in threads:
            thread.join()
    except BaseException as exc:  # Ctrl-C while the others run: stop them where they are
        failures.append(exc)
        for conn in list(opened):
            conn.cancel_safe(timeout=2)
        for thread in threads:
            thread.join(timeout=5)
        raise
    if failures:
        raise failures[0]
    logger.debug("health: %d check(s) on %d connection(s)", len(checks), 1 + len(opened))
    done = [result for result in results if result is not None]
    assert len(done) == len(checks)
    return tuple(done)
