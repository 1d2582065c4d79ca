"""Maintenance: vacuum and dead tuples, wraparound headroom (transaction IDs and multixacts),
what holds back the xmin horizon, estimated bloat, tables never vacuumed or analyzed; and
their checks."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import psycopg

from kronos_db.checks import (
    Context,
    Finding,
    Limits,
    Metric,
    Outcome,
    Status,
    Threshold,
    fetch,
    health_threshold,
    quote_identifier,
    quote_literal,
    worst,
)
from kronos_db.config import Settings
from kronos_db.resources import query
from kronos_db.units import human_seconds, human_size


@dataclasses.dataclass(frozen=True)
class VacuumStats:
    schema_name: str
    table_name: str
    live_tuples: int
    dead_tuples: int
    dead_percent: float | None
    modified_since_analyze: int
    last_vacuum: datetime | None
    last_autovacuum: datetime | None
    last_analyze: datetime | None
    last_autoanalyze: datetime | None
    vacuum_count: int
    autovacuum_enabled: bool
    autovacuum_trigger: int

    @property
    def vacuum_overdue(self) -> bool:
        """More dead tuples than autovacuum's trigger: it is off, lagging or blocked."""
        return self.dead_tuples > self.autovacuum_trigger


@dataclasses.dataclass(frozen=True)
class DatabaseWraparound:
    database_name: str
    xid_age: int
    multixact_age: int
    xid_percent: float
    multixact_percent: float
    freeze_max_age: int
    multixact_freeze_max_age: int


@dataclasses.dataclass(frozen=True)
class TableWraparound:
    schema_name: str
    table_name: str
    xid_age: int
    multixact_age: int
    xid_percent: float
    multixact_percent: float
    bytes: int


@dataclasses.dataclass(frozen=True)
class XminHolder:
    kind: str  # session, replication slot, prepared transaction, standby feedback
    name: str
    role_name: str
    application_name: str
    state: str
    xid_age: int | None
    seconds: float | None
    detail: str


@dataclasses.dataclass(frozen=True)
class BloatEstimate:
    schema_name: str
    table_name: str  # for an index: "table.index"
    kind: str  # table or index
    bytes: int
    bloat_bytes: int
    bloat_percent: float
    fillfactor: int
    unreliable_reason: str  # empty when the estimate can be trusted

    @property
    def reliable(self) -> bool:
        return not self.unreliable_reason


@dataclasses.dataclass(frozen=True)
class UnmaintainedTable:
    schema_name: str
    table_name: str
    bytes: int
    live_tuples: int
    never_vacuumed: bool
    never_analyzed: bool
    statistics_reset: datetime | None


@dataclasses.dataclass(frozen=True)
class VacuumReport:
    tables: tuple[VacuumStats, ...]
    databases: tuple[DatabaseWraparound, ...]
    oldest_tables: tuple[TableWraparound, ...]
    xmin_holders: tuple[XminHolder, ...]


def vacuum_stats(
    conn: psycopg.Connection[Any], limits: Limits, *, limit: int = 50
) -> list[VacuumStats]:
    return fetch(
        conn,
        query("reports_maintenance", "select_vacuum_stats"),
        {"limit": limit},
        VacuumStats,
        limits,
    )


def database_wraparound(conn: psycopg.Connection[Any], limits: Limits) -> list[DatabaseWraparound]:
    return fetch(
        conn,
        query("reports_maintenance", "select_database_wraparound"),
        {},
        DatabaseWraparound,
        limits,
    )


def table_wraparound(
    conn: psycopg.Connection[Any], limits: Limits, *, limit: int = 10
) -> list[TableWraparound]:
    return fetch(
        conn,
        query("reports_maintenance", "select_table_wraparound"),
        {"limit": limit},
        TableWraparound,
        limits,
    )


def xmin_holders(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime, all_databases: bool = False
) -> list[XminHolder]:
    return fetch(
        conn,
        query("reports_maintenance", "select_xmin_holders"),
        {"now": now, "all_databases": all_databases},
        XminHolder,
        limits,
    )


def vacuum_report(
    conn: psycopg.Connection[Any], limits: Limits, *, now: datetime, limit: int = 50
) -> VacuumReport:
    return VacuumReport(
        tables=tuple(vacuum_stats(conn, limits, limit=limit)),
        databases=tuple(database_wraparound(conn, limits)),
        oldest_tables=tuple(table_wraparound(conn, limits)),
        xmin_holders=tuple(xmin_holders(conn, limits, now=now)),
    )


def bloat(
    conn: psycopg.Connection[Any], limits: Limits, *, minimum_bytes: int = 10 * 1024 * 1024
) -> list[BloatEstimate]:
    """Estimated table and btree index bloat, largest first; tables below ``minimum_bytes``
    are skipped (an estimate on a few pages is noise)."""
    params = {"minimum_bytes": minimum_bytes}
    tables = fetch(
        conn, query("reports_maintenance", "select_table_bloat"), params, BloatEstimate, limits
    )
    indexes = fetch(
        conn, query("reports_maintenance", "select_index_bloat"), params, BloatEstimate, limits
    )
    return sorted(
        tables + indexes, key=lambda row: (-row.bloat_bytes, row.schema_name, row.table_name)
    )


def unmaintained_tables(
    conn: psycopg.Connection[Any], limits: Limits, *, minimum_bytes: int
) -> list[UnmaintainedTable]:
    """Tables of ``minimum_bytes`` or more never vacuumed or never analyzed, largest first."""
    return fetch(
        conn,
        query("reports_maintenance", "select_unmaintained_tables"),
        {"minimum_bytes": minimum_bytes},
        UnmaintainedTable,
        limits,
    )


# ----------------------------------------------------------------------------- checks


def xmin_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "xmin_horizon"),)


def _release_sql(holder: XminHolder) -> str:
    if holder.kind == "session":
        return f"SELECT pg_terminate_backend({holder.name});"
    if holder.kind == "replication slot":
        return f"SELECT pg_drop_replication_slot({quote_literal(holder.name)});"
    if holder.kind == "prepared transaction":
        return f"ROLLBACK PREPARED {quote_literal(holder.name)};"
    return ""  # a standby's feedback: on the standby, end its long query


def check_xmin_horizon(ctx: Context) -> Outcome:
    """What holds back the xmin horizon (vacuum cannot remove rows deleted after it): old
    snapshots and transactions, slots (an inactive one holding xmin), prepared transactions,
    standbys' feedback."""
    (threshold,) = xmin_thresholds(ctx.settings)
    rows = xmin_holders(ctx.conn, ctx.limits, now=ctx.now)
    timed = [row for row in rows if row.seconds is not None]
    longest = max((row.seconds or 0.0 for row in timed), default=0.0)
    metric = Metric("xmin_horizon", longest, "seconds", threshold)
    status = metric.grade()
    inactive_slots = [
        row for row in rows if row.kind == "replication slot" and row.state == "inactive"
    ]
    if inactive_slots:
        status = worst([status, Status.WARNING])
    if status is Status.OK:
        return Outcome(
            Status.OK, "nothing holds the xmin horizon back for long", (metric,), data=tuple(rows)
        )
    oldest = max(timed, key=lambda row: row.seconds or 0.0, default=None)
    parts = []
    if oldest is not None and threshold.reached(longest, threshold.warning):
        parts.append(f"{oldest.kind} {oldest.name} holds it for {human_seconds(longest)}")
    if inactive_slots:
        parts.append(f"inactive replication slot(s) {', '.join(r.name for r in inactive_slots)}")
    flagged = [
        row
        for row in rows
        if row in inactive_slots or threshold.reached(row.seconds, threshold.warning)
    ]
    return Outcome(
        status,
        "xmin horizon held back: " + "; ".join(parts),
        (metric,),
        tuple(
            Finding(
                f"{row.kind} {row.name}",
                (f"holds it for {human_seconds(row.seconds)}" if row.seconds else row.state)
                + (f", xmin age {row.xid_age:,}" if row.xid_age else ""),
                _release_sql(row),
                row.detail if row.kind == "session" else "",
            )
            for row in flagged
        ),
        "vacuum cannot remove rows deleted after that point; end the transaction or "
        "drop the unused slot",
        tuple(rows),
    )


def wraparound_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "wraparound"),)


def _wraparound(ctx: Context, *, multixact: bool) -> Outcome:
    (threshold,) = wraparound_thresholds(ctx.settings)
    rows = database_wraparound(ctx.conn, ctx.limits)
    if multixact:
        top = max(rows, key=lambda row: row.multixact_percent, default=None)
        value = top.multixact_percent if top else 0.0
        age = top.multixact_age if top else 0
        what, name = "multixact IDs", "multixact_wraparound"
    else:
        top = max(rows, key=lambda row: row.xid_percent, default=None)
        value = top.xid_percent if top else 0.0
        age = top.xid_age if top else 0
        what, name = "transaction IDs", "transaction_wraparound"
    metric = Metric(name, value, "percent", threshold)
    status = metric.grade()
    tables = table_wraparound(ctx.conn, ctx.limits, limit=5)
    where = top.database_name if top else "?"
    findings = (
        tuple(
            Finding(
                f"table {table.schema_name}.{table.table_name}",
                f"{table.multixact_percent if multixact else table.xid_percent:.1f}% used "
                f"(age {table.multixact_age if multixact else table.xid_age:,}), "
                f"{human_size(table.bytes)}",
                "VACUUM (FREEZE, VERBOSE) "
                f"{quote_identifier(table.schema_name, table.table_name)};",
            )
            for table in tables
        )
        if status is not Status.OK
        else ()
    )
    return Outcome(
        status,
        f"{value:.1f}% of {what} used before wraparound (age {age:,} in {where})",
        (metric,),
        findings,
        ""
        if status is Status.OK
        else "run VACUUM (FREEZE) on the oldest tables; check what blocks autovacuum",
        (*rows, *tables),
    )


def check_transaction_wraparound(ctx: Context) -> Outcome:
    return _wraparound(ctx, multixact=False)


def check_multixact_wraparound(ctx: Context) -> Outcome:
    return _wraparound(ctx, multixact=True)


def dead_tuple_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "dead_tuples"),)


def _vacuum_sql(schema: str, table: str) -> str:
    return f"VACUUM (ANALYZE, VERBOSE) {quote_identifier(schema, table)};"


def check_dead_tuples(ctx: Context) -> Outcome:
    """Per table, dead tuples as a share of its rows, once a table has enough of them."""
    (threshold,) = dead_tuple_thresholds(ctx.settings)
    minimum = ctx.settings.health.dead_tuples_minimum
    rows = vacuum_stats(ctx.conn, ctx.limits, limit=1000)
    flagged = [
        (threshold.grade(row.dead_percent), row)
        for row in rows
        if row.dead_tuples >= minimum and threshold.grade(row.dead_percent) is not Status.OK
    ]
    if not flagged:
        # the figure judged: a table below the minimum is not judged, whatever its share
        top = max(
            (row.dead_percent or 0.0 for row in rows if row.dead_tuples >= minimum), default=0.0
        )
        return Outcome(
            Status.OK,
            "no table with many dead tuples",
            (Metric("dead_tuples", top, "percent", threshold),),
        )
    worst_row = max((row for _, row in flagged), key=lambda row: row.dead_percent or 0.0)
    off = [
        f"{row.schema_name}.{row.table_name}" for _, row in flagged if not row.autovacuum_enabled
    ]
    summary = (
        f"{len(flagged)} table(s) with many dead tuples; worst "
        f"{worst_row.schema_name}.{worst_row.table_name}: {worst_row.dead_tuples:,} dead "
        f"({worst_row.dead_percent or 0:.0f}%)"
    )
    if off:
        summary += f"; autovacuum disabled on {', '.join(off)}"
    return Outcome(
        worst([status for status, _ in flagged]),
        summary,
        (Metric("dead_tuples", worst_row.dead_percent, "percent", threshold),),
        tuple(
            Finding(
                f"table {row.schema_name}.{row.table_name}",
                f"{row.dead_tuples:,} dead tuples ({row.dead_percent or 0:.0f}% of its rows)"
                + ("; autovacuum is disabled on it" if not row.autovacuum_enabled else ""),
                _vacuum_sql(row.schema_name, row.table_name),
            )
            for _, row in flagged
        ),
        "VACUUM the table; if autovacuum is on, see what holds the xmin horizon",
        tuple(row for _, row in flagged),
    )


def bloat_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "bloat"),)


def _bloat_fix(row: BloatEstimate) -> str:
    if row.kind == "index":
        index = row.table_name.split(".", 1)[-1]
        return f"REINDEX INDEX CONCURRENTLY {quote_identifier(row.schema_name, index)};"
    return ""  # a table: pg_repack (online), or VACUUM FULL in a maintenance window


def check_bloat(ctx: Context) -> Outcome:
    """Estimated table and btree index bloat; an estimate that cannot be trusted (statistics
    missing, stale, or not readable by this role) is never graded, and when nothing else is
    wrong the check says it cannot know (UNKNOWN) rather than OK."""
    (threshold,) = bloat_thresholds(ctx.settings)
    rows = bloat(ctx.conn, ctx.limits, minimum_bytes=ctx.settings.health.bloat_minimum_bytes)
    reliable = [row for row in rows if row.reliable]
    unreliable = [row for row in rows if not row.reliable]
    flagged = [
        (threshold.grade(row.bloat_percent), row)
        for row in reliable
        if threshold.grade(row.bloat_percent) is not Status.OK
    ]
    unsure = tuple(
        Finding(
            f"{row.kind} {row.schema_name}.{row.table_name}",
            f"{human_size(row.bytes)}, estimate not trusted: {row.unreliable_reason}",
            ""
            if "not readable" in row.unreliable_reason
            else f"ANALYZE {quote_identifier(row.schema_name, row.table_name.split('.')[0])};",
        )
        for row in unreliable
    )
    note = (
        f" ({len(unreliable)} estimate(s) not trusted: statistics missing, stale or not readable)"
        if unreliable
        else ""
    )
    unreadable = any("not readable" in row.unreliable_reason for row in unreliable)
    unsure_hint = (
        "GRANT SELECT ON the tables TO <role> (pg_stats hides a table's statistics from a "
        "role that cannot read it), "
        if unreadable
        else ""
    ) + "ANALYZE the tables listed, then check again"
    if not flagged:
        top = max((row.bloat_percent for row in reliable), default=0.0)
        metric = Metric("bloat", top, "percent", threshold)
        if unreliable:
            return Outcome(
                Status.UNKNOWN,
                f"cannot judge the bloat of {len(unreliable)} relation(s): their estimates "
                "are not trusted (statistics missing, stale or not readable by this role)",
                (metric,),
                unsure,
                unsure_hint,
                tuple(rows),
            )
        return Outcome(
            Status.OK, "no table or index over the bloat threshold", (metric,), data=tuple(rows)
        )
    worst_row = max((row for _, row in flagged), key=lambda row: row.bloat_bytes)
    return Outcome(
        worst([status for status, _ in flagged]),
        f"{len(flagged)} relation(s) bloated; worst {worst_row.schema_name}."
        f"{worst_row.table_name}: ~{human_size(worst_row.bloat_bytes)} "
        f"({worst_row.bloat_percent:.0f}%){note}",
        (Metric("bloat", worst_row.bloat_percent, "percent", threshold),),
        tuple(
            Finding(
                f"{row.kind} {row.schema_name}.{row.table_name}",
                f"~{human_size(row.bloat_bytes)} of {human_size(row.bytes)} "
                f"({row.bloat_percent:.0f}%) estimated bloat",
                _bloat_fix(row),
            )
            for _, row in flagged
        )
        + unsure,
        "an estimate: confirm with pgstattuple before REINDEX CONCURRENTLY or pg_repack",
        tuple(row for _, row in flagged),
    )


def unmaintained_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "unmaintained_table"),)


def check_unmaintained_tables(ctx: Context) -> Outcome:
    """Tables above a size never vacuumed or never analyzed: autovacuum is off, lagging or
    blocked for them (or the statistics were reset, which a VACUUM (ANALYZE) settles)."""
    (threshold,) = unmaintained_thresholds(ctx.settings)
    minimum = int(threshold.warning or 0)
    rows = unmaintained_tables(ctx.conn, ctx.limits, minimum_bytes=minimum)
    largest = max((row.bytes for row in rows), default=0)
    metric = Metric("unmaintained_tables", float(largest), "bytes", threshold)
    status = metric.grade()
    if not rows:
        return Outcome(
            Status.OK,
            f"every table of {human_size(minimum)} or more was vacuumed and analyzed",
            (metric,),
        )

    def never(row: UnmaintainedTable) -> str:
        return " nor ".join(
            word
            for word, flag in (("vacuumed", row.never_vacuumed), ("analyzed", row.never_analyzed))
            if flag
        )

    reset = rows[0].statistics_reset
    since = f" since the statistics were reset ({reset:%Y-%m-%d %H:%M %Z})" if reset else ""
    top = rows[0]
    return Outcome(
        status,
        f"{len(rows)} table(s) never vacuumed or analyzed{since}; the largest "
        f"{top.schema_name}.{top.table_name} ({human_size(top.bytes)}) never {never(top)}",
        (metric,),
        tuple(
            Finding(
                f"table {row.schema_name}.{row.table_name}",
                f"{human_size(row.bytes)}, ~{row.live_tuples:,} rows, never {never(row)}",
                _vacuum_sql(row.schema_name, row.table_name),
            )
            for row in rows
        ),
        "never analyzed: the planner guesses its row counts; never vacuumed: no visibility map "
        "(no index-only scans) and a whole-table freeze ahead. Is autovacuum on "
        "(`kronos-db report settings`), or blocked (xmin_horizon)?",
        tuple(rows),
    )
