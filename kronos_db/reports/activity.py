"""Activity: blocking chains (who blocks whom, for how long), long-running queries and
sessions idle in transaction."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import psycopg

from kronos_db.reports.runner import Limits, fetch
from kronos_db.resources import query


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
