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

from kronos_db.checks import (
    Context,
    Finding,
    Limits,
    Metric,
    Outcome,
    Status,
    Threshold,
    fetch,
    guarded,
    health_threshold,
)
from kronos_db.config import Settings
from kronos_db.errors import ReportUnavailableError
from kronos_db.reports import snapshots, statements
from kronos_db.units import human_seconds

Order = Literal["total", "mean", "calls", "io"]
ORDERS: tuple[Order, ...] = ("total", "mean", "calls", "io")


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
    include_utility: bool = True,
    toplevel_only: bool = False,
    since_last_snapshot: bool = False,
) -> SlowQueriesReport:
    """The statements that cost the most, since the last reset or over a window ``since``.

    A window needs a snapshot (``report snapshot``) taken at or before ``now - since``; when
    only a newer one exists the window starts at it, and a note says so. With
    ``since_last_snapshot`` the window starts at the newest snapshot when there is one (the
    totals since the reset otherwise). ``include_utility`` False leaves out utility
    statements (VACUUM, DDL, COPY, DO blocks…); ``toplevel_only`` the statements run inside a
    function or DO block.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}")
    extension = statements.require_statements(conn, limits)
    info = statements.statements_info(conn, extension, limits)
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
        "include_utility": include_utility,
        "toplevel_only": toplevel_only,
    }
    window_start: datetime | None = None
    if since is None and since_last_snapshot and not all_databases:
        try:
            latest = snapshots.snapshot_before(conn, now, limits)
        except ReportUnavailableError:
            latest = None
            notes.append(
                "the snapshots are not readable by this role (GRANT SELECT ON "
                "kronos_stat_snapshots, kronos_statement_snapshots TO <role>): totals since "
                "the last reset are judged"
            )
        if latest is not None and latest.taken_at <= now:
            since = now - latest.taken_at
    if since is None:
        statement = statements.compose(extension, "select_slow_queries")
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
        statement = statements.compose(extension, "select_slow_queries_since")
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
    extension = statements.require_statements(conn, limits)
    with guarded(
        conn,
        limits,
        privilege_hint="resetting needs a superuser or "
        "GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) TO <role>",
    ):
        conn.execute(statements.compose(extension, "reset_statements"), {})


# ----------------------------------------------------------------------------- check


def slow_query_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "slow_query"),)


def check_slow_queries(ctx: Context) -> Outcome:
    """The highest mean time among this database's statements, judged without false alarms:
    utility statements (VACUUM, DDL, a DO block…) and statements run inside a function are left
    out, a statement needs ``slow_query_minimum_calls`` calls, and when a snapshot exists
    (``report snapshot``) only what ran since the newest one counts, so that a one-off slow
    statement stops counting once a snapshot was taken after it."""
    (threshold,) = slow_query_thresholds(ctx.settings)
    health = ctx.settings.health
    report = slow_queries(
        ctx.conn,
        now=ctx.now,
        limits=ctx.limits,
        order="mean",
        limit=10,
        minimum_calls=health.slow_query_minimum_calls,
        query_width=0,
        include_utility=health.slow_query_include_utility,
        toplevel_only=True,
        since_last_snapshot=True,
    )
    since = (
        f" since the snapshot of {report.window_start:%Y-%m-%d %H:%M %Z}"
        if report.window_start
        else ""
    )
    top = report.queries[0].mean_ms / 1000 if report.queries else 0.0
    metric = Metric("slow_queries", top, "seconds", threshold)
    slow = [row for row in report.queries if threshold.grade(row.mean_ms / 1000) is not Status.OK]
    if not slow:
        return Outcome(
            Status.OK,
            f"no statement slower than {human_seconds(threshold.warning or 0)} on average"
            f"{since} ({health.slow_query_minimum_calls}+ calls)",
            (metric,),
        )
    return Outcome(
        metric.grade(),
        f"{len(slow)} statement(s) slower than {human_seconds(threshold.warning or 0)} on "
        f"average{since}; slowest {human_seconds(top)} over {slow[0].calls:,} calls: "
        f"{shorten_query(slow[0].query, 80)}",
        (metric,),
        tuple(
            Finding(
                f"statement {row.queryid} ({row.role_name})",
                f"{human_seconds(row.mean_ms / 1000)} on average over {row.calls:,} calls, "
                f"{human_seconds(row.total_ms / 1000)} in all",
                query=row.query,
            )
            for row in slow
        ),
        "; ".join(
            [
                "see `kronos-db report slow-queries --order mean` and EXPLAIN (ANALYZE, "
                "BUFFERS) them",
                *report.notes,
            ]
        ),
        tuple(slow),
    )
