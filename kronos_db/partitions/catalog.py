"""What the catalog says about a partitioned table: the table, its partitions, the rows waiting in
its default partition, tables retired or left behind, and the policy ``[partitions]`` sets.

Reads only; every read runs in a transaction with its settings LOCAL (``db.transaction_settings``),
so it is correct through a transaction pooler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import class_row

from kronos_db import db
from kronos_db.config import PartitionSettings
from kronos_db.durations import postgres_interval
from kronos_db.errors import UsageError
from kronos_db.partitions.naming import TRUNC_UNIT, Interval
from kronos_db.resources import query

# the comment that marks a detached partition whose retirement is not finished yet
RETIRED_MARK = "kronos-db: retired from "


# the comment of a partition detached for good (retention_action = detach)
DETACHED_MARK = "kronos-db: detached from "


DEFAULT_ROW_COUNT_CAP = 10_000_000


# the comment of the guard constraint kronos-db before 0.9 put on the default partition
_LEGACY_GUARD_SUFFIX = "_kronos_attach_guard"


@dataclasses.dataclass(frozen=True)
class ParentTable:
    oid: int
    schema: str
    name: str
    owner: str
    strategy: str | None
    key_column: str | None
    key_type: str | None
    key_count: int | None
    default_partition: str | None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def default_identifier(self) -> sql.Identifier:
        assert self.default_partition is not None
        return sql.Identifier(self.schema, self.default_partition)

    def key(self) -> sql.Identifier:
        return sql.Identifier(self.key_column or "")


@dataclasses.dataclass(frozen=True)
class Partition:
    name: str
    schema: str
    lower: datetime | None
    upper: datetime | None
    is_default: bool
    detach_pending: bool
    row_estimate: int
    total_bytes: int


@dataclasses.dataclass(frozen=True)
class Stray:
    """A plain table named like a partition of the table, not attached and not marked by us.

    An older kronos-db left such a table (rows moved into it, never attached) when killed or
    out of lock budget; a human may have detached a partition by hand. Its rows are in no
    partition: nobody sees them through the table. ``rows`` is None when unknown (not readable).
    """

    name: str
    rows: int | None
    lower: datetime | None
    upper: datetime | None
    same_columns: bool
    adoptable: bool
    reason: str

    def describe(self, parent: ParentTable) -> str:
        held = (
            "holds an unknown number of rows" if self.rows is None else f"holds {self.rows} row(s)"
        )
        return (
            f"stray table {parent.schema}.{self.name} {held} that {parent.qualified} does not show"
        )


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str


@dataclasses.dataclass(frozen=True)
class _Bucket:
    lower: datetime
    rows: int


@dataclasses.dataclass(frozen=True)
class _Count:
    rows: int


@dataclasses.dataclass(frozen=True)
class _RetiredTable:
    schema: str
    name: str
    note: str


@dataclasses.dataclass(frozen=True)
class _StrayRow:
    name: str
    row_estimate: int
    note: str | None
    same_columns: bool | None
    check_lower: datetime | None
    check_upper: datetime | None


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the partitions should look like: from ``[partitions]`` or pg_partman's part_config."""

    backend: Literal["native", "partman"]
    interval: Interval
    premake: int
    retention: timedelta
    retention_action: Literal["drop", "detach", "archive"]


def _catalog_scope(
    conn: psycopg.Connection[Any],
    settings: PartitionSettings,
    *,
    statement_timeout: timedelta | None = None,
    lock_timeout: timedelta | None = None,
) -> Any:
    # LOCAL, never for the session: through a transaction pooler the next transaction may run
    # on another server connection, and a session setting would follow the wrong one
    return db.transaction_settings(
        conn,
        {
            "statement_timeout": postgres_interval(statement_timeout or settings.statement_timeout),
            "lock_timeout": postgres_interval(lock_timeout or settings.lock_timeout),
        },
    )


@contextmanager
def _unless_denied(conn: psycopg.Connection[Any]) -> Iterator[list[bool]]:
    """A savepoint: a missing privilege rolls it back and sets the yielded flag to [False]."""
    allowed = [True]
    try:
        with conn.transaction():
            yield allowed
    except pg_errors.InsufficientPrivilege:
        allowed[0] = False


def parent_table(conn: psycopg.Connection[Any], table: str) -> ParentTable:
    """The partitioned table ``table``; ``UsageError`` when it is missing or not range-on-time."""
    with conn.cursor(row_factory=class_row(ParentTable)) as cur:
        parent = cur.execute(
            query("partitions", "select_partitioned_table"), {"table": table}
        ).fetchone()
    if parent is None:
        raise UsageError(f"table {table} does not exist (is the database migrated?)")
    if parent.strategy != "r" or parent.key_count != 1:
        raise UsageError(f"{parent.qualified} is not range-partitioned on a single column")
    if parent.key_type != "timestamp with time zone":
        raise UsageError(
            f"{parent.qualified} is partitioned on {parent.key_column} "
            f"({parent.key_type}); kronos-db manages timestamptz keys only"
        )
    return parent


def list_partitions(conn: psycopg.Connection[Any], parent: ParentTable) -> list[Partition]:
    with conn.cursor(row_factory=class_row(Partition)) as cur:
        rows = cur.execute(query("partitions", "select_partitions"), {"oid": parent.oid}).fetchall()
    return [
        dataclasses.replace(
            row,
            lower=row.lower.astimezone(UTC) if row.lower else None,
            upper=row.upper.astimezone(UTC) if row.upper else None,
        )
        for row in rows
    ]


def _columns(conn: psycopg.Connection[Any], parent: ParentTable) -> list[str]:
    with conn.cursor(row_factory=class_row(_Column)) as cur:
        return [
            c.name
            for c in cur.execute(
                query("partitions", "select_columns"), {"oid": parent.oid}
            ).fetchall()
        ]


def _default_buckets(
    conn: psycopg.Connection[Any], parent: ParentTable, interval: str
) -> list[_Bucket] | None:
    """Rows of the default partition per interval; None when this role cannot read it."""
    if parent.default_partition is None:
        return []
    statement = sql.SQL(query("partitions", "select_default_buckets")).format(
        key_column=parent.key(), default_partition=parent.default_identifier()
    )
    rows: list[_Bucket] = []
    with _unless_denied(conn) as allowed, conn.cursor(row_factory=class_row(_Bucket)) as cur:
        rows = cur.execute(statement, {"unit": TRUNC_UNIT[interval]}).fetchall()
    if not allowed[0]:
        return None
    return [_Bucket(row.lower.astimezone(UTC), row.rows) for row in rows]


def _count(conn: psycopg.Connection[Any], statement: sql.Composed, params: dict[str, Any]) -> int:
    with conn.cursor(row_factory=class_row(_Count)) as cur:
        row = cur.execute(statement, params).fetchone()
    return row.rows if row else 0


def count_default_rows(
    conn: psycopg.Connection[Any], parent: ParentTable, cap: int = DEFAULT_ROW_COUNT_CAP
) -> int:
    """Rows in the default partition (exact up to ``cap``)."""
    if parent.default_partition is None:
        return 0
    statement = sql.SQL(query("partitions", "count_default_rows")).format(
        default_partition=parent.default_identifier()
    )
    return _count(conn, statement, {"cap": cap})


def _default_rows_between(
    conn: psycopg.Connection[Any], parent: ParentTable, lower: datetime, upper: datetime
) -> int:
    statement = sql.SQL(query("partitions", "count_default_rows_between")).format(
        default_partition=parent.default_identifier(), key_column=parent.key()
    )
    return _count(conn, statement, {"lower": lower, "upper": upper})


def _retired_tables(conn: psycopg.Connection[Any], parent: ParentTable) -> list[_RetiredTable]:
    with conn.cursor(row_factory=class_row(_RetiredTable)) as cur:
        return cur.execute(
            query("partitions", "select_retired_tables"),
            {"prefix": f"{RETIRED_MARK}{parent.qualified}:"},
        ).fetchall()


def _legacy_guard(parent: ParentTable) -> str:
    return f"{parent.default_partition}{_LEGACY_GUARD_SUFFIX}"[:63]


def _has_legacy_guard(conn: psycopg.Connection[Any], parent: ParentTable) -> bool:
    if parent.default_partition is None:
        return False
    row = conn.execute(
        query("partitions", "select_guard_constraint"),
        {
            "table": parent.default_identifier().as_string(conn),
            "name": _legacy_guard(parent),
        },
    ).fetchone()
    return row is not None


def native_policy(settings: PartitionSettings) -> Policy:
    return Policy(
        "native", settings.interval, settings.premake, settings.retention, settings.retention_action
    )


def _relation_exists(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%(name)s::text) IS NOT NULL",
        {"name": sql.Identifier(schema, name).as_string(conn)},
    ).fetchone()
    return bool(row and row[0])
