"""The partition lifecycle of the range-partitioned ``logs`` table: premake, retention, rescue.

Two library entry points, both taking ``now`` (UTC, tz-aware) so that tests and callers move
the clock:

* :func:`partition_status` — every partition, the default partition's rows, how far coverage
  reaches ahead, what the next rotation would do, and a monitoring level (OK/WARNING/CRITICAL).
* :func:`rotate` — creates the missing partitions, moves rows out of the default partition,
  retires partitions past retention (drop, detach or archive), under an advisory lock per
  table; returns what it did (or, with ``dry_run``, the exact SQL it would run).

How each step stays gentle on a busy table (see ``docs/partitions.md`` for the lock table):

* a new partition is built as a plain table with a ``CHECK`` matching its bounds, then
  ``ATTACH``-ed (``SHARE UPDATE EXCLUSIVE`` on the parent; the ``CHECK`` spares the scan);
* for ranges in the future, a validated guard ``CHECK`` on the default partition proves that it
  holds no row of the new ranges, so ``ATTACH`` does not scan it under ``ACCESS EXCLUSIVE``;
  ranges at or before ``now`` (where services write right now) move their rows out in
  batches first, then attach under a lock held only for the last few rows;
* every DDL runs under a short ``lock_timeout``, retried with back-off within a budget;
* a retired partition is detached and marked with a comment before it is dropped or archived,
  so a run that dies half-way is finished by the next one; an interrupted
  ``DETACH … CONCURRENTLY`` is ``FINALIZE``-d.

Partition names follow pg_partman 4.x (``logs_p2026_11_25``, ``logs_p2026w48``…), so either tool
can adopt the other's partitions. The pg_partman backend lives in :mod:`kronos_db.partman`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq, sql
from psycopg.rows import class_row

from kronos_db import backups, db, locks, roles
from kronos_db.config import PartitionSettings, Settings, require_lock_timeout
from kronos_db.durations import format_duration, postgres_interval
from kronos_db.errors import (
    ArchiveError,
    KronosError,
    LockTimeoutError,
    UsageError,
    translate_database_error,
)
from kronos_db.resources import query

logger = logging.getLogger(__name__)

Interval = Literal["hourly", "daily", "weekly", "monthly"]
Level = Literal["OK", "WARNING", "CRITICAL"]
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
MAX_RETRY_DELAY = 30.0
DEFAULT_ROW_COUNT_CAP = 10_000_000


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
    """pg_partman 4.x's name for the partition starting at ``lower``: ``logs_p2026_11_25``."""
    lower = _utc(lower)
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
class _Column:
    name: str


@dataclasses.dataclass(frozen=True)
class _Bucket:
    lower: datetime
    rows: int


@dataclasses.dataclass(frozen=True)
class _RetiredTable:
    schema: str
    name: str
    note: str


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the partitions should look like: from ``[partitions]`` or pg_partman's part_config."""

    backend: Literal["native", "partman"]
    interval: Interval
    premake: int
    retention: timedelta
    retention_action: Literal["drop", "detach", "archive"]


@contextmanager
def session_setting(conn: psycopg.Connection[Any], name: str, value: str) -> Iterator[None]:
    """Set a session setting for the block, then put the caller's value back."""
    row = conn.execute("SELECT current_setting(%(name)s::text)", {"name": name}).fetchone()
    previous = str(row[0]) if row else ""
    conn.execute(
        "SELECT set_config(%(name)s::text, %(value)s::text, false)", {"name": name, "value": value}
    )
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            conn.execute(
                "SELECT set_config(%(name)s::text, %(value)s::text, false)",
                {"name": name, "value": previous},
            )


def _catalog_timeout(conn: psycopg.Connection[Any], settings: PartitionSettings) -> Any:
    return session_setting(conn, "statement_timeout", postgres_interval(settings.statement_timeout))


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
) -> list[_Bucket]:
    if parent.default_partition is None:
        return []
    statement = sql.SQL(query("partitions", "select_default_buckets")).format(
        key_column=sql.Identifier(parent.key_column or ""),
        default_partition=parent.default_identifier(),
    )
    with conn.cursor(row_factory=class_row(_Bucket)) as cur:
        rows = cur.execute(statement, {"unit": TRUNC_UNIT[interval]}).fetchall()
    return [_Bucket(row.lower.astimezone(UTC), row.rows) for row in rows]


def count_default_rows(
    conn: psycopg.Connection[Any], parent: ParentTable, cap: int = DEFAULT_ROW_COUNT_CAP
) -> int:
    """Rows in the default partition (exact up to ``cap``)."""
    if parent.default_partition is None:
        return 0
    statement = sql.SQL(query("partitions", "count_default_rows")).format(
        default_partition=parent.default_identifier()
    )
    row = conn.execute(statement, {"cap": cap}).fetchone()
    return int(row[0]) if row else 0


def _retired_tables(conn: psycopg.Connection[Any], parent: ParentTable) -> list[_RetiredTable]:
    with conn.cursor(row_factory=class_row(_RetiredTable)) as cur:
        return cur.execute(
            query("partitions", "select_retired_tables"),
            {"prefix": f"{RETIRED_MARK}{parent.qualified}:"},
        ).fetchall()


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


ActionKind = Literal["finalize", "resume", "create", "retire"]


@dataclasses.dataclass(frozen=True)
class Action:
    """One step of a rotation. ``rows_in_default``: rows a ``create`` moves out of the default."""

    kind: ActionKind
    partition: str
    lower: datetime | None = None
    upper: datetime | None = None
    rows_in_default: int = 0
    detail: str = ""

    def describe(self) -> str:
        if self.kind == "create":
            extra = (
                f", moving {self.rows_in_default} row(s) out of the default partition"
                if self.rows_in_default
                else ""
            )
            return f"create {self.partition} [{_iso(self.lower)}, {_iso(self.upper)}){extra}"
        if self.kind == "retire":
            return (
                f"retire {self.partition} [{_iso(self.lower)}, {_iso(self.upper)}): {self.detail}"
            )
        if self.kind == "finalize":
            return f"finish the interrupted concurrent detach of {self.partition}"
        return f"finish retiring {self.partition}: {self.detail}"


def _iso(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "?"


@dataclasses.dataclass(frozen=True)
class Plan:
    policy: Policy
    actions: tuple[Action, ...]
    warnings: tuple[str, ...]
    default_rows_expired: int


def _overlaps(partition: Partition, lower: datetime, upper: datetime) -> bool:
    return (
        partition.lower is not None
        and partition.upper is not None
        and partition.lower < upper
        and lower < partition.upper
    )


def retention_cutoff(policy: Policy, now: datetime) -> datetime | None:
    """Partitions whose whole range ends before this instant are retired (as pg_partman does)."""
    if policy.retention <= timedelta(0):
        return None
    return _utc(now) - policy.retention


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
    ranged = [p for p in partitions if not p.is_default and p.lower is not None]
    names = {p.name for p in partitions}
    actions: list[Action] = []
    warnings: list[str] = []

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

    cutoff = retention_cutoff(policy, now)
    wanted: dict[datetime, int] = {}
    current = floor_time(now, policy.interval)
    for offset in range(policy.premake + 1):
        wanted[add_intervals(current, policy.interval, offset)] = 0
    expired_rows = 0
    for bucket in _default_buckets(conn, parent, policy.interval):
        upper = add_intervals(bucket.lower, policy.interval)
        if cutoff is not None and upper < cutoff:
            # rows older than the retention: no partition is made only to be retired at once;
            # they stay where they are, reported, for a human to decide
            expired_rows += bucket.rows
            continue
        wanted[bucket.lower] = wanted.get(bucket.lower, 0) + bucket.rows
    if expired_rows:
        warnings.append(
            f"{expired_rows} row(s) in the default partition are older than the "
            f"retention ({format_duration(policy.retention)}): left in place"
        )

    for lower in sorted(wanted):
        upper = add_intervals(lower, policy.interval)
        overlapping = [p for p in ranged if _overlaps(p, lower, upper)]
        if overlapping:
            exact = any(p.lower == lower and p.upper == upper for p in overlapping)
            if not exact and wanted[lower]:
                warnings.append(
                    f"{wanted[lower]} row(s) in the default partition fall in "
                    f"[{_iso(lower)}, {_iso(upper)}), which overlaps "
                    f"{', '.join(p.name for p in overlapping)}: not moved"
                )
            continue
        name = partition_name(parent.name, lower, policy.interval)
        if name in names or _relation_exists(conn, parent.schema, name):
            warnings.append(
                f"cannot create {name}: a table of that name already exists "
                "(a detached partition?); rename or drop it"
            )
            continue
        actions.append(Action("create", name, lower, upper, rows_in_default=wanted[lower]))

    if cutoff is not None:
        for partition in ranged:
            if (
                partition.upper is not None
                and partition.upper < cutoff
                and not partition.detach_pending
            ):
                actions.append(
                    Action(
                        "retire",
                        partition.name,
                        partition.lower,
                        partition.upper,
                        detail=policy.retention_action,
                    )
                )
    return Plan(policy, tuple(actions), tuple(warnings), expired_rows)


def _relation_exists(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%(name)s::text) IS NOT NULL",
        {"name": sql.Identifier(schema, name).as_string(conn)},
    ).fetchone()
    return bool(row and row[0])


# ---------------------------------------------------------------------------------------------
# Status


@dataclasses.dataclass(frozen=True)
class PartitionStatus:
    """The partitions of a table at ``now``, and whether a monitoring check should worry."""

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
    covered_until: datetime | None
    partitions_ahead: int
    plan: tuple[Action, ...]
    warnings: tuple[str, ...]
    level: Level
    problems: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        """0/1/2 for OK/WARNING/CRITICAL (monitoring-plugin convention)."""
        return {"OK": 0, "WARNING": 1, "CRITICAL": 2}[self.level]


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
    conn: psycopg.Connection[Any] | db.Target, settings: Settings, now: datetime
) -> PartitionStatus:
    """Every partition, the default partition's rows, coverage ahead and the next rotation.

    ``conn`` is an open psycopg connection, or a ``db.Target`` to open one for the call.
    ``level`` is CRITICAL when ``now`` is not covered or fewer than ``coverage_critical``
    partitions are ready ahead; WARNING when fewer than ``coverage_warning`` are, when rows sit
    in the default partition, or when a retirement was left unfinished.
    """
    if isinstance(conn, db.Target):
        with db.connection(conn) as opened:
            return partition_status(opened, settings, now)
    options = settings.partitions
    now = _utc(now)
    with _catalog_timeout(conn, options):
        parent = parent_table(conn, options.table)
        policy = resolve_policy(conn, options)
        partitions = list_partitions(conn, parent)
        plan = plan_rotation(conn, parent, policy, now, partitions=partitions)
        default_rows = count_default_rows(conn, parent)
    covered_until, ahead = coverage(partitions, now)

    problems: list[str] = []
    level: Level = "OK"

    def raise_to(new: Level, problem: str) -> None:
        nonlocal level
        problems.append(problem)
        if new == "CRITICAL" or level == "OK":
            level = new

    if covered_until is None:
        raise_to(
            "CRITICAL", f"no partition covers now ({_iso(now)}): rows go to the default partition"
        )
    elif ahead < options.coverage_critical:
        raise_to(
            "CRITICAL",
            f"only {ahead} partition(s) ready ahead (critical under "
            f"{options.coverage_critical}), coverage ends {_iso(covered_until)}",
        )
    elif ahead < options.coverage_warning:
        raise_to(
            "WARNING",
            f"only {ahead} partition(s) ready ahead (warning under "
            f"{options.coverage_warning}), coverage ends {_iso(covered_until)}",
        )
    if default_rows:
        raise_to(
            "WARNING",
            f"{default_rows} row(s) in the default partition "
            f"{parent.default_partition}: run `kronos-db partitions rotate`",
        )
    pending = [a for a in plan.actions if a.kind in ("finalize", "resume")]
    if pending:
        raise_to(
            "WARNING",
            f"{len(pending)} unfinished retirement(s): " + "; ".join(a.describe() for a in pending),
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
        covered_until=covered_until,
        partitions_ahead=ahead,
        plan=plan.actions,
        warnings=plan.warnings,
        level=level,
        problems=tuple(problems),
    )


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


class _Runner:
    """Runs DDL for one rotation: short lock_timeout, retries with back-off, or only records."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        settings: PartitionSettings,
        notify: Notify,
        *,
        dry_run: bool,
        log: list[str] | None = None,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.notify = notify
        self.dry_run = dry_run
        self.statements: list[str] = []
        # every statement of the rotation, in the order it ran (what --dry-run prints)
        self.log = log if log is not None else []
        self.attempts = 0

    def record(self, text: str) -> None:
        self.statements.append(text)
        self.log.append(text)

    def render(self, statement: sql.Composable) -> str:
        return statement.as_string(self.conn)

    def retrying(self, label: str, work: Callable[[], T], *, transaction: bool = True) -> T:
        """Run ``work`` (in one transaction) under lock_timeout, retried within the budget."""
        deadline = time.monotonic() + self.settings.budget.total_seconds()
        delay = self.settings.retry_delay.total_seconds()
        timeout = postgres_interval(self.settings.lock_timeout)
        while True:
            self.attempts += 1
            try:
                if not transaction:
                    # DETACH … CONCURRENTLY / FINALIZE cannot run in a transaction block
                    with session_setting(self.conn, "lock_timeout", timeout):
                        return work()
                with self.conn.transaction():
                    self._set_lock_timeout(timeout, local=True)
                    return work()
            except psycopg.Error as exc:
                if not _is_lock_timeout(exc):
                    raise
                remaining = deadline - time.monotonic()
                wait = min(delay * random.uniform(0.8, 1.2), MAX_RETRY_DELAY)
                if remaining <= wait:
                    raise LockTimeoutError(
                        f"{label}: lock_timeout ({timeout}) hit {self.attempts} time(s) within "
                        f"the budget of {format_duration(self.settings.budget)}: "
                        f"{str(exc).strip().splitlines()[0]}"
                    ) from None
                self.notify(f"{label}: lock timeout, retrying in {wait:.1f}s")
                time.sleep(wait)
                delay *= 2

    def _set_lock_timeout(self, value: str, *, local: bool) -> None:
        self.conn.execute(
            "SELECT set_config('lock_timeout', %(value)s::text, %(local)s::bool)",
            {"value": value, "local": local},
        )

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


def _render_with_params(
    conn: psycopg.Connection[Any], statement: sql.Composable, params: dict[str, Any]
) -> str:
    from kronos_db.resources import render_with_literals, trusted_sql

    text = render_with_literals(trusted_sql(statement.as_string(conn)), params)
    lines = text.splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines)


def _bounds_check(
    parent: ParentTable, lower: datetime, upper: datetime, negate: bool = False
) -> sql.Composed:
    column = sql.Identifier(parent.key_column or "")
    inside = sql.SQL("{column} >= {lower} AND {column} < {upper}").format(
        column=column, lower=sql.Literal(lower), upper=sql.Literal(upper)
    )
    return sql.SQL("NOT ({})").format(inside) if negate else inside


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


def _create_table_sql(
    parent: ParentTable, action: Action, reloptions: Sequence[str] = ()
) -> sql.Composed:
    assert action.lower is not None
    assert action.upper is not None
    return sql.SQL(
        "CREATE TABLE {partition} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING GENERATED INCLUDING STORAGE INCLUDING STATISTICS INCLUDING INDEXES, "
        "CONSTRAINT {check} CHECK ({bounds})){storage}"
    ).format(
        partition=sql.Identifier(parent.schema, action.partition),
        parent=parent.identifier(),
        check=sql.Identifier(f"{action.partition}_bounds"[:63]),
        bounds=_bounds_check(parent, action.lower, action.upper),
        storage=_storage_parameters(reloptions),
    )


def _attach_sql(parent: ParentTable, action: Action) -> sql.Composed:
    return sql.SQL(
        "ALTER TABLE {parent} ATTACH PARTITION {partition} FOR VALUES FROM ({lower}) TO ({upper})"
    ).format(
        parent=parent.identifier(),
        partition=sql.Identifier(parent.schema, action.partition),
        lower=sql.Literal(action.lower),
        upper=sql.Literal(action.upper),
    )


def _guard_name(parent: ParentTable) -> sql.Identifier:
    return sql.Identifier(f"{parent.default_partition}_kronos_attach_guard"[:63])


_PRIVILEGES = {
    name: sql.SQL(name)
    for name in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
}


@dataclasses.dataclass(frozen=True)
class _Grant:
    grantee: str
    privilege: str


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
    row = conn.execute(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass(%(t)s::text)",
        {"t": relation},
    ).fetchone()
    statements: list[sql.Composed] = []
    if row is None or row[0] != owner:
        statements.append(
            sql.SQL("ALTER TABLE {} OWNER TO {}").format(target, sql.Identifier(owner))
        )
    with conn.cursor(row_factory=class_row(_Grant)) as cur:
        held = {
            (g.grantee, g.privilege)
            for g in cur.execute(query("partitions", "select_table_grants"), {"table": relation})
        }
    held = {(grantee, privilege) for grantee, privilege in held if grantee != owner}
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


class _Rotation:
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
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.options = settings.partitions
        self.parent = parent
        self.policy = policy
        self.now = now
        self.notify = notify
        self.dry_run = dry_run
        self.columns = _columns(conn, parent)
        self.log: list[str] = []

    @functools.cached_property
    def reloptions(self) -> tuple[str, ...]:
        """Storage parameters of the newest partition (a partitioned table has none of its own):
        a DBA's ``ALTER TABLE logs_p… SET (autovacuum_…)`` carries over to the next ones."""
        row = self.conn.execute(
            query("partitions", "select_newest_partition_options"), {"oid": self.parent.oid}
        ).fetchone()
        return tuple(row[0]) if row and row[0] else ()

    @functools.cached_property
    def privileges(self) -> roles.PartitionPrivileges:
        """The role mapping's [partitions]: owner and grants of every new partition."""
        return roles.load_mapping(self.settings).partitions

    def conform_privileges(self, runner: _Runner, name: str) -> None:
        for statement in partition_privileges(self.conn, self.parent, name, self.privileges):
            runner.execute(statement)

    def runner(self) -> _Runner:
        return _Runner(self.conn, self.options, self.notify, dry_run=self.dry_run, log=self.log)

    # -- one step -------------------------------------------------------------------------

    def step(self, action: Action, work: Callable[[_Runner], dict[str, Any]]) -> StepResult:
        runner = self.runner()
        started = time.monotonic()
        try:
            extra = work(runner)
        except (KronosError, psycopg.Error) as exc:
            error = exc if isinstance(exc, KronosError) else translate_database_error(exc)
            self.notify(f"{action.describe()}: failed: {error.message}")
            return StepResult(
                action.kind,
                action.partition,
                False,
                action.describe(),
                time.monotonic() - started,
                runner.attempts,
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
            statements=tuple(runner.statements),
            **extra,
        )

    # -- create ---------------------------------------------------------------------------

    def create_tables(self, runner: _Runner, action: Action) -> None:
        statement = _create_table_sql(self.parent, action, self.reloptions)

        def create() -> None:
            runner.execute(statement)
            if not self.dry_run:
                self.conform_privileges(runner, action.partition)

        runner.retrying(f"create {action.partition}", create)

    def move_rows(self, runner: _Runner, action: Action) -> int:
        """Move the default partition's rows of the range, one short transaction per batch."""
        statement = self._move_sql(action)
        params = {
            "lower": action.lower,
            "upper": action.upper,
            "batch_size": self.options.move_batch_size,
        }
        if self.dry_run:
            runner.execute(statement, params)
            return 0
        moved = 0
        while True:
            # each batch commits on its own: a row is deleted from the default and inserted in
            # the partition by one statement, so it is in exactly one place at every instant
            with self.conn.transaction():
                count = self.conn.execute(statement, params).rowcount
            if count <= 0:
                break
            moved += count
        runner.record(_render_with_params(self.conn, statement, params))
        return moved

    def _move_sql(self, action: Action) -> sql.Composed:
        return sql.SQL(query("partitions", "move_default_rows")).format(
            default_partition=self.parent.default_identifier(),
            key_column=sql.Identifier(self.parent.key_column or ""),
            partition=sql.Identifier(self.parent.schema, action.partition),
            columns=sql.SQL(", ").join(sql.Identifier(c) for c in self.columns),
        )

    def attach_locked(self, runner: _Runner, action: Action) -> int:
        """Attach a range services may be writing to: last rows moved under the lock."""
        params = {"lower": action.lower, "upper": action.upper, "batch_size": 2_147_483_647}
        moved = 0

        def attach() -> None:
            nonlocal moved
            runner.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                    self.parent.identifier()
                )
            )
            if self.parent.default_partition is not None:
                runner.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                        self.parent.default_identifier()
                    )
                )
                moved = runner.execute(self._move_sql(action), params)
            runner.execute(_attach_sql(self.parent, action))

        runner.retrying(f"attach {action.partition}", attach)
        return max(moved, 0)

    def create_current(self, action: Action) -> StepResult:
        """A range at or before now: move rows in batches, then attach under a short lock."""

        def work(runner: _Runner) -> dict[str, Any]:
            self.create_tables(runner, action)
            # batches first, so that the locked attach below only moves the last arrivals
            moved = self.move_rows(runner, action) if action.rows_in_default else 0
            moved += self.attach_locked(runner, action)
            return {"rows_moved": moved}

        return self.step(action, work)

    def create_future(self, actions: Sequence[Action]) -> list[StepResult]:
        """Ranges after now: one validated guard on the default spares every attach its scan."""
        if not actions:
            return []
        results = [
            self.step(action, functools.partial(self._create_and_move, action=action))
            for action in actions
        ]
        ready = [index for index, result in enumerate(results) if result.ok]
        if not ready:
            return results
        guarded = False
        try:
            if self.parent.default_partition is not None:
                guarded = self._add_guard([actions[index] for index in ready])
            for index in ready:
                action = actions[index]
                attach = self.step(
                    action,
                    functools.partial(
                        self._attach_future,
                        action=action,
                        guarded=guarded or self.parent.default_partition is None,
                    ),
                )
                created = results[index]
                results[index] = dataclasses.replace(
                    attach,
                    rows_moved=created.rows_moved + attach.rows_moved,
                    seconds=created.seconds + attach.seconds,
                    attempts=created.attempts + attach.attempts,
                    statements=(*created.statements, *attach.statements),
                )
        finally:
            if guarded:
                self._drop_guard()
        return results

    def _guard_sql(self, actions: Sequence[Action]) -> tuple[sql.Composed, sql.Composed]:
        lower = min(a.lower for a in actions if a.lower is not None)
        upper = max(a.upper for a in actions if a.upper is not None)
        default = self.parent.default_identifier()
        guard = _guard_name(self.parent)
        add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID").format(
            default, guard, _bounds_check(self.parent, lower, upper, negate=True)
        )
        validate = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(default, guard)
        return add, validate

    def _add_guard(self, actions: Sequence[Action]) -> bool:
        """Prove the default partition holds no row of the new ranges; False: not proven."""
        add, validate = self._guard_sql(actions)
        runner = self.runner()
        try:
            # NOT VALID: a catalog change only (brief ACCESS EXCLUSIVE on the default)
            runner.retrying("guard the default partition", functools.partial(runner.execute, add))
        except (KronosError, psycopg.Error) as exc:
            self.notify(
                f"could not guard {self.parent.default_partition}: {_reason(exc)}; "
                "attaching under the lock instead"
            )
            return False
        try:
            # the scan runs under SHARE UPDATE EXCLUSIVE: services keep writing meanwhile
            runner.retrying("validate the guard", functools.partial(runner.execute, validate))
        except (KronosError, psycopg.Error) as exc:
            # a row of these ranges arrived since the move: attach under the lock instead
            self.notify(
                f"guard on {self.parent.default_partition} not validated "
                f"({_reason(exc)}): attaching under the lock instead"
            )
            self._drop_guard()
            return False
        return True

    def _drop_guard(self) -> None:
        runner = self.runner()
        drop = sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
            self.parent.default_identifier(), _guard_name(self.parent)
        )
        try:
            runner.retrying("drop the guard", functools.partial(runner.execute, drop))
        except (KronosError, psycopg.Error) as exc:
            # left behind it rejects rows of ranges that have partitions now, i.e. none;
            # the next run drops it first thing
            self.notify(f"could not drop the guard constraint: {_reason(exc)}")

    def _create_and_move(self, runner: _Runner, *, action: Action) -> dict[str, Any]:
        self.create_tables(runner, action)
        moved = self.move_rows(runner, action) if action.rows_in_default else 0
        return {"rows_moved": moved}

    def _attach_future(self, runner: _Runner, *, action: Action, guarded: bool) -> dict[str, Any]:
        if guarded:
            runner.retrying(
                f"attach {action.partition}",
                functools.partial(runner.execute, _attach_sql(self.parent, action)),
            )
            return {}
        return {"rows_moved": self.attach_locked(runner, action)}

    # -- retire ---------------------------------------------------------------------------

    def retire(self, action: Action) -> StepResult:
        def work(runner: _Runner) -> dict[str, Any]:
            self.detach(runner, action.partition, self.policy.retention_action)
            return self.finish(runner, action.partition, self.policy.retention_action)

        return self.step(action, work)

    def detach(self, runner: _Runner, name: str, retention_action: str) -> None:
        partition = sql.Identifier(self.parent.schema, name)
        mark = _mark_sql(self.parent, name, retention_action)
        if self.parent.default_partition is None:
            # CONCURRENTLY: no ACCESS EXCLUSIVE on the parent; not allowed in a transaction
            detach = sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                self.parent.identifier(), partition
            )
            runner.retrying(f"detach {name}", lambda: runner.execute(detach), transaction=False)
            runner.execute(mark)
            return
        # with a default partition PostgreSQL refuses CONCURRENTLY: a plain DETACH holds
        # ACCESS EXCLUSIVE on the parent for the catalog change only (no scan), under the
        # short lock_timeout; the mark commits with it, so a crash leaves a findable table
        detach = sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
            self.parent.identifier(), partition
        )

        def detach_and_mark() -> None:
            runner.execute(detach)
            runner.execute(mark)

        runner.retrying(f"detach {name}", detach_and_mark)

    def finish(self, runner: _Runner, name: str, retention_action: str) -> dict[str, Any]:
        """Archive and/or drop a detached, marked table (or keep it, for ``detach``)."""
        table = sql.Identifier(self.parent.schema, name)
        if retention_action == "detach":
            keep = sql.SQL("COMMENT ON TABLE {} IS {}").format(
                table,
                sql.Literal(
                    f"kronos-db: detached from {self.parent.qualified} on {_iso(self.now)} "
                    "(retention_action = detach)"
                ),
            )
            runner.retrying(f"unmark {name}", lambda: runner.execute(keep))
            return {}
        extra: dict[str, Any] = {}
        if retention_action == "archive":
            extra = self.archive(runner, name)
        drop = sql.SQL("DROP TABLE {}").format(table)
        runner.retrying(f"drop {name}", lambda: runner.execute(drop))
        return extra

    def archive(self, runner: _Runner, name: str) -> dict[str, Any]:
        directory = self.options.archive_directory
        if not directory:
            raise UsageError("retention_action = archive needs partitions.archive_directory")
        table = sql.Identifier(self.parent.schema, name)
        path = Path(directory) / f"{self.parent.schema}.{name}.{self.now:%Y%m%dT%H%M%SZ}.copy.gz"
        copy = sql.SQL("COPY {} TO STDOUT").format(table)
        count = sql.SQL(query("partitions", "count_rows")).format(table=table)
        record = sql.SQL(query("backups", "insert_backup"))
        planned = {
            "created_at": None,
            "file_path": str(path),
            "kind": "partition_archive",
            "database_name": self.conn.info.dbname,
            "size_bytes": None,
            "sha256": None,
            "compression": "gzip",
            "row_counts": None,
            "server_version": None,
            "tool_version": None,
            "started_at": None,
            "finished_at": None,
        }
        if self.dry_run:
            runner.execute(copy)
            runner.execute(count)
            runner.execute(record, planned)
            return {"archive_file": str(path)}
        try:
            rows = archive_table(self.conn, table, path)
            written = count_archive_rows(path)
        except OSError as exc:
            raise ArchiveError(
                f"archive of {name}: cannot write {path}: {exc.strerror or exc}; "
                "the table is kept, detached, and the next run tries again"
            ) from None
        row = self.conn.execute(count).fetchone()
        expected = int(row[0]) if row else -1
        runner.record(runner.render(copy))
        runner.record(runner.render(count))
        if not rows == written == expected:
            path.unlink(missing_ok=True)
            raise ArchiveError(
                f"archive of {name}: the table has {expected} row(s), COPY sent "
                f"{rows}, the file holds {written}: file removed, table kept"
            )
        digest = backups.file_digest(path)
        recorded = backups.record_backup(
            self.conn,
            kind="partition_archive",
            file_path=path,
            size_bytes=digest.size_bytes,
            sha256=digest.sha256,
            row_counts={f"{self.parent.schema}.{name}": written},
            database_name=self.conn.info.dbname,
            compression="gzip",
        )
        runner.record(f"-- recorded as backup {recorded.id}: {path} ({digest.size_bytes} bytes)")
        return {"archive_file": str(path), "archived_rows": written}

    def finalize(self, action: Action) -> StepResult:
        def work(runner: _Runner) -> dict[str, Any]:
            statement = sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(
                self.parent.identifier(), sql.Identifier(self.parent.schema, action.partition)
            )
            runner.retrying(
                f"finalize {action.partition}", lambda: runner.execute(statement), transaction=False
            )
            runner.execute(_mark_sql(self.parent, action.partition, self.policy.retention_action))
            return self.finish(runner, action.partition, self.policy.retention_action)

        return self.step(action, work)

    def resume(self, action: Action) -> StepResult:
        retention_action = action.detail.split()[0] if action.detail else "drop"
        if retention_action not in ("drop", "detach", "archive"):
            retention_action = "drop"
        return self.step(action, lambda r: self.finish(r, action.partition, retention_action))


def _is_lock_timeout(exc: psycopg.Error) -> bool:
    # pg_partman re-raises every error as a plain RAISE EXCEPTION carrying the message
    return isinstance(exc, pg_errors.LockNotAvailable) or (
        isinstance(exc, pg_errors.RaiseException) and "lock timeout" in str(exc)
    )


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

    Written to a temporary name, fsync'd, then renamed: a file with the final name is complete.
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
) -> RotationResult:
    """Create the missing partitions, rescue default rows, apply retention; report each step.

    ``conn`` is an autocommit psycopg connection (each step commits on its own), or a
    ``db.Target`` to open one for the call. Takes the table's advisory lock on it first: when
    another run holds it, returns at once with ``skipped=True`` having done nothing. A failed
    step is reported in the result and does not stop the independent ones. ``dry_run`` runs
    nothing and returns, in ``statements``, the SQL it would run.
    """
    options = settings.partitions
    require_lock_timeout(options.lock_timeout, "partitions.lock_timeout")
    if isinstance(conn, db.Target):
        with db.connection(conn) as opened:
            return rotate(opened, settings, now, dry_run=dry_run, notify=notify)
    now = _utc(now)
    if not conn.autocommit:
        raise UsageError("rotate needs an autocommit connection")
    with _catalog_timeout(conn, options):
        parent = parent_table(conn, options.table)
        policy = resolve_policy(conn, options)
    if not dry_run and policy.retention_action == "archive" and not options.archive_directory:
        raise UsageError("partitions.retention_action = archive needs partitions.archive_directory")
    with locks.try_advisory_lock(conn, lock_name(parent.qualified)) as acquired:
        if not acquired:
            return RotationResult(parent.qualified, policy.backend, now, dry_run, True, (), ())
        if policy.backend == "partman":
            from kronos_db import partman

            return partman.rotate(
                conn, settings, parent, policy, now, dry_run=dry_run, notify=notify
            )
        return _rotate_native(conn, settings, parent, policy, now, dry_run=dry_run, notify=notify)


def drop_leftover_guard(
    conn: psycopg.Connection[Any], parent: ParentTable, settings: PartitionSettings, notify: Notify
) -> None:
    """A run killed between guard and attach leaves the guard: it must not outlive the run."""
    if parent.default_partition is None:
        return
    row = conn.execute(
        "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%(table)s::text) "
        "AND conname = %(name)s::text",
        {
            "table": parent.default_identifier().as_string(conn),
            "name": f"{parent.default_partition}_kronos_attach_guard"[:63],
        },
    ).fetchone()
    if row is None:
        return
    runner = _Runner(conn, settings, notify, dry_run=False)
    runner.retrying(
        "drop the leftover guard",
        lambda: runner.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                parent.default_identifier(), _guard_name(parent)
            )
        ),
    )


def run_actions(rotation: _Rotation, actions: Sequence[Action]) -> list[StepResult]:
    """Run the plan's steps in a safe order; independent steps go on after a failure."""
    results: list[StepResult] = []
    for action in actions:
        if action.kind == "finalize":
            results.append(rotation.finalize(action))
        elif action.kind == "resume":
            results.append(rotation.resume(action))
    creates = [a for a in actions if a.kind == "create"]
    now = rotation.now
    for action in creates:
        if action.lower is not None and action.lower <= now:
            results.append(rotation.create_current(action))
    results += rotation.create_future([a for a in creates if a.lower is not None and a.lower > now])
    for action in actions:
        if action.kind == "retire":
            results.append(rotation.retire(action))
    return results


def _rotate_native(
    conn: psycopg.Connection[Any],
    settings: Settings,
    parent: ParentTable,
    policy: Policy,
    now: datetime,
    *,
    dry_run: bool,
    notify: Notify,
) -> RotationResult:
    if not dry_run:
        drop_leftover_guard(conn, parent, settings.partitions, notify)
    plan = plan_rotation(conn, parent, policy, now)
    for warning in plan.warnings:
        notify(f"warning: {warning}")
    rotation = _Rotation(conn, settings, parent, policy, now, notify, dry_run=dry_run)
    steps = run_actions(rotation, plan.actions)
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
