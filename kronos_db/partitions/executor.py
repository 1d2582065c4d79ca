"""The partition lifecycle of the range-partitioned ``logs`` table: premake, rescue, retention.

Two library entry points, both taking ``now`` (UTC, tz-aware) so that tests and callers move
the clock:

* :func:`partition_status` — every partition, the default partition's rows, stray tables,
  unfinished retirements, how far coverage reaches ahead, what the next rotation would do, and
  one monitoring verdict (OK/WARNING/CRITICAL) that ``health`` reports as is;
* :func:`rotate` — adopts stray tables, moves rows out of the default partition, creates the
  missing partitions and retires old ones, under an advisory lock per table; returns what it
  did (or, with ``dry_run``, the exact SQL it would run).

The promise, and how it is kept (``docs/partitions.md`` states the design and its lock budget):

* **Every acknowledged row is visible through the table exactly once, at every instant.** A
  row leaves the default partition only in the transaction that attaches the partition it
  moves into: readers see it in the default until that commit, in the partition after it. No
  row is ever in a table nobody can see, and a kill at any point rolls the transaction back.
* **The rescue of the range holding now terminates**: the bleeding is stopped first (a
  partition for the rest of the range, from a stop point a few seconds ahead, is attached, so
  new rows stop landing in the default partition), then the rows before the stop point move.
* **A service's insert waits at most ``lock_timeout`` behind a rotation** (``hold_timeout``
  more in the worst interleaving): every lock request runs under ``lock_timeout`` and gives up,
  rolling back, instead of queueing in front of the services; what holds a lock inserts wait
  on is a catalog change or one check of the default partition, cut off at ``hold_timeout``. A
  step that gives up retries after a jittered back-off within the run's ``budget``, then the
  next run, and says so.
* **Every step is resumable**: retirements mark the detached table before anything else; an
  archive is recorded in ``backups`` in the transaction that drops its table; a table left by
  an older kronos-db or a human mistake is adopted (attached with its rows) or reported with a
  command that keeps its rows.
* Settings are transaction-scoped (``set_config(..., true)``): nothing relies on session state,
  so every statement is correct through a transaction pooler.

Partition names follow pg_partman 4.x (``logs_p2026_11_25``…); a partition starting between
two interval boundaries (the stop point of a rescue) is named by its lower bound to the second
(``logs_p2026_11_25_101507``). The pg_partman backend lives in :mod:`kronos_db.partman`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import class_row

from kronos_db import backups, batching, db, locks, logs, replication, roles
from kronos_db.checks import ANY, Context, Finding, Metric, Outcome, Status, Threshold, worst
from kronos_db.config import PartitionSettings, Settings, require_lock_timeout
from kronos_db.durations import format_duration, postgres_interval
from kronos_db.errors import (
    ArchiveError,
    KronosError,
    LockTimeoutError,
    PartitionError,
    ReportUnavailableError,
    UsageError,
)
from kronos_db.resources import query

logger = logging.getLogger(__name__)

Interval = Literal["hourly", "daily", "weekly", "monthly"]
Notify = Callable[[str], None]
T = TypeVar("T")

# date_trunc unit of each interval
TRUNC_UNIT: dict[str, str] = {
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
}
# the comment that marks a detached partition whose retirement is not finished yet
RETIRED_MARK = "kronos-db: retired from "
# the comment of a partition detached for good (retention_action = detach)
DETACHED_MARK = "kronos-db: detached from "
MAX_RETRY_DELAY = 30.0
DEFAULT_ROW_COUNT_CAP = 10_000_000
# how far ahead of now the rescue of the current range stops: rows written until then still land
# in the default partition and are part of the rescue; later ones go to the new partition.
# Covers the time to attach that partition and writers' clocks a little ahead of ours.
STOP_MARGIN = timedelta(seconds=2)
# the comment of the guard constraint kronos-db before 0.9 put on the default partition
_LEGACY_GUARD_SUFFIX = "_kronos_attach_guard"


def _quiet(_message: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Time arithmetic: everything is UTC, whatever the session's or the machine's time zone.


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a tz-aware UTC time")
    return value.astimezone(UTC)


def floor_time(value: datetime, interval: str) -> datetime:
    """The lower bound of the partition holding ``value`` (UTC; weeks start on Monday)."""
    value = _utc(value)
    if interval == "hourly":
        return value.replace(minute=0, second=0, microsecond=0)
    day = value.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "daily":
        return day
    if interval == "weekly":
        return day - timedelta(days=day.weekday())
    if interval == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown interval {interval!r}")


def add_intervals(value: datetime, interval: str, count: int = 1) -> datetime:
    """``value`` moved by ``count`` partitions (``value`` is a partition's lower bound)."""
    if interval == "hourly":
        return value + timedelta(hours=count)
    if interval == "daily":
        return value + timedelta(days=count)
    if interval == "weekly":
        return value + timedelta(weeks=count)
    if interval == "monthly":
        months = value.year * 12 + value.month - 1 + count
        return value.replace(year=months // 12, month=months % 12 + 1)
    raise ValueError(f"unknown interval {interval!r}")


def partition_name(parent: str, lower: datetime, interval: str) -> str:
    """pg_partman 4.x's name for the partition starting at ``lower``: ``logs_p2026_11_25``.

    A lower bound between two interval boundaries (the stop point of a rescue) is named to the
    second, as pg_partman names sub-minute partitions: ``logs_p2026_11_25_101507``.
    """
    lower = _utc(lower)
    if lower != floor_time(lower, interval):
        return f"{parent}_p{lower:%Y_%m_%d_%H%M%S}"
    if interval == "hourly":
        suffix = lower.strftime("%Y_%m_%d_%H%M")
    elif interval == "daily":
        suffix = lower.strftime("%Y_%m_%d")
    elif interval == "weekly":
        iso = lower.isocalendar()
        suffix = f"{iso.year:04d}w{iso.week:02d}"
    elif interval == "monthly":
        suffix = lower.strftime("%Y_%m")
    else:
        raise ValueError(f"unknown interval {interval!r}")
    return f"{parent}_p{suffix}"


def _name_lower_bound(parent: str, name: str, interval: str) -> datetime | None:
    """The lower bound a canonical partition name stands for (None: not one of ours)."""
    suffix = name.removeprefix(f"{parent}_p")
    formats = {
        "hourly": "%Y_%m_%d_%H%M",
        "daily": "%Y_%m_%d",
        "monthly": "%Y_%m",
    }
    try:
        if interval == "weekly":
            match = re.fullmatch(r"(\d{4})w(\d{2})", suffix)
            if not match:
                return None
            return datetime.fromisocalendar(int(match[1]), int(match[2]), 1).replace(tzinfo=UTC)
        lower = datetime.strptime(suffix, formats[interval]).replace(tzinfo=UTC)
    except (ValueError, KeyError):
        return None
    return lower if partition_name(parent, lower, interval) == name else None


def _ceil_second(value: datetime) -> datetime:
    floor = value.replace(microsecond=0)
    return floor if floor == value else floor + timedelta(seconds=1)


# ---------------------------------------------------------------------------------------------
# What the catalog says


@dataclasses.dataclass(frozen=True)
class ParentTable:
    oid: int
    schema: str
    name: str
    owner: str
    strategy: str | None
    key_column: str | None
    key_type: str | None
    key_count: int | None
    default_partition: str | None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def default_identifier(self) -> sql.Identifier:
        assert self.default_partition is not None
        return sql.Identifier(self.schema, self.default_partition)

    def key(self) -> sql.Identifier:
        return sql.Identifier(self.key_column or "")


@dataclasses.dataclass(frozen=True)
class Partition:
    name: str
    schema: str
    lower: datetime | None
    upper: datetime | None
    is_default: bool
    detach_pending: bool
    row_estimate: int
    total_bytes: int


@dataclasses.dataclass(frozen=True)
class Stray:
    """A plain table named like a partition of the table, not attached and not marked by us.

    An older kronos-db left such a table (rows moved into it, never attached) when killed or
    out of lock budget; a human may have detached a partition by hand. Its rows are in no
    partition: nobody sees them through the table. ``rows`` is None when unknown (not readable).
    """

    name: str
    rows: int | None
    lower: datetime | None
    upper: datetime | None
    same_columns: bool
    adoptable: bool
    reason: str

    def describe(self, parent: ParentTable) -> str:
        held = (
            "holds an unknown number of rows" if self.rows is None else f"holds {self.rows} row(s)"
        )
        return (
            f"stray table {parent.schema}.{self.name} {held} that {parent.qualified} does not show"
        )


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str


@dataclasses.dataclass(frozen=True)
class _Bucket:
    lower: datetime
    rows: int


@dataclasses.dataclass(frozen=True)
class _Count:
    rows: int


@dataclasses.dataclass(frozen=True)
class _RetiredTable:
    schema: str
    name: str
    note: str


@dataclasses.dataclass(frozen=True)
class _StrayRow:
    name: str
    row_estimate: int
    note: str | None
    same_columns: bool | None
    check_lower: datetime | None
    check_upper: datetime | None


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the partitions should look like: from ``[partitions]`` or pg_partman's part_config."""

    backend: Literal["native", "partman"]
    interval: Interval
    premake: int
    retention: timedelta
    retention_action: Literal["drop", "detach", "archive"]


@contextmanager
def scoped_settings(conn: psycopg.Connection[Any], **settings: timedelta) -> Iterator[None]:
    """A transaction (a savepoint inside one) with ``statement_timeout``-like settings LOCAL.

    Nothing is set for the session: through a transaction pooler the next transaction may run
    on another server connection, and a session setting would follow the wrong one.
    """
    with conn.transaction():
        for name, value in settings.items():
            conn.execute(
                "SELECT set_config(%(name)s::text, %(value)s::text, true)",
                {"name": name, "value": postgres_interval(value)},
            )
        yield


def _catalog_scope(
    conn: psycopg.Connection[Any],
    settings: PartitionSettings,
    *,
    statement_timeout: timedelta | None = None,
    lock_timeout: timedelta | None = None,
) -> Any:
    return scoped_settings(
        conn,
        statement_timeout=statement_timeout or settings.statement_timeout,
        lock_timeout=lock_timeout or settings.lock_timeout,
    )


@contextmanager
def _unless_denied(conn: psycopg.Connection[Any]) -> Iterator[list[bool]]:
    """A savepoint: a missing privilege rolls it back and sets the yielded flag to [False]."""
    allowed = [True]
    try:
        with conn.transaction():
            yield allowed
    except pg_errors.InsufficientPrivilege:
        allowed[0] = False


def parent_table(conn: psycopg.Connection[Any], table: str) -> ParentTable:
    """The partitioned table ``table``; ``UsageError`` when it is missing or not range-on-time."""
    with conn.cursor(row_factory=class_row(ParentTable)) as cur:
        parent = cur.execute(
            query("partitions", "select_partitioned_table"), {"table": table}
        ).fetchone()
    if parent is None:
        raise UsageError(f"table {table} does not exist (is the database migrated?)")
    if parent.strategy != "r" or parent.key_count != 1:
        raise UsageError(f"{parent.qualified} is not range-partitioned on a single column")
    if parent.key_type != "timestamp with time zone":
        raise UsageError(
            f"{parent.qualified} is partitioned on {parent.key_column} "
            f"({parent.key_type}); kronos-db manages timestamptz keys only"
        )
    return parent


def list_partitions(conn: psycopg.Connection[Any], parent: ParentTable) -> list[Partition]:
    with conn.cursor(row_factory=class_row(Partition)) as cur:
        rows = cur.execute(query("partitions", "select_partitions"), {"oid": parent.oid}).fetchall()
    return [
        dataclasses.replace(
            row,
            lower=row.lower.astimezone(UTC) if row.lower else None,
            upper=row.upper.astimezone(UTC) if row.upper else None,
        )
        for row in rows
    ]


def _columns(conn: psycopg.Connection[Any], parent: ParentTable) -> list[str]:
    with conn.cursor(row_factory=class_row(_Column)) as cur:
        return [
            c.name
            for c in cur.execute(
                query("partitions", "select_columns"), {"oid": parent.oid}
            ).fetchall()
        ]


def _default_buckets(
    conn: psycopg.Connection[Any], parent: ParentTable, interval: str
) -> list[_Bucket] | None:
    """Rows of the default partition per interval; None when this role cannot read it."""
    if parent.default_partition is None:
        return []
    statement = sql.SQL(query("partitions", "select_default_buckets")).format(
        key_column=parent.key(), default_partition=parent.default_identifier()
    )
    rows: list[_Bucket] = []
    with _unless_denied(conn) as allowed, conn.cursor(row_factory=class_row(_Bucket)) as cur:
        rows = cur.execute(statement, {"unit": TRUNC_UNIT[interval]}).fetchall()
    if not allowed[0]:
        return None
    return [_Bucket(row.lower.astimezone(UTC), row.rows) for row in rows]


def _count(conn: psycopg.Connection[Any], statement: sql.Composed, params: dict[str, Any]) -> int:
    with conn.cursor(row_factory=class_row(_Count)) as cur:
        row = cur.execute(statement, params).fetchone()
    return row.rows if row else 0


def count_default_rows(
    conn: psycopg.Connection[Any], parent: ParentTable, cap: int = DEFAULT_ROW_COUNT_CAP
) -> int:
    """Rows in the default partition (exact up to ``cap``)."""
    if parent.default_partition is None:
        return 0
    statement = sql.SQL(query("partitions", "count_default_rows")).format(
        default_partition=parent.default_identifier()
    )
    return _count(conn, statement, {"cap": cap})


def _default_rows_between(
    conn: psycopg.Connection[Any], parent: ParentTable, lower: datetime, upper: datetime
) -> int:
    statement = sql.SQL(query("partitions", "count_default_rows_between")).format(
        default_partition=parent.default_identifier(), key_column=parent.key()
    )
    return _count(conn, statement, {"lower": lower, "upper": upper})


def _retired_tables(conn: psycopg.Connection[Any], parent: ParentTable) -> list[_RetiredTable]:
    with conn.cursor(row_factory=class_row(_RetiredTable)) as cur:
        return cur.execute(
            query("partitions", "select_retired_tables"),
            {"prefix": f"{RETIRED_MARK}{parent.qualified}:"},
        ).fetchall()


@dataclasses.dataclass(frozen=True)
class KeptTable:
    """A table partition management leaves on purpose, and why (``kronos-db check`` says so
    instead of calling it drift)."""

    schema: str
    name: str
    why: str


def kept_tables(conn: psycopg.Connection[Any], settings: PartitionSettings) -> list[KeptTable]:
    """Partitions detached and kept (``retention_action = detach``), detached ones whose
    retirement the next run finishes, and pg_partman's template table of an adopted table."""
    from kronos_db import partman

    try:
        parent = parent_table(conn, settings.table)
    except UsageError:
        return []  # not migrated that far, or not a table kronos-db manages
    kept: list[KeptTable] = []
    for prefix, why in (
        (
            f"{DETACHED_MARK}{parent.qualified} ",
            f"a partition of {parent.qualified} detached and kept by `kronos-db partitions "
            "rotate` (retention_action = detach)",
        ),
        (
            f"{RETIRED_MARK}{parent.qualified}:",
            f"a partition of {parent.qualified} detached by `kronos-db partitions rotate`, "
            "its retirement pending (the next run finishes it)",
        ),
    ):
        with conn.cursor(row_factory=class_row(_RetiredTable)) as cur:
            rows = cur.execute(query("partitions", "select_retired_tables"), {"prefix": prefix})
            kept += [KeptTable(table.schema, table.name, why) for table in rows]
    template = partman.template_table(conn, settings.table)
    if template is not None:
        schema, _, name = template.partition(".")
        kept.append(
            KeptTable(
                schema,
                name,
                f"pg_partman's template table for {parent.qualified} "
                "(`kronos-db partitions adopt`)",
            )
        )
    return kept


def _legacy_guard(parent: ParentTable) -> str:
    return f"{parent.default_partition}{_LEGACY_GUARD_SUFFIX}"[:63]


def _has_legacy_guard(conn: psycopg.Connection[Any], parent: ParentTable) -> bool:
    if parent.default_partition is None:
        return False
    row = conn.execute(
        query("partitions", "select_guard_constraint"),
        {
            "table": parent.default_identifier().as_string(conn),
            "name": _legacy_guard(parent),
        },
    ).fetchone()
    return row is not None


def native_policy(settings: PartitionSettings) -> Policy:
    return Policy(
        "native", settings.interval, settings.premake, settings.retention, settings.retention_action
    )


def resolve_policy(conn: psycopg.Connection[Any], settings: PartitionSettings) -> Policy:
    """The policy in force: pg_partman's part_config when that backend applies, else ours."""
    from kronos_db import partman

    if settings.backend == "native":
        return native_policy(settings)
    config = partman.table_config(conn, settings.table)
    if config is None:
        if settings.backend == "partman":
            raise UsageError(
                f"backend = partman but {settings.table} is not registered with pg_partman; "
                "run `kronos-db partitions adopt --backend partman` first"
            )
        return native_policy(settings)
    return config.policy(settings)


# ---------------------------------------------------------------------------------------------
# The plan: what a rotation would do


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


def _iso(value: datetime | None) -> str:
    if value is None:
        return "?"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC" if value.second else "%Y-%m-%d %H:%M UTC")


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


def _relation_exists(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%(name)s::text) IS NOT NULL",
        {"name": sql.Identifier(schema, name).as_string(conn)},
    ).fetchone()
    return bool(row and row[0])


# ---------------------------------------------------------------------------------------------
# Status


@dataclasses.dataclass(frozen=True)
class Problem:
    level: Status
    message: str
    fix: str = ""  # SQL that settles it, when there is one


@dataclasses.dataclass(frozen=True)
class PartitionStatus:
    """The partitions of a table at ``now``, and whether a monitoring check should worry.

    The one answer to "are the log partitions healthy?": ``partitions status`` prints it and
    ``health``'s log_partitions check reports it.
    """

    table: str
    backend: str
    now: datetime
    interval: str
    premake: int
    retention: timedelta
    retention_action: str
    partitions: tuple[Partition, ...]
    default_partition: str | None
    default_rows: int
    # False: this role cannot read the default partition; default_rows is the planner's estimate
    default_rows_exact: bool
    covered_until: datetime | None
    partitions_ahead: int
    strays: tuple[Stray, ...]
    plan: tuple[Action, ...]
    warnings: tuple[str, ...]
    level: Status
    problems: tuple[str, ...]
    hint: str = ""
    # the SQL that settles a problem, per problem ("" when a command does it)
    fixes: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0/1/2/3 for OK/WARNING/CRITICAL/UNKNOWN (monitoring-plugin convention)."""
        return int(self.level)

    @property
    def pending_retirements(self) -> tuple[Action, ...]:
        """Retirements left half-done: an archive, drop or detach waiting to be finished."""
        return tuple(a for a in self.plan if a.kind in ("finalize", "resume"))


def coverage(partitions: Iterable[Partition], now: datetime) -> tuple[datetime | None, int]:
    """How far contiguous partitions reach from ``now``, and how many start after ``now``'s."""
    ranged = sorted(
        (
            p
            for p in partitions
            if not p.is_default and p.lower and p.upper and not p.detach_pending
        ),
        key=lambda p: p.lower or now,
    )
    reach: datetime | None = None
    ahead = 0
    for partition in ranged:
        assert partition.lower is not None
        assert partition.upper is not None
        if reach is None:
            if partition.lower <= now < partition.upper:
                reach = partition.upper
            continue
        if partition.lower != reach:
            break
        reach = partition.upper
        ahead += 1
    return reach, ahead


def partition_status(
    conn: psycopg.Connection[Any] | db.Target,
    settings: Settings,
    now: datetime,
    *,
    statement_timeout: timedelta | None = None,
    lock_timeout: timedelta | None = None,
) -> PartitionStatus:
    """Every partition, the default partition's rows, strays, coverage ahead, the next rotation.

    ``conn`` is an open psycopg connection, or a ``db.Target`` to open one for the call. Every
    read runs in one transaction with ``statement_timeout`` and ``lock_timeout`` set LOCAL
    (default: ``[partitions] statement_timeout`` and ``lock_timeout``). A role that cannot read
    the default partition or a stray table gets the planner's estimates instead.

    ``level`` is CRITICAL when ``now`` is not covered or fewer than ``coverage_critical``
    partitions are ready ahead; WARNING when fewer than ``coverage_warning`` are, when rows
    wait in the default partition, when a stray table may hold log rows, when a retirement
    (an archive, a drop) was left unfinished, or when an older kronos-db left its guard;
    UNKNOWN when nothing else is wrong but this role cannot read the default partition and the
    planner's estimate says 0 (which proves nothing).
    """
    if isinstance(conn, db.Target):
        with db.connection(conn) as opened:
            return partition_status(
                opened,
                settings,
                now,
                statement_timeout=statement_timeout,
                lock_timeout=lock_timeout,
            )
    options = settings.partitions
    now = _utc(now)
    with _catalog_scope(
        conn, options, statement_timeout=statement_timeout, lock_timeout=lock_timeout
    ):
        parent = parent_table(conn, options.table)
        policy = resolve_policy(conn, options)
        partitions = list_partitions(conn, parent)
        plan = plan_rotation(conn, parent, policy, now, partitions=partitions)
        default_rows = 0
        exact = True
        with _unless_denied(conn) as allowed:
            default_rows = count_default_rows(conn, parent)
        if not allowed[0]:
            exact = False
            default_rows = next((p.row_estimate for p in partitions if p.is_default), 0)
        columns = _columns(conn, parent)
    covered_until, ahead = coverage(partitions, now)
    coverage_threshold = coverage_thresholds(settings)[0]

    problems: list[Problem] = []
    if covered_until is None:
        problems.append(
            Problem(
                Status.CRITICAL,
                f"no partition covers now ({_iso(now)}): rows go to the default partition",
            )
        )
    elif coverage_threshold.reached(ahead, coverage_threshold.critical):
        problems.append(
            Problem(
                Status.CRITICAL,
                f"only {ahead} partition(s) ready ahead (critical under "
                f"{options.coverage_critical}), coverage ends {_iso(covered_until)}",
            )
        )
    elif coverage_threshold.reached(ahead, coverage_threshold.warning):
        problems.append(
            Problem(
                Status.WARNING,
                f"only {ahead} partition(s) ready ahead (warning under "
                f"{options.coverage_warning}), coverage ends {_iso(covered_until)}",
            )
        )
    if not exact and not default_rows and parent.default_partition is not None:
        problems.append(
            Problem(
                Status.UNKNOWN,
                f"cannot count the rows waiting in the default partition "
                f"{parent.default_partition}: this role cannot read it, and the planner's "
                "estimate of 0 proves nothing",
            )
        )
    if default_rows:
        estimate = "" if exact else " (planner estimate: this role cannot read it)"
        problems.append(
            Problem(
                Status.WARNING,
                f"{default_rows} row(s) wait in the default partition "
                f"{parent.default_partition}{estimate}: `kronos-db partitions rotate` moves "
                "them into partitions"
                + (
                    f" ({plan.default_rows_expired} older than the retention stay: a human decides)"
                    if plan.default_rows_expired
                    else ""
                ),
            )
        )
    for stray in plan.strays:
        if stray.rows == 0:
            continue  # nothing hidden (one in the way of a partition is in the warnings)
        remedy = (
            "`kronos-db partitions rotate` adopts it (attaches it with its rows)"
            if stray.adoptable
            else f"it cannot be adopted ({stray.reason}); keep its rows with: "
            + keep_rows_commands(parent, stray.name, columns)
        )
        problems.append(
            Problem(
                Status.WARNING,
                f"{stray.describe(parent)}: {remedy}",
                "" if stray.adoptable else keep_rows_commands(parent, stray.name, columns) + ";",
            )
        )
    pending = [a for a in plan.actions if a.kind in ("finalize", "resume", "unguard")]
    if pending:
        problems.append(
            Problem(
                Status.WARNING,
                f"{len(pending)} unfinished step(s) of an earlier rotation: "
                + "; ".join(a.describe() for a in pending),
            )
        )
    level = worst([p.level for p in problems])
    hint = ""
    if level is Status.UNKNOWN:
        hint = (
            f"GRANT SELECT ON {parent.schema}.{parent.default_partition} TO <role> (or "
            "GRANT pg_read_all_data TO <role>): pg_monitor alone cannot count its rows"
        )
    elif level is not Status.OK:
        hint = (
            "run `kronos-db partitions rotate` (cron), then "
            "`kronos-db partitions status` for the details"
        )
    return PartitionStatus(
        table=parent.qualified,
        backend=policy.backend,
        now=now,
        interval=policy.interval,
        premake=policy.premake,
        retention=policy.retention,
        retention_action=policy.retention_action,
        partitions=tuple(partitions),
        default_partition=parent.default_partition,
        default_rows=default_rows,
        default_rows_exact=exact,
        covered_until=covered_until,
        partitions_ahead=ahead,
        strays=plan.strays,
        plan=plan.actions,
        warnings=plan.warnings,
        level=level,
        problems=tuple(p.message for p in problems),
        hint=hint,
        fixes=tuple(p.fix for p in problems),
    )


def coverage_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    """Partitions ready ahead of now: fewer than ``coverage_warning`` / ``coverage_critical``."""
    return (
        Threshold.from_settings(
            settings,
            "partitions.coverage_warning",
            "partitions.coverage_critical",
            direction="below",
        ),
    )


def status_outcome(status: PartitionStatus, settings: Settings) -> Outcome:
    """The status as a monitoring answer: what ``partitions status`` prints first and what
    health's log_partitions check reports (one computation, one verdict)."""
    covered = (
        f"covered until {_iso(status.covered_until)}, {status.partitions_ahead} partition(s) ahead"
        if status.covered_until
        else "now is not covered"
    )
    unknown_rows = not status.default_rows_exact and not status.default_rows
    metrics = (
        Metric(
            "partitions_ahead",
            float(status.partitions_ahead),
            "count",
            coverage_thresholds(settings)[0],
        ),
        Metric(
            "default_partition_rows",
            None if unknown_rows else float(status.default_rows),
            "count",
            ANY,
        ),
    )
    return Outcome(
        status.level,
        "; ".join(status.problems) if status.problems else covered,
        metrics,
        tuple(
            Finding(f"table {status.table}", problem, fix)
            for problem, fix in zip(
                status.problems, status.fixes or ("",) * len(status.problems), strict=True
            )
        ),
        status.hint,
        (status,),
    )


def check_partitions(ctx: Context) -> Outcome:
    """health's log_partitions: the partitions module's verdict, under health's timeouts."""
    try:
        status = partition_status(
            ctx.conn,
            ctx.settings,
            ctx.now,
            statement_timeout=ctx.limits.statement_timeout,
            lock_timeout=ctx.limits.lock_timeout,
        )
    except ReportUnavailableError:
        raise
    except KronosError as exc:
        raise ReportUnavailableError(
            exc.message, hint="is the database migrated (kronos-db migrate)?"
        ) from None
    return status_outcome(status, ctx.settings)


# ---------------------------------------------------------------------------------------------
# Rotation


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One step of a rotation: what it was, whether it worked, the SQL it ran."""

    kind: str
    partition: str
    ok: bool
    description: str
    seconds: float = 0.0
    attempts: int = 0
    rows_moved: int = 0
    rows_planned: int = 0
    archive_file: str | None = None
    archived_rows: int | None = None
    error: str | None = None
    error_code: int = 0
    statements: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RotationResult:
    table: str
    backend: str
    now: datetime
    dry_run: bool
    # another run holds the table's lock: this one did nothing
    skipped: bool
    steps: tuple[StepResult, ...]
    warnings: tuple[str, ...]
    # every SQL statement, in order: what ran, or with dry_run what would run
    statements: tuple[str, ...] = ()
    # why it was skipped when not for the lock ("standby: skipped: …")
    reason: str = ""

    @property
    def failed(self) -> tuple[StepResult, ...]:
        return tuple(step for step in self.steps if not step.ok)

    @property
    def changed(self) -> bool:
        return not self.dry_run and any(step.ok for step in self.steps)

    @property
    def exit_code(self) -> int:
        """0 when every step worked; 4 when every failure was a lock timeout; else 1."""
        if not self.failed:
            return 0
        codes = {step.error_code for step in self.failed}
        return codes.pop() if len(codes) == 1 else 1


def lock_name(table: str) -> str:
    return f"partitions:{table}"


class BatchSizer(Protocol):
    """How many rows the next batch of a move should take; told how each batch went.

    The moves of a rotation take their batch sizes from one of these (``rotate(...,
    batch_sizer=...)``), so a time-targeted sizer can replace the fixed one.
    """

    def next_size(self) -> int: ...

    def record(self, rows: int, seconds: float) -> None: ...


@dataclasses.dataclass
class FixedBatches:
    """``size`` rows per batch, whatever happens (``[partitions] move_batch_size``)."""

    size: int

    def next_size(self) -> int:
        return self.size

    def record(self, rows: int, seconds: float) -> None:
        pass


@dataclasses.dataclass
class PacedBatches:
    """A move's batches, each cleared first by the replication pacer: it waits while a standby
    or a slot is too far behind, and may make the batches smaller (kronos_db.replication)."""

    inner: BatchSizer
    pacer: Callable[[], float | None]
    cap: int | None = None
    last: int = 0

    def next_size(self) -> int:
        share = self.pacer()
        size = self.inner.next_size()
        if share is not None and share < 1 and self.last:
            smaller = max(1, math.floor(self.last * share))
            self.cap = smaller if self.cap is None else min(self.cap, smaller)
        self.last = size if self.cap is None else min(size, self.cap)
        return self.last

    def record(self, rows: int, seconds: float) -> None:
        self.inner.record(rows, seconds)


def default_batch_sizer(options: PartitionSettings) -> BatchSizer:
    """``move_batch_size`` rows per statement, or (0, the default) as many as take about
    ``move_batch_time``: the batches of every kronos-db job are sized the same way."""
    if options.move_batch_size:
        return FixedBatches(options.move_batch_size)
    return batching.TimedBatches(batching.BatchPolicy(duration=options.move_batch_time))


def _paced(
    make: Callable[[], BatchSizer], pacer: Callable[[], float | None]
) -> Callable[[], BatchSizer]:
    return lambda: PacedBatches(make(), pacer)


class _HoldExceeded(PartitionError):
    """The part of a step that holds a lock services wait on ran past hold_timeout."""


class _Runner:
    """Runs one step's SQL: records it, runs it (unless dry-run), gives up and retries locks.

    Every transaction it opens sets ``lock_timeout`` LOCAL; a lock not granted in time rolls the
    transaction back (so no lock request stays queued in front of the services) and is retried
    after a jittered back-off until the run's deadline.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        settings: PartitionSettings,
        notify: Notify,
        *,
        dry_run: bool,
        deadline: float,
        log: list[str] | None = None,
        relations: Sequence[int] = (),
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.notify = notify
        self.dry_run = dry_run
        self.deadline = deadline
        self.statements: list[str] = []
        # every statement of the rotation, in the order it ran (what --dry-run prints)
        self.log = log if log is not None else []
        self.attempts = 0
        self.relations = list(relations)
        self._delay = settings.retry_delay.total_seconds()

    def record(self, text: str) -> None:
        self.statements.append(text)
        self.log.append(text)

    def render(self, statement: sql.Composable) -> str:
        return statement.as_string(self.conn)

    def execute(
        self, statement: sql.Composed | sql.SQL, params: dict[str, Any] | None = None
    ) -> int:
        """Record and (unless dry-run) run one statement; returns its rowcount."""
        self.record(
            self.render(statement)
            if params is None
            else _render_with_params(self.conn, statement, params)
        )
        if self.dry_run:
            return 0
        cursor = self.conn.execute(statement, params)
        return int(cursor.rowcount)

    def set_local(self, **settings: timedelta) -> None:
        """Transaction-scoped settings (``set_config(..., true)``): nothing outlives the commit."""
        if self.dry_run:
            for name, value in settings.items():
                self.record(f"SET LOCAL {name} = '{postgres_interval(value)}'")
            return
        for name, value in settings.items():
            self.conn.execute(
                "SELECT set_config(%(name)s::text, %(value)s::text, true)",
                {"name": name, "value": postgres_interval(value)},
            )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction (a savepoint inside one) with the lock budget set LOCAL."""
        if self.dry_run:
            yield
            return
        with self.conn.transaction():
            self.set_local(lock_timeout=self.settings.lock_timeout)
            yield

    def retrying(self, label: str, work: Callable[[], T]) -> T:
        """Run ``work`` in one transaction; a lock not granted in time rolls it back and retries."""
        while True:
            self.attempts += 1
            try:
                with self.transaction():
                    return work()
            except (pg_errors.LockNotAvailable, _HoldExceeded) as exc:
                self.back_off(label, exc)
            except pg_errors.RaiseException as exc:
                # pg_partman re-raises every error as a plain RAISE EXCEPTION with the message
                if "lock timeout" not in str(exc):
                    raise
                self.back_off(label, exc)

    def back_off(self, label: str, exc: BaseException) -> None:
        """Sleep a jittered, doubling delay before the next attempt, or give up (LockTimeoutError).

        Called after the transaction (or savepoint) that timed out was rolled back: no lock
        request is queued while we sleep.
        """
        held = self.holders()
        who = f" (held by {'; '.join(h.describe() for h in held)})" if held else ""
        reason = (
            exc.message
            if isinstance(exc, _HoldExceeded)
            else f"lock not granted within lock_timeout "
            f"({format_duration(self.settings.lock_timeout)})"
        )
        remaining = self.deadline - time.monotonic()
        wait = min(self._delay * random.uniform(0.5, 1.5), MAX_RETRY_DELAY)
        if remaining <= wait:
            raise LockTimeoutError(
                f"{label}: {reason}{who}, {self.attempts} attempt(s) within the run's budget "
                f"of {format_duration(self.settings.budget)}; rolled back, the next run tries again"
            ) from None
        self.notify(f"{label}: {reason}{who}; rolled back, retrying in {wait:.1f}s")
        time.sleep(wait)
        self._delay *= 2

    def holders(self) -> list[locks.BlockingSession]:
        """The sessions holding locks on the relations this step needs (for the message)."""
        if self.dry_run or not self.relations or self.conn.broken:
            return []
        try:
            # inside a long transaction pg_stat_activity would show its first snapshot
            self.conn.execute("SELECT pg_stat_clear_snapshot()")
            with self.conn.cursor(row_factory=class_row(locks.BlockingSession)) as cur:
                return cur.execute(
                    query("partitions", "select_lock_holders"), {"oids": self.relations}
                ).fetchall()
        except psycopg.Error:
            return []


class _Hold:
    """The part of a transaction that holds a lock services' inserts wait on.

    Every statement in it gets what is left of ``hold_timeout`` as its ``statement_timeout``
    and ``lock_timeout``: whatever happens (a reader in the way, a big default partition), the
    lock is released within ``hold_timeout`` of being granted, by rolling back.
    """

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner
        self.limit = runner.settings.hold_timeout.total_seconds()
        self.started = time.monotonic()

    def execute(
        self, statement: sql.Composed | sql.SQL, params: dict[str, Any] | None = None
    ) -> int:
        remaining = self.limit - (time.monotonic() - self.started)
        if remaining <= 0.001 and not self.runner.dry_run:
            raise _HoldExceeded(
                f"its work under the lock inserts wait on took longer than hold_timeout "
                f"({format_duration(self.runner.settings.hold_timeout)})"
            )
        left = timedelta(seconds=max(remaining, 0.001))
        try:
            if not self.runner.dry_run:
                # a lock wait gives up a little before the statement would be cancelled, so
                # that the message says which of the two happened
                self.runner.set_local(
                    statement_timeout=left, lock_timeout=max(left * 0.8, timedelta(milliseconds=1))
                )
            return self.runner.execute(statement, params)
        except pg_errors.LockNotAvailable as exc:
            raise _HoldExceeded(
                f"lock_timeout: a lock it needed next was not granted within what is left of "
                f"hold_timeout ({format_duration(self.runner.settings.hold_timeout)}) while it "
                "held the one inserts wait on"
            ) from exc
        except pg_errors.QueryCanceled as exc:
            raise _HoldExceeded(
                f"its work under the lock inserts wait on took longer than hold_timeout "
                f"({format_duration(self.runner.settings.hold_timeout)})"
            ) from exc


def _render_with_params(
    conn: psycopg.Connection[Any], statement: sql.Composable, params: dict[str, Any]
) -> str:
    from kronos_db.resources import render_with_literals, trusted_sql

    text = render_with_literals(trusted_sql(statement.as_string(conn)), params)
    lines = text.splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines)


def _bounds_check(parent: ParentTable, lower: datetime, upper: datetime) -> sql.Composed:
    return sql.SQL("{column} >= {lower} AND {column} < {upper}").format(
        column=parent.key(), lower=sql.Literal(lower), upper=sql.Literal(upper)
    )


_RELOPTION = re.compile(r"^(?:(toast)\.)?([a-z_][a-z0-9_]*)=(.*)$", re.DOTALL)


def _storage_parameters(reloptions: Sequence[str]) -> sql.Composable:
    """``WITH (…)`` from a partition's ``reloptions`` (``autovacuum_…=…``), or nothing."""
    items: list[sql.Composable] = []
    for option in reloptions:
        match = _RELOPTION.match(option)
        if not match:
            continue
        namespace, key, value = match.groups()
        name = sql.Identifier(namespace, key) if namespace else sql.Identifier(key)
        items.append(sql.SQL("{} = {}").format(name, sql.Literal(value)))
    if not items:
        return sql.SQL("")
    return sql.SQL(" WITH ({})").format(sql.SQL(", ").join(items))


def _check_name(name: str) -> sql.Identifier:
    return sql.Identifier(f"{name}_kronos_bounds"[:63])


def _create_table_sql(
    parent: ParentTable, name: str, lower: datetime, upper: datetime, reloptions: Sequence[str]
) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE {partition} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING GENERATED INCLUDING STORAGE INCLUDING STATISTICS INCLUDING INDEXES, "
        "CONSTRAINT {check} CHECK ({bounds})){storage}"
    ).format(
        partition=sql.Identifier(parent.schema, name),
        parent=parent.identifier(),
        check=_check_name(name),
        bounds=_bounds_check(parent, lower, upper),
        storage=_storage_parameters(reloptions),
    )


def _attach_sql(parent: ParentTable, name: str, lower: datetime, upper: datetime) -> sql.Composed:
    return sql.SQL(
        "ALTER TABLE {parent} ATTACH PARTITION {partition} FOR VALUES FROM ({lower}) TO ({upper})"
    ).format(
        parent=parent.identifier(),
        partition=sql.Identifier(parent.schema, name),
        lower=sql.Literal(lower),
        upper=sql.Literal(upper),
    )


_PRIVILEGES = {
    name: sql.SQL(name)
    for name in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
}


@dataclasses.dataclass(frozen=True)
class _Grant:
    grantee: str
    privilege: str


@dataclasses.dataclass(frozen=True)
class _Owner:
    owner: str


def partition_privileges(
    conn: psycopg.Connection[Any],
    parent: ParentTable,
    name: str,
    mapping: roles.PartitionPrivileges,
) -> list[sql.Composed]:
    """What makes partition ``name`` owned and granted as the role mapping's [partitions] says.

    Not a copy of the parent's grants: services reach rows through the parent only. Whatever
    else the table holds (a grant another tool copied from the parent, such as pg_partman's
    ``inherit_privileges``) is revoked. The table may be uncommitted: this runs inside the
    transaction that creates it.
    """
    target = sql.Identifier(parent.schema, name)
    owner = mapping.owner or parent.owner
    relation = target.as_string(conn)
    statements: list[sql.Composed] = []
    with conn.cursor(row_factory=class_row(_Owner)) as owners:
        row = owners.execute(
            query("partitions", "select_table_owner"), {"table": relation}
        ).fetchone()
    if row is None or row.owner != owner:
        statements.append(
            sql.SQL("ALTER TABLE {} OWNER TO {}").format(target, sql.Identifier(owner))
        )
    with conn.cursor(row_factory=class_row(_Grant)) as grants:
        held = {
            (g.grantee, g.privilege)
            for g in grants.execute(query("partitions", "select_table_grants"), {"table": relation})
            if g.grantee != owner
        }
    wanted = {(role, p) for role, privileges in mapping.grants.items() for p in privileges}

    def grantee_sql(grantee: str) -> sql.Composable:
        return sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)

    for grantee, privilege in sorted(held - wanted):
        if privilege in _PRIVILEGES:
            statements.append(
                sql.SQL("REVOKE {} ON {} FROM {}").format(
                    _PRIVILEGES[privilege], target, grantee_sql(grantee)
                )
            )
    for grantee, privilege in sorted(wanted - held):
        statements.append(
            sql.SQL("GRANT {} ON {} TO {}").format(
                _PRIVILEGES[privilege], target, grantee_sql(grantee)
            )
        )
    return statements


@dataclasses.dataclass(frozen=True)
class _Extent:
    blocks: int
    rows_per_block: float


@dataclasses.dataclass(frozen=True)
class _ArchiveRecord:
    id: int
    size_bytes: int | None
    sha256: str | None
    row_counts: dict[str, int] | None


class _Rotation:
    """The steps of one rotation of one table (native backend; partman overrides creation)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        settings: Settings,
        parent: ParentTable,
        policy: Policy,
        now: datetime,
        notify: Notify,
        *,
        dry_run: bool,
        batch_sizer: Callable[[], BatchSizer] | None = None,
        started: float | None = None,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.options = settings.partitions
        self.parent = parent
        self.policy = policy
        self.now = now
        self.notify = notify
        self.dry_run = dry_run
        self.started = time.monotonic() if started is None else started
        # the run's budget for retrying locks, shared by every step
        self.deadline = self.started + self.options.budget.total_seconds()
        self.batch_sizer = batch_sizer or (lambda: default_batch_sizer(self.options))
        self.columns = _columns(conn, parent)
        self.log: list[str] = []

    def clock(self) -> datetime:
        """The run's notion of now: ``now`` as given, moved on by the time the run has taken."""
        return self.now + timedelta(seconds=time.monotonic() - self.started)

    @functools.cached_property
    def reloptions(self) -> tuple[str, ...]:
        """Storage parameters of the newest partition (a partitioned table holds none of its
        own): a DBA's ``ALTER TABLE logs_p… SET (autovacuum_…)`` carries over to the next ones."""
        row = self.conn.execute(
            query("partitions", "select_newest_partition_options"), {"oid": self.parent.oid}
        ).fetchone()
        return tuple(row[0]) if row and row[0] else ()

    @functools.cached_property
    def privileges(self) -> roles.PartitionPrivileges:
        """The role mapping's [partitions]: owner and grants of every new partition."""
        return roles.load_mapping(self.settings).partitions

    @functools.cached_property
    def default_oid(self) -> int | None:
        if self.parent.default_partition is None:
            return None
        row = self.conn.execute(
            "SELECT to_regclass(%(t)s::text)::oid::bigint",
            {"t": self.parent.default_identifier().as_string(self.conn)},
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def conform_privileges(self, runner: _Runner, name: str) -> None:
        if self.dry_run:
            runner.record(f"-- owner and grants of {name} from the role mapping's [partitions]")
            return
        for statement in partition_privileges(self.conn, self.parent, name, self.privileges):
            runner.execute(statement)

    def runner(self) -> _Runner:
        relations = [self.parent.oid]
        if self.default_oid is not None:
            relations.append(self.default_oid)
        return _Runner(
            self.conn,
            self.options,
            self.notify,
            dry_run=self.dry_run,
            deadline=self.deadline,
            log=self.log,
            relations=relations,
        )

    # -- one step -------------------------------------------------------------------------

    def step(self, action: Action, work: Callable[[_Runner], dict[str, Any]]) -> StepResult:
        runner = self.runner()
        started = time.monotonic()
        try:
            with logs.step(
                action.describe(),
                interrupted="the step's transaction is rolled back: its rows and tables are as "
                "they were; the next run carries on",
                locks=STEP_LOCKS.get(action.kind, ""),
                log=logger,
            ):
                extra = work(runner)
        except (KronosError, psycopg.Error) as exc:
            error = (
                exc
                if isinstance(exc, KronosError)
                else db.step_error(self.conn, exc, self.settings)
            )
            self.notify(f"{action.describe()}: failed: {error.message}")
            return StepResult(
                action.kind,
                action.partition,
                False,
                action.describe(),
                time.monotonic() - started,
                runner.attempts,
                rows_planned=action.rows_in_default,
                error=error.message,
                error_code=int(error.exit_code),
                statements=tuple(runner.statements),
            )
        return StepResult(
            action.kind,
            action.partition,
            True,
            action.describe(),
            time.monotonic() - started,
            runner.attempts,
            rows_planned=action.rows_in_default,
            statements=tuple(runner.statements),
            **extra,
        )

    # -- moving rows and attaching --------------------------------------------------------

    def move_sql(self, name: str, *, in_blocks: bool) -> sql.Composed:
        return sql.SQL(
            query("partitions", "move_default_rows_in_blocks" if in_blocks else "move_default_rows")
        ).format(
            default_partition=self.parent.default_identifier(),
            key_column=self.parent.key(),
            partition=sql.Identifier(self.parent.schema, name),
            columns=sql.SQL(", ").join(sql.Identifier(c) for c in self.columns),
        )

    def move_rows(self, runner: _Runner, name: str, lower: datetime, upper: datetime) -> int:
        """Move the default partition's rows of [lower, upper) into ``name``, in batches.

        Runs inside the transaction that will attach ``name``: until it commits, readers still
        see these rows in the default partition. Batches walk the default's heap by block
        ranges up to its end when the move starts (each block read once); a last statement
        takes the rows written meanwhile, wherever they went. The batch size comes from the
        rotation's batch sizer.
        """
        if self.parent.default_partition is None:
            return 0
        params: dict[str, Any] = {"lower": lower, "upper": upper}
        if self.dry_run:
            runner.execute(
                self.move_sql(name, in_blocks=True),
                {**params, "first": "(0,0)", "last": "(N,0)"},
            )
            runner.execute(self.move_sql(name, in_blocks=False), params)
            return 0
        with self.conn.cursor(row_factory=class_row(_Extent)) as cur:
            extent = cur.execute(
                query("partitions", "select_heap_extent"),
                {"table": self.parent.default_identifier().as_string(self.conn)},
            ).fetchone()
        blocks = extent.blocks if extent else 0
        density = max(extent.rows_per_block if extent else 100.0, 1.0)
        sizer = self.batch_sizer()
        statement = self.move_sql(name, in_blocks=True)
        moved = 0
        position = 0
        last_report = time.monotonic()
        while position < blocks:
            span = max(1, math.ceil(sizer.next_size() / density))
            started = time.monotonic()
            count = self.conn.execute(
                statement,
                {**params, "first": f"({position},0)", "last": f"({position + span},0)"},
            ).rowcount
            sizer.record(max(count, 0), time.monotonic() - started)
            moved += max(count, 0)
            position += span
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                self.notify(f"{name}: {moved} row(s) moved so far ({position}/{blocks} blocks)")
        runner.record(
            _render_with_params(
                self.conn, statement, {**params, "first": "(0,0)", "last": f"({blocks},0)"}
            )
        )
        moved += max(runner.execute(self.move_sql(name, in_blocks=False), params), 0)
        return moved

    def attach_under_lock(
        self, runner: _Runner, name: str, lower: datetime, upper: datetime
    ) -> int:
        """Attach ``name`` while inserts wait for at most hold_timeout; returns rows moved.

        ``LOCK ONLY parent IN SHARE ROW EXCLUSIVE MODE`` (under lock_timeout) makes inserts
        wait *before* PostgreSQL routes their row, so none is routed to the default partition
        just before the attach and refused just after ("violates partition constraint"); reads
        go on. Then, within hold_timeout: the default partition's ACCESS EXCLUSIVE lock, the
        attach (its check of the default partition is the one scan under the lock) and the
        removal of the bounds check that spared the partition's own scan. A row of the range
        that reached the default partition since the move makes the attach fail: the next
        attempt moves such rows under the lock. Each attempt is a savepoint: giving up keeps
        the rows already moved in this transaction.
        """
        parent = self.parent
        moved_under_lock = 0
        under_lock = False
        while True:
            runner.attempts += 1
            try:
                with runner.transaction():
                    runner.execute(
                        sql.SQL("LOCK TABLE ONLY {} IN SHARE ROW EXCLUSIVE MODE").format(
                            parent.identifier()
                        )
                    )
                    hold = _Hold(runner)
                    moved = 0
                    if parent.default_partition is not None:
                        hold.execute(
                            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                                parent.default_identifier()
                            )
                        )
                        if under_lock:
                            moved = hold.execute(
                                self.move_sql(name, in_blocks=False),
                                {"lower": lower, "upper": upper},
                            )
                    hold.execute(_attach_sql(parent, name, lower, upper))
                    hold.execute(
                        sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                            sql.Identifier(parent.schema, name), _check_name(name)
                        )
                    )
                return moved_under_lock + max(moved, 0)
            except pg_errors.CheckViolation:
                if under_lock:
                    raise
                under_lock = True  # rows arrived since the move: take them under the lock
            except (pg_errors.LockNotAvailable, _HoldExceeded) as exc:
                runner.back_off(f"attach {name}", exc)

    def build_and_attach(
        self,
        runner: _Runner,
        name: str,
        lower: datetime,
        upper: datetime,
        *,
        existing: bool = False,
    ) -> int:
        """One transaction: build ``name`` (or check an existing table), move the default's
        rows of [lower, upper) into it, attach it. Returns the rows moved.

        Nothing is visible half-done: a kill or an error at any point rolls everything back,
        and the rows are still in the default partition.
        """

        def work() -> int:
            table = sql.Identifier(self.parent.schema, name)
            if existing:
                # a stray: prove its rows are all in the range (the scan locks only the stray)
                runner.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
                        table, _check_name(name), _bounds_check(self.parent, lower, upper)
                    )
                )
            else:
                runner.execute(_create_table_sql(self.parent, name, lower, upper, self.reloptions))
            self.conform_privileges(runner, name)
            moved = self.move_rows(runner, name, lower, upper)
            return moved + self.attach_under_lock(runner, name, lower, upper)

        return runner.retrying(f"attach {name}", work)

    # -- create, rescue, adopt ------------------------------------------------------------

    def create(self, action: Action) -> StepResult:
        """An empty range (ahead, or the current one with no row yet): build and attach."""
        assert action.lower is not None
        assert action.upper is not None
        lower, upper = action.lower, action.upper

        def work(runner: _Runner) -> dict[str, Any]:
            return {"rows_moved": self.build_and_attach(runner, action.partition, lower, upper)}

        return self.step(action, work)

    def rescue(self, action: Action) -> StepResult:
        """Rows of the range wait in the default partition: move them and attach, atomically.

        For the range holding now (``split``), writers keep adding rows to the default
        partition: first stop the bleeding (attach a partition from a stop point a few
        seconds ahead to the end of the range), wait until the stop point has passed, then
        move the rows before it. The set of rows moved is fixed by the stop point, whatever
        the insert rate.
        """
        assert action.lower is not None
        assert action.upper is not None
        lower, upper = action.lower, action.upper

        def work(runner: _Runner) -> dict[str, Any]:
            moved = 0
            end = upper
            if action.split:
                stop = _ceil_second(self.clock() + STOP_MARGIN)
                if stop < upper:
                    head = partition_name(self.parent.name, stop, self.policy.interval)
                    self.notify(
                        f"{action.partition}: stopping new rows at {_iso(stop)}: "
                        f"attaching {head} [{_iso(stop)}, {_iso(upper)}) first"
                    )
                    moved += self.build_and_attach(runner, head, stop, upper)
                    end = stop
                    wait = (stop - self.clock()).total_seconds()
                    if wait > 0 and not self.dry_run:
                        # rows stamped before the stop point may still be written until then
                        time.sleep(wait)
            existing = action.kind == "adopt"
            moved += self.build_and_attach(runner, action.partition, lower, end, existing=existing)
            return {"rows_moved": moved}

        return self.step(action, work)

    # -- retire ---------------------------------------------------------------------------

    def retire(self, action: Action) -> StepResult:
        def work(runner: _Runner) -> dict[str, Any]:
            self.detach(runner, action.partition, self.policy.retention_action)
            return self.finish(runner, action.partition, self.policy.retention_action)

        return self.step(action, work)

    def detach(self, runner: _Runner, name: str, retention_action: str) -> None:
        """Detach ``name`` and mark it, in one transaction: a kill leaves a findable table."""
        partition = sql.Identifier(self.parent.schema, name)
        mark = _mark_sql(self.parent, name, retention_action)
        if self.parent.default_partition is None:
            # CONCURRENTLY: no ACCESS EXCLUSIVE on the parent (inserts never wait on it); not
            # allowed in a transaction, so no LOCAL setting: the step's budget bounds its wait
            detach = sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                self.parent.identifier(), partition
            )
            self.outside_transaction(runner, detach)
            runner.retrying(f"mark {name}", lambda: runner.execute(mark))
            return

        # with a default partition PostgreSQL refuses CONCURRENTLY: the ACCESS EXCLUSIVE lock on
        # the parent is requested under lock_timeout (inserts queue behind the request that
        # long at most) and held for a catalog change, within hold_timeout
        def detach_and_mark() -> None:
            runner.execute(
                sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(
                    self.parent.identifier()
                )
            )
            hold = _Hold(runner)
            hold.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    self.parent.identifier(), partition
                )
            )
            hold.execute(mark)

        runner.retrying(f"detach {name}", detach_and_mark)

    def outside_transaction(self, runner: _Runner, statement: sql.Composed) -> None:
        """A statement that cannot run in a transaction block (``DETACH … CONCURRENTLY``).

        No session setting is made (a pooler would carry it to another client): the statement
        takes no lock inserts wait on, and it is cancelled from here when the run's budget
        ends; PostgreSQL then leaves the partition "detach pending", finalized by a later run.
        """
        runner.attempts += 1
        if self.dry_run:
            runner.execute(statement)
            return
        remaining = max(self.deadline - time.monotonic(), self.options.lock_timeout.total_seconds())
        cancel = getattr(self.conn, "cancel_safe", self.conn.cancel)
        timer = threading.Timer(remaining, cancel)
        timer.start()
        try:
            runner.execute(statement)
        except pg_errors.QueryCanceled:
            raise LockTimeoutError(
                f"{statement.as_string(self.conn)}: still waiting for older transactions when "
                "the run's budget ended; cancelled, the next run finalizes it"
            ) from None
        finally:
            timer.cancel()

    def finish(self, runner: _Runner, name: str, retention_action: str) -> dict[str, Any]:
        """Archive and/or drop a detached, marked table (or keep it, for ``detach``)."""
        table = sql.Identifier(self.parent.schema, name)
        if retention_action == "detach":
            keep = sql.SQL("COMMENT ON TABLE {} IS {}").format(
                table,
                sql.Literal(
                    f"{DETACHED_MARK}{self.parent.qualified} on {_iso(self.now)} "
                    "(retention_action = detach)"
                ),
            )
            runner.retrying(f"unmark {name}", lambda: runner.execute(keep))
            return {}
        if retention_action == "archive":
            return self.archive(runner, name)
        drop = sql.SQL("DROP TABLE {}").format(table)
        runner.retrying(f"drop {name}", lambda: runner.execute(drop))
        return {}

    def archive_path(self, name: str) -> Path:
        directory = self.options.archive_directory
        if not directory:
            raise UsageError("retention_action = archive needs partitions.archive_directory")
        # one name per partition: a rerun after a kill rewrites the same file
        return Path(directory) / f"{self.parent.schema}.{name}.copy.gz"

    def archive(self, runner: _Runner, name: str) -> dict[str, Any]:
        """Archive a detached table to a verified file, then record it and drop the table in one
        transaction: each archive is recorded exactly once, and its file matches its row."""
        table = sql.Identifier(self.parent.schema, name)
        path = self.archive_path(name)
        copy = sql.SQL("COPY {} TO STDOUT").format(table)
        count = sql.SQL(query("partitions", "count_rows")).format(table=table)
        drop = sql.SQL("DROP TABLE {}").format(table)
        qualified = f"{self.parent.schema}.{name}"
        if self.dry_run:
            runner.execute(copy)
            runner.execute(count)
            runner.record(f"-- record {path} in backups and drop {qualified}, in one transaction")
            runner.execute(drop)
            return {"archive_file": str(path)}
        expected = _count(self.conn, count, {})
        with self.conn.cursor(row_factory=class_row(_ArchiveRecord)) as cur:
            records = cur.execute(
                query("partitions", "select_archive_records"), {"file_path": str(path)}
            ).fetchall()
        if records:
            # an older kronos-db recorded the archive, then died before dropping the table
            record = records[0]
            digest = backups.file_digest(path) if path.exists() else None
            if (
                digest is not None
                and (digest.size_bytes, digest.sha256) == (record.size_bytes, record.sha256)
                and (record.row_counts or {}).get(qualified) == expected
            ):
                runner.record(f"-- {qualified} is archived already: backup {record.id}, {path}")
                runner.retrying(f"drop {name}", lambda: runner.execute(drop))
                return {"archive_file": str(path), "archived_rows": expected}
            # never overwrite a recorded file: this archive gets a name of its own
            path = path.with_name(f"{self.parent.schema}.{name}.{self.now:%Y%m%dT%H%M%SZ}.copy.gz")
            self.notify(
                f"backup {record.id} records {self.archive_path(name)} for {qualified} but the "
                f"file does not match it: kept as it is; archiving to {path}"
            )
        try:
            rows = archive_table(self.conn, table, path)
            written = count_archive_rows(path)
        except OSError as exc:
            raise ArchiveError(
                f"archive of {name}: cannot write {path}: {exc.strerror or exc}; "
                "the table is kept, detached, and the next run tries again"
            ) from None
        runner.record(runner.render(copy))
        runner.record(runner.render(count))
        if not rows == written == expected:
            path.unlink(missing_ok=True)
            raise ArchiveError(
                f"archive of {name}: the table has {expected} row(s), COPY sent "
                f"{rows}, the file holds {written}: file removed, table kept"
            )
        digest = backups.file_digest(path)

        def record_and_drop() -> int:
            recorded = backups.record_backup(
                self.conn,
                kind="partition_archive",
                file_path=path,
                size_bytes=digest.size_bytes,
                sha256=digest.sha256,
                row_counts={qualified: written},
                database_name=self.conn.info.dbname,
                compression="gzip",
            )
            runner.execute(drop)
            return recorded.id

        backup_id = runner.retrying(f"record the archive of {name} and drop it", record_and_drop)
        runner.record(f"-- recorded as backup {backup_id}: {path} ({digest.size_bytes} bytes)")
        return {"archive_file": str(path), "archived_rows": written}

    def finalize(self, action: Action) -> StepResult:
        def work(runner: _Runner) -> dict[str, Any]:
            statement = sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(
                self.parent.identifier(), sql.Identifier(self.parent.schema, action.partition)
            )
            self.outside_transaction(runner, statement)
            mark = _mark_sql(self.parent, action.partition, self.policy.retention_action)
            runner.retrying(f"mark {action.partition}", lambda: runner.execute(mark))
            return self.finish(runner, action.partition, self.policy.retention_action)

        return self.step(action, work)

    def resume(self, action: Action) -> StepResult:
        retention_action = action.detail.split()[0] if action.detail else "drop"
        if retention_action not in ("drop", "detach", "archive"):
            retention_action = "drop"
        return self.step(action, lambda r: self.finish(r, action.partition, retention_action))

    def closing_steps(self) -> list[StepResult]:
        """What a backend runs after the plan (pg_partman: its own maintenance)."""
        return []

    def unguard(self, action: Action) -> StepResult:
        """An older kronos-db's guard constraint rejects rows of the ranges it was guarding."""

        def work(runner: _Runner) -> dict[str, Any]:
            drop = sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                self.parent.default_identifier(), sql.Identifier(action.partition)
            )

            def run() -> None:
                hold = _Hold(runner)
                hold.execute(drop)

            runner.retrying("drop the leftover guard", run)
            return {}

        return self.step(action, work)


def _reason(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, KronosError) else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _mark_sql(parent: ParentTable, name: str, retention_action: str) -> sql.Composed:
    return sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(parent.schema, name),
        sql.Literal(f"{RETIRED_MARK}{parent.qualified}: {retention_action} pending"),
    )


def archive_table(conn: psycopg.Connection[Any], table: sql.Identifier, path: Path) -> int:
    """Write ``table`` to ``path`` as gzip'd COPY text (one line per row); return the rows sent.

    Written to a temporary name, fsync'd, renamed, and the directory fsync'd: a file with the
    final name is complete and stays so through a crash. A rerun overwrites it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    rows = 0
    with partial.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as compressed:
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} TO STDOUT").format(table)) as copy:
            for chunk in copy:
                data = bytes(chunk)
                rows += data.count(b"\n")
                compressed.write(data)
        compressed.flush()
        compressed.close()
        raw.flush()
        os.fsync(raw.fileno())
    partial.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return rows


def count_archive_rows(path: Path) -> int:
    """Rows in an archive file, read back from disk (COPY text: newlines inside are escaped)."""
    rows = 0
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            rows += chunk.count(b"\n")
    return rows


def rotate(
    conn: psycopg.Connection[Any] | db.Target,
    settings: Settings,
    now: datetime,
    *,
    dry_run: bool = False,
    notify: Notify = _quiet,
    batch_sizer: Callable[[], BatchSizer] | None = None,
    pacer: replication.Pacer | None = None,
) -> RotationResult:
    """Adopt strays, rescue default rows, create the missing partitions, apply retention.

    ``conn`` is an autocommit psycopg connection (each step commits on its own), or a
    ``db.Target`` to open one for the call. Takes the table's advisory lock on it first: when
    another run holds it, returns at once with ``skipped=True`` having done nothing. A failed
    step is reported in the result and does not stop the independent ones. ``dry_run`` runs
    nothing and returns, in ``statements``, the SQL it would run. ``batch_sizer`` makes the
    sizer of each move's batches (default: sized by ``move_batch_time``, or ``move_batch_size``
    rows each); ``pacer`` clears each batch (default: one from ``[replication]``, see
    kronos_db.replication). On a standby it is skipped (``skipped``, with the ``reason``), or
    fails with ``on_standby = "fail"``; a dry run only reads, so it runs there.
    """
    options = settings.partitions
    require_lock_timeout(options.lock_timeout, "partitions.lock_timeout")
    require_lock_timeout(options.hold_timeout, "partitions.hold_timeout")
    if isinstance(conn, db.Target):
        with db.connection(conn) as opened:
            return rotate(
                opened,
                settings,
                now,
                dry_run=dry_run,
                notify=notify,
                batch_sizer=batch_sizer,
                pacer=pacer,
            )
    started = time.monotonic()
    now = _utc(now)
    if not conn.autocommit:
        raise UsageError("rotate needs an autocommit connection")
    with _catalog_scope(conn, options):
        parent = parent_table(conn, options.table)
        policy = resolve_policy(conn, options)
    if not dry_run and policy.retention_action == "archive" and not options.archive_directory:
        raise UsageError("partitions.retention_action = archive needs partitions.archive_directory")
    # the same crontab runs on every node: a standby skips, before the lease (its first write)
    if dry_run:
        lease: AbstractContextManager[bool] = (
            locks.try_advisory_lock(conn, lock_name(parent.qualified))
            if replication.writable(conn)
            else nullcontext(True)  # a dry run reads only: no lease to take on a standby
        )
    else:
        standby = replication.standby_skip(
            conn, "partitions rotate", on_standby=settings.replication.on_standby
        )
        if standby is not None:
            return RotationResult(
                parent.qualified, policy.backend, now, dry_run, True, (), (), reason=standby
            )
        lease = locks.try_advisory_lock(conn, lock_name(parent.qualified))
        if pacer is None:
            pacer = replication.pacer(conn, settings.replication, "partitions rotate")
        if pacer is not None:
            batch_sizer = _paced(batch_sizer or (lambda: default_batch_sizer(options)), pacer)
    with lease as acquired:
        if not acquired:
            return RotationResult(parent.qualified, policy.backend, now, dry_run, True, (), ())
        with _catalog_scope(conn, options):
            plan = plan_rotation(conn, parent, policy, now)
        for warning in plan.warnings:
            notify(f"warning: {warning}")
        backend = _Rotation
        if policy.backend == "partman":
            from kronos_db.partman import PartmanRotation

            backend = PartmanRotation
        rotation = backend(
            conn,
            settings,
            parent,
            policy,
            now,
            notify,
            dry_run=dry_run,
            batch_sizer=batch_sizer,
            started=started,
        )
        steps = run_actions(rotation, plan.actions)
        steps += rotation.closing_steps()
        return RotationResult(
            parent.qualified,
            policy.backend,
            now,
            dry_run,
            False,
            tuple(steps),
            plan.warnings,
            tuple(rotation.log),
        )


def run_actions(rotation: _Rotation, actions: Sequence[Action]) -> list[StepResult]:
    """Run the plan's steps in a safe order; independent steps go on after a failure.

    Leftovers first (an old guard, unfinished retirements), then strays and rescues (they
    empty the default partition, whose check every later attach makes under its lock), the
    partitions ahead, and retention last.
    """
    order = {
        "unguard": 0,
        "finalize": 1,
        "resume": 2,
        "adopt": 3,
        "rescue": 4,
        "create": 5,
        "retire": 6,
    }
    results: list[StepResult] = []
    for action in sorted(actions, key=lambda a: order[a.kind]):
        if action.kind == "unguard":
            results.append(rotation.unguard(action))
        elif action.kind == "finalize":
            results.append(rotation.finalize(action))
        elif action.kind == "resume":
            results.append(rotation.resume(action))
        elif action.kind in ("adopt", "rescue"):
            results.append(rotation.rescue(action))
        elif action.kind == "create":
            results.append(rotation.create(action))
        elif action.kind == "retire":
            results.append(rotation.retire(action))
    return results
