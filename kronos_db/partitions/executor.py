"""The steps of one rotation of one table (:class:`_Rotation`): finalize and resume retirements,
adopt strays, rescue the default partition's rows, create partitions, retire old ones. The
native backend; :class:`kronos_db.partitions.partman_rotation.PartmanRotation` overrides creation.

Each step is one short transaction (or a few), resumable after a kill; see the package
docstring for the promise and docs/partitions.md for the lock budget.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import class_row

from kronos_db import backups, db, logs, role_mapping
from kronos_db.config import Settings
from kronos_db.errors import ArchiveError, KronosError, LockTimeoutError, UsageError
from kronos_db.partitions.archive import archive_table, count_archive_rows
from kronos_db.partitions.catalog import DETACHED_MARK, ParentTable, Policy, _columns, _count
from kronos_db.partitions.ddl import (
    _attach_sql,
    _bounds_check,
    _check_name,
    _create_table_sql,
    _mark_sql,
    _render_with_params,
    partition_privileges,
)
from kronos_db.partitions.naming import _ceil_second, _iso, partition_name
from kronos_db.partitions.plan import STEP_LOCKS, Action
from kronos_db.partitions.runner import (
    BatchSizer,
    Notify,
    StepResult,
    _Hold,
    _HoldExceeded,
    _Runner,
    default_batch_sizer,
)
from kronos_db.resources import query

# the name the steps have always logged under, before the module became a package
logger = logging.getLogger("kronos_db.partitions")


# how far ahead of now the rescue of the current range stops: rows written until then still land
# in the default partition and are part of the rescue; later ones go to the new partition.
# Covers the time to attach that partition and writers' clocks a little ahead of ours.
STOP_MARGIN = timedelta(seconds=2)


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
    def privileges(self) -> role_mapping.PartitionPrivileges:
        """The role mapping's [partitions]: owner and grants of every new partition."""
        return role_mapping.load_mapping(self.settings).partitions

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
            ok = False
            extra = {"error": error.message, "error_code": int(error.exit_code)}
        else:
            ok = True
        return StepResult(
            action.kind,
            action.partition,
            ok,
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
