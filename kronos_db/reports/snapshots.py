"""``report snapshot``: statement and table statistics kept in kronos-db's own tables.

pg_stat_statements and pg_stat_user_tables hold totals since their last reset; a snapshot
taken from cron lets ``slow-queries --since 1h`` and ``space --since 7d`` show what changed
over a window. Snapshots only ever read the statistics: nothing is reset.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from kronos_db.checks import Limits, fetch, guarded
from kronos_db.errors import ReportUnavailableError
from kronos_db.locks import try_advisory_lock
from kronos_db.reports import statements
from kronos_db.resources import query

SNAPSHOT_LOCK = "report-snapshot"
WRITE_HINT = "the role needs INSERT and DELETE on the kronos_*_snapshots tables"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    id: int
    taken_at: datetime
    statements_reset: datetime | None
    tables_reset: datetime | None


@dataclasses.dataclass(frozen=True)
class SnapshotResult:
    taken: bool  # False: another run held the lock
    snapshot_id: int | None
    taken_at: datetime
    statements: int
    tables: int
    deleted: int
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TableGrowth:
    schema_name: str
    table_name: str
    total_bytes: int
    growth_bytes: int | None
    live_tuples: int
    growth_tuples: int | None
    new_since_snapshot: bool


def take_snapshot(
    conn: psycopg.Connection[Any],
    *,
    now: datetime,
    limits: Limits,
    keep: timedelta | None = None,
) -> SnapshotResult:
    """Copy the statistics into the snapshot tables, and drop snapshots older than ``keep``.

    One transaction: a snapshot is whole or absent. A second run at the same time does
    nothing (advisory lock), as cron jobs should.
    """
    notes: list[str] = []
    with try_advisory_lock(conn, SNAPSHOT_LOCK) as acquired:
        if not acquired:
            return SnapshotResult(False, None, now, 0, 0, 0, ("another snapshot is running",))
        extension: statements.StatementsExtension | None
        statements_reset = None
        try:
            extension = statements.require_statements(conn, limits)
            statements_reset = statements.statements_info(conn, extension, limits).stats_reset
        except ReportUnavailableError as exc:
            extension = None
            notes.append(f"statements not recorded: {exc.message}")
        with guarded(conn, limits, privilege_hint=WRITE_HINT):
            row = conn.execute(
                query("reports_snapshots", "insert_snapshot"),
                {"taken_at": now, "statements_reset": statements_reset},
            ).fetchone()
            assert row is not None
            snapshot_id = int(row[0])
            statement_count = 0
            if extension is not None:
                insert = sql.SQL(query("reports_snapshots", "insert_statement_snapshots")).format(
                    **extension.placeholders()
                )
                statement_count = conn.execute(insert, {"snapshot_id": snapshot_id}).rowcount
            table_count = conn.execute(
                query("reports_snapshots", "insert_table_snapshots"), {"snapshot_id": snapshot_id}
            ).rowcount
            deleted = 0
            if keep is not None:
                deleted = conn.execute(
                    query("reports_snapshots", "delete_old_snapshots"), {"before": now - keep}
                ).rowcount
    return SnapshotResult(
        True, snapshot_id, now, statement_count, table_count, deleted, tuple(notes)
    )


def snapshot_before(conn: psycopg.Connection[Any], at: datetime, limits: Limits) -> Snapshot | None:
    """The newest snapshot taken at or before ``at``, else the oldest one, else None."""
    rows = fetch(
        conn, query("reports_snapshots", "select_snapshot_before"), {"at": at}, Snapshot, limits
    )
    return rows[0] if rows else None


def table_growth(
    conn: psycopg.Connection[Any],
    *,
    now: datetime,
    since: timedelta,
    limits: Limits,
    limit: int = 20,
) -> tuple[Snapshot, list[TableGrowth]]:
    snapshot = snapshot_before(conn, now - since, limits)
    if snapshot is None:
        raise ReportUnavailableError(
            "no snapshot to compare with",
            hint="run `kronos-db report snapshot` regularly (cron), then ask for a window",
        )
    rows = fetch(
        conn,
        query("reports_snapshots", "select_table_growth"),
        {"snapshot_id": snapshot.id, "limit": limit},
        TableGrowth,
        limits,
    )
    return snapshot, rows
