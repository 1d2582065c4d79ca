"""``kronos_quarantine``: the rows ``kronos-db adopt`` moved out of a table, or changed.

kronos-db creates the table on first use, as it creates ``kronos_migrations``. It keeps every
row whole (``to_jsonb``), with the rule it broke, the batch it was moved with (a row and the rows
that referenced it) and the time zone its naive timestamps were written in. A quarantined row is
restorable: :func:`restore` puts a batch back, parents first, in one transaction, with the
columns the row has (the others take their defaults); a row that still breaks a rule stays in
quarantine and the error says why. Rows kept as ``fixed`` or ``merged`` are the old versions of
rows a fix changed: a record, not something to put back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from kronos_db import db
from kronos_db.errors import UsageError, translate_database_error
from kronos_db.resources import query

TABLE = "kronos_quarantine"


def ensure_table(conn: psycopg.Connection[Any]) -> None:
    """Create the table when it is missing (idempotent: the adoption holds the migration lock)."""
    if _exists(conn):
        return
    with conn.transaction():
        conn.execute(query("adopt", "create_quarantine"))
        conn.execute(query("adopt", "comment_quarantine"))


def move(
    conn: psycopg.Connection[Any],
    table: str,
    key: str,
    batches: Mapping[Any, str],
    *,
    depth: int,
    rule: str,
    action: str,
    timestamps_in: str,
) -> int:
    """Delete the rows of ``batches``' keys from ``table``; keep each whole, in its batch."""
    cursor = conn.execute(
        sql.SQL(query("adopt", "move_rows")).format(
            table=sql.Identifier(table), key=sql.Identifier(key)
        ),
        {
            "keys": list(batches),
            "batches": list(batches.values()),
            "depth": depth,
            "table_name": table,
            "rule": rule,
            "action": action,
            "timestamps_in": timestamps_in,
        },
    )
    return max(cursor.rowcount, 0)


@dataclasses.dataclass(frozen=True)
class QuarantinedRow:
    id: int
    batch: str
    depth: int
    table_name: str
    rule: str
    action: str
    row_data: dict[str, Any]
    timestamps_in: str
    moved_at: datetime
    moved_by: str


def _exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(query("adopt", "select_quarantine_exists")).fetchone()
    return bool(row and row[0])


def list_rows(target: db.Target, ids: Sequence[int] | None = None) -> list[QuarantinedRow]:
    """What the quarantine holds, oldest first (nothing when adopt never needed it)."""
    with db.connection(target) as conn:
        if not _exists(conn):
            return []
        with conn.cursor(row_factory=class_row(QuarantinedRow)) as cur:
            return cur.execute(
                query("adopt", "select_quarantine"), {"ids": list(ids) if ids else None}
            ).fetchall()


@dataclasses.dataclass(frozen=True)
class RestoredBatch:
    batch: str
    rows: int
    tables: tuple[str, ...]
    error: str  # '' when restored


@dataclasses.dataclass(frozen=True)
class _BatchRow:
    id: int
    table_name: str
    row_data: dict[str, Any]
    timestamps_in: str


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        query("adopt", "select_table_columns"), {"table": sql.Identifier(table).as_string(conn)}
    ).fetchall()
    return [str(r[0]) for r in rows]


def _restore_batch(conn: psycopg.Connection[Any], batch: str) -> tuple[int, tuple[str, ...]]:
    with conn.cursor(row_factory=class_row(_BatchRow)) as cur:
        rows = cur.execute(query("adopt", "select_quarantine_batch"), {"batch": batch}).fetchall()
    tables: list[str] = []
    for row in rows:
        conn.execute(query("adopt", "set_session_time_zone"), {"zone": row.timestamps_in})
        present = [c for c in _columns(conn, row.table_name) if c in row.row_data]
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in present)
        conn.execute(
            sql.SQL(query("adopt", "restore_row")).format(
                table=sql.Identifier(row.table_name), columns=columns
            ),
            {"row_data": Jsonb(row.row_data)},
        )
        if row.table_name not in tables:
            tables.append(row.table_name)
    conn.execute(query("adopt", "delete_quarantined"), {"ids": [r.id for r in rows]})
    return len(rows), tuple(tables)


def restore(
    target: db.Target,
    ids: Sequence[int] = (),
    *,
    everything: bool = False,
    notify: Callable[[str], None] = lambda _message: None,
) -> list[RestoredBatch]:
    """Put quarantined rows back: the whole batch of each id given (or every batch).

    Each batch is one transaction: its rows go back parents first, or none does. A batch whose
    rows still break a rule stays in quarantine, and its result says why.
    """
    if not ids and not everything:
        raise UsageError("name the quarantined rows to restore (their ids), or pass --all")
    results: list[RestoredBatch] = []
    with db.connection(target) as conn:
        if not _exists(conn):
            raise UsageError("this database has no kronos_quarantine: nothing was quarantined")
        rows = list_rows_on(conn, list(ids) if ids else None)
        wanted = [r for r in rows if r.action == "quarantined"]
        kept = [r for r in rows if r.action != "quarantined"]
        for row in kept:
            if ids:
                raise UsageError(
                    f"quarantine row {row.id} is the old version of a row adopt {row.action}, "
                    "kept for the record: there is nothing to restore"
                )
        missing = set(ids) - {r.id for r in rows}
        if missing:
            raise UsageError(f"no quarantined row {', '.join(str(i) for i in sorted(missing))}")
        for batch in dict.fromkeys(r.batch for r in wanted):
            try:
                with conn.transaction():
                    count, tables = _restore_batch(conn, batch)
            except psycopg.Error as exc:
                error = translate_database_error(exc, target=target.describe())
                notify(f"batch {batch} stays in quarantine: {error.message}")
                results.append(RestoredBatch(batch, 0, (), error.message))
                continue
            results.append(RestoredBatch(batch, count, tables, ""))
    return results


def list_rows_on(conn: psycopg.Connection[Any], ids: list[int] | None) -> list[QuarantinedRow]:
    with conn.cursor(row_factory=class_row(QuarantinedRow)) as cur:
        return cur.execute(query("adopt", "select_quarantine"), {"ids": ids}).fetchall()


__all__ = [
    "TABLE",
    "QuarantinedRow",
    "RestoredBatch",
    "ensure_table",
    "list_rows",
    "move",
    "restore",
]
