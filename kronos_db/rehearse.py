"""Rehearsal: the pending revisions applied to a scratch copy under a synthetic Kronos workload.

``kronos-db migrate --rehearse`` answers, before production does: *how long will the services
wait while this runs?* It:

1. copies the target into a scratch database on the same server (or ``[rehearse]
   scratch_url``): the schema exactly as it is (``pg_dump --schema-only``, restored without
   owners and privileges: the tables and partitions first, then the rows, then the indexes,
   constraints and triggers), and the rows of every table — all of them up to
   ``sample_rows`` per table, a block sample (``TABLESAMPLE SYSTEM``) beyond; rows whose parent
   was not sampled are dropped so the foreign keys hold; sequences are set where the target's
   stand;
2. runs a synthetic Kronos workload against the copy, in threads of this process with their own
   connections: log inserts, session lookups and updates, queue inserts, rate-limit upserts
   (the router's ``INSERT … ON CONFLICT DO UPDATE``), each at ``rate`` per second, each timed;
3. applies each pending revision in turn, exactly as ``migrate`` would (same lock timeouts,
   retries, no-transaction handling), while a sampler reads ``pg_locks`` every 20 ms, and
   reports per revision: the worst wait of each kind of service statement, the locks the
   migration held and for how long, the tables it rewrote (their ``relfilenode`` changed), and
   the statements of the services that failed.

A revision during which a service statement waited longer than ``max_stall``, or failed, makes
the rehearsal fail (exit 8). The copy is dropped at the end, whatever happens.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import class_row

from kronos_db import backups, db, migrations
from kronos_db.config import LintSettings, Settings
from kronos_db.errors import InsufficientPrivilegeError, KronosError
from kronos_db.resources import query

logger = logging.getLogger(__name__)

MIGRATION_APPLICATION = "kronos-rehearse-migration"
WORKLOAD_APPLICATION = "kronos-rehearse-workload"
SAMPLE_EVERY = 0.02  # seconds between two looks at pg_locks
Notify = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


class RehearsalError(KronosError):
    """The rehearsal could not run."""


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class CopiedTable:
    table: str
    estimated_rows: int  # in the target (planner's estimate)
    copied_rows: int
    sampled: bool  # False: every row was copied


@dataclasses.dataclass(frozen=True)
class StatementStall:
    kind: str
    statements: int
    worst_ms: float
    p99_ms: float
    errors: int
    first_error: str | None


@dataclasses.dataclass(frozen=True)
class LockHeld:
    relation: str
    mode: str
    held_ms: float  # the longest it was held at a stretch (consecutive samples that saw it)
    times: int  # how many separate stretches (a lock taken, released, taken again)
    most_waiting: int  # workload sessions seen waiting on this relation at once


@dataclasses.dataclass(frozen=True)
class RevisionRehearsal:
    revision: str
    description: str
    seconds: float
    attempts: int
    error: str | None  # the revision failed in the copy
    stalls: tuple[StatementStall, ...]
    locks: tuple[LockHeld, ...]
    rewritten: tuple[str, ...]
    worst_stall_ms: float
    failed: bool  # a stall above the bound, a service statement failed, or the revision failed


@dataclasses.dataclass(frozen=True)
class RehearsalReport:
    database: str
    copied: tuple[CopiedTable, ...]
    revisions: tuple[RevisionRehearsal, ...]
    max_stall_ms: float
    rate: float

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.revisions)


# --------------------------------------------------------------------------- the copy


def _with(target: db.Target, **params: Any) -> db.Target:
    return dataclasses.replace(target, conninfo=make_conninfo(target.conninfo, **params))


def _restore_list(settings: Settings, dump: Path, list_file: Path) -> None:
    """pg_restore's table of contents without extensions (creating one may need a superuser;
    those the copy can have are created separately)."""
    completed = subprocess.run(
        [settings.backups.pg_restore, "--list", str(dump)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if completed.returncode != 0:
        raise RehearsalError(f"pg_restore --list failed: {completed.stderr.strip()}")
    kept = [
        line
        for line in completed.stdout.splitlines()
        if " EXTENSION " not in line and " COMMENT - EXTENSION " not in line
    ]
    list_file.write_text("\n".join(kept) + "\n", encoding="utf-8")


def copy_database(
    settings: Settings,
    source: db.Target,
    scratch: db.Target,
    *,
    sample_rows: int,
    notify: Notify = _quiet,
) -> tuple[CopiedTable, ...]:
    """Copy ``source`` into the empty database ``scratch`` (see the module's documentation)."""
    with tempfile.TemporaryDirectory(prefix="kronos-rehearse-") as directory:
        dump = Path(directory) / "schema.dump"
        listing = Path(directory) / "schema.list"
        source_libpq = backups.libpq_for(source)
        lock_wait = round(settings.backups.lock_wait_timeout.total_seconds() * 1000)
        backups.run_tool(
            [
                settings.backups.pg_dump,
                "--schema-only",
                "--format=custom",
                "--no-password",
                f"--lock-wait-timeout={lock_wait}",
                f"--file={dump}",
                f"--dbname={source_libpq.conninfo}",
            ],
            source_libpq,
            source,
        )
        _restore_list(settings, dump, listing)
        scratch_libpq = backups.libpq_for(scratch)
        restore = [
            settings.backups.pg_restore,
            "--exit-on-error",
            "--no-password",
            "--no-owner",
            "--no-privileges",
            f"--use-list={listing}",
            f"--dbname={scratch_libpq.conninfo}",
        ]
        with db.connection(source) as source_conn, db.connection(scratch) as scratch_conn:
            _create_extensions(source_conn, scratch_conn, notify)
            backups.run_tool([*restore, "--section=pre-data", str(dump)], scratch_libpq, scratch)
            copied = _copy_rows(source_conn, scratch_conn, sample_rows, notify)
            _delete_orphans(source_conn, scratch_conn)
            backups.run_tool([*restore, "--section=post-data", str(dump)], scratch_libpq, scratch)
            for schema, name, value in source_conn.execute(
                query("rehearse", "select_sequence_values")
            ):
                scratch_conn.execute(
                    query("rehearse", "set_sequence_value"),
                    {"schema": schema, "name": name, "value": value},
                )
            scratch_conn.execute("ANALYZE")
    return copied


def _create_extensions(
    source: psycopg.Connection[Any], scratch: psycopg.Connection[Any], notify: Notify
) -> None:
    for (name,) in source.execute(
        "SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY extname"
    ):
        try:
            scratch.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name))
            )
        except psycopg.Error as exc:
            notify(f"the copy has no extension {name}: {str(exc).strip().splitlines()[0]}")


@dataclasses.dataclass(frozen=True)
class _CopyTable:
    schema_name: str
    table_name: str
    columns: list[str]
    estimated_rows: int


def _copy_rows(
    source: psycopg.Connection[Any],
    scratch: psycopg.Connection[Any],
    sample_rows: int,
    notify: Notify,
) -> tuple[CopiedTable, ...]:
    with source.cursor(row_factory=class_row(_CopyTable)) as cur:
        tables = cur.execute(query("rehearse", "select_copy_tables")).fetchall()
    copied = []
    for table in tables:
        identifier = sql.Identifier(table.schema_name, table.table_name)
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
        sampled = table.estimated_rows > sample_rows > 0
        sample: sql.Composable = sql.SQL("")
        if sampled:
            percent = max(100.0 * sample_rows / table.estimated_rows, 0.0001)
            sample = sql.SQL(" TABLESAMPLE SYSTEM ({})").format(sql.Literal(percent))
        out = sql.SQL("COPY (SELECT {} FROM ONLY {}{}) TO STDOUT (FORMAT binary)").format(
            columns, identifier, sample
        )
        into = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(identifier, columns)
        with (
            source.cursor() as reading,
            scratch.cursor() as writing,
            reading.copy(out) as rows_out,
            writing.copy(into) as rows_in,
        ):
            for block in rows_out:
                rows_in.write(block)
        (count,) = scratch.execute(
            sql.SQL("SELECT count(*) FROM ONLY {}").format(identifier)
        ).fetchone() or (0,)
        name = f"{table.schema_name}.{table.table_name}"
        copied.append(CopiedTable(name, table.estimated_rows, int(count), sampled))
        if sampled:
            notify(f"copied a sample of {name}: {count:,} of ~{table.estimated_rows:,} rows")
    return tuple(copied)


def _delete_orphans(source: psycopg.Connection[Any], scratch: psycopg.Connection[Any]) -> None:
    """A sampled child may point at a parent row that was not sampled: drop such rows, until
    none is left (a deleted parent may orphan its own children), so the keys can be added."""
    keys = source.execute(query("rehearse", "select_foreign_keys")).fetchall()
    deleted = True
    while deleted:
        deleted = False
        for child_schema, child, child_columns, parent_schema, parent, parent_columns in keys:
            child_id = sql.Identifier(child_schema, child)
            parent_id = sql.Identifier(parent_schema, parent)
            present = sql.SQL(" AND ").join(
                sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in child_columns
            )
            matches = sql.SQL(" AND ").join(
                sql.SQL("p.{} = c.{}").format(sql.Identifier(p), sql.Identifier(c))
                for c, p in zip(child_columns, parent_columns, strict=True)
            )
            statement = sql.SQL(
                "DELETE FROM {} AS c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} AS p WHERE {})"
            ).format(child_id, present, parent_id, matches)
            if scratch.execute(statement).rowcount:
                deleted = True


# --------------------------------------------------------------------------- the workload


@dataclasses.dataclass(frozen=True)
class _Sample:
    kind: str
    started: float
    seconds: float
    error: str | None


@dataclasses.dataclass(frozen=True)
class _Kind:
    """One kind of service statement: its table, and how to run it once."""

    name: str
    table: str
    run: Callable[[psycopg.Connection[Any], _Keys], None]


@dataclasses.dataclass
class _Keys:
    users: list[int]
    routes: list[int]
    tokens: list[str]


def _log_insert(conn: psycopg.Connection[Any], _keys: _Keys) -> None:
    conn.execute(
        "INSERT INTO logs (service_name, level, message)"
        " VALUES ('rehearsal', 'INFO', 'a log line of the rehearsal')"
    )


def _session_lookup(conn: psycopg.Connection[Any], keys: _Keys) -> None:
    token = random.choice(keys.tokens) if keys.tokens else "none"
    conn.execute("SELECT id, user_id, expires_at FROM sessions WHERE token = %s", (token,))


def _session_update(conn: psycopg.Connection[Any], keys: _Keys) -> None:
    token = random.choice(keys.tokens) if keys.tokens else "none"
    conn.execute(
        "UPDATE sessions SET expires_at = now() + interval '1 day' WHERE token = %s", (token,)
    )


def _queue_insert(conn: psycopg.Connection[Any], _keys: _Keys) -> None:
    conn.execute("INSERT INTO message_queue (topic, payload) VALUES ('rehearsal', '{}')")


def _rate_limit_upsert(conn: psycopg.Connection[Any], keys: _Keys) -> None:
    if not keys.users or not keys.routes:
        return
    conn.execute(
        "INSERT INTO rate_limits (user_id, route_id, request_count) VALUES (%s, %s, 1)"
        " ON CONFLICT (user_id, route_id) DO UPDATE"
        " SET request_count = rate_limits.request_count + 1, last_request = now()",
        (random.choice(keys.users), random.choice(keys.routes)),
    )


KINDS = (
    _Kind("log insert", "logs", _log_insert),
    _Kind("session lookup", "sessions", _session_lookup),
    _Kind("session update", "sessions", _session_update),
    _Kind("queue insert", "message_queue", _queue_insert),
    _Kind("rate-limit upsert", "rate_limits", _rate_limit_upsert),
)


class Workload:
    """Threads playing the Kronos services against the copy, every statement timed."""

    def __init__(self, target: db.Target, rate: float) -> None:
        self.target = _with(target, application_name=WORKLOAD_APPLICATION)
        self.interval = 1.0 / rate
        self.stop = threading.Event()
        self.samples: list[_Sample] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._play, args=(kind,), name=f"kronos-{kind.name}")
            for kind in KINDS
        ]
        self.keys = _Keys([], [], [])

    def __enter__(self) -> Workload:
        with db.connection(self.target) as conn:
            self.refresh_keys(conn)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def refresh_keys(self, conn: psycopg.Connection[Any]) -> None:
        """The users, routes and tokens to use (seeded when the copy has none)."""
        try:
            row = conn.execute(query("rehearse", "select_sample_keys")).fetchone()
            if row is not None and not (row[0] and row[1] and row[2]):
                conn.execute(query("rehearse", "seed_workload_rows"))
                row = conn.execute(query("rehearse", "select_sample_keys")).fetchone()
        except psycopg.Error:
            return  # the tables do not exist yet: a pending revision creates them
        if row is not None:
            self.keys = _Keys(list(row[0]), list(row[1]), list(row[2]))

    def _play(self, kind: _Kind) -> None:
        with db.connection(self.target) as conn:
            conn.execute("SET statement_timeout = '120s'")
            ready = False
            next_at = time.monotonic()
            while not self.stop.is_set():
                next_at += self.interval
                if not ready:
                    ready = conn.execute(
                        "SELECT to_regclass(%s) IS NOT NULL", (kind.table,)
                    ).fetchone() == (True,)
                if ready:
                    started = time.monotonic()
                    error = None
                    try:
                        kind.run(conn, self.keys)
                    except psycopg.Error as exc:
                        error = str(exc).strip().splitlines()[0]
                    with self._lock:
                        self.samples.append(
                            _Sample(kind.name, started, time.monotonic() - started, error)
                        )
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def stalls(self, start: float, end: float) -> tuple[StatementStall, ...]:
        """The statements that ran, even in part, between ``start`` and ``end``, per kind."""
        with self._lock:
            window = [s for s in self.samples if s.started < end and s.started + s.seconds > start]
        found = []
        for kind in KINDS:
            mine = sorted(s.seconds for s in window if s.kind == kind.name)
            errors = [s.error for s in window if s.kind == kind.name and s.error]
            if not mine:
                continue
            found.append(
                StatementStall(
                    kind=kind.name,
                    statements=len(mine),
                    worst_ms=mine[-1] * 1000,
                    p99_ms=mine[min(len(mine) - 1, int(len(mine) * 0.99))] * 1000,
                    errors=len(errors),
                    first_error=errors[0] if errors else None,
                )
            )
        return tuple(found)


# --------------------------------------------------------------------------- the sampler


class LockSampler:
    """Reads pg_locks of the copy every 20 ms while a revision runs."""

    def __init__(self, target: db.Target) -> None:
        self.target = target
        self.stop = threading.Event()
        # (relation, mode) -> stretches [first seen, last seen] of consecutive samples
        self.held: dict[tuple[str, str], list[list[float]]] = {}
        self.waiting: dict[str, int] = {}
        self._thread = threading.Thread(target=self._sample, name="kronos-lock-sampler")

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self._thread.join()

    def _sample(self) -> None:
        previous: set[tuple[str, str]] = set()
        with db.connection(self.target) as conn:
            while not self.stop.is_set():
                now = time.monotonic()
                rows = conn.execute(
                    query("rehearse", "select_migration_locks"),
                    {"migration": MIGRATION_APPLICATION, "workload": WORKLOAD_APPLICATION},
                ).fetchall()
                waiting: dict[str, int] = {}
                seen: set[tuple[str, str]] = set()
                for application, _pid, relation, mode, granted in rows:
                    if application == MIGRATION_APPLICATION and granted:
                        seen.add((relation, mode))
                    elif application == WORKLOAD_APPLICATION and not granted:
                        waiting[relation] = waiting.get(relation, 0) + 1
                for key in seen:
                    stretches = self.held.setdefault(key, [])
                    if key in previous and stretches:
                        stretches[-1][1] = now  # still held since the last sample
                    else:
                        stretches.append([now, now])
                previous = seen
                for relation, count in waiting.items():
                    self.waiting[relation] = max(self.waiting.get(relation, 0), count)
                self.stop.wait(SAMPLE_EVERY)

    def locks(self) -> tuple[LockHeld, ...]:
        found = [
            LockHeld(
                relation=relation,
                mode=mode,
                held_ms=(max(last - first for first, last in stretches) + SAMPLE_EVERY) * 1000,
                times=len(stretches),
                most_waiting=self.waiting.get(relation, 0),
            )
            for (relation, mode), stretches in self.held.items()
        ]
        return tuple(sorted(found, key=lambda lock: (-lock.held_ms, lock.relation, lock.mode)))


def _relfilenodes(target: db.Target) -> dict[int, tuple[str, int]]:
    with db.connection(target) as conn:
        rows = conn.execute(query("rehearse", "select_relfilenodes")).fetchall()
    return {oid: (name, relfilenode) for oid, name, relfilenode in rows}


# --------------------------------------------------------------------------- the rehearsal


def rehearse(
    settings: Settings,
    target: db.Target,
    revision: str = "head",
    *,
    max_stall: timedelta | None = None,
    notify: Notify = _quiet,
) -> RehearsalReport:
    """Rehearse the revisions pending on ``target`` up to ``revision`` (module doc)."""
    options = settings.rehearse
    bound = max_stall if max_stall is not None else options.max_stall
    tree = migrations.MigrationTree.from_settings(settings)
    migrations.validate_revision(tree, revision)
    with db.connection(target) as conn:
        current = migrations.current_revisions(conn)
    pending = migrations.pending_revisions(tree, current, revision)
    if not pending:
        return RehearsalReport(target.describe(), (), (), bound.total_seconds() * 1000, 0.0)
    base = db.resolve_target(options.scratch_url, settings) if options.scratch_url else target
    name = f"kronos_rehearse_{secrets.token_hex(6)}"
    scratch = _with(base.with_dbname(name), application_name=MIGRATION_APPLICATION)
    notify(f"copying {target.describe()} into the scratch database {name}")
    try:
        db.create_database(scratch)
    except InsufficientPrivilegeError as exc:
        raise InsufficientPrivilegeError(
            f"{exc.message}: the rehearsal copies the database into a scratch one; connect "
            "as a role with CREATEDB, or set [rehearse] scratch_url to a server where it may"
        ) from exc
    try:
        copied = copy_database(
            settings, target, scratch, sample_rows=options.sample_rows, notify=notify
        )
        # the copy is ours: lint already ran (or was waived) where it belongs
        quiet = dataclasses.replace(settings, lint=LintSettings(on_migrate=False))
        results = []
        with Workload(scratch, options.rate) as workload:
            time.sleep(min(1.0, 10 * workload.interval))  # warm up: connections, caches
            for step in pending:
                result = _rehearse_one(quiet, tree, scratch, step, workload, bound, notify)
                results.append(result)
                if result.error is not None:
                    break
                with db.connection(scratch) as conn:
                    workload.refresh_keys(conn)
        return RehearsalReport(
            database=target.describe(),
            copied=copied,
            revisions=tuple(results),
            max_stall_ms=bound.total_seconds() * 1000,
            rate=options.rate,
        )
    finally:
        db.drop_database(scratch)


def _rehearse_one(
    settings: Settings,
    tree: migrations.MigrationTree,
    scratch: db.Target,
    revision: str,
    workload: Workload,
    bound: timedelta,
    notify: Notify,
) -> RevisionRehearsal:
    script = tree.script_directory().get_revision(revision)
    description = (script.doc or "").strip() if script is not None else ""
    notify(f"rehearsing {revision} ({description}) under the workload")
    before = _relfilenodes(scratch)
    error = None
    attempts = 0
    with LockSampler(scratch) as sampler:
        started = time.monotonic()
        try:
            result = migrations.upgrade(settings, scratch, revision, notify=notify)
            attempts = result.attempts
        except KronosError as exc:
            error = exc.message
        ended = time.monotonic()
        time.sleep(SAMPLE_EVERY * 2)
    after = _relfilenodes(scratch)
    rewritten = tuple(
        sorted(
            name for oid, (name, node) in after.items() if oid in before and before[oid][1] != node
        )
    )
    stalls = workload.stalls(started, ended)
    worst = max((s.worst_ms for s in stalls), default=0.0)
    return RevisionRehearsal(
        revision=revision,
        description=description,
        seconds=ended - started,
        attempts=attempts,
        error=error,
        stalls=stalls,
        locks=sampler.locks(),
        rewritten=rewritten,
        worst_stall_ms=worst,
        failed=error is not None
        or worst > bound.total_seconds() * 1000
        or any(s.errors for s in stalls),
    )
