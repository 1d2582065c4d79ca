"""The plan: what a rotation would do, step by step (:class:`Action`), from the catalog and the
policy at ``now`` — strays to adopt, default rows to rescue, partitions to create ahead, old ones
to retire. Read-only: ``partitions status`` shows it, :mod:`kronos_db.partitions.rotation` runs
it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from kronos_db.durations import format_duration
from kronos_db.partitions.catalog import (
    DEFAULT_ROW_COUNT_CAP,
    RETIRED_MARK,
    ParentTable,
    Partition,
    Policy,
    Stray,
    _count,
    _default_buckets,
    _default_rows_between,
    _has_legacy_guard,
    _legacy_guard,
    _relation_exists,
    _retired_tables,
    _StrayRow,
    _unless_denied,
    list_partitions,
)
from kronos_db.partitions.naming import (
    _iso,
    _name_lower_bound,
    _utc,
    add_intervals,
    floor_time,
    partition_name,
)
from kronos_db.resources import query

ActionKind = Literal["finalize", "resume", "adopt", "rescue", "create", "retire", "unguard"]


# What each kind of step locks, for -v (docs/partitions.md has the whole budget)
STEP_LOCKS: dict[str, str] = {
    "create": "ACCESS SHARE on the parent to build; SHARE ROW EXCLUSIVE on the parent (inserts "
    "wait) and ACCESS EXCLUSIVE on the default partition to attach, within hold_timeout",
    "rescue": "ROW EXCLUSIVE on the default partition while rows move (inserts and reads go "
    "on); then the attach's locks, within hold_timeout",
    "adopt": "ACCESS EXCLUSIVE on the stray table; then the attach's locks, within hold_timeout",
    "retire": "ACCESS EXCLUSIVE on the parent and the default partition within hold_timeout "
    "(SHARE UPDATE EXCLUSIVE on the parent for a concurrent detach); then the detached table's",
    "finalize": "SHARE UPDATE EXCLUSIVE on the parent (DETACH … FINALIZE)",
    "resume": "ACCESS EXCLUSIVE on the detached table only",
    "unguard": "ACCESS EXCLUSIVE on the default partition, within hold_timeout",
}


@dataclasses.dataclass(frozen=True)
class Action:
    """One step of a rotation.

    ``rows_in_default``: the rows of the range waiting in the default partition when planned.
    ``split``: the range holds now: its rescue first attaches a partition for the rest of the
    range from a stop point a few seconds ahead (named by it), then moves the rows before it.
    """

    kind: ActionKind
    partition: str
    lower: datetime | None = None
    upper: datetime | None = None
    rows_in_default: int = 0
    detail: str = ""
    split: bool = False

    def describe(self) -> str:
        span = f"[{_iso(self.lower)}, {_iso(self.upper)})"
        if self.kind == "create":
            return f"create {self.partition} {span}"
        if self.kind == "rescue":
            moving = f"moving {self.rows_in_default} row(s) out of the default partition"
            if self.split:
                return (
                    f"rescue {span}: stop new rows from landing in the default partition, "
                    f"then create {self.partition} up to the stop point, {moving}"
                )
            return f"create {self.partition} {span}, {moving}"
        if self.kind == "adopt":
            return f"adopt the stray table {self.partition} as the partition {span}: {self.detail}"
        if self.kind == "retire":
            return f"retire {self.partition} {span}: {self.detail}"
        if self.kind == "finalize":
            return f"finish the interrupted concurrent detach of {self.partition}"
        if self.kind == "unguard":
            return f"drop the guard constraint {self.partition} an older kronos-db left"
        return f"finish retiring {self.partition}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Plan:
    policy: Policy
    actions: tuple[Action, ...]
    warnings: tuple[str, ...]
    default_rows_expired: int
    strays: tuple[Stray, ...] = ()
    # False: this role cannot read the default partition, so its rows are not planned
    default_readable: bool = True


def retention_cutoff(policy: Policy, now: datetime) -> datetime | None:
    """Partitions whose whole range ends before this instant are retired (as pg_partman does)."""
    if policy.retention <= timedelta(0):
        return None
    return _utc(now) - policy.retention


def _gaps(
    lower: datetime, upper: datetime, taken: Iterable[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    """The parts of [lower, upper) that no range of ``taken`` covers."""
    gaps: list[tuple[datetime, datetime]] = []
    cursor = lower
    for start, end in sorted(taken):
        if end <= cursor or start >= upper:
            continue
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
        if cursor >= upper:
            break
    if cursor < upper:
        gaps.append((cursor, upper))
    return gaps


def keep_rows_commands(parent: ParentTable, name: str, columns: Sequence[str]) -> str:
    """SQL that frees a stray table's name and moves its rows back into the table.

    One statement moves them (``DELETE … RETURNING`` into ``INSERT``): a row leaves the stray
    only if it enters the table, which routes it to its partition (or the default partition,
    for the next rotation to rescue); a duplicate key fails the statement and moves nothing.
    """
    kept = sql.Identifier(parent.schema, f"{name}_kept"[:63]).as_string(None)
    column_list = ", ".join(sql.Identifier(c).as_string(None) for c in columns)
    return (
        f"ALTER TABLE {sql.Identifier(parent.schema, name).as_string(None)} "
        f"RENAME TO {sql.Identifier(f'{name}_kept'[:63]).as_string(None)}; "
        f"WITH moved AS (DELETE FROM {kept} RETURNING {column_list}) "
        f"INSERT INTO {parent.identifier().as_string(None)} ({column_list}) "
        f"SELECT {column_list} FROM moved"
    )


def _strays(
    conn: psycopg.Connection[Any],
    parent: ParentTable,
    policy: Policy,
    now: datetime,
    ranged: Sequence[Partition],
) -> list[Stray]:
    with conn.cursor(row_factory=class_row(_StrayRow)) as cur:
        rows = cur.execute(
            query("partitions", "select_stray_tables"),
            {
                "oid": parent.oid,
                "schema": parent.schema,
                "prefix": f"{parent.name}_p",
                "key_column": parent.key_column,
            },
        ).fetchall()
    cutoff = retention_cutoff(policy, now)
    strays: list[Stray] = []
    for row in rows:
        # counted (capped): a stray is rare, and its statistics may be stale or missing;
        # a role that cannot read it gets the planner's estimate, or "unknown"
        statement = sql.SQL(query("partitions", "count_rows_capped")).format(
            table=sql.Identifier(parent.schema, row.name)
        )
        count: int | None = None
        with _unless_denied(conn) as allowed:
            count = _count(conn, statement, {"cap": DEFAULT_ROW_COUNT_CAP})
        if not allowed[0]:
            count = row.row_estimate if row.row_estimate >= 0 else None
        lower = row.check_lower.astimezone(UTC) if row.check_lower else None
        upper = row.check_upper.astimezone(UTC) if row.check_upper else None
        if lower is None:
            lower = _name_lower_bound(parent.name, row.name, policy.interval)
            upper = add_intervals(lower, policy.interval) if lower else None
        reason = ""
        if not row.same_columns:
            reason = f"its columns differ from {parent.qualified}'s"
        elif lower is None or upper is None:
            reason = "neither its name nor a CHECK constraint says which range it holds"
        elif cutoff is not None and upper < cutoff:
            # attaching it only for retention to drop it would destroy what someone kept
            reason = f"its range [{_iso(lower)}, {_iso(upper)}) is older than the retention"
        else:
            overlapping = [
                p.name
                for p in ranged
                if p.lower is not None
                and p.upper is not None
                and p.lower < upper
                and lower < p.upper
                and p.lower <= lower
            ]
            if overlapping:
                reason = f"{', '.join(overlapping)} already covers its range"
        strays.append(
            Stray(row.name, count, lower, upper, bool(row.same_columns), not reason, reason)
        )
    return strays


def plan_rotation(
    conn: psycopg.Connection[Any],
    parent: ParentTable,
    policy: Policy,
    now: datetime,
    *,
    partitions: Sequence[Partition] | None = None,
) -> Plan:
    """What ``rotate`` would do at ``now``: pure reading, no lock taken."""
    now = _utc(now)
    if partitions is None:
        partitions = list_partitions(conn, parent)
    ranged = [
        p
        for p in partitions
        if not p.is_default and p.lower is not None and p.upper is not None and not p.detach_pending
    ]
    actions: list[Action] = []
    warnings: list[str] = []

    if _has_legacy_guard(conn, parent):
        actions.append(Action("unguard", _legacy_guard(parent)))
    for partition in partitions:
        if partition.detach_pending:
            actions.append(Action("finalize", partition.name, partition.lower, partition.upper))
    for table in _retired_tables(conn, parent):
        actions.append(
            Action(
                "resume",
                table.name,
                detail=table.note.removeprefix(f"{RETIRED_MARK}{parent.qualified}: "),
            )
        )

    strays = _strays(conn, parent, policy, now, ranged)
    stray_names = {stray.name: stray for stray in strays}
    taken = [(p.lower, p.upper) for p in ranged if p.lower and p.upper]

    cutoff = retention_cutoff(policy, now)
    wanted: set[datetime] = set()
    current = floor_time(now, policy.interval)
    for offset in range(policy.premake + 1):
        wanted.add(add_intervals(current, policy.interval, offset))
    bucket_rows: dict[datetime, int] = {}
    expired_rows = 0
    buckets = _default_buckets(conn, parent, policy.interval)
    if buckets is None:
        warnings.append(
            f"cannot read {parent.default_partition} (GRANT SELECT ON "
            f"{parent.default_partition} TO this role): its rows are not planned"
        )
    for bucket in buckets or []:
        upper = add_intervals(bucket.lower, policy.interval)
        if cutoff is not None and upper < cutoff:
            # rows older than the retention: no partition is made only to be retired at once;
            # they stay where they are, reported, for a human to decide
            expired_rows += bucket.rows
            continue
        bucket_rows[bucket.lower] = bucket.rows
        wanted.add(bucket.lower)
    if expired_rows:
        warnings.append(
            f"{expired_rows} row(s) in the default partition are older than the "
            f"retention ({format_duration(policy.retention)}): left in place"
        )

    for stray in strays:
        if not stray.adoptable or stray.lower is None or stray.upper is None:
            continue
        gaps = _gaps(stray.lower, stray.upper, taken)
        # the stray keeps the part of its range from its lower bound up to the next partition
        lower, upper = gaps[0] if gaps else (stray.lower, stray.lower)
        if lower != stray.lower:
            continue
        rows = bucket_rows.get(floor_time(lower, policy.interval), 0)
        if rows and (lower, upper) != (
            floor_time(lower, policy.interval),
            add_intervals(floor_time(lower, policy.interval), policy.interval),
        ):
            rows = _default_rows_between(conn, parent, lower, upper)
        held = "unknown" if stray.rows is None else str(stray.rows)
        actions.append(
            Action(
                "adopt",
                stray.name,
                lower,
                upper,
                rows_in_default=rows,
                detail=f"{held} row(s) in it, {rows} more waiting in the default partition",
                split=lower <= now < upper,
            )
        )
        taken.append((lower, upper))

    for lower in sorted(wanted):
        upper = add_intervals(lower, policy.interval)
        for gap_lower, gap_upper in _gaps(lower, upper, taken):
            name = partition_name(parent.name, gap_lower, policy.interval)
            if name in stray_names or _relation_exists(conn, parent.schema, name):
                known = stray_names.get(name)
                reason = f" ({known.reason})" if known else ""
                warnings.append(
                    f"cannot create {name}: a table of that name already exists{reason}; "
                    "see `kronos-db partitions status` for the command that keeps its rows"
                )
                continue
            rows = bucket_rows.get(lower, 0)
            if rows and (gap_lower, gap_upper) != (lower, upper):
                rows = _default_rows_between(conn, parent, gap_lower, gap_upper)
            kind: ActionKind = "rescue" if rows else "create"
            actions.append(
                Action(
                    kind,
                    name,
                    gap_lower,
                    gap_upper,
                    rows_in_default=rows,
                    split=bool(rows) and gap_lower <= now < gap_upper,
                )
            )

    if cutoff is not None:
        for partition in ranged:
            if partition.upper is not None and partition.upper < cutoff:
                actions.append(
                    Action(
                        "retire",
                        partition.name,
                        partition.lower,
                        partition.upper,
                        detail=policy.retention_action,
                    )
                )
    return Plan(
        policy,
        tuple(actions),
        tuple(warnings),
        expired_rows,
        tuple(strays),
        buckets is not None,
    )
