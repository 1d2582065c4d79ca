"""Sequences: headroom before an id runs out, against the sequence's maximum and its column's
type (the ``serial`` columns of the Kronos schema are int4: 2,147,483,647 ids)."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from kronos_db.reports.runner import Limits, fetch
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
