"""Space: the largest tables and indexes, and the database's size."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from kronos_db.checks import Limits, fetch, fetch_one
from kronos_db.resources import query


@dataclasses.dataclass(frozen=True)
class TableSize:
    schema_name: str
    table_name: str
    kind: str
    total_bytes: int
    table_bytes: int
    index_bytes: int
    toast_bytes: int
    estimated_rows: int


@dataclasses.dataclass(frozen=True)
class IndexSize:
    schema_name: str
    table_name: str
    index_name: str
    bytes: int


@dataclasses.dataclass(frozen=True)
class DatabaseSize:
    database_name: str
    bytes: int


@dataclasses.dataclass(frozen=True)
class SpaceReport:
    database: DatabaseSize
    tables: tuple[TableSize, ...]
    indexes: tuple[IndexSize, ...]


def largest_tables(
    conn: psycopg.Connection[Any], limits: Limits, *, limit: int = 20
) -> list[TableSize]:
    return fetch(
        conn, query("reports_space", "select_largest_tables"), {"limit": limit}, TableSize, limits
    )


def largest_indexes(
    conn: psycopg.Connection[Any], limits: Limits, *, limit: int = 20
) -> list[IndexSize]:
    return fetch(
        conn, query("reports_space", "select_largest_indexes"), {"limit": limit}, IndexSize, limits
    )


def database_size(conn: psycopg.Connection[Any], limits: Limits) -> DatabaseSize:
    return fetch_one(conn, query("reports_space", "select_database_size"), {}, DatabaseSize, limits)


def space_report(conn: psycopg.Connection[Any], limits: Limits, *, limit: int = 20) -> SpaceReport:
    return SpaceReport(
        database=database_size(conn, limits),
        tables=tuple(largest_tables(conn, limits, limit=limit)),
        indexes=tuple(largest_indexes(conn, limits, limit=limit)),
    )
