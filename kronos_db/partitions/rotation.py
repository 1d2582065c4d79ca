"""``rotate``: one rotation of the table — the standby check, the advisory lease, the plan, its
steps in a safe order with the backend in force — and what it did (:class:`RotationResult`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

import psycopg

from kronos_db import db, locks, replication
from kronos_db.config import Settings, require_lock_timeout
from kronos_db.errors import UsageError
from kronos_db.partitions.backend import resolve_policy
from kronos_db.partitions.catalog import _catalog_scope, parent_table
from kronos_db.partitions.executor import _Rotation, logger
from kronos_db.partitions.naming import _utc
from kronos_db.partitions.partman_rotation import PartmanRotation
from kronos_db.partitions.plan import Action, plan_rotation
from kronos_db.partitions.runner import (
    BatchSizer,
    Notify,
    StepResult,
    _paced,
    _quiet,
    default_batch_sizer,
)


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
        if not steps:
            logger.info(
                "%s: nothing to do at %s: every partition ahead exists, none is past retention, %s",
                parent.qualified,
                now.isoformat(timespec="seconds"),
                "no row waits in the default partition"
                if plan.default_readable
                else "and the default partition is not readable by this role (not planned)",
            )
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
