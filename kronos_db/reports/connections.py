"""Connections: usage against the server's limit, grouped by database, role, application, state."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import psycopg

from kronos_db.checks import (
    Context,
    Limits,
    Metric,
    Outcome,
    Threshold,
    fetch,
    fetch_one,
    health_threshold,
)
from kronos_db.config import Settings
from kronos_db.resources import query


@dataclasses.dataclass(frozen=True)
class ConnectionUsage:
    used: int
    max_connections: int
    reserved: int
    used_percent: float


@dataclasses.dataclass(frozen=True)
class ConnectionGroup:
    database_name: str
    role_name: str
    application_name: str
    state: str
    connections: int
    oldest_seconds: float


@dataclasses.dataclass(frozen=True)
class ConnectionsReport:
    usage: ConnectionUsage
    groups: tuple[ConnectionGroup, ...]


def connection_usage(conn: psycopg.Connection[Any], limits: Limits) -> ConnectionUsage:
    return fetch_one(
        conn, query("reports_connections", "select_connection_usage"), {}, ConnectionUsage, limits
    )


def connections_report(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime
) -> ConnectionsReport:
    groups = fetch(
        conn,
        query("reports_connections", "select_connections"),
        {"now": now},
        ConnectionGroup,
        limits,
    )
    return ConnectionsReport(connection_usage(conn, limits), tuple(groups))


# ----------------------------------------------------------------------------- check


def connection_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "connections"),)


def check_connections(ctx: Context) -> Outcome:
    """Client connections in use, % of the slots left once the reserved ones are set aside
    (server-wide: a full max_connections stops every database)."""
    usage = connection_usage(ctx.conn, ctx.limits)
    (threshold,) = connection_thresholds(ctx.settings)
    metric = Metric("connections", usage.used_percent, "percent", threshold)
    status = metric.grade()
    return Outcome(
        status,
        f"{usage.used} of {usage.max_connections - usage.reserved} client "
        f"connections in use ({usage.used_percent:.0f}%)",
        (metric,),
        hint=""
        if status.name == "OK"
        else "see `kronos-db report connections`: which "
        "application holds them? a pooler (PgBouncer) in front of the services",
        data=(usage,),
    )
