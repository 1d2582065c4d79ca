"""The status of a table's partitions and its one monitoring verdict: coverage ahead, rows in the
default partition, strays, unfinished retirements, the next rotation's plan.

The one owner of the question "are the log partitions healthy?": ``partitions status``,
``health``'s ``log_partitions`` and ``report kronos`` all render :func:`check_partitions` /
:func:`status_outcome`, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import psycopg

from kronos_db import db
from kronos_db.checks import ANY, Context, Finding, Metric, Outcome, Status, Threshold, worst
from kronos_db.config import Settings
from kronos_db.errors import KronosError, ReportUnavailableError
from kronos_db.partitions.backend import resolve_policy
from kronos_db.partitions.catalog import (
    Partition,
    Stray,
    _catalog_scope,
    _columns,
    _unless_denied,
    count_default_rows,
    list_partitions,
    parent_table,
)
from kronos_db.partitions.naming import _iso, _utc
from kronos_db.partitions.plan import Action, keep_rows_commands, plan_rotation


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
