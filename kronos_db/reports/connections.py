"""Connections: usage against the server's limit, grouped by database, role, application, state."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import psycopg

from kronos_db.reports.runner import Limits, fetch, fetch_one
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
