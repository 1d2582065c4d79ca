"""Indexes: unused, duplicate and redundant, invalid; foreign keys without an index; tables read
mostly by sequential scans (missing index candidates)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import psycopg

from kronos_db.reports.runner import Limits, fetch
from kronos_db.resources import query


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
