"""Indexes: unused, duplicate and redundant, invalid; foreign keys without an index; tables read
mostly by sequential scans (missing index candidates)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import psycopg

from kronos_db.checks import (
    ANY,
    Context,
    Finding,
    Limits,
    Metric,
    Outcome,
    Status,
    fetch,
    quote_identifier,
)
from kronos_db.resources import query
from kronos_db.units import human_size


@dataclasses.dataclass(frozen=True)
class UnusedIndex:
    schema_name: str
    table_name: str
    index_name: str
    bytes: int
    scans: int
    definition: str


@dataclasses.dataclass(frozen=True)
class DuplicateIndex:
    schema_name: str
    table_name: str
    index_name: str
    covered_by: str
    kind: str  # "duplicate" (same columns) or "prefix" (a leading prefix of covered_by)
    bytes: int
    definition: str
    covering_definition: str


@dataclasses.dataclass(frozen=True)
class InvalidIndex:
    schema_name: str
    table_name: str
    index_name: str
    bytes: int
    definition: str


@dataclasses.dataclass(frozen=True)
class UnindexedForeignKey:
    schema_name: str
    table_name: str
    constraint_name: str
    columns: str
    quoted_columns: str  # as SQL writes them (the fix's CREATE INDEX)
    referenced_table: str
    table_bytes: int


@dataclasses.dataclass(frozen=True)
class SequentialScanTable:
    schema_name: str
    table_name: str
    sequential_scans: int
    rows_read_sequentially: int
    index_scans: int
    live_tuples: int
    index_scan_percent: float | None


@dataclasses.dataclass(frozen=True)
class _StatisticsReset:
    stats_reset: datetime | None


@dataclasses.dataclass(frozen=True)
class IndexReport:
    statistics_reset: datetime | None
    unused: tuple[UnusedIndex, ...]
    duplicates: tuple[DuplicateIndex, ...]
    invalid: tuple[InvalidIndex, ...]
    unindexed_foreign_keys: tuple[UnindexedForeignKey, ...]
    sequential_scan_tables: tuple[SequentialScanTable, ...]


def unused_indexes(conn: psycopg.Connection[Any], limits: Limits) -> list[UnusedIndex]:
    return fetch(conn, query("reports_indexes", "select_unused_indexes"), {}, UnusedIndex, limits)


def statistics_reset(conn: psycopg.Connection[Any], limits: Limits) -> datetime | None:
    rows = fetch(
        conn, query("reports_indexes", "select_statistics_reset"), {}, _StatisticsReset, limits
    )
    return rows[0].stats_reset if rows else None


def duplicate_indexes(conn: psycopg.Connection[Any], limits: Limits) -> list[DuplicateIndex]:
    return fetch(
        conn, query("reports_indexes", "select_duplicate_indexes"), {}, DuplicateIndex, limits
    )


def invalid_indexes(conn: psycopg.Connection[Any], limits: Limits) -> list[InvalidIndex]:
    return fetch(conn, query("reports_indexes", "select_invalid_indexes"), {}, InvalidIndex, limits)


def unindexed_foreign_keys(
    conn: psycopg.Connection[Any], limits: Limits
) -> list[UnindexedForeignKey]:
    return fetch(
        conn,
        query("reports_indexes", "select_unindexed_foreign_keys"),
        {},
        UnindexedForeignKey,
        limits,
    )


def sequential_scan_tables(
    conn: psycopg.Connection[Any],
    limits: Limits,
    *,
    minimum_rows: int = 10_000,
    maximum_index_percent: float = 95.0,
) -> list[SequentialScanTable]:
    return fetch(
        conn,
        query("reports_indexes", "select_sequential_scan_tables"),
        {"minimum_rows": minimum_rows, "maximum_index_percent": maximum_index_percent},
        SequentialScanTable,
        limits,
    )


def index_report(conn: psycopg.Connection[Any], limits: Limits) -> IndexReport:
    return IndexReport(
        statistics_reset=statistics_reset(conn, limits),
        unused=tuple(unused_indexes(conn, limits)),
        duplicates=tuple(duplicate_indexes(conn, limits)),
        invalid=tuple(invalid_indexes(conn, limits)),
        unindexed_foreign_keys=tuple(unindexed_foreign_keys(conn, limits)),
        sequential_scan_tables=tuple(sequential_scan_tables(conn, limits)),
    )


# ----------------------------------------------------------------------------- checks


def _drop_sql(schema: str, index: str) -> str:
    return f"DROP INDEX CONCURRENTLY {quote_identifier(schema, index)};"


def check_invalid_indexes(ctx: Context) -> Outcome:
    """Indexes left INVALID by a failed CREATE INDEX CONCURRENTLY (builds under way aside):
    written on every insert, never used."""
    rows = invalid_indexes(ctx.conn, ctx.limits)
    metric = Metric("invalid_indexes", float(len(rows)), "count", ANY)
    if not rows:
        return Outcome(Status.OK, "no invalid index", (metric,))
    names = ", ".join(f"{row.schema_name}.{row.index_name}" for row in rows)
    return Outcome(
        Status.WARNING,
        f"{len(rows)} invalid index(es): {names}",
        (metric,),
        tuple(
            Finding(
                f"index {row.schema_name}.{row.index_name} on {row.table_name}",
                f"invalid, {human_size(row.bytes)}: {row.definition}",
                _drop_sql(row.schema_name, row.index_name),
            )
            for row in rows
        ),
        "left by a failed CREATE INDEX CONCURRENTLY: written on every "
        "insert, never used. DROP INDEX CONCURRENTLY it, then build it again",
        tuple(rows),
    )


def check_duplicate_indexes(ctx: Context) -> Outcome:
    """Duplicate indexes, and btree indexes whose columns lead another's."""
    rows = duplicate_indexes(ctx.conn, ctx.limits)
    metric = Metric("duplicate_indexes", float(len(rows)), "count", ANY)
    if not rows:
        return Outcome(Status.OK, "no duplicate or redundant index", (metric,))
    names = ", ".join(f"{row.index_name} (covered by {row.covered_by})" for row in rows)
    return Outcome(
        Status.WARNING,
        f"{len(rows)} duplicate or redundant index(es): {names}",
        (metric,),
        tuple(
            Finding(
                f"index {row.schema_name}.{row.index_name} on {row.table_name}",
                f"{'the same as' if row.kind == 'duplicate' else 'a leading prefix of'} "
                f"{row.covered_by}, {human_size(row.bytes)}",
                _drop_sql(row.schema_name, row.index_name),
            )
            for row in rows
        ),
        "DROP INDEX CONCURRENTLY the redundant one",
        tuple(rows),
    )


def check_unused_indexes(ctx: Context) -> Outcome:
    """Non-unique indexes never scanned since the statistics were reset: a WARNING from
    ``unused_index_minimum_bytes`` up."""
    minimum = ctx.settings.health.unused_index_minimum_bytes
    rows = unused_indexes(ctx.conn, ctx.limits)
    large = [row for row in rows if row.bytes >= minimum]
    metric = Metric("unused_indexes", float(len(large)), "count", ANY)
    if not large:
        return Outcome(
            Status.OK,
            f"no unused index of {human_size(minimum)} or "
            f"more ({len(rows)} smaller one(s) never scanned)",
            (metric,),
            data=tuple(rows),
        )
    total = sum(row.bytes for row in large)
    names = ", ".join(row.index_name for row in large[:5])
    return Outcome(
        Status.WARNING,
        f"{len(large)} unused index(es), {human_size(total)}: {names}",
        (metric,),
        tuple(
            Finding(
                f"index {row.schema_name}.{row.index_name} on {row.table_name}",
                f"never scanned, {human_size(row.bytes)}: {row.definition}",
                _drop_sql(row.schema_name, row.index_name),
            )
            for row in large
        ),
        "never scanned since the statistics were reset "
        "(check the standbys too before dropping one)",
        tuple(large),
    )


def check_unindexed_foreign_keys(ctx: Context) -> Outcome:
    """Foreign keys whose columns lead no valid, non-partial index."""
    rows = unindexed_foreign_keys(ctx.conn, ctx.limits)
    metric = Metric("unindexed_foreign_keys", float(len(rows)), "count", ANY)
    if not rows:
        return Outcome(Status.OK, "every foreign key has an index", (metric,))
    names = ", ".join(f"{row.table_name}({row.columns})" for row in rows)
    return Outcome(
        Status.WARNING,
        f"{len(rows)} foreign key(s) without an index: {names}",
        (metric,),
        tuple(
            Finding(
                f"foreign key {row.constraint_name} on {row.schema_name}.{row.table_name}",
                f"({row.columns}) references {row.referenced_table}; "
                f"the table holds {human_size(row.table_bytes)}",
                f"CREATE INDEX CONCURRENTLY ON "
                f"{quote_identifier(row.schema_name, row.table_name)} ({row.quoted_columns});",
            )
            for row in rows
        ),
        "a DELETE on the referenced table scans the "
        "referencing one: CREATE INDEX CONCURRENTLY on the columns",
        tuple(rows),
    )
