"""The pg_partman backend: where the extension is installed and the table registered with it.

pg_partman's ``part_config`` row is then the policy (interval, premake, retention), and its
``create_partition_time`` makes the empty partitions ahead (its template table applies), one
per transaction under kronos-db's lock budget; ``run_maintenance`` then runs for anything else
pg_partman is configured to do. Moving rows out of the default partition, adopting strays, the
range holding now and retention are kronos-db's own steps, with pg_partman's names, so that
pg_partman adopts the result (:mod:`kronos_db.partitions.partman_rotation` says why).

Every call runs with ``TimeZone = UTC`` set locally: pg_partman 4.x computes bounds and names in
the session's time zone, and a non-UTC session would make it create overlapping partitions.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from kronos_db.config import PartitionSettings, Settings
from kronos_db.errors import UsageError
from kronos_db.partitions.catalog import Policy, parent_table
from kronos_db.partitions.naming import Interval
from kronos_db.resources import query

# pg_partman 4.x: the interval text part_config holds, and its datetime_string (names)
PARTMAN_INTERVALS = {
    "hourly": ("1 hour", "YYYY_MM_DD_HH24MI"),
    "daily": ("1 day", "YYYY_MM_DD"),
    "weekly": ("7 days", 'IYYY"w"IW'),
    "monthly": ("1 mon", "YYYY_MM"),
}


@dataclasses.dataclass(frozen=True)
class _Extension:
    schema: str
    version: str


@dataclasses.dataclass(frozen=True)
class _ConfigRow:
    interval_name: str | None
    premake: int
    retention_seconds: float | None
    retention_keep_table: bool
    infinite_time_partitions: bool


@dataclasses.dataclass(frozen=True)
class PartmanConfig:
    """The table's row in pg_partman's part_config (the policy of the partman backend)."""

    schema: str
    version: str
    interval: str
    premake: int
    retention: timedelta
    retention_keep_table: bool

    def policy(self, settings: PartitionSettings) -> Policy:
        # what retention does with the partition stays kronos-db's (partman cannot archive)
        if self.interval not in PARTMAN_INTERVALS:
            raise UsageError(
                f"pg_partman interval {self.interval!r} of {settings.table} is not "
                "one kronos-db manages (hourly, daily, weekly, monthly)"
            )
        interval = cast(Interval, self.interval)
        return Policy("partman", interval, self.premake, self.retention, settings.retention_action)


def extension(conn: psycopg.Connection[Any]) -> _Extension | None:
    with conn.cursor(row_factory=class_row(_Extension)) as cur:
        return cur.execute(query("partitions", "select_partman")).fetchone()


def table_config(conn: psycopg.Connection[Any], table: str) -> PartmanConfig | None:
    """The table's part_config row, or None (extension missing or table not registered)."""
    found = extension(conn)
    if found is None:
        return None
    statement = sql.SQL(query("partitions", "select_partman_config")).format(
        partman=sql.Identifier(found.schema)
    )
    with conn.cursor(row_factory=class_row(_ConfigRow)) as cur:
        row = cur.execute(statement, {"table": _partman_name(conn, table)}).fetchone()
    if row is None:
        return None
    return PartmanConfig(
        schema=found.schema,
        version=found.version,
        interval=row.interval_name or "unknown",
        premake=row.premake,
        retention=timedelta(seconds=row.retention_seconds or 0),
        retention_keep_table=row.retention_keep_table,
    )


def template_table(conn: psycopg.Connection[Any], table: str) -> str | None:
    """The template table (``schema.name``) pg_partman keeps for ``table``, or None."""
    found = extension(conn)
    if found is None:
        return None
    statement = sql.SQL(query("partitions", "select_partman_template")).format(
        partman=sql.Identifier(found.schema)
    )
    row = conn.execute(statement, {"table": _partman_name(conn, table)}).fetchone()
    return str(row[0]) if row and row[0] else None


def _partman_name(conn: psycopg.Connection[Any], table: str) -> str:
    """pg_partman keys part_config by ``schema.table`` (unquoted, lower case)."""
    row = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%(t)s::text)",
        {"t": table},
    ).fetchone()
    return str(row[0]) if row else table


@dataclasses.dataclass(frozen=True)
class AdoptResult:
    table: str
    schema: str
    created: bool
    statements: tuple[str, ...]


def adopt(
    conn: psycopg.Connection[Any], settings: Settings, *, dry_run: bool = False
) -> AdoptResult:
    """Register the table with pg_partman, keeping its partitions and its default partition.

    ``partman.create_parent`` cannot: it insists on creating the default partition (and fails
    because ``logs_default`` exists) and creates partitions in the session's time zone. So this
    writes the same ``part_config`` row create_parent would (template table included), with
    kronos-db's policy: interval, premake, retention, ``infinite_time_partitions = true``.
    """
    options = settings.partitions
    found = extension(conn)
    if found is None:
        raise UsageError(
            "pg_partman is not installed in this database "
            "(CREATE EXTENSION pg_partman SCHEMA partman)"
        )
    parent = parent_table(conn, options.table)
    name = f"{parent.schema}.{parent.name}"
    if table_config(conn, options.table) is not None:
        return AdoptResult(name, found.schema, False, ())
    interval, datetime_string = PARTMAN_INTERVALS[options.interval]
    template = f"template_{parent.schema}_{parent.name}"[:63]
    partman_schema = sql.Identifier(found.schema)
    statements: list[sql.Composed] = [
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {})").format(
            sql.Identifier(found.schema, template), parent.identifier()
        ),
        sql.SQL(
            "INSERT INTO {}.part_config (parent_table, control, partition_type, "
            "partition_interval, premake, datetime_string, template_table, retention, "
            "retention_keep_table, retention_keep_index, infinite_time_partitions, jobmon, "
            "inherit_privileges) VALUES ({}, {}, 'native', {}, {}, {}, {}, {}, {}, true, true, "
            "false, false)"
        ).format(
            partman_schema,
            sql.Literal(name),
            sql.Literal(parent.key_column),
            sql.Literal(interval),
            sql.Literal(options.premake),
            sql.Literal(datetime_string),
            sql.Literal(f"{found.schema}.{template}"),
            sql.Literal(_interval_text(options.retention)),
            sql.Literal(options.retention_action != "drop"),
        ),
    ]
    rendered = tuple(s.as_string(conn) for s in statements)
    if not dry_run:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
    return AdoptResult(name, found.schema, not dry_run, rendered)


def _interval_text(value: timedelta) -> str | None:
    seconds = int(value.total_seconds())
    return f"{seconds} seconds" if seconds > 0 else None
