"""What a database holds before kronos-db takes it over, read from the catalogs in one go.

:func:`inspect` returns a :class:`LiveState`: the Kronos tables with their columns,
constraints, indexes and triggers, the schema's functions and sequences, the size statistics the
estimates use, and the kronos-db history if any. Every adoption step decides whether it is done
from this snapshot alone, so the adoption is re-planned from the catalogs before each step (a run
killed anywhere is resumed by the next one). Reading it is a handful of catalog queries: a few
milliseconds, no table scan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
from psycopg.rows import class_row

from kronos_db import migrations
from kronos_db.migrations import KRONOS_TABLES
from kronos_db.resources import query


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    oid: int
    kind: str  # r: a table, p: a partitioned table
    owner: str
    row_estimate: int
    total_bytes: int
    default_partition: str
    analyzed: bool
    comment: str


@dataclasses.dataclass(frozen=True)
class Column:
    table_name: str
    name: str
    type: str
    not_null: bool
    default_expression: str
    identity: str  # '' none, 'a' always, 'd' by default
    comment: str


@dataclasses.dataclass(frozen=True)
class Constraint:
    table_name: str
    name: str
    kind: str  # c check, f foreign key, p primary key, u unique, x exclusion
    validated: bool
    definition: str
    on_delete: str  # for a foreign key: a no action, c cascade…


@dataclasses.dataclass(frozen=True)
class Index:
    table_name: str
    name: str
    valid: bool
    is_unique: bool
    definition: str


@dataclasses.dataclass(frozen=True)
class Trigger:
    table_name: str
    name: str


@dataclasses.dataclass(frozen=True)
class Sequence:
    name: str
    owned_by_table: str
    owned_by_column: str
    dependency: str  # a: serial (auto), i: identity (internal), '': free-standing
    data_type: str
    last_value: int | None


@dataclasses.dataclass(frozen=True)
class DatabaseFacts:
    session_time_zone: str
    database_time_zone: str
    has_version_table: bool
    has_checksum_table: bool
    public_can_create: bool
    statements_available: bool
    statements_installed: bool


@dataclasses.dataclass(frozen=True)
class _Name:
    name: str


@dataclasses.dataclass(frozen=True)
class LiveState:
    """The catalog as the adoption sees it. Lookups answer ``None`` for what does not exist."""

    tables: dict[str, Table]
    columns: dict[tuple[str, str], Column]
    constraints: dict[tuple[str, str], Constraint]
    indexes: dict[str, Index]
    triggers: frozenset[tuple[str, str]]
    functions: frozenset[str]
    sequences: dict[str, Sequence]
    database: DatabaseFacts
    current_revisions: tuple[str, ...]
    recorded_revisions: tuple[str, ...]

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)

    def column(self, table: str, name: str) -> Column | None:
        return self.columns.get((table, name))

    def constraint(self, table: str, name: str) -> Constraint | None:
        return self.constraints.get((table, name))

    def index(self, name: str) -> Index | None:
        return self.indexes.get(name)

    def has_trigger(self, table: str, name: str) -> bool:
        return (table, name) in self.triggers

    def columns_of(self, table: str) -> list[Column]:
        return [c for (t, _), c in self.columns.items() if t == table]

    def rows(self, table: str) -> int:
        found = self.tables.get(table)
        return found.row_estimate if found else 0

    def bytes(self, table: str) -> int:
        found = self.tables.get(table)
        return found.total_bytes if found else 0

    @property
    def missing_tables(self) -> tuple[str, ...]:
        return tuple(name for name in KRONOS_TABLES if name not in self.tables)

    @property
    def commented(self) -> bool:
        """Every Kronos table says which service owns it (the revisions' comments are on)."""
        return all(
            (found := self.tables.get(name)) is not None and bool(found.comment)
            for name in KRONOS_TABLES
        )

    @property
    def logs_partitioned(self) -> bool:
        logs = self.tables.get("logs")
        return logs is not None and logs.kind == "p"

    @property
    def managed(self) -> bool:
        """kronos-db's history says where the database is, and kronos-db wrote it."""
        return bool(self.current_revisions) and bool(self.recorded_revisions)


def _rows(conn: psycopg.Connection[Any], row_type: type[Any], name: str) -> list[Any]:
    with conn.cursor(row_factory=class_row(row_type)) as cur:
        return cur.execute(query("adopt", name), {"tables": list(_ALL_TABLES)}).fetchall()


# the Kronos tables, logs_default (the old logs once it is the default partition), and the
# tables revision 0010 adds
_ALL_TABLES = (
    *KRONOS_TABLES,
    "logs_default",
    "kronos_stat_snapshots",
    "kronos_statement_snapshots",
    "kronos_table_snapshots",
)


def inspect(conn: psycopg.Connection[Any]) -> LiveState:
    """Read the catalog (a few queries, no table scan)."""
    tables = _rows(conn, Table, "select_adoption_tables")
    columns = _rows(conn, Column, "select_adoption_columns")
    constraints = _rows(conn, Constraint, "select_adoption_constraints")
    indexes = _rows(conn, Index, "select_adoption_indexes")
    triggers = _rows(conn, Trigger, "select_adoption_triggers")
    with conn.cursor(row_factory=class_row(_Name)) as cur:
        functions = cur.execute(query("adopt", "select_adoption_functions")).fetchall()
    with conn.cursor(row_factory=class_row(Sequence)) as cur:
        sequences = cur.execute(query("adopt", "select_adoption_sequences")).fetchall()
    with conn.cursor(row_factory=class_row(DatabaseFacts)) as cur:
        database = cur.execute(query("adopt", "select_database_facts")).fetchone()
    assert database is not None
    current = migrations.current_revisions(conn)
    recorded: tuple[str, ...] = ()
    if database.has_checksum_table:
        recorded = tuple(
            row[0] for row in conn.execute(query("adopt", "select_recorded_checksums"))
        )
    return LiveState(
        tables={t.name: t for t in tables},
        columns={(c.table_name, c.name): c for c in columns},
        constraints={(c.table_name, c.name): c for c in constraints},
        indexes={i.name: i for i in indexes},
        triggers=frozenset((t.table_name, t.name) for t in triggers),
        functions=frozenset(f.name for f in functions),
        sequences={s.name: s for s in sequences},
        database=database,
        current_revisions=current,
        recorded_revisions=recorded,
    )


@dataclasses.dataclass(frozen=True)
class Grant:
    grantee: str  # '' is PUBLIC
    privilege_type: str
    is_grantable: bool


def relation_grants(conn: psycopg.Connection[Any], name: str) -> list[Grant]:
    """What was granted on a table or sequence, beyond its owner's own rights."""
    with conn.cursor(row_factory=class_row(Grant)) as cur:
        return cur.execute(query("adopt", "select_relation_grants"), {"name": name}).fetchall()


def column_grants(conn: psycopg.Connection[Any], table: str, column: str) -> list[Grant]:
    with conn.cursor(row_factory=class_row(Grant)) as cur:
        return cur.execute(
            query("adopt", "select_column_grants"), {"table": table, "column": column}
        ).fetchall()


@dataclasses.dataclass(frozen=True)
class Dependent:
    kind: str
    name: str


def dependents(conn: psycopg.Connection[Any], table: str) -> list[Dependent]:
    """Views, foreign keys, publications and policies that hang on ``table``."""
    with conn.cursor(row_factory=class_row(Dependent)) as cur:
        return cur.execute(query("adopt", "select_dependent_objects"), {"table": table}).fetchall()


@dataclasses.dataclass(frozen=True)
class ReferencingKey:
    table_name: str
    column_name: str
    constraint_name: str


def referencing_keys(conn: psycopg.Connection[Any], table: str) -> list[ReferencingKey]:
    """The single-column foreign keys of other tables that point at ``table``."""
    with conn.cursor(row_factory=class_row(ReferencingKey)) as cur:
        return cur.execute(query("adopt", "select_referencing_keys"), {"table": table}).fetchall()


def canonical_time_zone(conn: psycopg.Connection[Any], zone: str) -> str | None:
    """The server's own spelling of ``zone``, or None when the server does not know it."""
    row = conn.execute(query("adopt", "select_time_zone"), {"zone": zone}).fetchone()
    return str(row[0]) if row else None
