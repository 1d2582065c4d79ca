"""Maintenance: vacuum and dead tuples, wraparound headroom (transaction IDs and multixacts),
what holds back the xmin horizon, and estimated bloat."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import psycopg

from kronos_db.reports.runner import Limits, fetch
from kronos_db.resources import query


@dataclasses.dataclass(frozen=True)
class VacuumStats:
    schema_name: str
    table_name: str
    live_tuples: int
    dead_tuples: int
    dead_percent: float | None
    modified_since_analyze: int
    last_vacuum: datetime | None
    last_autovacuum: datetime | None
    last_analyze: datetime | None
    last_autoanalyze: datetime | None
    vacuum_count: int
    autovacuum_enabled: bool
    autovacuum_trigger: int

    @property
    def vacuum_overdue(self) -> bool:
        """More dead tuples than autovacuum's trigger: it is off, lagging or blocked."""
        return self.dead_tuples > self.autovacuum_trigger


@dataclasses.dataclass(frozen=True)
class DatabaseWraparound:
    database_name: str
    xid_age: int
    multixact_age: int
    xid_percent: float
    multixact_percent: float
    freeze_max_age: int
    multixact_freeze_max_age: int


@dataclasses.dataclass(frozen=True)
class TableWraparound:
    schema_name: str
    table_name: str
    xid_age: int
    multixact_age: int
    xid_percent: float
    multixact_percent: float
    bytes: int


@dataclasses.dataclass(frozen=True)
class XminHolder:
    kind: str  # session, replication slot, prepared transaction, standby feedback
    name: str
    role_name: str
    application_name: str
    state: str
    xid_age: int | None
    seconds: float | None
    detail: str


@dataclasses.dataclass(frozen=True)
class BloatEstimate:
    schema_name: str
    table_name: str  # for an index: "table.index"
    kind: str  # table or index
    bytes: int
    bloat_bytes: int
    bloat_percent: float
    fillfactor: int
    unreliable_reason: str  # empty when the estimate can be trusted

    @property
    def reliable(self) -> bool:
        return not self.unreliable_reason


@dataclasses.dataclass(frozen=True)
class VacuumReport:
    tables: tuple[VacuumStats, ...]
    databases: tuple[DatabaseWraparound, ...]
    oldest_tables: tuple[TableWraparound, ...]
    xmin_holders: tuple[XminHolder, ...]


def vacuum_stats(
    conn: psycopg.Connection[Any], limits: Limits, *, limit: int = 50
) -> list[VacuumStats]:
    return fetch(
        conn,
        query("reports_maintenance", "select_vacuum_stats"),
        {"limit": limit},
        VacuumStats,
        limits,
    )


def database_wraparound(conn: psycopg.Connection[Any], limits: Limits) -> list[DatabaseWraparound]:
    return fetch(
        conn,
        query("reports_maintenance", "select_database_wraparound"),
        {},
        DatabaseWraparound,
        limits,
    )


def table_wraparound(
    conn: psycopg.Connection[Any], limits: Limits, *, limit: int = 10
) -> list[TableWraparound]:
    return fetch(
        conn,
        query("reports_maintenance", "select_table_wraparound"),
        {"limit": limit},
        TableWraparound,
        limits,
    )


def xmin_holders(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime, all_databases: bool = False
) -> list[XminHolder]:
    return fetch(
        conn,
        query("reports_maintenance", "select_xmin_holders"),
        {"now": now, "all_databases": all_databases},
        XminHolder,
        limits,
    )


def vacuum_report(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime, limit: int = 50
) -> VacuumReport:
    return VacuumReport(
        tables=tuple(vacuum_stats(conn, limits, limit=limit)),
        databases=tuple(database_wraparound(conn, limits)),
        oldest_tables=tuple(table_wraparound(conn, limits)),
        xmin_holders=tuple(xmin_holders(conn, limits, now=now)),
    )


def bloat(
    conn: psycopg.Connection[Any], limits: Limits, *, minimum_bytes: int = 10 * 1024 * 1024
) -> list[BloatEstimate]:
    """Estimated table and btree index bloat, largest first; tables below ``minimum_bytes``
    are skipped (an estimate on a few pages is noise)."""
    params = {"minimum_bytes": minimum_bytes}
    tables = fetch(
        conn, query("reports_maintenance", "select_table_bloat"), params, BloatEstimate, limits
    )
    indexes = fetch(
        conn, query("reports_maintenance", "select_index_bloat"), params, BloatEstimate, limits
    )
    return sorted(
        tables + indexes, key=lambda row: (-row.bloat_bytes, row.schema_name, row.table_name)
    )
