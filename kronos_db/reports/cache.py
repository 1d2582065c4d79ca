"""Cache: the shared buffer hit rate of tables and indexes (the OS page cache is not seen)."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from kronos_db.checks import (
    Context,
    Limits,
    Metric,
    Outcome,
    Status,
    Threshold,
    fetch,
    health_threshold,
)
from kronos_db.config import Settings
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


# ----------------------------------------------------------------------------- check


def cache_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "cache_hit", direction="below"),)


def check_cache_hit_rate(ctx: Context) -> Outcome:
    """The shared buffer hit rate of tables and of indexes, once enough blocks were read."""
    minimum = ctx.settings.health.cache_minimum_reads
    rates = hit_rates(ctx.conn, ctx.limits)
    judged = [
        rate for rate in rates if rate.hit_percent is not None and rate.hits + rate.reads >= minimum
    ]
    (threshold,) = cache_thresholds(ctx.settings)
    if not judged:
        return Outcome(
            Status.OK,
            "too few block accesses yet to judge the cache hit rate",
            (Metric("cache_hit_rate", None, "percent", threshold),),
            data=tuple(rates),
        )
    lowest = min(judged, key=lambda rate: rate.hit_percent or 0.0)
    metric = Metric("cache_hit_rate", lowest.hit_percent, "percent", threshold)
    status = metric.grade()
    shown = ", ".join(f"{rate.kind} {rate.hit_percent:.1f}%" for rate in judged)
    return Outcome(
        status,
        f"buffer cache hit rate: {shown}",
        (metric,),
        hint=""
        if status is Status.OK
        else "the working set does not fit in shared_buffers: more memory, or fewer/larger scans",
        data=tuple(rates),
    )
