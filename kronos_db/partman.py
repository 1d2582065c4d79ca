"""The pg_partman backend: where the extension is installed and the table registered with it.

pg_partman's ``part_config`` row is then the policy (interval, premake, retention), and its
functions do the work: ``create_partition_time`` for the partitions ahead (kronos-db's guard on
the default partition still spares that attach its scan), ``drop_partition_time`` with
``p_reference_timestamp := now`` for retention (so the clock is a parameter here too), then
``run_maintenance`` for anything else partman is configured to do. Rows in the default
partition are moved by kronos-db's native code (pg_partman 4.x has no batched, lock-bounded
mover that keeps services writing); its names are pg_partman's, so partman adopts the result.

Every call runs with ``TimeZone = UTC`` set locally: pg_partman 4.x computes bounds and names in
the session's time zone, and a non-UTC session would make it create overlapping partitions.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import datetime, timedelta
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from kronos_db.config import PartitionSettings, Settings
from kronos_db.errors import UsageError
from kronos_db.partitions import (
    Action,
    Interval,
    Notify,
    ParentTable,
    Policy,
    RotationResult,
    StepResult,
    _Rotation,
    _Runner,
    drop_leftover_guard,
    list_partitions,
    parent_table,
    plan_rotation,
    run_actions,
)
from kronos_db.resources import query

_NOTHING = "pg_partman run_maintenance: nothing to do"

# pg_partman 4.x: the interval text part_config holds, and its datetime_string (names)
PARTMAN_INTERVALS = {
    "hourly": ("1 hour", "YYYY_MM_DD_HH24MI"),
    "daily": ("1 day", "YYYY_MM_DD"),
    "weekly": ("7 days", 'IYYY"w"IW'),
    "monthly": ("1 mon", "YYYY_MM"),
}


@dataclasses.dataclass(frozen=True)
class _Extension:
    schema: str
    version: str


@dataclasses.dataclass(frozen=True)
class _ConfigRow:
    interval_name: str | None
    premake: int
    retention_seconds: float | None
    retention_keep_table: bool
    infinite_time_partitions: bool


@dataclasses.dataclass(frozen=True)
class PartmanConfig:
    """The table's row in pg_partman's part_config (the policy of the partman backend)."""

    schema: str
    version: str
    interval: str
    premake: int
    retention: timedelta
    retention_keep_table: bool

    def policy(self, settings: PartitionSettings) -> Policy:
        # what retention does with the partition stays kronos-db's (partman cannot archive)
        if self.interval not in PARTMAN_INTERVALS:
            raise UsageError(
                f"pg_partman interval {self.interval!r} of {settings.table} is not "
                "one kronos-db manages (hourly, daily, weekly, monthly)"
            )
        interval = cast(Interval, self.interval)
        return Policy("partman", interval, self.premake, self.retention, settings.retention_action)


def extension(conn: psycopg.Connection[Any]) -> _Extension | None:
    with conn.cursor(row_factory=class_row(_Extension)) as cur:
        return cur.execute(query("partitions", "select_partman")).fetchone()


def table_config(conn: psycopg.Connection[Any], table: str) -> PartmanConfig | None:
    """The table's part_config row, or None (extension missing or table not registered)."""
    found = extension(conn)
    if found is None:
        return None
    statement = sql.SQL(
        "SELECT CASE partition_interval::interval WHEN '1 hour' THEN 'hourly' "
        "WHEN '1 day' THEN 'daily' WHEN '7 days' THEN 'weekly' WHEN '1 mon' THEN 'monthly' "
        "END AS interval_name, premake, "
        "extract(epoch FROM retention::interval)::float8 AS retention_seconds, "
        "retention_keep_table, infinite_time_partitions "
        "FROM {}.part_config WHERE parent_table = %(table)s::text"
    ).format(sql.Identifier(found.schema))
    with conn.cursor(row_factory=class_row(_ConfigRow)) as cur:
        row = cur.execute(statement, {"table": _partman_name(conn, table)}).fetchone()
    if row is None:
        return None
    return PartmanConfig(
        schema=found.schema,
        version=found.version,
        interval=row.interval_name or "unknown",
        premake=row.premake,
        retention=timedelta(seconds=row.retention_seconds or 0),
        retention_keep_table=row.retention_keep_table,
    )


def _partman_name(conn: psycopg.Connection[Any], table: str) -> str:
    """pg_partman keys part_config by ``schema.table`` (unquoted, lower case)."""
    row = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%(t)s::text)",
        {"t": table},
    ).fetchone()
    return str(row[0]) if row else table


@dataclasses.dataclass(frozen=True)
class AdoptResult:
    table: str
    schema: str
    created: bool
    statements: tuple[str, ...]


def adopt(
    conn: psycopg.Connection[Any], settings: Settings, *, dry_run: bool = False
) -> AdoptResult:
    """Register the table with pg_partman, keeping its partitions and its default partition.

    ``partman.create_parent`` cannot: it insists on creating the default partition (and fails
    because ``logs_default`` exists) and creates partitions in the session's time zone. So this
    writes the same ``part_config`` row create_parent would (template table included), with
    kronos-db's policy: interval, premake, retention, ``infinite_time_partitions = true``.
    """
    options = settings.partitions
    found = extension(conn)
    if found is None:
        raise UsageError(
            "pg_partman is not installed in this database "
            "(CREATE EXTENSION pg_partman SCHEMA partman)"
        )
    parent = parent_table(conn, options.table)
    name = f"{parent.schema}.{parent.name}"
    if table_config(conn, options.table) is not None:
        return AdoptResult(name, found.schema, False, ())
    interval, datetime_string = PARTMAN_INTERVALS[options.interval]
    template = f"template_{parent.schema}_{parent.name}"[:63]
    partman_schema = sql.Identifier(found.schema)
    statements: list[sql.Composed] = [
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {})").format(
            sql.Identifier(found.schema, template), parent.identifier()
        ),
        sql.SQL(
            "INSERT INTO {}.part_config (parent_table, control, partition_type, "
            "partition_interval, premake, datetime_string, template_table, retention, "
            "retention_keep_table, retention_keep_index, infinite_time_partitions, jobmon, "
            "inherit_privileges) VALUES ({}, {}, 'native', {}, {}, {}, {}, {}, {}, true, true, "
            "false, false)"
        ).format(
            partman_schema,
            sql.Literal(name),
            sql.Literal(parent.key_column),
            sql.Literal(interval),
            sql.Literal(options.premake),
            sql.Literal(datetime_string),
            sql.Literal(f"{found.schema}.{template}"),
            sql.Literal(_interval_text(options.retention)),
            sql.Literal(options.retention_action != "drop"),
        ),
    ]
    rendered = tuple(s.as_string(conn) for s in statements)
    if not dry_run:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
    return AdoptResult(name, found.schema, not dry_run, rendered)


def _interval_text(value: timedelta) -> str | None:
    seconds = int(value.total_seconds())
    return f"{seconds} seconds" if seconds > 0 else None


def rotate(
    conn: psycopg.Connection[Any],
    settings: Settings,
    parent: ParentTable,
    policy: Policy,
    now: datetime,
    *,
    dry_run: bool,
    notify: Notify,
) -> RotationResult:
    """The partman backend's rotation (called by :func:`kronos_db.partitions.rotate`)."""
    config = table_config(conn, settings.partitions.table)
    assert config is not None
    if not dry_run:
        drop_leftover_guard(conn, parent, settings.partitions, notify)
    plan = plan_rotation(conn, parent, policy, now)
    for warning in plan.warnings:
        notify(f"warning: {warning}")
    # rows to rescue and unfinished retirements: kronos-db's own code, partman-compatible names
    native_rotation = _Rotation(conn, settings, parent, policy, now, notify, dry_run=dry_run)
    rotation = _PartmanRotation(
        conn, settings, parent, policy, now, notify, dry_run=dry_run, config=config
    )
    rotation.log = native_rotation.log
    native = [
        a
        for a in plan.actions
        if a.kind in ("finalize", "resume")
        or (a.kind == "create" and (a.rows_in_default or (a.lower and a.lower <= now)))
    ]
    steps = run_actions(native_rotation, native)
    creates = [a for a in plan.actions if a.kind == "create" and a not in native]
    steps += rotation.create_future(creates)
    retires = [a for a in plan.actions if a.kind == "retire"]
    if retires:
        steps += rotation.retire_all(retires)
    maintenance = rotation.maintenance()
    if not maintenance.ok or maintenance.description != _NOTHING:
        steps.append(maintenance)
    return RotationResult(
        parent.qualified,
        "partman",
        now,
        dry_run,
        False,
        tuple(steps),
        plan.warnings,
        tuple(rotation.log),
    )


class _PartmanRotation(_Rotation):
    def __init__(self, *args: Any, config: PartmanConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.partman = sql.Identifier(config.schema)

    def utc(self, runner: _Runner) -> None:
        # pg_partman 4.x names and bounds partitions in the session's time zone
        runner.conn.execute("SELECT set_config('TimeZone', 'UTC', true)")

    def _attach_future(self, runner: _Runner, *, action: Action, guarded: bool) -> dict[str, Any]:
        return {}  # create_partition_time attached it already

    def _create_and_move(self, runner: _Runner, *, action: Action) -> dict[str, Any]:
        """Future partitions without default rows: pg_partman creates them (template, grants)."""
        return {}

    def create_future(self, actions: Any) -> list[StepResult]:
        if not actions:
            return []
        guarded = False
        if self.parent.default_partition is not None:
            guarded = self._add_guard(actions)
        try:
            statement = sql.SQL(
                "SELECT {}.create_partition_time({}, {}::timestamptz[], p_analyze := false)"
            ).format(
                self.partman,
                sql.Literal(self.config_name()),
                sql.Literal([a.lower for a in actions]),
            )

            def work(runner: _Runner) -> dict[str, Any]:
                def create() -> None:
                    self.utc(runner)
                    runner.execute(statement)
                    if not self.dry_run:
                        # pg_partman's inherit_privileges copies the parent's grants: the
                        # role mapping decides instead
                        for action in actions:
                            self.conform_privileges(runner, action.partition)

                runner.retrying("pg_partman create_partition_time", create)
                return {}

            first = self.step(actions[0], work)
        finally:
            if guarded:
                self._drop_guard()
        return [
            first,
            *(
                # one pg_partman call made them all: its time is counted on the first
                dataclasses.replace(
                    first,
                    partition=a.partition,
                    description=a.describe(),
                    statements=(),
                    seconds=0.0,
                    attempts=0,
                )
                for a in actions[1:]
            ),
        ]

    def config_name(self) -> str:
        return f"{self.parent.schema}.{self.parent.name}"

    def retire_all(self, actions: list[Action]) -> list[StepResult]:
        keep = self.policy.retention_action != "drop"
        statement = sql.SQL(
            "SELECT {}.drop_partition_time({}, p_retention := {}::interval, p_keep_table := {}, "
            "p_keep_index := true, p_reference_timestamp := {})"
        ).format(
            self.partman,
            sql.Literal(self.config_name()),
            sql.Literal(_interval_text(self.policy.retention)),
            sql.Literal(keep),
            sql.Literal(self.now),
        )
        before = {p.name for p in list_partitions(self.conn, self.parent)}

        def work(runner: _Runner) -> dict[str, Any]:
            def drop() -> None:
                self.utc(runner)
                runner.execute(statement)

            runner.retrying("pg_partman drop_partition_time", drop)
            return {}

        first = self.step(actions[0], work)
        if not first.ok:
            return [
                dataclasses.replace(first, partition=a.partition, description=a.describe())
                for a in actions
            ]
        after = (
            {p.name for p in list_partitions(self.conn, self.parent)}
            if not self.dry_run
            else before - {a.partition for a in actions}
        )
        results: list[StepResult] = []
        for index, action in enumerate(actions):
            if action.partition in after:
                results.append(
                    StepResult(
                        action.kind,
                        action.partition,
                        False,
                        action.describe(),
                        error="pg_partman kept this partition",
                    )
                )
                continue
            if not keep:
                results.append(
                    StepResult(
                        action.kind,
                        action.partition,
                        True,
                        action.describe(),
                        # one pg_partman call retired them all: its time is on the first
                        seconds=first.seconds if index == 0 else 0.0,
                        attempts=first.attempts if index == 0 else 0,
                        statements=first.statements if index == 0 else (),
                    )
                )
                continue

            def finish(runner: _Runner, action: Action = action) -> dict[str, Any]:
                from kronos_db.partitions import _mark_sql

                runner.retrying(
                    f"mark {action.partition}",
                    functools.partial(
                        runner.execute,
                        _mark_sql(self.parent, action.partition, self.policy.retention_action),
                    ),
                )
                return self.finish(runner, action.partition, self.policy.retention_action)

            results.append(self.step(action, finish))
        return results

    def maintenance(self) -> StepResult:
        statement = sql.SQL(query("partitions", "run_partman_maintenance")).format(
            partman=self.partman
        )
        action = Action("resume", self.config_name(), detail="pg_partman run_maintenance")

        def work(runner: _Runner) -> dict[str, Any]:
            def run() -> None:
                self.utc(runner)
                runner.execute(statement, {"table": self.config_name()})

            runner.retrying("pg_partman run_maintenance", run)
            return {}

        before = {p.name for p in list_partitions(self.conn, self.parent)}
        result = self.step(action, work)
        after = {p.name for p in list_partitions(self.conn, self.parent)}
        changes = [f"+{name}" for name in sorted(after - before)]
        changes += [f"-{name}" for name in sorted(before - after)]
        description = ("pg_partman run_maintenance: " + ", ".join(changes)) if changes else _NOTHING
        return dataclasses.replace(result, kind="maintenance", description=description)
