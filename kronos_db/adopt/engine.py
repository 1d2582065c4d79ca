"""Plan, then apply: the adoption of a database built outside kronos-db.

:func:`plan` reads the catalog and the rows, and returns every step with its lock and expected
duration, and every row that breaks a rule head adds. It changes nothing.

:func:`apply` runs the same steps under the migration lock, one at a time, re-reading the
catalog before each: a step the catalog shows done is skipped, so a run killed anywhere is
resumed by the next one. Each step runs under ``[adopt] lock_timeout`` and is retried with
back-off when it hits it, naming who held the lock. Once every step is done, the live schema
is compared with revision 0010's; only when they are equal is the revision recorded with its
checksums. Later revisions are then applied as ``migrate`` would, the rows of the old ``logs``
start moving out of the default partition (``partitions.rotate``), and the adoption ends with
``check``.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from kronos_db import baseline, db, locks, migrations, schema
from kronos_db.adopt import catalog, rules, steps
from kronos_db.adopt.catalog import LiveState
from kronos_db.adopt.rules import Violation
from kronos_db.config import Settings
from kronos_db.durations import postgres_interval
from kronos_db.errors import (
    KronosError,
    LockTimeoutError,
    UsageError,
    translate_database_error,
)
from kronos_db.partitions.rotation import rotate as rotate_partitions
from kronos_db.resources import query

Notify = Callable[[str], None]
MAX_RETRY_DELAY = 30.0
# a step the catalog still shows pending after this many runs is a bug or a fight: stop
MAX_RUNS_PER_STEP = 4


def _quiet(_message: str) -> None:
    pass


class AdoptionError(KronosError):
    """The adoption stopped."""


class AdoptionBlockedError(UsageError):
    """The adoption needs a decision: a time zone, or the fate of rows that break head's rules."""


# --------------------------------------------------------------------------- what a plan shows


@dataclasses.dataclass(frozen=True)
class PlannedStep:
    number: int
    key: str
    table: str
    description: str
    lock: str
    blocks_writes: bool
    expected_seconds: float
    lock_seconds: float
    done: bool
    sql: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TimestampFacts:
    naive_columns: tuple[str, ...]  # table.column still `timestamp`
    timestamps_in: str | None  # the zone given
    in_place: bool  # converted without a rewrite (the zone is UTC)
    session_time_zone: str
    database_time_zone: str


@dataclasses.dataclass(frozen=True)
class AdoptionPlan:
    database: str
    revision: str  # the revision the adoption reaches and stamps
    head: str
    history: str  # what kronos-db history the database has
    adopted: bool  # already under kronos-db: nothing to do
    timestamps: TimestampFacts
    violations: tuple[Violation, ...]
    steps: tuple[PlannedStep, ...]
    blockers: tuple[str, ...]
    warnings: tuple[str, ...]
    logs_default_rows: int  # rows rotation will move out of the default partition

    @property
    def pending(self) -> tuple[PlannedStep, ...]:
        return tuple(s for s in self.steps if not s.done)

    @property
    def expected_seconds(self) -> float:
        return sum(s.expected_seconds for s in self.pending)

    @property
    def longest_lock(self) -> PlannedStep | None:
        blocking = [s for s in self.pending if s.blocks_writes]
        return max(blocking, key=lambda s: s.lock_seconds, default=None)


# --------------------------------------------------------------------------- options


def options_for(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    timestamps_in: str | None,
    fix: tuple[str, ...] = (),
    quarantine: tuple[str, ...] = (),
) -> steps.Options:
    """Check the user's choices against what exists; a bad one is a usage error."""
    for name in (*fix, *quarantine):
        if name not in rules.RULE_NAMES:
            raise UsageError(f"no rule {name!r}: the rules are {', '.join(rules.RULE_NAMES)}")
    for name in fix:
        if not rules.rule(name).has_fix:
            raise UsageError(
                f"{name} has no automatic fix ({rules.rule(name).description}): "
                f"quarantine them (--quarantine {name}) or fix them by hand"
            )
    zone = None
    if timestamps_in is not None:
        zone = catalog.canonical_time_zone(conn, timestamps_in)
        if zone is None:
            raise UsageError(
                f"--timestamps-in {timestamps_in!r}: the server knows no such time zone "
                "(see SELECT name FROM pg_timezone_names)"
            )
    return steps.Options(
        timestamps_in=zone,
        fix=frozenset(fix),
        quarantine=frozenset(quarantine),
        batch_size=settings.adopt.batch_size,
    )


# --------------------------------------------------------------------------- reading


def _history(state: LiveState) -> str:
    if state.managed:
        return f"kronos-db, at revision {', '.join(state.current_revisions)}"
    if state.current_revisions:
        return (
            f"alembic_version says {', '.join(state.current_revisions)}, but kronos-db "
            "recorded none of its revisions (stamped by hand?): the adoption checks the "
            "schema and records the revision again"
        )
    return "none: the database was built outside kronos-db"


def _naive_columns(state: LiveState) -> tuple[str, ...]:
    return tuple(
        f"{table}.{column}"
        for table, columns in steps.TIMESTAMP_COLUMNS.items()
        for column in columns
        if (found := state.column(table, column)) is not None and found.type == steps.NAIVE
    )


def _converted_zones(state: LiveState) -> set[str]:
    return {
        c.comment.removeprefix(steps.CONVERTED_MARK)
        for c in state.columns.values()
        if c.comment.startswith(steps.CONVERTED_MARK)
    }


def _checks(
    conn: psycopg.Connection[Any], state: LiveState, options: steps.Options
) -> tuple[list[str], list[str]]:
    """What stops the adoption (blockers), and what the DBA should know (warnings)."""
    blockers: list[str] = []
    warnings: list[str] = []
    missing = state.missing_tables
    if len(missing) == len(migrations.KRONOS_TABLES):
        blockers.append(
            "no Kronos table here: nothing to adopt (`kronos-db migrate` creates the schema)"
        )
        return blockers, warnings
    if missing:
        blockers.append(
            f"the Kronos table(s) {', '.join(missing)} are missing: this is not a database "
            "built from the Kronos design, or a part of it was dropped"
        )
    zones = _converted_zones(state)
    if options.timestamps_in and zones - {options.timestamps_in}:
        blockers.append(
            f"an earlier adopt --apply converted timestamps as {', '.join(sorted(zones))}: "
            f"rerun it with --timestamps-in {sorted(zones)[0]} (mixing zones would shift times)"
        )
    if not state.logs_partitioned and state.table("logs") is not None:
        extra = {c.name for c in state.columns_of("logs")} - {
            "id",
            "service_name",
            "level",
            "message",
            "timestamp",
            steps.SHADOW_SUFFIX.join(("id", "")),
            steps.SHADOW_SUFFIX.join(("timestamp", "")),
        }
        if extra:
            blockers.append(
                f"logs has column(s) head does not define ({', '.join(sorted(extra))}): the old "
                "table can only become a partition of head's logs with head's columns"
            )
    retyped = list(_naive_columns(state)) + [
        f"{table}.id"
        for table in steps.BIGINT_IDS
        if (found := state.column(table, "id")) is not None and found.type == "integer"
    ]
    if retyped:
        warnings.append(
            f"the type of {', '.join(retyped)} changes: a service that holds a server-side "
            "prepared statement returning one of them gets 'cached plan must not change result "
            "type' afterwards (psycopg 3 until it reconnects); run the services without "
            "server-side prepared statements during the adoption (PgBouncer in transaction "
            "mode, prepare_threshold=None, prepareThreshold=0) or reconnect them after it"
        )
    for table in ("logs", "message_queue"):
        if state.table(table) is None:
            continue
        for dependent in catalog.dependents(conn, table):
            if dependent.kind in {"view", "foreign key"} and not (
                table == "logs" and state.logs_partitioned
            ):
                blockers.append(
                    f"{dependent.kind} {dependent.name} depends on {table}: its id is swapped "
                    f"for a bigint one{' and the table partitioned' if table == 'logs' else ''};"
                    f" drop it, adopt, and create it again"
                )
            elif dependent.kind in {"publication", "policy"}:
                warnings.append(
                    f"{dependent.kind} {dependent.name} is on {table}: check it after the "
                    "adoption (a publication keeps publishing logs_default, not the new logs)"
                )
    return blockers, warnings


def _render(conn: psycopg.Connection[Any], work: steps.Work) -> tuple[str, ...]:
    if work.done:
        return ()
    rendered = [s.as_string(conn) for s in work.statements(conn)]
    if work.mode == "backfill" and work.assignments is not None:
        rendered.append(
            sql.SQL(query("adopt", "fill_shadow_columns"))
            .format(
                table=sql.Identifier(work.target),
                assignments=work.assignments,
                key=sql.Identifier(work.key_column),
            )
            .as_string(conn)
            .replace("%(keys)s", "<each batch of keys>")
        )
    if work.time_zone:
        rendered.insert(
            0,
            sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(work.time_zone)).as_string(conn),
        )
    return tuple(rendered)


def _planned(conn: psycopg.Connection[Any], works: list[steps.Work]) -> tuple[PlannedStep, ...]:
    return tuple(
        PlannedStep(
            number=number,
            key=w.key,
            table=w.table,
            description=w.description,
            lock=w.lock,
            blocks_writes=w.blocks_writes,
            expected_seconds=0.0 if w.done else w.seconds,
            lock_seconds=0.0 if w.done else w.lock_seconds,
            done=w.done,
            sql=_render(conn, w),
        )
        for number, w in enumerate(works, start=1)
    )


def _default_rows(state: LiveState) -> int:
    if state.logs_partitioned:
        logs = state.table("logs")
        return state.rows(logs.default_partition) if logs and logs.default_partition else 0
    return state.rows("logs")


def plan(
    settings: Settings,
    target: db.Target,
    *,
    timestamps_in: str | None = None,
    fix: tuple[str, ...] = (),
    quarantine: tuple[str, ...] = (),
) -> AdoptionPlan:
    """What ``apply`` would do, step by step, and every row that breaks a rule. Changes nothing."""
    tree = migrations.MigrationTree.from_settings(settings)
    head = ",".join(tree.script_directory().get_heads())
    with db.connection(target) as conn:
        options = options_for(
            conn, settings, timestamps_in=timestamps_in, fix=fix, quarantine=quarantine
        )
        state = catalog.inspect(conn)
        blockers, warnings = _checks(conn, state, options)
        naive = _naive_columns(state)
        timestamps = TimestampFacts(
            naive_columns=naive,
            timestamps_in=options.timestamps_in,
            in_place=options.in_place,
            session_time_zone=state.database.session_time_zone,
            database_time_zone=state.database.database_time_zone,
        )
        if state.managed:
            return AdoptionPlan(
                target.describe(),
                steps.ADOPTION_REVISION,
                head,
                _history(state),
                True,
                timestamps,
                (),
                (),
                (),
                (),
                _default_rows(state),
            )
        violations = tuple(rules.find(conn, state)) if not blockers else ()
        pending = {v.rule: v.count for v in violations}
        works = steps.build(state, options, pending) if not blockers else []
        planned = _planned(conn, works)
    return AdoptionPlan(
        database=target.describe(),
        revision=steps.ADOPTION_REVISION,
        head=head,
        history=_history(state),
        adopted=False,
        timestamps=timestamps,
        violations=violations,
        steps=planned,
        blockers=tuple(blockers),
        warnings=tuple(warnings),
        logs_default_rows=_default_rows(state),
    )


# --------------------------------------------------------------------------- applying


@dataclasses.dataclass(frozen=True)
class StepResult:
    number: int
    key: str
    description: str
    seconds: float
    lock_seconds: float  # how long the step's transaction held its strongest lock
    blocks_writes: bool
    attempts: int
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class AdoptionResult:
    database: str
    revision: str
    already_adopted: bool
    steps: tuple[StepResult, ...]
    resolutions: tuple[rules.Resolution, ...]
    stamped: tuple[str, ...]
    migrated: tuple[str, ...]  # later revisions applied after the stamp
    rotated: bool  # False: the rows were left for the next `partitions rotate`
    rotation_steps: int
    rotation_rows_moved: int
    rotation_failures: tuple[str, ...]
    check_differences: tuple[schema.Difference, ...]
    seconds: float
    # where the time went: the steps, comparing and stamping, the rotation, the final check
    steps_seconds: float = 0.0
    stamp_seconds: float = 0.0
    rotation_seconds: float = 0.0
    check_seconds: float = 0.0

    @property
    def longest_lock(self) -> StepResult | None:
        blocking = [s for s in self.steps if s.blocks_writes]
        return max(blocking, key=lambda s: s.lock_seconds, default=None)


class _Executor:
    """Runs steps on an autocommit connection: timeouts per step, retries on lock timeouts."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        watch_conn: psycopg.Connection[Any],
        lease: locks.Lease,
        settings: Settings,
        notify: Notify,
    ) -> None:
        self.conn = conn
        self.watch_conn = watch_conn
        self.lease = lease
        self.settings = settings
        self.notify = notify
        self.pid = conn.info.backend_pid
        self.attempts = 0
        self.lock_seconds = 0.0

    def _timeouts(self) -> dict[str, str]:
        options = self.settings.adopt
        return {
            "lock_timeout": postgres_interval(options.lock_timeout),
            "statement_timeout": postgres_interval(options.statement_timeout),
        }

    def retrying(self, label: str, work: Callable[[], None]) -> None:
        options = self.settings.adopt
        delay = options.retry_delay.total_seconds()
        attempt = 0
        while True:
            attempt += 1
            self.attempts += 1
            watcher = migrations.BlockerWatcher(self.watch_conn, lambda: self.pid)
            try:
                with watcher:
                    work()
                return
            except (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected) as exc:
                blocked = watcher.describe()
                if attempt > options.retries:
                    raise LockTimeoutError(
                        f"lock timeout ({postgres_interval(options.lock_timeout)}) at {label}: "
                        f"{blocked}; gave up after {options.retries} retries (rerun "
                        "`kronos-db adopt --apply`: it resumes here)"
                    ) from exc
                wait = min(delay * 2 ** (attempt - 1), MAX_RETRY_DELAY) * random.uniform(0.8, 1.2)
                self.notify(
                    f"lock timeout at {label}: {blocked}; retry {attempt}/{options.retries} "
                    f"in {wait:.1f}s"
                )
                time.sleep(wait)

    def transaction(self, label: str, build: Callable[[], None], *, time_zone: str | None) -> None:
        settings = self._timeouts()
        if time_zone:
            settings["TimeZone"] = time_zone

        def run() -> None:
            with db.transaction_settings(self.conn, settings):
                started = time.monotonic()
                build()
                # still this run's adoption? (a run that stalled past its lease rolls back)
                self.lease.fence(self.conn)
            self.lock_seconds = max(self.lock_seconds, time.monotonic() - started)

        self.retrying(label, run)

    def statements(self, work: steps.Work) -> None:
        def build() -> None:
            for statement in work.statements(self.conn):
                self.conn.execute(statement)

        self.transaction(work.description, build, time_zone=work.time_zone)

    def concurrently(self, work: steps.Work) -> None:
        # CREATE INDEX CONCURRENTLY cannot run in a transaction: timeouts are set for the
        # session and put back afterwards
        for statement in work.statements(self.conn):

            def run(statement: steps.Statement = statement) -> None:
                self.conn.execute(query("adopt", "set_session_timeouts"), self._timeouts())
                try:
                    self.conn.execute(statement)
                finally:
                    self.conn.execute(query("adopt", "reset_session_timeouts"))

            self.retrying(work.description, run)

    def unit(self, work: Callable[[], None]) -> None:
        """One batch in its own transaction, with the step's timeouts, retried on lock timeouts."""
        self.transaction("a batch", work, time_zone=None)
        pause = self.settings.adopt.batch_pause.total_seconds()
        if pause:
            time.sleep(pause)

    def backfill(self, work: steps.Work, batch_size: int) -> int:
        assert work.assignments is not None
        names = {"table": sql.Identifier(work.target), "key": sql.Identifier(work.key_column)}
        first = sql.SQL(query("adopt", "select_first_keys")).format(**names)
        following = sql.SQL(query("adopt", "select_next_keys")).format(**names)
        update = sql.SQL(query("adopt", "fill_shadow_columns")).format(
            assignments=work.assignments, **names
        )
        after: Any = None
        total = 0
        while True:
            found: list[Any] = []

            def batch(after: Any = after, found: list[Any] = found) -> None:
                nonlocal total
                found.clear()
                if after is None:
                    rows = self.conn.execute(first, {"size": batch_size}).fetchall()
                else:
                    rows = self.conn.execute(
                        following, {"after": after, "size": batch_size}
                    ).fetchall()
                found.extend(r[0] for r in rows)
                if found:
                    total += max(self.conn.execute(update, {"keys": found}).rowcount, 0)

            self.unit(batch)
            if not found:
                return total
            after = found[-1]


def _constraint_rule(name: str) -> str | None:
    """The rule whose rows make validating ``name`` fail."""
    for rule in rules.RULES:
        if name == rule.name:
            return rule.name
    for table, columns in steps.NOT_NULL.items():
        for column in columns:
            if name == steps.not_null_check_name(table, column):
                return f"{table}_{column}_not_null"
    if name == "rate_limits_user_id_route_id_key":
        return name
    if name == "sessions_token_excl":
        return name
    return None


def _failed_constraint(exc: psycopg.Error) -> str:
    return (exc.diag.constraint_name or "") if exc.diag else ""


@contextmanager
def _translated(target: db.Target) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        error = translate_database_error(exc, target=target.describe())
        raise type(error)(target.redact(error.message)) from exc


def _resolve(
    executor: _Executor, work: steps.Work, options: steps.Options, zone: str
) -> rules.Resolution:
    rule = rules.rule(work.rule)
    result = rules.resolve(
        executor.conn,
        rule,
        fix=rule.name in options.fix,
        move=rule.name in options.quarantine,
        timestamps_in=zone,
        batch_size=options.batch_size,
        in_transaction=executor.unit,
    )
    if result.remaining:
        raise AdoptionBlockedError(
            f"{result.remaining} row(s) still break {rule.name} after the fix (it repairs "
            f"only some: {rule.fix}); add --quarantine {rule.name}, or fix them by hand"
        )
    return result


def _converge(
    conn: psycopg.Connection[Any],
    watch_conn: psycopg.Connection[Any],
    lease: locks.Lease,
    settings: Settings,
    options: steps.Options,
    pending: dict[str, int],
    notify: Notify,
) -> tuple[list[StepResult], list[rules.Resolution]]:
    """Run the first step not done, re-read the catalog, again, until every step is done."""
    completed: set[str] = set()
    runs: Counter[str] = Counter()
    results: list[StepResult] = []
    resolutions: list[rules.Resolution] = []
    zone = options.timestamps_in or "UTC"
    while True:
        state = catalog.inspect(conn)
        works = steps.build(state, options, pending)
        for work in works:
            if work.key in completed:
                work.done = True
        todo = [(n, w) for n, w in enumerate(works, start=1) if not w.done]
        if not todo:
            return results, resolutions
        number, work = todo[0]
        runs[work.key] += 1
        if runs[work.key] > MAX_RUNS_PER_STEP:
            raise AdoptionError(
                f"step {number} ({work.description}) ran {MAX_RUNS_PER_STEP} times and the "
                "catalog still shows it pending: is something undoing it?"
            )
        notify(f"step {number}/{len(works)}: {work.description}")
        executor = _Executor(conn, watch_conn, lease, settings, notify)
        started = time.monotonic()
        detail = ""
        try:
            if work.mode == "resolve":
                resolution = _resolve(executor, work, options, zone)
                resolutions.append(resolution)
                detail = (
                    f"fixed {resolution.fixed}, merged {resolution.merged}, quarantined "
                    f"{resolution.quarantined} (+{resolution.dependents_quarantined} referencing)"
                )
                completed.add(work.key)
            elif work.mode == "backfill":
                detail = f"{executor.backfill(work, options.batch_size)} row(s) filled"
                completed.add(work.key)
            elif work.mode == "concurrently":
                executor.concurrently(work)
            else:
                executor.statements(work)
        except (
            pg_errors.CheckViolation,
            pg_errors.NotNullViolation,
            pg_errors.UniqueViolation,
            pg_errors.ExclusionViolation,
            pg_errors.ForeignKeyViolation,
        ) as exc:
            constraint = _failed_constraint(exc)
            rule = _constraint_rule(constraint)
            if constraint.endswith("_kronos_sync"):
                # rows the backfill missed (it never should): fill again, prove again
                completed = {k for k in completed if not k.endswith(".backfill")}
                notify(f"{constraint} failed: filling the shadow column(s) again")
                continue
            if rule is not None and (rule in options.fix or rule in options.quarantine):
                notify(f"rows written since the plan break {rule}: resolving them again")
                pending[rule] = max(pending.get(rule, 0), 1)
                completed.discard(f"{rules.rule(rule).table}.resolve.{rule}")
                continue
            raise AdoptionBlockedError(
                f"step {number} ({work.description}) failed: rows break "
                f"{constraint or 'a rule head adds'} ({exc.diag.message_primary}); they were "
                f"written after the plan, or no fate was chosen for them: run `kronos-db adopt "
                f"--plan` and rerun --apply with --fix or --quarantine {rule or constraint}"
            ) from exc
        results.append(
            StepResult(
                number=number,
                key=work.key,
                description=work.description,
                seconds=time.monotonic() - started,
                lock_seconds=executor.lock_seconds,
                blocks_writes=work.blocks_writes,
                attempts=executor.attempts,
                detail=detail,
            )
        )


def _require_decisions(
    state: LiveState, options: steps.Options, violations: list[Violation]
) -> None:
    problems: list[str] = []
    if _naive_columns(state) and options.timestamps_in is None:
        problems.append(
            f"{len(_naive_columns(state))} column(s) hold naive timestamps "
            f"({', '.join(_naive_columns(state))}): say which time zone the services wrote them "
            f"in with --timestamps-in ZONE (the server's TimeZone is "
            f"{state.database.session_time_zone}; kronos-db never guesses)"
        )
    for violation in violations:
        fix = violation.rule in options.fix
        move = violation.rule in options.quarantine
        if not fix and not move:
            choices = (
                f"--fix {violation.rule} ({violation.fix}) or " if violation.fix else ""
            ) + f"--quarantine {violation.rule}"
            problems.append(
                f"{violation.count} row(s) break {violation.rule} ({violation.description}): "
                f"choose {choices}, or fix them by hand"
            )
        elif fix and not move and violation.fixable < violation.count:
            problems.append(
                f"the fix of {violation.rule} repairs {violation.fixable} of its "
                f"{violation.count} row(s): add --quarantine {violation.rule} for the others, or "
                "fix them by hand"
            )
    if problems:
        raise AdoptionBlockedError("nothing was changed: " + "; ".join(problems))


def _draining(settings: Settings) -> Settings:
    """The rotation settings that drain the old logs out of the default partition.

    Each rescue ends with an attach that checks the default partition under a lock inserts
    wait on, and the adopted default partition holds the whole old table: that check takes
    longer than ``[partitions] hold_timeout`` (50 ms, sized for a few late rows), and every
    rescue would give up. The adoption's own rotation may hold that lock as long as any of its
    steps, ``[adopt] lock_timeout``; cron's rotations keep their budget.
    """
    hold = max(settings.partitions.hold_timeout, settings.adopt.lock_timeout)
    return dataclasses.replace(
        settings, partitions=dataclasses.replace(settings.partitions, hold_timeout=hold)
    )


def apply(
    settings: Settings,
    target: db.Target,
    *,
    now: datetime,
    timestamps_in: str | None = None,
    fix: tuple[str, ...] = (),
    quarantine: tuple[str, ...] = (),
    rotate: bool = True,
    notify: Notify = _quiet,
) -> AdoptionResult:
    """Adopt the database: every step, then the check, the stamp, later revisions, rotation.

    ``rotate=False`` leaves the rows of the old ``logs`` in the default partition for the next
    ``partitions rotate`` (cron's) to move.
    """
    started = time.monotonic()
    tree = migrations.MigrationTree.from_settings(settings)
    heads = tree.script_directory().get_heads()
    results: list[StepResult] = []
    resolutions: list[rules.Resolution] = []
    stamped: tuple[str, ...] = ()
    already = False
    # CREATE INDEX CONCURRENTLY and its session settings need one server session
    db.require_session(target, settings.database.pooler, "kronos-db adopt --apply")
    with (
        migrations.migration_lock(settings, target, notify) as lease,
        db.connection(target) as observer,
        _translated(target),
    ):
        with db.connection(target) as conn:
            options = options_for(
                conn, settings, timestamps_in=timestamps_in, fix=fix, quarantine=quarantine
            )
            state = catalog.inspect(conn)
            already = state.managed
            if not already:
                blockers, warnings = _checks(conn, state, options)
                if blockers:
                    raise AdoptionError("cannot adopt: " + "; ".join(blockers))
                for warning in warnings:
                    notify(f"warning: {warning}")
                violations = rules.find(conn, state)
                _require_decisions(state, options, violations)
                pending = {v.rule: v.count for v in violations}
                results, resolutions = _converge(
                    conn, observer, lease, settings, options, pending, notify
                )
        steps_done = time.monotonic()
        if not already:
            notify(f"comparing the schema with revision {steps.ADOPTION_REVISION}'s")
            found = baseline.differences(settings, target, steps.ADOPTION_REVISION, notify=notify)
            if found:
                raise AdoptionError(
                    f"every step is done but the schema still differs from revision "
                    f"{steps.ADOPTION_REVISION}'s; nothing was recorded: "
                    + "; ".join(d.describe() for d in found)
                )
            stamped = baseline.record(settings, target, steps.ADOPTION_REVISION, lease=lease)
            notify(f"recorded revision {steps.ADOPTION_REVISION} with its checksums")
    migrated: tuple[str, ...] = ()
    if steps.ADOPTION_REVISION not in heads:
        upgrade = migrations.upgrade(settings, target, "head", notify=notify)
        migrated = tuple(s.revision for s in upgrade.steps)
    stamp_done = time.monotonic()
    rotation_steps: tuple[Any, ...] = ()
    rotation_failed: tuple[Any, ...] = ()
    if rotate:
        notify("moving the old logs out of the default partition (partitions rotate)")
        rotation = rotate_partitions(target, _draining(settings), now, notify=notify)
        rotation_steps, rotation_failed = rotation.steps, rotation.failed
    rotation_done = time.monotonic()
    report = schema.check(settings, target, notify=notify)
    finished = time.monotonic()
    return AdoptionResult(
        database=target.describe(),
        revision=steps.ADOPTION_REVISION,
        already_adopted=already,
        steps=tuple(results),
        resolutions=tuple(resolutions),
        stamped=stamped,
        migrated=migrated,
        rotated=rotate,
        rotation_steps=len(rotation_steps),
        rotation_rows_moved=sum(getattr(s, "rows_moved", 0) or 0 for s in rotation_steps),
        rotation_failures=tuple(
            f"{getattr(s, 'description', s)}: {getattr(s, 'error', '')}" for s in rotation_failed
        ),
        check_differences=report.differences,
        seconds=finished - started,
        steps_seconds=steps_done - started,
        stamp_seconds=stamp_done - steps_done,
        rotation_seconds=rotation_done - stamp_done,
        check_seconds=finished - rotation_done,
    )
