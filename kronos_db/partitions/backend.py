"""The backend in force for a table: kronos-db's own policy, or pg_partman's part_config when
that backend applies; and the tables partition management keeps on purpose (detached and kept,
retirement pending, pg_partman's template), which ``kronos-db check`` does not call drift.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
from psycopg.rows import class_row

from kronos_db import partman
from kronos_db.config import PartitionSettings
from kronos_db.errors import UsageError
from kronos_db.partitions.catalog import (
    DETACHED_MARK,
    RETIRED_MARK,
    Policy,
    _RetiredTable,
    native_policy,
    parent_table,
)
from kronos_db.resources import query


@dataclasses.dataclass(frozen=True)
class KeptTable:
    """A table partition management leaves on purpose, and why (``kronos-db check`` says so
    instead of calling it drift)."""

    schema: str
    name: str
    why: str


def kept_tables(conn: psycopg.Connection[Any], settings: PartitionSettings) -> list[KeptTable]:
    """Partitions detached and kept (``retention_action = detach``), detached ones whose
    retirement the next run finishes, and pg_partman's template table of an adopted table."""
    try:
        parent = parent_table(conn, settings.table)
    except UsageError:
        return []  # not migrated that far, or not a table kronos-db manages
    kept: list[KeptTable] = []
    for prefix, why in (
        (
            f"{DETACHED_MARK}{parent.qualified} ",
            f"a partition of {parent.qualified} detached and kept by `kronos-db partitions "
            "rotate` (retention_action = detach)",
        ),
        (
            f"{RETIRED_MARK}{parent.qualified}:",
            f"a partition of {parent.qualified} detached by `kronos-db partitions rotate`, "
            "its retirement pending (the next run finishes it)",
        ),
    ):
        with conn.cursor(row_factory=class_row(_RetiredTable)) as cur:
            rows = cur.execute(query("partitions", "select_retired_tables"), {"prefix": prefix})
            kept += [KeptTable(table.schema, table.name, why) for table in rows]
    template = partman.template_table(conn, settings.table)
    if template is not None:
        schema, _, name = template.partition(".")
        kept.append(
            KeptTable(
                schema,
                name,
                f"pg_partman's template table for {parent.qualified} "
                "(`kronos-db partitions adopt`)",
            )
        )
    return kept


def resolve_policy(conn: psycopg.Connection[Any], settings: PartitionSettings) -> Policy:
    """The policy in force: pg_partman's part_config when that backend applies, else ours."""
    if settings.backend == "native":
        return native_policy(settings)
    config = partman.table_config(conn, settings.table)
    if config is None:
        if settings.backend == "partman":
            raise UsageError(
                f"backend = partman but {settings.table} is not registered with pg_partman; "
                "run `kronos-db partitions adopt --backend partman` first"
            )
        return native_policy(settings)
    return config.policy(settings)
