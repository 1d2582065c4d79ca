"""Migrations: versioned raw SQL, driven by Alembic, made safe to run against production.

Alembic keeps the version table and the revision graph; each revision file runs its SQL pair
(:mod:`kronos_db.migration_sql`). On top of Alembic, every run here:

* holds the ``migrations`` lease (:mod:`kronos_db.locks`), taken by polling with a bounded
  wait and renewed by a heartbeat, so concurrent runs apply each revision once, directly or
  through a transaction pooler;
* runs each revision in its own transaction, which checks that the lease is still this run's
  just before it commits (fencing): a run killed half-way leaves the database at the previous
  revision, and a run that stalled past its lease rolls its revision back;
* sets ``lock_timeout`` and ``statement_timeout`` LOCAL in each revision's transaction, names
  the blocking session when the lock timeout fires, and retries with back-off when asked to;
* refuses up front, behind a transaction pooler, to apply a revision that must run outside a
  transaction (``CREATE INDEX CONCURRENTLY`` needs one server session);
* records a checksum of each applied revision's SQL and refuses to go on when one was edited.

The same environment code (:func:`run_env`) serves ``kronos-db`` and plain ``alembic`` with the
project's ``alembic.ini``, so both give the same result.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy
from alembic import command
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from psycopg import sql
from sqlalchemy.pool import NullPool

from kronos_db import db, locks, logs, replication
from kronos_db.config import Settings, load_settings
from kronos_db.durations import postgres_interval
from kronos_db.errors import (
    ChecksumMismatchError,
    DataLossError,
    InsufficientPrivilegeError,
    KronosError,
    LockBusyError,
    LockTimeoutError,
    MigrationTreeError,
    NotAdoptedError,
    UnknownRevisionError,
    UnsafeMigrationError,
)
from kronos_db.migration_sql import Direction, MigrationScript, checksum, sql_path
from kronos_db.migration_tree import MigrationTree, _down_revisions, _relative
from kronos_db.resources import query, render_with_literals

logger = logging.getLogger(__name__)


MIGRATION_LOCK = "migrations"


MAX_RETRY_DELAY = 30.0


# the tables of the Kronos schema (../shared/kronos-schema.md), in foreign key order
KRONOS_TABLES = (
    "roles",
    "users",
    "sessions",
    "logs",
    "cache",
    "routes",
    "rate_limits",
    "message_queue",
    "backups",
)


Notify = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class AppliedStep:
    revision: str
    direction: str  # "upgrade" or "downgrade"
    description: str
    seconds: float
    locks: str = ""  # the table locks its transaction held at its end (-v logs them)


@dataclasses.dataclass(frozen=True)
class MigrationResult:
    database: str
    created_database: bool
    before: tuple[str, ...]
    after: tuple[str, ...]
    steps: tuple[AppliedStep, ...]
    attempts: int


@dataclasses.dataclass(frozen=True)
class RevisionInfo:
    revision: str
    down_revision: str | None
    description: str
    applied: bool
    applied_at: datetime | None
    sql_file: str
    # a no-transaction revision a run left half-way: "7 of 9 upgrade statements done"
    partial: str = ""


@dataclasses.dataclass(frozen=True)
class ChecksumProblem:
    revision: str
    sql_file: str
    recorded: str
    current: str | None  # None: the file is gone

    def describe(self) -> str:
        if self.current is None:
            return f"revision {self.revision} is applied but {self.sql_file} is missing"
        return (
            f"{self.sql_file} was edited after revision {self.revision} was applied "
            f"(recorded sha256 {self.recorded[:12]}…, file now {self.current[:12]}…); "
            "restore it and put the change in a new revision"
        )


@dataclasses.dataclass(frozen=True)
class MigrationStatus:
    database: str
    current: tuple[str, ...]
    head: str  # the heads joined with commas (one, unless the tree has branches)
    pending: tuple[RevisionInfo, ...]
    checksum_problems: tuple[ChecksumProblem, ...]
    heads: tuple[str, ...] = ()
    branches: str = ""  # why there are several heads and what to do ("" with one head)
    # why migrate would refuse this database (Kronos tables without kronos-db's history)
    not_adopted: str | None = None

    @property
    def up_to_date(self) -> bool:
        return not self.pending


@dataclasses.dataclass
class MigrationRun:
    """What a kronos-db run hands to the Alembic environment, and what it gets back."""

    settings: Settings
    target: db.Target
    tree: MigrationTree
    verify_checksums: bool = True
    lease: locks.Lease | None = None  # the migration lease, when the caller already holds it
    steps: list[AppliedStep] = dataclasses.field(default_factory=list)
    backend_pid: int | None = None  # the server backend running the current revision
    _step_started: float = dataclasses.field(default_factory=time.monotonic)

    def revision_settings(self) -> dict[str, str]:
        """The settings each revision runs under, LOCAL to its transaction."""
        return _timeouts(self.settings)

    def begin_revision(self, conn: psycopg.Connection[Any]) -> None:
        """First thing in a revision's transaction: its settings, and which backend runs it.

        Behind a transaction pooler each transaction may run on another server backend: the
        blocker watcher must look at this one.
        """
        db.set_local(conn, self.revision_settings())
        self.watch_backend(conn)

    def watch_backend(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(query("db", "select_backend_pid")).fetchone()
        self.backend_pid = int(row[0]) if row else None

    def on_version_apply(
        self,
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        """Alembic callback, inside the revision's transaction: record (or forget) its checksum."""
        if step.is_stamp or step.up_revision is None:
            return
        script = step.up_revision
        assert isinstance(script, Script)
        revision = step.up_revision_id
        if step.is_upgrade:
            statement = query("migrations", "upsert_migration_checksum")
            params = {
                "revision": revision,
                "checksum": checksum(sql_path(script.path, "upgrade")),
            }
        else:
            statement = query("migrations", "delete_migration_checksum")
            params = {"revision": revision}
        if ctx.as_sql:
            ctx.impl.static_output(render_with_literals(statement, params) + ";")
        else:
            assert ctx.connection is not None
            ctx.connection.exec_driver_sql(statement, params)
            # a no-transaction revision's progress rows go with the version row, atomically
            ctx.connection.exec_driver_sql(
                query("migrations", "delete_migration_progress"), {"script": Path(script.path).stem}
            )
            if self.lease is not None:
                # last statement before Alembic commits the revision: still our lease?
                self.lease.fence(_driver(ctx.connection))
        held = ""
        if not ctx.as_sql and ctx.connection is not None and logger.isEnabledFor(logging.INFO):
            held = logs.locks_held(_driver(ctx.connection))  # before Alembic commits
        now = time.monotonic()
        applied = AppliedStep(
            revision=str(revision),
            direction="upgrade" if step.is_upgrade else "downgrade",
            description=(script.doc or "").strip(),
            seconds=now - self._step_started,
            locks=held,
        )
        self.steps.append(applied)
        self._step_started = now
        logger.info(
            "%s %s (%s): %.0f ms; locks on tables at its commit: %s",
            applied.direction,
            applied.revision,
            applied.description,
            applied.seconds * 1000,
            held or "none (no transaction)",
            extra={
                "step": f"{applied.direction} {applied.revision}",
                "duration_ms": round(applied.seconds * 1000, 1),
            },
        )


def sqlalchemy_engine(target: db.Target) -> sqlalchemy.Engine:
    """An engine whose connections come from :func:`kronos_db.db.connect` (libpq resolution)."""
    return sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: db.connect(target, autocommit=False),
        poolclass=NullPool,
    )


def _driver(connection: sqlalchemy.Connection) -> psycopg.Connection[Any]:
    driver_connection = connection.connection.driver_connection
    assert isinstance(driver_connection, psycopg.Connection)
    return driver_connection


def run_env() -> None:
    """The body of ``migrations/env.py``, for kronos-db and plain ``alembic`` alike."""
    from alembic import context

    run = context.config.attributes.get("kronos_run")
    if run is None:
        # plain `alembic` with the project's alembic.ini: resolve everything as kronos-db does
        settings = load_settings()
        script_location = Path(context.config.get_main_option("script_location") or "migrations")
        run = MigrationRun(
            settings=settings,
            target=db.resolve_target(None, settings),
            tree=MigrationTree(script_location.resolve().parent),
        )
        context.config.attributes["kronos_run"] = run  # the revisions' hooks find it there
    if context.is_offline_mode():
        _run_offline(run)
    elif run.lease is not None:
        _run_online(run)
    else:
        with migration_lock(run.settings, run.target) as lease:
            run.lease = lease
            try:
                _run_online(run)
            finally:
                run.lease = None


def _timeouts(settings: Settings) -> dict[str, str]:
    return {
        "lock_timeout": postgres_interval(settings.migrations.lock_timeout),
        "statement_timeout": postgres_interval(settings.migrations.statement_timeout),
    }


def _run_offline(run: MigrationRun) -> None:
    from alembic import context

    context.configure(
        url="postgresql+psycopg://",
        dialect_name="postgresql",
        literal_binds=True,
        transaction_per_migration=True,
        on_version_apply=run.on_version_apply,
    )
    impl = context.get_context().impl
    impl.static_output(query("migrations", "create_migration_checksums") + ";")
    with context.begin_transaction():
        context.run_migrations()


def _run_online(run: MigrationRun) -> None:
    from alembic import context

    engine = sqlalchemy_engine(run.target)
    try:
        with engine.connect() as connection:
            driver_connection = _driver(connection)
            with driver_connection.transaction():
                reason = unmanaged_reason(driver_connection)
            if reason is not None:
                raise NotAdoptedError(reason)
            with db.transaction_settings(driver_connection, run.revision_settings()):
                driver_connection.execute(query("migrations", "create_migration_checksums"))
                driver_connection.execute(query("migrations", "create_migration_progress"))
            if run.verify_checksums:
                with driver_connection.transaction():
                    problems = _checksum_problems(driver_connection, run.tree)
                if problems:
                    raise ChecksumMismatchError("; ".join(p.describe() for p in problems))
            context.configure(
                connection=connection,
                transaction_per_migration=True,
                on_version_apply=run.on_version_apply,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def _checksum_problems(
    connection: sqlalchemy.Connection | psycopg.Connection[Any], tree: MigrationTree
) -> list[ChecksumProblem]:
    statement = query("migrations", "select_migration_checksums")
    if isinstance(connection, sqlalchemy.Connection):
        rows = connection.exec_driver_sql(statement).fetchall()
    else:
        rows = connection.execute(statement).fetchall()
    script = tree.script_directory()
    problems = []
    for revision, recorded, _applied_at in rows:
        try:
            revision_script = script.get_revision(revision)
        except CommandError:
            revision_script = None
        if revision_script is None:
            problems.append(ChecksumProblem(revision, f"revision {revision}", recorded, None))
            continue
        path = tree.upgrade_sql(revision_script)
        shown = _relative(path, tree.root)
        if not path.is_file():
            problems.append(ChecksumProblem(revision, shown, recorded, None))
            continue
        current = checksum(path)
        if current != recorded.strip():
            problems.append(ChecksumProblem(revision, shown, recorded, current))
    return problems


@contextmanager
def migration_lock(
    settings: Settings, target: db.Target, notify: Notify = _quiet
) -> Iterator[locks.Lease]:
    """Hold the migration lease for the block (waiting up to ``[migrations] lock_wait``)."""

    def report(current: locks.LockHolder | None) -> None:
        who = current.describe() if current is not None else "another run"
        notify(f"waiting for the migration lock, held by {who}")

    with locks.advisory_lock(
        target, MIGRATION_LOCK, wait=settings.migrations.lock_wait, on_wait=report
    ) as lease:
        yield lease


class BlockerWatcher:
    """Remembers who blocks a working session, to name them if its lock_timeout fires.

    Polls ``pg_blocking_pids()`` of the session ``pid()`` returns (None: not known yet) from
    ``conn``, a connection of its own that stays idle (migrate's observer, adopt's).
    """

    def __init__(self, conn: psycopg.Connection[Any], pid: Callable[[], int | None]) -> None:
        self._conn = conn
        self._pid = pid
        self._stop = threading.Event()
        self.blockers: list[locks.BlockingSession] = []
        self._thread = threading.Thread(target=self._watch, name="kronos-blockers", daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            pid = self._pid()
            if pid is None:
                continue
            try:
                found = locks.blocking_sessions(self._conn, pid)
            except psycopg.Error:
                return
            if found:
                self.blockers = found

    def describe(self) -> str:
        who = "; ".join(b.describe() for b in self.blockers)
        return f"blocked by {who}" if who else "the blocking session had already gone"

    def __enter__(self) -> BlockerWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _translate(exc: BaseException, target: db.Target) -> KronosError:
    if isinstance(exc, KronosError):
        return exc
    if isinstance(exc, CommandError):
        text = str(exc)
        if (
            "Can't locate revision" in text
            or "No such revision" in text
            or "Relative revision" in text
        ):
            return UnknownRevisionError(text)
        return KronosError(f"alembic: {text}")
    return db.database_error(exc, target)


def validate_revision(tree: MigrationTree, revision: str) -> None:
    """Raise ``UnknownRevisionError`` unless ``revision`` names something in the tree.

    ``head`` on a tree with several heads is refused with what to do about it: Alembic would
    only say "multiple heads are present".
    """
    script = tree.script_directory()
    if revision == "head" and len(script.get_heads()) > 1:
        raise MigrationTreeError(describe_heads(script))
    if revision in {"head", "heads", "base"} or re.fullmatch(r"[+-]\d+", revision):
        return
    try:
        found = script.get_revisions(re.sub(r"[+-]\d+$", "", revision))
    except CommandError as exc:
        raise UnknownRevisionError(f"unknown revision {revision!r}: {exc}") from None
    if not found:
        raise UnknownRevisionError(f"unknown revision {revision!r}")


def current_revisions(conn: psycopg.Connection[Any]) -> tuple[str, ...]:
    has_versions, _has_checksums = conn.execute(
        query("migrations", "select_tool_tables")
    ).fetchone() or (False, False)
    if not has_versions:
        return ()
    return tuple(row[0] for row in conn.execute(query("migrations", "select_current_revisions")))


def present_kronos_tables(conn: psycopg.Connection[Any]) -> tuple[str, ...]:
    """The Kronos tables that exist in the current schema, in foreign key order."""
    rows = conn.execute(
        query("migrations", "select_present_kronos_tables"), {"tables": list(KRONOS_TABLES)}
    )
    return tuple(row[0] for row in rows)


def unmanaged_reason(conn: psycopg.Connection[Any]) -> str | None:
    """Why kronos-db must not migrate this database as it stands (None: it may).

    Kronos tables without kronos-db's history were built outside kronos-db: running the
    revisions on them fails on the first CREATE TABLE. A version table without one checksum
    recorded by kronos-db was stamped by hand (``alembic stamp``): it claims a schema nobody
    checked. Either way ``kronos-db adopt`` is the way in.
    """
    present = present_kronos_tables(conn)
    if not present:
        return None
    current = current_revisions(conn)
    if not current:
        return (
            f"{len(present)} Kronos table(s) ({', '.join(present)}) exist but kronos-db has no "
            "history here: the database was built outside kronos-db; take it over with "
            "`kronos-db adopt --plan`, then `kronos-db adopt --apply`"
        )
    if not _applied_at(conn):
        return (
            f"alembic_version says {', '.join(current)} but kronos-db recorded none of its "
            "revisions: the history was stamped outside kronos-db and nothing checked that the "
            "schema matches it; run `kronos-db adopt --plan` (it checks, converts and stamps)"
        )
    return None


def _read_current(target: db.Target) -> tuple[str, ...]:
    with db.connection(target) as conn:
        return current_revisions(conn)


def _migrate(
    settings: Settings,
    target: db.Target,
    revision: str,
    *,
    upgrade: bool,
    create_database: bool = False,
    drop_data: bool = False,
    notify: Notify = _quiet,
) -> MigrationResult:
    tree = MigrationTree.from_settings(settings)
    validate_revision(tree, revision)
    # before anything is written (the database, the lease): a standby gets one clear line
    replication.require_primary_at(
        db.maintenance_target(target) if create_database else target,
        "migrate" if upgrade else "downgrade",
    )
    created = db.create_database(target) if create_database else False
    if upgrade and settings.lint.on_migrate:
        lint_gate(settings, tree, target, revision, notify)
    retries = settings.migrations.retries
    budget = settings.migrations.retry_budget.total_seconds()
    with migration_lock(settings, target, notify) as lease, db.connection(target) as observer:
        before = current_revisions(observer)
        _refuse_sessionless_revisions(settings, target, tree, before, revision, upgrade=upgrade)
        reason = unmanaged_reason(observer)
        if reason is not None:
            raise NotAdoptedError(reason)
        if not upgrade:
            losing = [d for d in destructive_drops(observer, tree, before, revision) if d.rows]
            if losing and not drop_data:
                raise DataLossError(
                    f"downgrading to {revision} drops data: "
                    + ", ".join(d.describe() for d in losing)
                    + "; back it up first (kronos-db backup create), then pass --drop-data"
                )
        if upgrade:
            _refuse_superuser_revisions(observer, tree, before, revision)
        run = MigrationRun(
            settings=settings, target=target, tree=tree, verify_checksums=upgrade, lease=lease
        )
        config = tree.alembic_config(run)
        attempts = 0
        started = time.monotonic()
        while True:
            attempts += 1
            watcher = BlockerWatcher(observer, lambda: run.backend_pid)
            try:
                with watcher:
                    if upgrade:
                        command.upgrade(config, revision)
                    else:
                        command.downgrade(config, revision)
                break
            except Exception as exc:
                error = _translate(exc, target)
                if isinstance(error, InsufficientPrivilegeError):
                    failing = _next_revision_name(run, tree, observer)
                    raise InsufficientPrivilegeError(
                        f"applying {failing}: {error.message}"
                    ) from exc
                if not isinstance(error, LockTimeoutError) or isinstance(error, LockBusyError):
                    raise error from exc
                blocked = watcher.describe()
                failing = _next_revision_name(run, tree, observer)
                wait = retry_delay(settings, attempts)
                spent = time.monotonic() - started
                if attempts > retries or spent + wait > budget:
                    if not retries:
                        hint = "; retry later or pass --retries"
                    else:
                        hint = (
                            f"; gave up after {attempts} attempt(s) in {spent:.0f}s "
                            "(retries, retry_budget)"
                        )
                    partial = "".join(f"; {note}" for note in getattr(error, "__notes__", ()))
                    raise LockTimeoutError(
                        f"lock timeout ({postgres_interval(settings.migrations.lock_timeout)}) "
                        f"applying {failing}: {blocked}{partial}{hint}"
                    ) from exc
                notify(
                    f"lock timeout applying {failing}: {blocked}; "
                    f"retry {attempts}/{retries} in {wait:.1f}s"
                )
                time.sleep(wait)
        after = current_revisions(observer)
    return MigrationResult(
        database=target.describe(),
        created_database=created,
        before=before,
        after=after,
        steps=tuple(run.steps),
        attempts=attempts,
    )


def lint_gate(
    settings: Settings, tree: MigrationTree, target: db.Target, revision: str, notify: Notify
) -> None:
    """Refuse an unreleased pending revision with an error-level lint finding (no waiver).

    Released revisions are left alone: they cannot be edited, and they were reviewed when they
    were released. Warnings are said, not refused.
    """
    from kronos_db import lint

    with db.connection(target) as conn:
        current = current_revisions(conn)
    fresh = lint.unreleased(settings, pending_revisions(tree, current, revision))
    if not fresh:
        return
    report = lint.lint_revisions(settings, target=target, revisions=fresh)
    for finding in report.findings:
        if finding.level == "warning":
            notify(f"lint: {lint.describe(finding)}")
    if report.blocking:
        shown = "; ".join(lint.describe(f) for f in report.blocking)
        raise UnsafeMigrationError(
            f"{len(report.blocking)} error-level lint finding(s) in revision(s) "
            f"{', '.join(fresh)}, nothing applied: {shown}. Fix the revision, or waive a "
            "finding with `-- kronos: waive RULE: why it is safe here` on the line before "
            "the statement (docs/lint.md)"
        )


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th lock timeout: ``retry_delay`` doubling up to
    30 s, with ±20 % jitter so that runs (and rotations) that collided do not collide again."""
    first = settings.migrations.retry_delay.total_seconds()
    doubled: float = first * 2.0 ** (attempt - 1)
    return min(doubled, MAX_RETRY_DELAY) * random.uniform(0.8, 1.2)


def _revisions_to_run(
    tree: MigrationTree, current: Sequence[str], revision: str, *, upgrade: bool
) -> list[Script]:
    """The revisions an upgrade to (or a downgrade to) ``revision`` would run, roughly.

    Relative targets (``+2``, ``-1``) count as far as they could go: every pending revision
    for an upgrade, every applied one for a downgrade.
    """
    if upgrade:
        pending = set(pending_revisions(tree, current, revision))
        return [s for s in tree.revisions() if s.revision in pending]
    script_dir = tree.script_directory()
    applied = _applied_chain(script_dir, current)
    relative = re.fullmatch(r"(?:\w+)?[+-]\d+", revision) is not None
    kept = (
        set() if relative else _applied_chain(script_dir, [] if revision == "base" else [revision])
    )
    return [s for s in tree.revisions() if s.revision in applied - kept]


_CREATE_EXTENSION = re.compile(
    r"\bCREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?(?P<name>[\w-]+)\"?", re.IGNORECASE
)


def _refuse_superuser_revisions(
    conn: psycopg.Connection[Any],
    tree: MigrationTree,
    current: Sequence[str],
    revision: str,
) -> None:
    """Refuse before anything runs if a revision creates an extension this role may not.

    PostgreSQL 15 lets only a superuser create an untrusted extension (pg_stat_statements):
    as the owner, revision 0010 would fail after 0001-0009 were applied. ``bootstrap`` creates
    the mapping's extensions first; the revision's ``IF NOT EXISTS`` then does nothing.
    """
    wanted: dict[str, Script] = {}
    for script in _revisions_to_run(tree, current, revision, upgrade=True):
        text = MigrationScript.load(sql_path(script.path, "upgrade")).text
        for match in _CREATE_EXTENSION.finditer(text):
            wanted.setdefault(match.group("name").lower(), script)
    if not wanted:
        return
    rows = conn.execute(
        query("migrations", "select_extensions_creatable"), {"names": list(wanted)}
    ).fetchall()
    for name, installed, creatable in rows:
        if installed or creatable:
            continue
        script = wanted[name]
        raise InsufficientPrivilegeError(
            f"revision {script.revision} ({(script.doc or '').strip()}) creates the extension "
            f"{name}, which only a superuser may create on this server, and {conn.info.user} is "
            "not one: run `kronos-db bootstrap` once as a superuser (it creates the roles "
            "mapping's extensions), then migrate again; nothing was applied"
        )


def _refuse_sessionless_revisions(
    settings: Settings,
    target: db.Target,
    tree: MigrationTree,
    current: Sequence[str],
    revision: str,
    *,
    upgrade: bool,
) -> None:
    """Behind a transaction pooler, refuse before anything runs if a revision needs a session."""
    direction: Direction = "upgrade" if upgrade else "downgrade"
    for script in _revisions_to_run(tree, current, revision, upgrade=upgrade):
        if not MigrationScript.load(sql_path(script.path, direction)).transactional:
            db.require_session(
                target,
                settings.database.pooler,
                f"revision {script.revision} ({(script.doc or '').strip()}) runs outside a "
                "transaction (CREATE INDEX CONCURRENTLY)",
            )
            return


def _next_revision_name(
    run: MigrationRun, tree: MigrationTree, conn: psycopg.Connection[Any]
) -> str:
    current = current_revisions(conn)
    script = tree.script_directory()
    for candidate in script.walk_revisions():
        downs = _down_revisions(candidate)
        if set(downs) == set(current) or (not downs and not current):
            return f"revision {candidate.revision} ({(candidate.doc or '').strip()})"
    return "the next revision"


def upgrade(
    settings: Settings,
    target: db.Target,
    revision: str = "head",
    *,
    create_database: bool = False,
    notify: Notify = _quiet,
) -> MigrationResult:
    """Apply revisions up to ``revision`` (head by default)."""
    return _migrate(
        settings, target, revision, upgrade=True, create_database=create_database, notify=notify
    )


def downgrade(
    settings: Settings,
    target: db.Target,
    revision: str,
    *,
    drop_data: bool = False,
    notify: Notify = _quiet,
) -> MigrationResult:
    """Revert revisions down to ``revision`` (``base`` removes every Kronos object).

    Refuses (``DataLossError``) when a reverted revision drops a table or a column that holds
    rows, listing them with their counts, unless ``drop_data``.
    """
    return _migrate(settings, target, revision, upgrade=False, drop_data=drop_data, notify=notify)


_DROP_TABLE = re.compile(
    r"^\s*DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?P<names>[^;]+?)\s*(?:CASCADE|RESTRICT)?\s*$",
    re.IGNORECASE | re.DOTALL,
)


_ALTER_TABLE = re.compile(
    r"^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>\"[^\"]+\"|[\w$.]+)\s+(?P<body>.*)$",
    re.IGNORECASE | re.DOTALL,
)


_DROP_COLUMN = re.compile(
    r"\bDROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?(?P<column>\"[^\"]+\"|(?!CONSTRAINT\b)[\w$]+)",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class Drop:
    """A table or a column a downgrade drops, and the rows it holds now."""

    revision: str
    table: str
    column: str | None
    rows: int

    def describe(self) -> str:
        where = f"column {self.table}.{self.column}" if self.column else f"table {self.table}"
        noun = "value" if self.column else "row"
        return (
            f"{where} ({self.rows} {noun}{'s' if self.rows != 1 else ''}, revision {self.revision})"
        )


def _unquote(name: str) -> str:
    name = name.strip()
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()


def reverted_revisions(tree: MigrationTree, current: Sequence[str], revision: str) -> list[Script]:
    """The revisions a downgrade from ``current`` to ``revision`` reverts, newest first."""
    script = tree.script_directory()
    reverted: list[Script] = []
    for head in current:
        chain = list(script.iterate_revisions(head, "base"))
        relative = re.fullmatch(r"-(\d+)", revision)
        if relative:
            reverted += chain[: int(relative.group(1))]
        elif revision == "base":
            reverted += chain
        else:
            target = script.get_revision(revision)
            ids = [s.revision for s in chain]
            if target is not None and target.revision in ids:
                reverted += chain[: ids.index(target.revision)]
    return list(dict.fromkeys(reverted))


def dropped_objects(script: Script) -> list[tuple[str, str | None]]:
    """The (table, column) pairs a revision's downgrade SQL drops (column None: the table)."""
    path = sql_path(script.path, "downgrade")
    if not path.is_file():
        return []
    dropped: list[tuple[str, str | None]] = []
    for statement in MigrationScript.load(path).statements:
        text = statement.body
        if match := _DROP_TABLE.match(text):
            dropped += [(_unquote(n), None) for n in match.group("names").split(",")]
        elif match := _ALTER_TABLE.match(text):
            table = _unquote(match.group("table"))
            dropped += [
                (table, _unquote(m.group("column")))
                for m in _DROP_COLUMN.finditer(match.group("body"))
                if m.group("column").upper() not in {"DEFAULT", "NOT", "IDENTITY", "EXPRESSION"}
            ]
    return dropped


def destructive_drops(
    conn: psycopg.Connection[Any], tree: MigrationTree, current: Sequence[str], revision: str
) -> list[Drop]:
    """What a downgrade would drop, each with the rows (or non-NULL values) it holds now."""
    drops: list[Drop] = []
    for script in reverted_revisions(tree, current, revision):
        for table, column in dropped_objects(script):
            row = conn.execute(
                query("migrations", "select_drop_target"), {"table": table, "column": column}
            ).fetchone()
            table_exists, column_exists = row or (False, False)
            if not table_exists or (column is not None and not column_exists):
                continue
            identifier = sql.Identifier(*table.split("."))
            if column is None:
                statement = sql.SQL(query("migrations", "count_table_rows")).format(
                    table=identifier
                )
            else:
                statement = sql.SQL(query("migrations", "count_column_values")).format(
                    table=identifier, column=sql.Identifier(column)
                )
            counted = conn.execute(statement).fetchone()
            rows = int(counted[0]) if counted else 0
            drops.append(Drop(script.revision, table, column, rows))
    return drops


def _revision_info(
    tree: MigrationTree,
    script: Script,
    applied: dict[str, datetime],
    current_chain: set[str],
    partial: Mapping[str, str] | None = None,
) -> RevisionInfo:
    down = script.down_revision
    return RevisionInfo(
        revision=script.revision,
        down_revision=down if isinstance(down, str) or down is None else ",".join(down),
        description=(script.doc or "").strip(),
        applied=script.revision in current_chain,
        applied_at=applied.get(script.revision),
        sql_file=_relative(tree.upgrade_sql(script), tree.root),
        partial=(partial or {}).get(Path(script.path).stem, ""),
    )


def _partial_scripts(conn: psycopg.Connection[Any], tree: MigrationTree) -> dict[str, str]:
    """No-transaction revisions a run left half-way: script stem -> what is done."""
    row = conn.execute(query("migrations", "select_progress_table")).fetchone()
    if not row or not row[0]:
        return {}
    found: dict[str, str] = {}
    for script, direction, statements, last in conn.execute(
        query("migrations", "select_partial_scripts")
    ):
        path = tree.sql_dir / f"{script}.{direction}.sql"
        total = len(MigrationScript.load(path).statements) if path.is_file() else "?"
        found[script] = (
            f"partly applied: {statements} of {total} {direction} statements done "
            f"(last at {last:%Y-%m-%d %H:%M:%S %Z}); the next run resumes after them"
        )
    return found


def _applied_chain(script_dir: ScriptDirectory, current: Sequence[str]) -> set[str]:
    chain: set[str] = set()
    for head in current:
        try:
            chain.update(s.revision for s in script_dir.iterate_revisions(head, "base"))
        except CommandError as exc:
            raise UnknownRevisionError(
                f"the database is at revision {head}, which this migration tree does not have "
                f"({exc}); run a kronos-db that has it"
            ) from None
    return chain


def pending_revisions(
    tree: MigrationTree, current: Sequence[str], up_to: str = "heads"
) -> list[str]:
    """The revisions an upgrade from ``current`` to ``up_to`` applies, oldest first."""
    script_dir = tree.script_directory()
    chain = _applied_chain(script_dir, current)
    pending = [s.revision for s in tree.revisions() if s.revision not in chain]
    if up_to in {"head", "heads"}:
        return pending
    relative = re.fullmatch(r"\+(\d+)", up_to)
    if relative:
        return pending[: int(relative.group(1))]
    try:
        wanted = {s.revision for s in script_dir.iterate_revisions(up_to, "base")}
    except CommandError as exc:
        raise UnknownRevisionError(f"unknown revision {up_to!r}: {exc}") from None
    return [revision for revision in pending if revision in wanted]


def _applied_at(conn: psycopg.Connection[Any]) -> dict[str, datetime]:
    _has_versions, has_checksums = conn.execute(
        query("migrations", "select_tool_tables")
    ).fetchone() or (False, False)
    if not has_checksums:
        return {}
    rows = conn.execute(query("migrations", "select_migration_checksums")).fetchall()
    return {revision: applied_at for revision, _checksum, applied_at in rows}


def history(settings: Settings, target: db.Target) -> list[RevisionInfo]:
    """Every revision, oldest first, marked applied or not in the target database."""
    tree = MigrationTree.from_settings(settings)
    script_dir = tree.script_directory()
    with db.connection(target) as conn:
        current = current_revisions(conn)
        applied = _applied_at(conn)
    chain = _applied_chain(script_dir, current)
    return [_revision_info(tree, s, applied, chain) for s in tree.revisions()]


def status(settings: Settings, target: db.Target) -> MigrationStatus:
    """Where the database stands: current revision, pending ones, edited applied files."""
    tree = MigrationTree.from_settings(settings)
    script_dir = tree.script_directory()
    heads = script_dir.get_heads()
    with db.connection(target) as conn:
        current = current_revisions(conn)
        applied = _applied_at(conn)
        _has_versions, has_checksums = conn.execute(
            query("migrations", "select_tool_tables")
        ).fetchone() or (False, False)
        problems = _checksum_problems(conn, tree) if has_checksums else []
        partial = _partial_scripts(conn, tree)
        not_adopted = unmanaged_reason(conn)
    chain = _applied_chain(script_dir, current)
    pending = tuple(
        _revision_info(tree, s, applied, chain, partial)
        for s in tree.revisions()
        if s.revision not in chain
    )
    return MigrationStatus(
        database=target.describe(),
        current=current,
        head=",".join(heads),
        pending=pending,
        checksum_problems=tuple(problems),
        heads=tuple(heads),
        branches=describe_heads(script_dir),
        not_adopted=not_adopted,
    )


def render_sql(
    settings: Settings,
    revision: str = "head",
    *,
    from_revision: str = "base",
    downgrade_to: bool = False,
) -> str:
    """The SQL an upgrade from ``from_revision`` to ``revision`` would run (offline mode)."""
    tree = MigrationTree.from_settings(settings)
    validate_revision(tree, revision)
    validate_revision(tree, from_revision)
    buffer = io.StringIO()
    run = MigrationRun(settings=settings, target=db.Target("", "offline"), tree=tree)
    config = tree.alembic_config(run, stdout=buffer)
    config.output_buffer = buffer
    span = f"{from_revision}:{revision}"
    try:
        if downgrade_to:
            command.downgrade(config, span, sql=True)
        else:
            command.upgrade(config, span, sql=True)
    except CommandError as exc:
        raise _translate(exc, run.target) from exc
    return buffer.getvalue()


_SLUG = re.compile(r"[^a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class NewRevision:
    revision: str
    down_revision: str | None  # several parents (a merge) are joined with commas
    files: tuple[Path, ...]


def _writable_tree(settings: Settings, message: str) -> tuple[MigrationTree, ScriptDirectory]:
    if not _SLUG.sub("", message.lower()):
        raise UnknownRevisionError("the revision message needs at least one letter or digit")
    tree = MigrationTree.from_settings(settings)
    tree.ensure_writable()
    return tree, tree.script_directory()


def _next_revision_id(script_dir: ScriptDirectory) -> str:
    numbers = [int(s.revision) for s in script_dir.walk_revisions() if s.revision.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


def _write_sql_pair(script: object, upgrade_text: str, downgrade_text: str) -> NewRevision:
    assert isinstance(script, Script)
    revision_file = Path(script.path)
    if revision_file.stem.endswith("_"):
        # Alembic cuts a long slug after a separator: 0011_rate_limits_id_to_bigint_.py
        tidy = revision_file.with_name(revision_file.stem.rstrip("_") + revision_file.suffix)
        revision_file = revision_file.rename(tidy)
    upgrade_path = sql_path(revision_file, "upgrade")
    downgrade_path = sql_path(revision_file, "downgrade")
    upgrade_path.parent.mkdir(parents=True, exist_ok=True)
    upgrade_path.write_text(upgrade_text, encoding="utf-8")
    downgrade_path.write_text(downgrade_text, encoding="utf-8")
    downs = _down_revisions(script)
    return NewRevision(
        script.revision, ",".join(downs) or None, (revision_file, upgrade_path, downgrade_path)
    )


def create_revision(settings: Settings, message: str) -> NewRevision:
    """Write a new revision: the Alembic file and its empty upgrade/downgrade SQL pair."""
    tree, script_dir = _writable_tree(settings, message)
    if len(script_dir.get_heads()) > 1:
        raise MigrationTreeError(f"{describe_heads(script_dir)}; then write the new revision")
    script = command.revision(
        tree.alembic_config(), message=message, rev_id=_next_revision_id(script_dir)
    )
    return _write_sql_pair(
        script,
        f"-- {message}\n"
        "-- Runs in the revision's transaction. For CREATE INDEX CONCURRENTLY, put the\n"
        "-- directive `-- kronos: no-transaction` on a line of its own, one statement each.\n",
        f"-- undo: {message}\n",
    )


def merge_heads(settings: Settings, message: str) -> NewRevision:
    """Join every head of the tree with a new revision whose parents they are (Alembic's merge).

    Its SQL pair is empty: the branches' own revisions did the work; the merge only makes the
    history one line again, so that `head` means one revision.
    """
    tree, script_dir = _writable_tree(settings, message)
    heads = script_dir.get_heads()
    if len(heads) < 2:
        raise MigrationTreeError(
            f"nothing to merge: the migration tree has one head ({', '.join(heads) or 'none'})"
        )
    script = command.merge(
        tree.alembic_config(), "heads", message=message, rev_id=_next_revision_id(script_dir)
    )
    joined = " and ".join(heads)
    return _write_sql_pair(
        script,
        f"-- {message}\n-- merges {joined}: nothing to run, the branches did the work\n",
        f"-- undo: {message}\n-- splits {joined} again: nothing to run\n",
    )


def describe_heads(script_dir: ScriptDirectory) -> str:
    """Why the tree has several heads and what to do about it ("" with a single head)."""
    heads = list(script_dir.get_heads())
    if len(heads) < 2:
        return ""
    lineages = [
        {s.revision: s for s in script_dir.iterate_revisions(head, "base")} for head in heads
    ]
    common = set(lineages[0]).intersection(*lineages[1:])
    fork = max(
        common,
        key=lambda revision: sum(1 for _ in script_dir.iterate_revisions(revision, "base")),
        default=None,
    )
    after = f"branches that both follow {fork}" if fork else "unrelated branches"
    return (
        f"the migration tree has {len(heads)} heads ({', '.join(sorted(heads))}), {after}: "
        f'join them with `kronos-db merge -m "merge {" and ".join(sorted(heads))}"`, '
        "or name the revision to go to (`heads` applies every branch)"
    )


__all__ = [
    "AppliedStep",
    "BlockerWatcher",
    "ChecksumProblem",
    "MigrationResult",
    "MigrationRun",
    "MigrationStatus",
    "MigrationTree",
    "NewRevision",
    "RevisionInfo",
    "create_revision",
    "describe_heads",
    "downgrade",
    "history",
    "merge_heads",
    "pending_revisions",
    "render_sql",
    "run_env",
    "status",
    "upgrade",
]
