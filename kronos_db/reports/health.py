"""``kronos-db health``: every check in one report, each with a status, as monitoring plugins do.

Each check reads its data through the report modules (every query in its own transaction with
a short ``statement_timeout`` and ``lock_timeout``), compares it with the thresholds of the
``[health]`` configuration section, and returns a :class:`CheckResult`. A check that cannot run
(a missing privilege or extension, a timeout) is UNKNOWN with a hint; the others still run.

The overall status is the worst one, ranked CRITICAL > WARNING > UNKNOWN > OK, so that a check
that could not run never hides a real problem found by another; the exit code is the
Nagios one: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from kronos_db import replication
from kronos_db.config import HealthSettings, PartitionSettings, Settings, describe
from kronos_db.durations import format_duration, human_duration
from kronos_db.errors import ConfigError, KronosError, ReportUnavailableError, UsageError
from kronos_db.reports import (
    activity,
    cache,
    connections,
    indexes,
    kronos,
    maintenance,
    queries,
    sequences,
    settings,
    space,
)
from kronos_db.reports.runner import Limits


class Status(enum.IntEnum):
    """A check's verdict; the value is the monitoring plugin exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


_SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


def worst(statuses: Sequence[Status]) -> Status:
    """CRITICAL > WARNING > UNKNOWN > OK; OK when there is nothing."""
    return max(statuses, key=_SEVERITY.__getitem__, default=Status.OK)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    title: str
    status: Status
    summary: str
    value: float | None  # the measured figure compared with the thresholds
    unit: str
    warning: str  # the thresholds, as configured
    critical: str
    hint: str
    details: tuple[Any, ...]  # the report rows behind the verdict
    seconds: float


@dataclasses.dataclass(frozen=True)
class HealthReport:
    database: str
    checked_at: datetime
    status: Status
    checks: tuple[CheckResult, ...]
    # for the HTML page's charts; empty when not asked for or not available
    largest_tables: tuple[space.TableSize, ...] = ()
    slowest_queries: tuple[queries.SlowQuery, ...] = ()


@dataclasses.dataclass(frozen=True)
class Context:
    conn: psycopg.Connection[Any]
    limits: Limits
    thresholds: HealthSettings
    now: datetime
    # the policy and thresholds of the log partitions (their check is the partitions module's)
    partitions: PartitionSettings = dataclasses.field(default_factory=PartitionSettings)


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: Status
    summary: str
    value: float | None = None
    details: tuple[Any, ...] = ()
    hint: str = ""


def grade(
    value: float | None, warning: float, critical: float, *, higher_is_worse: bool = True
) -> Status:
    if value is None:
        return Status.OK
    if higher_is_worse:
        return (
            Status.CRITICAL
            if value >= critical
            else Status.WARNING
            if value >= warning
            else Status.OK
        )
    return (
        Status.CRITICAL if value <= critical else Status.WARNING if value <= warning else Status.OK
    )


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


def _age(seconds: float) -> str:
    return human_duration(timedelta(seconds=seconds))


def _size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


# ----------------------------------------------------------------------------- the checks


def check_connections(ctx: Context) -> Outcome:
    usage = connections.connection_usage(ctx.conn, ctx.limits)
    t = ctx.thresholds
    status = grade(usage.used_percent, t.connections_warning, t.connections_critical)
    return Outcome(
        status,
        f"{usage.used} of {usage.max_connections - usage.reserved} client "
        f"connections in use ({usage.used_percent:.0f}%)",
        usage.used_percent,
        (usage,),
    )


def check_long_queries(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rows = activity.long_queries(ctx.conn, ctx.limits, now=ctx.now, threshold=t.long_query_warning)
    longest = max((row.seconds for row in rows), default=0.0)
    status = grade(longest, _seconds(t.long_query_warning), _seconds(t.long_query_critical))
    if not rows:
        return Outcome(Status.OK, "no query running longer than the threshold", 0.0)
    return Outcome(
        status,
        f"{len(rows)} quer{'y' if len(rows) == 1 else 'ies'} running for "
        f"up to {_age(longest)} (pid {rows[0].pid})",
        longest,
        tuple(rows),
        "see `kronos-db report activity`; pg_cancel_backend(pid) stops one",
    )


def check_idle_in_transaction(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rows = activity.idle_in_transaction(
        ctx.conn, ctx.limits, now=ctx.now, threshold=t.idle_in_transaction_warning
    )
    longest = max((row.idle_seconds for row in rows), default=0.0)
    status = grade(
        longest, _seconds(t.idle_in_transaction_warning), _seconds(t.idle_in_transaction_critical)
    )
    if not rows:
        return Outcome(Status.OK, "no session idle in transaction beyond the threshold", 0.0)
    return Outcome(
        status,
        f"{len(rows)} session(s) idle in transaction, up to "
        f"{_age(longest)} (pid {rows[0].pid}, {rows[0].application_name or '?'})",
        longest,
        tuple(rows),
        "they hold locks and the xmin horizon; set idle_in_transaction_session_timeout"
        " or pg_terminate_backend(pid)",
    )


def check_blocked_sessions(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rows = activity.blocking_chains(ctx.conn, ctx.limits, now=ctx.now)
    longest = max((row.waiting_seconds for row in rows), default=0.0)
    if not rows:
        return Outcome(Status.OK, "no session waiting for a lock", 0.0)
    status = grade(longest, _seconds(t.blocked_warning), _seconds(t.blocked_critical))
    roots = sorted({row.blocking_pid for row in rows if row.blocking_is_root})
    waiting = len({row.blocked_pid for row in rows})
    return Outcome(
        status,
        f"{waiting} session(s) blocked, the longest for {_age(longest)}; "
        f"blocked by pid {', '.join(map(str, roots)) or '?'}",
        longest,
        tuple(rows),
        "see `kronos-db report locks`",
    )


def check_xmin_horizon(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rows = maintenance.xmin_holders(ctx.conn, ctx.limits, now=ctx.now)
    timed = [row for row in rows if row.seconds is not None]
    longest = max((row.seconds or 0.0 for row in timed), default=0.0)
    status = grade(longest, _seconds(t.xmin_horizon_warning), _seconds(t.xmin_horizon_critical))
    inactive_slots = [
        row for row in rows if row.kind == "replication slot" and row.state == "inactive"
    ]
    if inactive_slots:
        status = worst([status, Status.WARNING])
    if status is Status.OK:
        return Outcome(
            Status.OK, "nothing holds the xmin horizon back for long", longest, tuple(rows)
        )
    oldest = max(timed, key=lambda row: row.seconds or 0.0, default=None)
    parts = []
    if oldest is not None and longest >= _seconds(t.xmin_horizon_warning):
        parts.append(f"{oldest.kind} {oldest.name} holds it for {_age(longest)}")
    if inactive_slots:
        parts.append(f"inactive replication slot(s) {', '.join(r.name for r in inactive_slots)}")
    return Outcome(
        status,
        "xmin horizon held back: " + "; ".join(parts),
        longest,
        tuple(rows),
        "vacuum cannot remove rows deleted after that point; end the transaction or "
        "drop the unused slot",
    )


def _wraparound(ctx: Context, *, multixact: bool) -> Outcome:
    t = ctx.thresholds
    rows = maintenance.database_wraparound(ctx.conn, ctx.limits)
    if multixact:
        top = max(rows, key=lambda row: row.multixact_percent, default=None)
        value = top.multixact_percent if top else 0.0
        age = top.multixact_age if top else 0
        what = "multixact IDs"
    else:
        top = max(rows, key=lambda row: row.xid_percent, default=None)
        value = top.xid_percent if top else 0.0
        age = top.xid_age if top else 0
        what = "transaction IDs"
    status = grade(value, t.wraparound_warning, t.wraparound_critical)
    tables = maintenance.table_wraparound(ctx.conn, ctx.limits, limit=5)
    where = top.database_name if top else "?"
    return Outcome(
        status,
        f"{value:.1f}% of {what} used before wraparound (age {age:,} in {where})",
        value,
        (*rows, *tables),
        ""
        if status is Status.OK
        else "run VACUUM (FREEZE) on the oldest tables; check what blocks autovacuum",
    )


def check_transaction_wraparound(ctx: Context) -> Outcome:
    return _wraparound(ctx, multixact=False)


def check_multixact_wraparound(ctx: Context) -> Outcome:
    return _wraparound(ctx, multixact=True)


def check_dead_tuples(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rows = maintenance.vacuum_stats(ctx.conn, ctx.limits, limit=1000)
    flagged = []
    for row in rows:
        if row.dead_tuples < t.dead_tuples_minimum:
            continue
        status = grade(row.dead_percent, t.dead_tuples_warning, t.dead_tuples_critical)
        if status is not Status.OK:
            flagged.append((status, row))
    if not flagged:
        top = max((row.dead_percent or 0.0 for row in rows), default=0.0)
        return Outcome(Status.OK, "no table with many dead tuples", top)
    status = worst([status for status, _ in flagged])
    worst_row = max((row for _, row in flagged), key=lambda row: row.dead_percent or 0.0)
    off = [
        f"{row.schema_name}.{row.table_name}" for _, row in flagged if not row.autovacuum_enabled
    ]
    summary = (
        f"{len(flagged)} table(s) with many dead tuples; worst "
        f"{worst_row.schema_name}.{worst_row.table_name}: {worst_row.dead_tuples:,} dead "
        f"({worst_row.dead_percent or 0:.0f}%)"
    )
    if off:
        summary += f"; autovacuum disabled on {', '.join(off)}"
    return Outcome(
        status,
        summary,
        worst_row.dead_percent,
        tuple(row for _, row in flagged),
        "VACUUM the table; if autovacuum is on, see what holds the xmin horizon",
    )


def check_bloat(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rows = maintenance.bloat(ctx.conn, ctx.limits, minimum_bytes=t.bloat_minimum_bytes)
    reliable = [row for row in rows if row.reliable]
    unreliable = len(rows) - len(reliable)
    flagged = [
        (grade(row.bloat_percent, t.bloat_warning, t.bloat_critical), row) for row in reliable
    ]
    flagged = [(status, row) for status, row in flagged if status is not Status.OK]
    note = (
        f" ({unreliable} estimate(s) unreliable: statistics missing or stale)" if unreliable else ""
    )
    if not flagged:
        top = max((row.bloat_percent for row in reliable), default=0.0)
        return Outcome(
            Status.OK, f"no table or index over the bloat threshold{note}", top, tuple(rows)
        )
    worst_row = max((row for _, row in flagged), key=lambda row: row.bloat_bytes)
    return Outcome(
        worst([status for status, _ in flagged]),
        f"{len(flagged)} relation(s) bloated; worst {worst_row.schema_name}."
        f"{worst_row.table_name}: ~{_size(worst_row.bloat_bytes)} "
        f"({worst_row.bloat_percent:.0f}%){note}",
        worst_row.bloat_percent,
        tuple(row for _, row in flagged),
        "an estimate: confirm with pgstattuple before REINDEX CONCURRENTLY or pg_repack",
    )


def check_cache_hit_rate(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rates = cache.hit_rates(ctx.conn, ctx.limits)
    judged = [
        rate
        for rate in rates
        if rate.hit_percent is not None and rate.hits + rate.reads >= t.cache_minimum_reads
    ]
    if not judged:
        return Outcome(
            Status.OK, "too few block accesses yet to judge the cache hit rate", None, tuple(rates)
        )
    lowest = min(judged, key=lambda rate: rate.hit_percent or 0.0)
    status = grade(
        lowest.hit_percent, t.cache_hit_warning, t.cache_hit_critical, higher_is_worse=False
    )
    shown = ", ".join(f"{rate.kind} {rate.hit_percent:.1f}%" for rate in judged)
    return Outcome(
        status,
        f"buffer cache hit rate: {shown}",
        lowest.hit_percent,
        tuple(rates),
        ""
        if status is Status.OK
        else "the working set does not fit in shared_buffers: more memory, or fewer/larger scans",
    )


def check_invalid_indexes(ctx: Context) -> Outcome:
    rows = indexes.invalid_indexes(ctx.conn, ctx.limits)
    if not rows:
        return Outcome(Status.OK, "no invalid index", 0)
    names = ", ".join(f"{row.schema_name}.{row.index_name}" for row in rows)
    return Outcome(
        Status.WARNING,
        f"{len(rows)} invalid index(es): {names}",
        len(rows),
        tuple(rows),
        "left by a failed CREATE INDEX CONCURRENTLY: written on every "
        "insert, never used. DROP INDEX CONCURRENTLY it, then build it again",
    )


def check_duplicate_indexes(ctx: Context) -> Outcome:
    rows = indexes.duplicate_indexes(ctx.conn, ctx.limits)
    if not rows:
        return Outcome(Status.OK, "no duplicate or redundant index", 0)
    names = ", ".join(f"{row.index_name} (covered by {row.covered_by})" for row in rows)
    return Outcome(
        Status.WARNING,
        f"{len(rows)} duplicate or redundant index(es): {names}",
        len(rows),
        tuple(rows),
        "DROP INDEX CONCURRENTLY the redundant one",
    )


def check_unused_indexes(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rows = indexes.unused_indexes(ctx.conn, ctx.limits)
    large = [row for row in rows if row.bytes >= t.unused_index_minimum_bytes]
    if not large:
        return Outcome(
            Status.OK,
            f"no unused index of {_size(t.unused_index_minimum_bytes)} or "
            f"more ({len(rows)} smaller one(s) never scanned)",
            0,
            tuple(rows),
        )
    total = sum(row.bytes for row in large)
    names = ", ".join(row.index_name for row in large[:5])
    return Outcome(
        Status.WARNING,
        f"{len(large)} unused index(es), {_size(total)}: {names}",
        len(large),
        tuple(large),
        "never scanned since the statistics were reset "
        "(check the standbys too before dropping one)",
    )


def check_unindexed_foreign_keys(ctx: Context) -> Outcome:
    rows = indexes.unindexed_foreign_keys(ctx.conn, ctx.limits)
    if not rows:
        return Outcome(Status.OK, "every foreign key has an index", 0)
    names = ", ".join(f"{row.table_name}({row.columns})" for row in rows)
    return Outcome(
        Status.WARNING,
        f"{len(rows)} foreign key(s) without an index: {names}",
        len(rows),
        tuple(rows),
        "a DELETE on the referenced table scans the "
        "referencing one: CREATE INDEX CONCURRENTLY on the columns",
    )


def check_sequences(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rows = sequences.sequence_headroom(ctx.conn, ctx.limits)
    readable = [row for row in rows if row.readable]
    unreadable = len(rows) - len(readable)
    if rows and not readable:
        return Outcome(
            Status.UNKNOWN,
            f"cannot read any of the {len(rows)} sequences",
            None,
            hint=sequences.READ_HINT,
        )
    top = max(readable, key=lambda row: row.used_percent or 0.0, default=None)
    value = top.used_percent if top else 0.0
    status = grade(value, t.sequence_warning, t.sequence_critical)
    note = f" ({unreadable} not readable by this role)" if unreadable else ""
    if top is None:
        return Outcome(Status.OK, "no sequence", 0.0)
    where = f" ({top.table_name}.{top.column_name} {top.column_type})" if top.table_name else ""
    flagged = tuple(row for row in readable if (row.used_percent or 0.0) >= t.sequence_warning) or (
        top,
    )
    return Outcome(
        status,
        f"fullest sequence {top.schema_name}.{top.sequence_name}{where}: "
        f"{value or 0:.1f}% used, limited by its {top.limited_by}{note}",
        value,
        flagged,
        sequences.READ_HINT
        if unreadable
        else ""
        if status is Status.OK
        else "ALTER the column (and sequence) to bigint before it runs out",
    )


def check_slow_queries(ctx: Context) -> Outcome:
    t = ctx.thresholds
    report = queries.slow_queries(
        ctx.conn,
        now=ctx.now,
        limits=ctx.limits,
        order="mean",
        limit=10,
        minimum_calls=t.slow_query_minimum_calls,
        query_width=200,
    )
    warning_ms = _seconds(t.slow_query_warning) * 1000
    critical_ms = _seconds(t.slow_query_critical) * 1000
    slow = [row for row in report.queries if row.mean_ms >= warning_ms]
    top = report.queries[0].mean_ms if report.queries else 0.0
    if not slow:
        return Outcome(
            Status.OK,
            f"no statement slower than {format_duration(t.slow_query_warning)} on average",
            top,
        )
    status = grade(top, warning_ms, critical_ms)
    return Outcome(
        status,
        f"{len(slow)} statement(s) slower than "
        f"{format_duration(t.slow_query_warning)} on average; slowest "
        f"{top:.0f} ms: {slow[0].query[:80]}",
        top,
        tuple(slow),
        "see `kronos-db report slow-queries --order mean` and EXPLAIN them",
    )


def check_settings(ctx: Context) -> Outcome:
    findings = settings.setting_findings(ctx.conn, ctx.limits)
    mapping = {"critical": Status.CRITICAL, "warning": Status.WARNING}
    flagged = [f for f in findings if f.severity in mapping]
    if not flagged:
        info = sum(1 for f in findings if f.severity == "info")
        return Outcome(
            Status.OK,
            f"no dangerous setting ({info} suggestion(s) in `kronos-db report settings`)",
            0,
            tuple(findings),
        )
    status = worst([mapping[f.severity] for f in flagged])
    return Outcome(status, "; ".join(f.advice for f in flagged), len(flagged), tuple(flagged))


def check_log_partitions(ctx: Context) -> Outcome:
    """The partitions module's verdict, as is: coverage ahead, rows waiting in the default
    partition, stray tables, unfinished retirements (one answer, computed there)."""
    from kronos_db import partitions

    try:
        status = partitions.partition_status(
            ctx.conn,
            Settings(partitions=ctx.partitions),
            ctx.now,
            statement_timeout=ctx.limits.statement_timeout,
            lock_timeout=ctx.limits.lock_timeout,
        )
    except KronosError as exc:
        raise ReportUnavailableError(
            exc.message, hint="is the database migrated (kronos-db migrate)?"
        ) from None
    mapping = {"OK": Status.OK, "WARNING": Status.WARNING, "CRITICAL": Status.CRITICAL}
    covered = (
        f"covered until {status.covered_until:%Y-%m-%d %H:%M %Z}, "
        f"{status.partitions_ahead} partition(s) ahead"
        if status.covered_until
        else "now is not covered"
    )
    summary = "; ".join(status.problems) if status.problems else covered
    return Outcome(
        mapping[status.level],
        summary,
        status.partitions_ahead,
        (status,),
        status.hint,
    )


def check_expired_rows(ctx: Context) -> Outcome:
    t = ctx.thresholds
    rows = kronos.expired_rows(ctx.conn, ctx.limits, now=ctx.now)
    top = max(rows, key=lambda row: row.expired_rows, default=None)
    value = top.expired_rows if top else 0
    status = grade(value, t.expired_rows_warning, t.expired_rows_critical)
    shown = ", ".join(f"{row.table_name} {row.expired_rows:,}" for row in rows)
    return Outcome(
        status,
        f"expired rows waiting to be deleted: {shown}",
        value,
        tuple(rows),
        "" if status is Status.OK else "is the expiry job running (cron)?",
    )


def check_message_queue(ctx: Context) -> Outcome:
    t = ctx.thresholds
    topics = kronos.pending_messages(ctx.conn, ctx.limits)
    if not topics:
        return Outcome(Status.OK, "no pending message", 0.0)
    oldest = min((row.oldest_created_at for row in topics if row.oldest_created_at), default=None)
    age = (ctx.now - oldest).total_seconds() if oldest else 0.0
    largest = max(topics, key=lambda row: row.pending)
    status = worst(
        [
            grade(age, _seconds(t.queue_age_warning), _seconds(t.queue_age_critical)),
            grade(largest.pending, t.queue_pending_warning, t.queue_pending_critical),
        ]
    )
    total = sum(row.pending for row in topics)
    return Outcome(
        status,
        f"{total:,} pending message(s) in {len(topics)} topic(s); oldest "
        f"{_age(max(age, 0))} old; largest backlog {largest.topic} ({largest.pending:,})",
        age,
        tuple(topics),
        "" if status is Status.OK else "are the consumers of these topics running?",
    )


def check_last_backup(ctx: Context) -> Outcome:
    t = ctx.thresholds
    backup = kronos.last_backup(ctx.conn, ctx.limits)
    if backup.created_at is None:
        return Outcome(
            Status.WARNING,
            "no backup recorded in the backups table",
            None,
            (backup,),
            "run `kronos-db backup` (or record the backups taken)",
        )
    age = (ctx.now - backup.created_at).total_seconds()
    status = grade(age, _seconds(t.backup_age_warning), _seconds(t.backup_age_critical))
    return Outcome(
        status,
        f"last backup {_age(max(age, 0))} ago ({backup.file_path})",
        age,
        (backup,),
        "" if status is Status.OK else "is the backup job running?",
    )


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    title: str
    function: Callable[[Context], Outcome]
    unit: str
    thresholds: Callable[[HealthSettings], tuple[str, str]]


def _pct(warning: float, critical: float) -> tuple[str, str]:
    return f"{warning:g}%", f"{critical:g}%"


def _dur(warning: timedelta, critical: timedelta) -> tuple[str, str]:
    return format_duration(warning), format_duration(critical)


CHECKS: tuple[Check, ...] = (
    Check(
        "connections",
        "Connections",
        check_connections,
        "%",
        lambda t: _pct(t.connections_warning, t.connections_critical),
    ),
    Check(
        "long_queries",
        "Long-running queries",
        check_long_queries,
        "s",
        lambda t: _dur(t.long_query_warning, t.long_query_critical),
    ),
    Check(
        "idle_in_transaction",
        "Sessions idle in transaction",
        check_idle_in_transaction,
        "s",
        lambda t: _dur(t.idle_in_transaction_warning, t.idle_in_transaction_critical),
    ),
    Check(
        "blocked_sessions",
        "Sessions blocked by a lock",
        check_blocked_sessions,
        "s",
        lambda t: _dur(t.blocked_warning, t.blocked_critical),
    ),
    Check(
        "xmin_horizon",
        "xmin horizon",
        check_xmin_horizon,
        "s",
        lambda t: _dur(t.xmin_horizon_warning, t.xmin_horizon_critical),
    ),
    Check(
        "transaction_wraparound",
        "Transaction ID wraparound",
        check_transaction_wraparound,
        "%",
        lambda t: _pct(t.wraparound_warning, t.wraparound_critical),
    ),
    Check(
        "multixact_wraparound",
        "Multixact ID wraparound",
        check_multixact_wraparound,
        "%",
        lambda t: _pct(t.wraparound_warning, t.wraparound_critical),
    ),
    Check(
        "dead_tuples",
        "Dead tuples",
        check_dead_tuples,
        "%",
        lambda t: _pct(t.dead_tuples_warning, t.dead_tuples_critical),
    ),
    Check(
        "bloat",
        "Table and index bloat (estimate)",
        check_bloat,
        "%",
        lambda t: _pct(t.bloat_warning, t.bloat_critical),
    ),
    Check(
        "cache_hit_rate",
        "Buffer cache hit rate",
        check_cache_hit_rate,
        "%",
        lambda t: (f"< {t.cache_hit_warning:g}%", f"< {t.cache_hit_critical:g}%"),
    ),
    Check(
        "invalid_indexes",
        "Invalid indexes",
        check_invalid_indexes,
        "indexes",
        lambda t: ("any", "-"),
    ),
    Check(
        "duplicate_indexes",
        "Duplicate and redundant indexes",
        check_duplicate_indexes,
        "indexes",
        lambda t: ("any", "-"),
    ),
    Check(
        "unused_indexes",
        "Unused indexes",
        check_unused_indexes,
        "indexes",
        lambda t: (f"any of {_size(t.unused_index_minimum_bytes)}+", "-"),
    ),
    Check(
        "unindexed_foreign_keys",
        "Foreign keys without an index",
        check_unindexed_foreign_keys,
        "foreign keys",
        lambda t: ("any", "-"),
    ),
    Check(
        "sequences",
        "Sequence headroom",
        check_sequences,
        "%",
        lambda t: _pct(t.sequence_warning, t.sequence_critical),
    ),
    Check(
        "slow_queries",
        "Slow queries (mean time)",
        check_slow_queries,
        "ms",
        lambda t: _dur(t.slow_query_warning, t.slow_query_critical),
    ),
    Check(
        "settings",
        "Server settings",
        check_settings,
        "findings",
        lambda t: ("warning rule", "critical rule"),
    ),
    Check(
        "replication_lag",
        "Replication: standby replay lag",
        replication.check_replication_lag,
        "bytes",
        lambda t: (
            f"{replication.size(t.replication_lag_bytes_warning)} or "
            f"{format_duration(t.replication_lag_warning)}",
            f"{replication.size(t.replication_lag_bytes_critical)} or "
            f"{format_duration(t.replication_lag_critical)}",
        ),
    ),
    Check(
        "replication_slots",
        "Replication: WAL retained by slots",
        replication.check_replication_slots,
        "bytes",
        lambda t: (
            replication.size(t.slot_retained_warning),
            replication.size(t.slot_retained_critical),
        ),
    ),
    Check(
        "wal_archiving",
        "Replication: WAL archiving",
        replication.check_wal_archiving,
        "segments",
        lambda t: (
            f"{t.archive_ready_warning:,} waiting",
            f"{t.archive_ready_critical:,} waiting or failing",
        ),
    ),
    Check(
        "log_partitions",
        "Kronos: logs partitions",
        check_log_partitions,
        "partitions ahead",
        lambda t: ("[partitions] coverage_warning", "[partitions] coverage_critical"),
    ),
    Check(
        "expired_rows",
        "Kronos: expired sessions and cache rows",
        check_expired_rows,
        "rows",
        lambda t: (f"{t.expired_rows_warning:,}", f"{t.expired_rows_critical:,}"),
    ),
    Check(
        "message_queue",
        "Kronos: pending messages",
        check_message_queue,
        "s",
        lambda t: (
            f"{format_duration(t.queue_age_warning)} or {t.queue_pending_warning:,}",
            f"{format_duration(t.queue_age_critical)} or {t.queue_pending_critical:,}",
        ),
    ),
    Check(
        "last_backup",
        "Kronos: last backup",
        check_last_backup,
        "s",
        lambda t: _dur(t.backup_age_warning, t.backup_age_critical),
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


def run_check(check: Check, ctx: Context) -> CheckResult:
    started = time.monotonic()
    warning, critical = check.thresholds(ctx.thresholds)
    try:
        outcome = check.function(ctx)
    except ReportUnavailableError as exc:
        outcome = Outcome(Status.UNKNOWN, str(exc.args[0]), hint=exc.hint)
    except psycopg.Error as exc:
        if ctx.conn.broken:
            raise  # the connection is gone: no later check can run either
        # an unexpected server error fails this check only; the others still run
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        outcome = Outcome(
            Status.UNKNOWN,
            f"the check failed: {first_line}",
            hint="report this as a kronos-db bug with the server version",
        )
    return CheckResult(
        name=check.name,
        title=check.title,
        status=outcome.status,
        summary=outcome.summary,
        value=None if outcome.value is None else float(outcome.value),
        unit=check.unit,
        warning=warning,
        critical=critical,
        hint=outcome.hint,
        details=outcome.details,
        seconds=time.monotonic() - started,
    )


_HIGHER_IS_WORSE = (
    "connections",
    "long_query",
    "idle_in_transaction",
    "blocked",
    "xmin_horizon",
    "wraparound",
    "sequence",
    "dead_tuples",
    "bloat",
    "slow_query",
    "expired_rows",
    "queue_age",
    "queue_pending",
    "backup_age",
    "replication_lag",
    "replication_lag_bytes",
    "slot_retained",
    "archive_ready",
)
_LOWER_IS_WORSE = ("cache_hit",)


def validate_thresholds(thresholds: HealthSettings) -> None:
    """A critical level milder than its warning level is a typo: say so instead of grading."""
    for prefix in (*_HIGHER_IS_WORSE, *_LOWER_IS_WORSE):
        warning = getattr(thresholds, f"{prefix}_warning")
        critical = getattr(thresholds, f"{prefix}_critical")
        wrong = critical < warning if prefix in _HIGHER_IS_WORSE else critical > warning
        if wrong:
            direction = "below" if prefix in _HIGHER_IS_WORSE else "above"
            raise ConfigError(
                f"health.{prefix}_critical ({describe(critical)}) is {direction} "
                f"health.{prefix}_warning ({describe(warning)})"
            )


def health_report(
    conn: psycopg.Connection[Any],
    thresholds: HealthSettings,
    *,
    now: datetime,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    with_charts: bool = False,
    partitions: PartitionSettings | None = None,
) -> HealthReport:
    """Run the checks (all, or ``only`` those, minus ``skip``) and grade them.

    ``partitions``: the ``[partitions]`` settings the log_partitions check judges by.
    """
    validate_thresholds(thresholds)
    limits = Limits.from_settings(thresholds)
    ctx = Context(conn, limits, thresholds, now, partitions or PartitionSettings())
    results = tuple(run_check(check, ctx) for check in select_checks(only, skip))
    largest: tuple[space.TableSize, ...] = ()
    slowest: tuple[queries.SlowQuery, ...] = ()
    if with_charts:
        try:
            largest = tuple(space.largest_tables(conn, limits, limit=10))
        except ReportUnavailableError:
            largest = ()
        try:
            slowest = queries.slow_queries(
                conn, now=now, limits=limits, order="total", limit=10, query_width=120
            ).queries
        except ReportUnavailableError:
            slowest = ()
    database = str(conn.info.dbname)
    return HealthReport(
        database, now, worst([r.status for r in results]), results, largest, slowest
    )


# ----------------------------------------------------------------------------- Prometheus


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(report: HealthReport) -> str:
    """The report in the Prometheus text exposition format (for a textfile collector)."""
    database = _label(report.database)
    lines = [
        "# HELP kronos_health_status Status of a kronos-db health check: "
        "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        "# TYPE kronos_health_status gauge",
    ]
    for result in report.checks:
        lines.append(
            f'kronos_health_status{{database="{database}",check="{_label(result.name)}"}}'
            f" {int(result.status)}"
        )
    lines += [
        "# HELP kronos_health_value The figure each check compares with its thresholds.",
        "# TYPE kronos_health_value gauge",
    ]
    for result in report.checks:
        if result.value is not None:
            lines.append(
                f'kronos_health_value{{database="{database}",'
                f'check="{_label(result.name)}",unit="{_label(result.unit)}"}} '
                f"{result.value:g}"
            )
    lines += [
        "# HELP kronos_health_check_duration_seconds How long each check took.",
        "# TYPE kronos_health_check_duration_seconds gauge",
    ]
    for result in report.checks:
        lines.append(
            f'kronos_health_check_duration_seconds{{database="{database}",'
            f'check="{_label(result.name)}"}} {result.seconds:.6f}'
        )
    lines += [
        "# HELP kronos_health_overall_status Worst status of all checks.",
        "# TYPE kronos_health_overall_status gauge",
        f'kronos_health_overall_status{{database="{database}"}} {int(report.status)}',
    ]
    return "\n".join(lines) + "\n"
