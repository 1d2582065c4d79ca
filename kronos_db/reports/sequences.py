"""Sequences: headroom before an id runs out, against the sequence's maximum and its column's
type (the ``serial`` columns of the Kronos schema are int4: 2,147,483,647 ids)."""

from __future__ import annotations

import dataclasses
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
)
from kronos_db.config import Settings
from kronos_db.resources import query

READ_HINT = (
    "the role may not read some sequences: GRANT SELECT ON ALL SEQUENCES IN SCHEMA "
    "public TO <role> (pg_monitor alone does not give it)"
)


@dataclasses.dataclass(frozen=True)
class SequenceHeadroom:
    schema_name: str
    sequence_name: str
    table_name: str
    column_name: str
    column_type: str
    sequence_type: str
    increment_by: int
    last_value: int | None
    effective_limit: str  # numeric: may exceed bigint's range when negative limits mix
    limited_by: str  # "sequence" or "column type"
    cycle: bool
    readable: bool
    used_percent: float | None  # None: the role may not read the sequence
    values_left: str | None


def sequence_headroom(conn: psycopg.Connection[Any], limits: Limits) -> list[SequenceHeadroom]:
    return fetch(
        conn, query("reports_sequences", "select_sequence_headroom"), {}, SequenceHeadroom, limits
    )


# ----------------------------------------------------------------------------- check


def sequence_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "sequence"),)


def _widen_sql(row: SequenceHeadroom) -> str:
    sequence = quote_identifier(row.schema_name, row.sequence_name)
    if not row.table_name or row.column_type == "bigint":
        return f"ALTER SEQUENCE {sequence} AS bigint;" if row.sequence_type != "bigint" else ""
    table = quote_identifier(row.schema_name, row.table_name)
    column = quote_identifier(row.column_name)
    return (
        f"-- rewrites the table under an ACCESS EXCLUSIVE lock: plan it (or add a bigint column "
        f"and backfill it)\nALTER TABLE {table} ALTER COLUMN {column} TYPE bigint;\n"
        f"ALTER SEQUENCE {sequence} AS bigint;"
    )


def check_sequences(ctx: Context) -> Outcome:
    """The fullest sequence against its effective limit (its own maximum or its column
    type's); a role that may not read the sequences cannot know: UNKNOWN."""
    (threshold,) = sequence_thresholds(ctx.settings)
    rows = sequence_headroom(ctx.conn, ctx.limits)
    readable = [row for row in rows if row.readable]
    unreadable = len(rows) - len(readable)
    if rows and not readable:
        return Outcome(
            Status.UNKNOWN,
            f"cannot read any of the {len(rows)} sequences",
            (Metric("sequences", None, "percent", threshold),),
            hint=READ_HINT,
        )
    top = max(readable, key=lambda row: row.used_percent or 0.0, default=None)
    if top is None:
        return Outcome(Status.OK, "no sequence", (Metric("sequences", 0.0, "percent", threshold),))
    metric = Metric("sequences", top.used_percent or 0.0, "percent", threshold)
    status = metric.grade()
    note = f" ({unreadable} not readable by this role)" if unreadable else ""
    where = f" ({top.table_name}.{top.column_name} {top.column_type})" if top.table_name else ""
    flagged = [row for row in readable if threshold.grade(row.used_percent) is not Status.OK]
    return Outcome(
        status,
        f"fullest sequence {top.schema_name}.{top.sequence_name}{where}: "
        f"{top.used_percent or 0:.1f}% used, limited by its {top.limited_by}{note}",
        (metric,),
        tuple(
            Finding(
                f"sequence {row.schema_name}.{row.sequence_name}",
                f"{row.used_percent or 0:.1f}% of its {row.limited_by}'s limit used"
                + (
                    f" ({row.table_name}.{row.column_name} {row.column_type})"
                    if row.table_name
                    else ""
                ),
                _widen_sql(row),
            )
            for row in flagged
        ),
        READ_HINT
        if unreadable
        else ""
        if status is Status.OK
        else "ALTER the column (and sequence) to bigint before it runs out",
        tuple(flagged) or (top,),
    )
