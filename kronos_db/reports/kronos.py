"""Checks only a tool that knows the Kronos schema can make: log partition coverage ahead and
rows in the default partition, expired sessions and cache rows waiting to be deleted, the
message queue's backlog, the last backup's age.

The partition layout is read from the catalogs (``pg_inherits``, ``pg_class.relpartbound``),
whoever created the partitions (kronos-db, pg_partman or a DBA by hand). The data checks need
SELECT on the Kronos tables, which pg_monitor alone does not give: without it they are
unavailable with a hint, and the default partition's row count falls back to the planner's
estimate.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from kronos_db.errors import ReportUnavailableError
from kronos_db.reports.runner import Limits, fetch, fetch_one
from kronos_db.resources import query

LOGS_SCHEMA = "public"
LOGS_TABLE = "logs"
COUNT_CAP = 10_000_000


def data_hint(tables: str) -> str:
    return (
        f"GRANT SELECT ON {tables} TO <role> (or GRANT pg_read_all_data TO <role>): "
        "pg_monitor alone cannot read the Kronos tables"
    )


@dataclasses.dataclass(frozen=True)
class LogPartition:
    partition_name: str
    schema_name: str
    is_default: bool
    lower_bound: datetime | None
    upper_bound: datetime | None
    estimated_rows: int
    readable: bool


@dataclasses.dataclass(frozen=True)
class Gap:
    start: datetime
    end: datetime


@dataclasses.dataclass(frozen=True)
class PartitionCoverage:
    partitions: int
    covers_now: bool
    covered_until: datetime | None  # end of the contiguous run of partitions holding now
    ahead: timedelta  # covered_until - now (zero when now is not covered)
    gaps: tuple[Gap, ...]  # holes between partitions: their rows go to the default partition
    default_partition: str | None
    default_rows: int | None
    default_rows_exact: bool  # False: the planner's estimate (the role cannot read the table)


@dataclasses.dataclass(frozen=True)
class ExpiredRows:
    table_name: str
    expired_rows: int
    oldest_expiry: datetime | None


@dataclasses.dataclass(frozen=True)
class PendingTopic:
    topic: str
    pending: int
    oldest_created_at: datetime | None


@dataclasses.dataclass(frozen=True)
class LastBackup:
    backups: int
    created_at: datetime | None
    file_path: str | None


@dataclasses.dataclass(frozen=True)
class _Relkind:
    relkind: str


@dataclasses.dataclass(frozen=True)
class _Count:
    row_count: int


def coverage_from(
    partitions: list[LogPartition], now: datetime
) -> tuple[bool, datetime | None, tuple[Gap, ...]]:
    """Whether ``now`` is covered, where the contiguous coverage from now ends, and the gaps."""
    ranges = sorted(
        (
            p.lower_bound or datetime.min.replace(tzinfo=now.tzinfo),
            p.upper_bound or datetime.max.replace(tzinfo=now.tzinfo),
        )
        for p in partitions
        if not p.is_default
    )
    gaps = tuple(
        Gap(previous_end, start)
        for (_, previous_end), (start, _) in itertools.pairwise(ranges)
        if start > previous_end
    )
    covered_until: datetime | None = None
    for start, end in ranges:
        if covered_until is None:
            if start <= now < end:
                covered_until = end
        elif start <= covered_until:
            covered_until = max(covered_until, end)
    return covered_until is not None, covered_until, gaps


def log_partition_coverage(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime
) -> PartitionCoverage:
    names = {"schema": LOGS_SCHEMA, "table": LOGS_TABLE}
    kinds = fetch(conn, query("reports_kronos", "select_partitioned"), names, _Relkind, limits)
    if not kinds:
        raise ReportUnavailableError(
            "there is no public.logs table", hint="is the database migrated (kronos-db migrate)?"
        )
    if kinds[0].relkind != "p":
        raise ReportUnavailableError("public.logs is not a partitioned table")
    partitions = fetch(
        conn, query("reports_kronos", "select_log_partitions"), names, LogPartition, limits
    )
    covers_now, covered_until, gaps = coverage_from(partitions, now)
    default = next((p for p in partitions if p.is_default), None)
    default_rows: int | None = None
    exact = False
    if default is not None:
        if default.readable:
            statement = sql.SQL(query("reports_kronos", "count_partition_rows")).format(
                partition=sql.Identifier(default.schema_name, default.partition_name)
            )
            default_rows = fetch_one(conn, statement, {"cap": COUNT_CAP}, _Count, limits).row_count
            exact = True
        else:
            default_rows = default.estimated_rows
    ahead = (covered_until - now) if covered_until is not None else timedelta(0)
    return PartitionCoverage(
        partitions=sum(1 for p in partitions if not p.is_default),
        covers_now=covers_now,
        covered_until=covered_until,
        ahead=ahead,
        gaps=gaps,
        default_partition=default.partition_name if default else None,
        default_rows=default_rows,
        default_rows_exact=exact,
    )


def expired_rows(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime
) -> list[ExpiredRows]:
    return fetch(
        conn,
        query("reports_kronos", "select_expired_rows"),
        {"now": now, "cap": COUNT_CAP},
        ExpiredRows,
        limits,
        privilege_hint=data_hint("sessions, cache"),
    )


def pending_messages(conn: psycopg.Connection[Any], limits: Limits) -> list[PendingTopic]:
    return fetch(
        conn,
        query("reports_kronos", "select_pending_messages"),
        {},
        PendingTopic,
        limits,
        privilege_hint=data_hint("message_queue"),
    )


def last_backup(conn: psycopg.Connection[Any], limits: Limits) -> LastBackup:
    return fetch_one(
        conn,
        query("reports_kronos", "select_last_backup"),
        {},
        LastBackup,
        limits,
        privilege_hint=data_hint("backups"),
    )


@dataclasses.dataclass(frozen=True)
class KronosReport:
    partitions: PartitionCoverage | None
    expired: tuple[ExpiredRows, ...]
    pending: tuple[PendingTopic, ...]
    backup: LastBackup | None
    unavailable: tuple[str, ...]  # what could not be read, with the hint


def kronos_report(conn: psycopg.Connection[Any], limits: Limits, *, now: datetime) -> KronosReport:
    """Every Kronos check's data; a part that cannot be read is listed, not fatal."""
    unavailable: list[str] = []

    def attempt(label: str, call: Any) -> Any:
        try:
            return call()
        except ReportUnavailableError as exc:
            unavailable.append(f"{label}: {exc.message}")
            return None

    partitions = attempt("log partitions", lambda: log_partition_coverage(conn, limits, now=now))
    expired = attempt("expired rows", lambda: expired_rows(conn, limits, now=now)) or []
    pending = attempt("message queue", lambda: pending_messages(conn, limits)) or []
    backup = attempt("backups", lambda: last_backup(conn, limits))
    return KronosReport(partitions, tuple(expired), tuple(pending), backup, tuple(unavailable))
