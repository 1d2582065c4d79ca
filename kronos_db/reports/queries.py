"""Statements: the slow-queries report from pg_stat_statements, its reset, and windows.

Learnt from the anchors' faults: the extension is found in whatever schema it lives and its
columns are picked by its version (pg-extras broke when 1.8 renamed ``total_time`` and when
1.11 renamed ``blk_read_time``); statistics are never reset as a side effect (PgHero resets
them when it captures); every role's statements count, filtered on the current database so
other databases on the cluster do not leak in.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import sql

from kronos_db.errors import ReportUnavailableError
from kronos_db.reports.runner import Limits, fetch, fetch_one, guarded
from kronos_db.resources import query

Order = Literal["total", "mean", "calls", "io"]
ORDERS: tuple[Order, ...] = ("total", "mean", "calls", "io")

ENABLE_HINT = (
    "add pg_stat_statements to shared_preload_libraries (restart the server), then run "
    "CREATE EXTENSION pg_stat_statements in this database (kronos-db migrate does it when "
    "the server offers the extension)"
)


@dataclasses.dataclass(frozen=True)
class StatementsExtension:
    schema_name: str | None
    version: str | None
    preloaded: bool
    available: bool

    @property
    def installed(self) -> bool:
        return self.schema_name is not None

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", self.version or "0"))

    def relation(self, name: str) -> sql.Identifier:
        assert self.schema_name is not None
        return sql.Identifier(self.schema_name, name)

    def placeholders(self) -> dict[str, sql.Composable]:
        """The identifiers and columns of this version, for the {placeholders} of the SQL."""
        version = self.version_tuple
        renamed_times = version >= (1, 8)
        renamed_io = version >= (1, 11)
        return {
            "statements": self.relation("pg_stat_statements"),
            "info": self.relation("pg_stat_statements_info"),
            "reset": self.relation("pg_stat_statements_reset"),
            "toplevel": sql.SQL("statement.toplevel") if version >= (1, 9) else sql.SQL("true"),
            "total_time": sql.Identifier("total_exec_time" if renamed_times else "total_time"),
            "mean_time": sql.Identifier("mean_exec_time" if renamed_times else "mean_time"),
            "stddev_time": sql.Identifier("stddev_exec_time" if renamed_times else "stddev_time"),
            "read_time": sql.Identifier("shared_blk_read_time" if renamed_io else "blk_read_time"),
            "write_time": sql.Identifier(
                "shared_blk_write_time" if renamed_io else "blk_write_time"
            ),
        }


@dataclasses.dataclass(frozen=True)
class SlowQuery:
    role_name: str
    queryid: int | None
    toplevel: bool
    calls: int
    rows: int
    total_ms: float
    mean_ms: float
    stddev_ms: float | None
    shared_blks_hit: int
    shared_blks_read: int
    io_ms: float | None
    hit_percent: float | None
    percent_of_total: float | None
    query: str


@dataclasses.dataclass(frozen=True)
class SlowQueriesReport:
    extension_version: str
    extension_schema: str
    statistics_reset: datetime | None
    window_start: datetime | None  # None: totals since statistics_reset
    order: str
    notes: tuple[str, ...]
    queries: tuple[SlowQuery, ...]


@dataclasses.dataclass(frozen=True)
class _Info:
    stats_reset: datetime | None
    dealloc: int | None


_LEADING_COMMENTS = re.compile(r"\A(?:\s*--[^\n]*(?:\n|\Z)|\s*/\*.*?\*/)+", re.DOTALL)
_PARAMETER_LIST = re.compile(r"\$\d+(?:\s*,\s*\$\d+){3,}")


def shorten_query(text: str, width: int = 300) -> str:
    """Collapse whitespace and long parameter lists, then cut at ``width`` (0: no cut)."""
    # the description comment our own queries open with says nothing about the statement
    text = _LEADING_COMMENTS.sub("", text)
    text = " ".join(text.split())
    text = _PARAMETER_LIST.sub(lambda m: m.group(0).split(",")[0] + ", …", text)
    if width and len(text) > width:
        return text[: width - 1].rstrip() + "…"
    return text


def statements_extension(conn: psycopg.Connection[Any], limits: Limits) -> StatementsExtension:
    return fetch_one(
        conn,
        query("reports_queries", "select_statements_extension"),
        {},
        StatementsExtension,
        limits,
    )


def require_statements(conn: psycopg.Connection[Any], limits: Limits) -> StatementsExtension:
    """The extension, or ReportUnavailableError saying plainly how to enable it."""
    extension = statements_extension(conn, limits)
    if not extension.available:
        raise ReportUnavailableError(
            "pg_stat_statements is not available on this server", hint=ENABLE_HINT
        )
    if not extension.installed:
        raise ReportUnavailableError(
            "pg_stat_statements is not installed in this database", hint=ENABLE_HINT
        )
    if not extension.preloaded:
        raise ReportUnavailableError(
            "pg_stat_statements is installed but not in shared_preload_libraries: "
            "it records nothing",
            hint=ENABLE_HINT,
        )
    return extension


def _compose(extension: StatementsExtension, name: str) -> sql.Composed:
    return sql.SQL(query("reports_queries", name)).format(**extension.placeholders())


def statements_info(
    conn: psycopg.Connection[Any], extension: StatementsExtension, limits: Limits
) -> _Info:
    if extension.version_tuple < (1, 9):
        return _Info(None, None)
    return fetch_one(conn, _compose(extension, "select_statements_info"), {}, _Info, limits)


def slow_queries(
    conn: psycopg.Connection[Any],
    *,
    now: datetime,
    limits: Limits,
    order: Order = "total",
    limit: int = 20,
    minimum_calls: int = 1,
    since: timedelta | None = None,
    all_databases: bool = False,
    query_width: int = 300,
) -> SlowQueriesReport:
    """The statements that cost the most, since the last reset or over a window ``since``.

    A window needs a snapshot (``report snapshot``) taken at or before ``now - since``; when
    only a newer one exists the window starts at it, and a note says so.
    """
    from kronos_db.reports import snapshots

    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}")
    extension = require_statements(conn, limits)
    info = statements_info(conn, extension, limits)
    notes: list[str] = []
    if info.dealloc:
        notes.append(
            f"{info.dealloc} statement entries were evicted since the last reset: raise "
            "pg_stat_statements.max so that rare slow statements are kept"
        )
    params: dict[str, Any] = {
        "order": order,
        "limit": limit,
        "minimum_calls": minimum_calls,
        "all_databases": all_databases,
    }
    window_start: datetime | None = None
    if since is None:
        statement = _compose(extension, "select_slow_queries")
    else:
        if all_databases:
            raise ReportUnavailableError(
                "a window (--since) covers this database only: snapshots hold this database"
            )
        snapshot = snapshots.snapshot_before(conn, now - since, limits)
        if snapshot is None:
            raise ReportUnavailableError(
                "no snapshot to compare with",
                hint="run `kronos-db report snapshot` regularly (cron), then ask for a window",
            )
        window_start = snapshot.taken_at
        if snapshot.taken_at > now - since:
            notes.append(
                f"the oldest snapshot is from {snapshot.taken_at:%Y-%m-%d %H:%M:%S %Z}: "
                "the window starts there"
            )
        if info.stats_reset is not None and info.stats_reset > snapshot.taken_at:
            notes.append(
                f"pg_stat_statements was reset at {info.stats_reset:%Y-%m-%d %H:%M:%S %Z}, "
                "after the snapshot: figures start at the reset"
            )
        params["snapshot_id"] = snapshot.id
        statement = _compose(extension, "select_slow_queries_since")
    rows = fetch(conn, statement, params, SlowQuery, limits)
    shortened = tuple(
        dataclasses.replace(row, query=shorten_query(row.query, query_width)) for row in rows
    )
    return SlowQueriesReport(
        extension_version=extension.version or "",
        extension_schema=extension.schema_name or "",
        statistics_reset=info.stats_reset,
        window_start=window_start,
        order=order,
        notes=tuple(notes),
        queries=shortened,
    )


def reset_statements(conn: psycopg.Connection[Any], limits: Limits) -> None:
    """Reset pg_stat_statements for this database (only when asked: never as a side effect)."""
    extension = require_statements(conn, limits)
    with guarded(
        conn,
        limits,
        privilege_hint="resetting needs a superuser or "
        "GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) TO <role>",
    ):
        conn.execute(_compose(extension, "reset_statements"), {})
