"""Activity: blocking chains (who blocks whom, for how long), long-running queries, sessions
idle in transaction, prepared transactions; and their checks."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

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
    health_threshold,
    quote_literal,
)
from kronos_db.config import Settings
from kronos_db.resources import query
from kronos_db.units import human_seconds


@dataclasses.dataclass(frozen=True)
class BlockedSession:
    blocked_pid: int
    blocked_role: str
    blocked_application: str
    waiting_seconds: float
    blocked_query: str
    wanted_lock: str
    blocking_pid: int
    blocking_role: str
    blocking_application: str
    blocking_state: str
    blocking_transaction_seconds: float
    blocking_query: str
    blocking_is_root: bool  # the blocker waits for nobody: end it and the chain moves


@dataclasses.dataclass(frozen=True)
class LongQuery:
    pid: int
    role_name: str
    database_name: str
    application_name: str
    client: str
    state: str
    seconds: float
    waiting_on: str
    query: str


@dataclasses.dataclass(frozen=True)
class IdleInTransaction:
    pid: int
    role_name: str
    database_name: str
    application_name: str
    client: str
    state: str
    idle_seconds: float
    transaction_seconds: float
    last_query: str


@dataclasses.dataclass(frozen=True)
class PreparedTransaction:
    gid: str
    role_name: str
    database_name: str
    prepared_at: datetime
    seconds: float
    xid_age: int
    locks: int
    relations: str  # this database's tables it holds locks on, with the mode


@dataclasses.dataclass(frozen=True)
class ActivityReport:
    blocked: tuple[BlockedSession, ...]
    long_queries: tuple[LongQuery, ...]
    idle_in_transaction: tuple[IdleInTransaction, ...]


def blocking_chains(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime, all_databases: bool = False
) -> list[BlockedSession]:
    return fetch(
        conn,
        query("reports_activity", "select_blocking_chains"),
        {"now": now, "all_databases": all_databases},
        BlockedSession,
        limits,
    )


def long_queries(
    conn: psycopg.Connection[Any],
    limits: Limits,
    *,
    now: datetime,
    threshold: timedelta,
    all_databases: bool = False,
) -> list[LongQuery]:
    return fetch(
        conn,
        query("reports_activity", "select_long_queries"),
        {"now": now, "threshold": threshold, "all_databases": all_databases},
        LongQuery,
        limits,
    )


def idle_in_transaction(
    conn: psycopg.Connection[Any],
    limits: Limits,
    *,
    now: datetime,
    threshold: timedelta,
    all_databases: bool = False,
) -> list[IdleInTransaction]:
    return fetch(
        conn,
        query("reports_activity", "select_idle_in_transaction"),
        {"now": now, "threshold": threshold, "all_databases": all_databases},
        IdleInTransaction,
        limits,
    )


def activity_report(
    conn: psycopg.Connection[Any],
    limits: Limits,
    *,
    now: datetime,
    long_query_threshold: timedelta,
    idle_threshold: timedelta,
    all_databases: bool = False,
) -> ActivityReport:
    return ActivityReport(
        blocked=tuple(blocking_chains(conn, limits, now=now, all_databases=all_databases)),
        long_queries=tuple(
            long_queries(
                conn, limits, now=now, threshold=long_query_threshold, all_databases=all_databases
            )
        ),
        idle_in_transaction=tuple(
            idle_in_transaction(
                conn, limits, now=now, threshold=idle_threshold, all_databases=all_databases
            )
        ),
    )


def prepared_transactions(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime
) -> list[PreparedTransaction]:
    return fetch(
        conn,
        query("reports_activity", "select_prepared_transactions"),
        {"now": now},
        PreparedTransaction,
        limits,
    )


# ----------------------------------------------------------------------------- checks


def _terminate(pid: int) -> str:
    return f"SELECT pg_terminate_backend({pid});"


def long_query_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "long_query"),)


def check_long_queries(ctx: Context) -> Outcome:
    """Active queries of this database running longer than the warning level."""
    (threshold,) = long_query_thresholds(ctx.settings)
    rows = long_queries(
        ctx.conn, ctx.limits, now=ctx.now, threshold=ctx.settings.health.long_query_warning
    )
    longest = max((row.seconds for row in rows), default=0.0)
    metric = Metric("long_queries", longest, "seconds", threshold)
    if not rows:
        return Outcome(Status.OK, "no query running longer than the threshold", (metric,))
    return Outcome(
        metric.grade(),
        f"{len(rows)} quer{'y' if len(rows) == 1 else 'ies'} running for "
        f"up to {human_seconds(longest)} (pid {rows[0].pid})",
        (metric,),
        tuple(
            Finding(
                f"pid {row.pid} ({row.role_name}, {row.application_name or 'no application'})",
                f"running for {human_seconds(row.seconds)}"
                + (f", waiting on {row.waiting_on}" if row.waiting_on else ""),
                f"SELECT pg_cancel_backend({row.pid});",
                row.query,
            )
            for row in rows
        ),
        "see `kronos-db report activity`; pg_cancel_backend(pid) stops one",
        tuple(rows),
    )


def idle_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "idle_in_transaction"),)


def check_idle_in_transaction(ctx: Context) -> Outcome:
    """Sessions idle inside an open transaction: they hold locks and the xmin horizon."""
    (threshold,) = idle_thresholds(ctx.settings)
    rows = idle_in_transaction(
        ctx.conn,
        ctx.limits,
        now=ctx.now,
        threshold=ctx.settings.health.idle_in_transaction_warning,
    )
    longest = max((row.idle_seconds for row in rows), default=0.0)
    metric = Metric("idle_in_transaction", longest, "seconds", threshold)
    if not rows:
        return Outcome(Status.OK, "no session idle in transaction beyond the threshold", (metric,))
    return Outcome(
        metric.grade(),
        f"{len(rows)} session(s) idle in transaction, up to "
        f"{human_seconds(longest)} (pid {rows[0].pid}, {rows[0].application_name or '?'})",
        (metric,),
        tuple(
            Finding(
                f"pid {row.pid} ({row.role_name}, {row.application_name or 'no application'})",
                f"idle in transaction for {human_seconds(row.idle_seconds)}, its transaction "
                f"open for {human_seconds(row.transaction_seconds)}",
                _terminate(row.pid),
                row.last_query,
            )
            for row in rows
        ),
        "they hold locks and the xmin horizon; set idle_in_transaction_session_timeout"
        " or pg_terminate_backend(pid)",
        tuple(rows),
    )


def blocked_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "blocked"),)


def check_blocked_sessions(ctx: Context) -> Outcome:
    """Sessions waiting for a lock, and the sessions at the root of each chain."""
    (threshold,) = blocked_thresholds(ctx.settings)
    rows = blocking_chains(ctx.conn, ctx.limits, now=ctx.now)
    longest = max((row.waiting_seconds for row in rows), default=0.0)
    metric = Metric("blocked_sessions", longest, "seconds", threshold)
    if not rows:
        return Outcome(Status.OK, "no session waiting for a lock", (metric,))
    roots = {row.blocking_pid: row for row in rows if row.blocking_is_root}
    waiting = len({row.blocked_pid for row in rows})
    return Outcome(
        metric.grade(),
        f"{waiting} session(s) blocked, the longest for {human_seconds(longest)}; "
        f"blocked by pid {', '.join(map(str, sorted(roots))) or '?'}",
        (metric,),
        tuple(
            Finding(
                f"pid {pid} ({row.blocking_role}, {row.blocking_application or 'no application'})",
                f"blocks others ({row.blocking_state}, its transaction open for "
                f"{human_seconds(row.blocking_transaction_seconds)})",
                _terminate(pid),
                row.blocking_query,
            )
            for pid, row in sorted(roots.items())
        ),
        "see `kronos-db report locks`",
        tuple(rows),
    )


def prepared_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "prepared_transaction"),)


def check_prepared_transactions(ctx: Context) -> Outcome:
    """Prepared transactions by age: each holds its locks and the xmin horizon, with no
    session to end, until someone commits or rolls it back (a restart keeps it)."""
    (threshold,) = prepared_thresholds(ctx.settings)
    rows = prepared_transactions(ctx.conn, ctx.limits, now=ctx.now)
    oldest = max((row.seconds for row in rows), default=0.0)
    metric = Metric("prepared_transactions", oldest, "seconds", threshold)
    status = metric.grade()
    if not rows:
        return Outcome(Status.OK, "no prepared transaction", (metric,))
    top = rows[0]
    holding = f", holding {top.locks} lock(s)" + (f" ({top.relations})" if top.relations else "")
    return Outcome(
        status,
        f"{len(rows)} prepared transaction(s); the oldest, {top.gid!r} in {top.database_name}, "
        f"prepared {human_seconds(top.seconds)} ago{holding}",
        (metric,),
        tuple(
            Finding(
                f"prepared transaction {row.gid!r} ({row.role_name}, database {row.database_name})",
                f"prepared {human_seconds(row.seconds)} ago, holding {row.locks} lock(s)"
                + (f" on {row.relations}" if row.relations else "")
                + f" and the xmin horizon (age {row.xid_age:,})",
                f"-- connected to {row.database_name}, once its coordinator is known to have "
                f"given up on it:\nROLLBACK PREPARED {quote_literal(row.gid)};",
            )
            for row in rows
        ),
        ""
        if status is Status.OK
        else "a two-phase commit whose coordinator never finished: COMMIT PREPARED or ROLLBACK "
        "PREPARED it (in its database) once the coordinator is known to have given up",
        tuple(rows),
    )
