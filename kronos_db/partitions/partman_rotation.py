"""Rotation on the pg_partman backend: :class:`PartmanRotation`.

Apart from :mod:`kronos_db.partman` (where pg_partman is and what its ``part_config`` says,
which ``partitions status`` and ``health`` read) so that those never import the rotation's
executor: only ``partitions rotate`` and ``maintain`` need this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from psycopg import sql

from kronos_db import db
from kronos_db.errors import UsageError
from kronos_db.partitions.catalog import list_partitions
from kronos_db.partitions.executor import _Rotation
from kronos_db.partitions.naming import floor_time
from kronos_db.partitions.plan import Action
from kronos_db.partitions.runner import StepResult, _Runner
from kronos_db.partman import table_config
from kronos_db.resources import query


class PartmanRotation(_Rotation):
    """pg_partman makes the empty partitions ahead; everything else is kronos-db's own code.

    Rescues, adoptions and the range holding now move rows and attach in one transaction
    with kronos-db's lock budget (pg_partman 4.x's partition_data_time holds the default
    partition's ACCESS EXCLUSIVE lock while it moves a whole range), with pg_partman's names
    so that it adopts the result. Retention is kronos-db's detach-then-finish too (pg_partman's
    drop_partition_time detaches and drops every expired partition in one transaction, under
    one ACCESS EXCLUSIVE lock of the parent, and cannot archive), with the policy of
    part_config.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = table_config(self.conn, self.options.table)
        if config is None:
            raise UsageError(f"{self.options.table} is no longer registered with pg_partman")
        self.config = config
        self.partman = sql.Identifier(config.schema)

    def utc(self, runner: _Runner) -> None:
        # pg_partman 4.x names and bounds partitions in the session's time zone
        if not self.dry_run:
            db.set_local(runner.conn, {"TimeZone": "UTC"})

    def config_name(self) -> str:
        return f"{self.parent.schema}.{self.parent.name}"

    def create(self, action: Action) -> StepResult:
        """A range after now, empty: pg_partman's create_partition_time (its template table).

        One partition per transaction, under lock_timeout: its attach checks the default
        partition (emptied by the rescues before) under the default's ACCESS EXCLUSIVE lock.
        The range holding now goes through kronos-db's own attach (inserts into it are under
        way: they must wait before routing, not fail after).
        """
        assert action.lower is not None
        if action.lower <= self.now or action.lower != floor_time(
            action.lower, self.policy.interval
        ):
            return super().create(action)
        statement = sql.SQL(query("partitions", "create_partman_partition")).format(
            partman=self.partman
        )
        lower = action.lower

        def work(runner: _Runner) -> dict[str, Any]:
            def create() -> None:
                self.utc(runner)
                runner.execute(statement, {"table": self.config_name(), "lower": lower})
                # pg_partman's inherit_privileges copies the parent's grants: the role
                # mapping decides instead
                self.conform_privileges(runner, action.partition)

            runner.retrying(f"pg_partman create_partition_time {action.partition}", create)
            return {}

        return self.step(action, work)

    def closing_steps(self) -> list[StepResult]:
        """pg_partman's run_maintenance, for whatever else it is configured to do; reported
        only when it changed something."""
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
        if result.ok and not changes:
            return []
        description = "pg_partman run_maintenance: " + (", ".join(changes) or "nothing to do")
        return [dataclasses.replace(result, kind="maintenance", description=description)]
