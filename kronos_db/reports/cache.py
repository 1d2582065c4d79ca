"""Cache: the shared buffer hit rate of tables and indexes (the OS page cache is not seen)."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from kronos_db.reports.runner import Limits, fetch
from kronos_db.resources import query


@dataclasses.dataclass(frozen=True)
class HitRate:
    kind: str  # tables or indexes
    hits: int
    reads: int
    hit_percent: float | None  # None: no block accessed yet


@dataclasses.dataclass(frozen=True)
class TableHitRate:
    schema_name: str
    table_name: str
    hits: int
    reads: int
    hit_percent: float | None


@dataclasses.dataclass(frozen=True)
class CacheReport:
    rates: tuple[HitRate, ...]
    tables: tuple[TableHitRate, ...]


def hit_rates(conn: psycopg.Connection[Any], limits: Limits) -> list[HitRate]:
    return fetch(conn, query("reports_cache", "select_cache_hit_rates"), {}, HitRate, limits)


def cache_report(conn: psycopg.Connection[Any], limits: Limits, *, limit: int = 20) -> CacheReport:
    tables = fetch(
        conn,
        query("reports_cache", "select_table_cache_hit_rates"),
        {"limit": limit},
        TableHitRate,
        limits,
    )
    return CacheReport(tuple(hit_rates(conn, limits)), tuple(tables))
