"""Backups: pg_dump files written atomically, recorded in ``backups``, verified by restoring them.

``create_backup`` exports a REPEATABLE READ snapshot, hands it to ``pg_dump --snapshot`` and
counts every table's rows in that same snapshot, so the counts recorded are exactly the rows the
file holds even while the services keep writing. The dump goes to a hidden temporary file in the
backup directory; once pg_dump succeeded the file is fsynced, hashed and renamed into place (and
the directory fsynced) before its row is inserted: a half-written file is never recorded.

``verify_backup`` checks size and SHA-256, restores into a scratch database, compares the row
counts with the recorded ones, drops the scratch database and records the outcome.

The password never reaches a command line: pg_dump and pg_restore get the connection string
without it and the password through ``PGPASSWORD`` in their environment.

Other jobs (the log partition archiver) record their files with :func:`record_backup`.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from kronos_db import db, locks, logs, replication
from kronos_db.checks import (
    DEFAULT_LIMITS,
    Context,
    Finding,
    Limits,
    Metric,
    Outcome,
    Status,
    Threshold,
    data_hint,
    fetch,
    worst,
)
from kronos_db.config import Settings, describe
from kronos_db.durations import format_duration, postgres_interval
from kronos_db.errors import (
    BackupError,
    BackupVerificationError,
    InsufficientPrivilegeError,
    KronosError,
    UsageError,
    translate_database_error,
)
from kronos_db.resources import query
from kronos_db.units import human_seconds

Kind = Literal["pg_dump", "partition_archive", "unknown"]
KINDS: tuple[str, ...] = ("pg_dump", "partition_archive", "unknown")
CREATE_LOCK = "backup-create"
PRUNE_LOCK = "backup-prune"
Progress = Callable[[int], None]
# libpq parameters that are secrets: never on a command line
_SECRET_PARAMETERS = ("password", "sslpassword")
_READ_CHUNK = 1024 * 1024
# pg_restore sets search_path and other session settings once, then restores in many
# transactions: behind a transaction pooler those land on other server connections
RESTORE_NEEDS_A_SESSION = "pg_restore sets session settings once for all its transactions"

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Backup:
    """One row of ``backups``."""

    id: int
    created_at: datetime
    file_path: str
    kind: str
    status: str
    database_name: str | None
    size_bytes: int | None
    sha256: str | None
    compression: str | None
    row_counts: dict[str, int] | None
    server_version: str | None
    tool_version: str | None
    started_at: datetime | None
    finished_at: datetime | None
    verified_at: datetime | None
    verify_result: str | None
    verify_message: str | None
    pruned_at: datetime | None

    @property
    def total_rows(self) -> int | None:
        return sum(self.row_counts.values()) if self.row_counts is not None else None


@dataclasses.dataclass(frozen=True)
class FileDigest:
    size_bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    backup_id: int
    file_path: str
    passed: bool
    problems: tuple[str, ...]
    tables_compared: int
    rows_compared: int
    scratch_database: str | None
    seconds: float

    @property
    def message(self) -> str:
        if self.passed:
            return (
                f"checksum matches; restored and compared {self.tables_compared} tables "
                f"({self.rows_compared} rows)"
            )
        return "; ".join(self.problems)


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    backup_id: int
    database: str
    replaced: bool
    tables_compared: int
    rows_compared: int
    problems: tuple[str, ...]
    seconds: float


@dataclasses.dataclass(frozen=True)
class PruneResult:
    pruned: tuple[Backup, ...]
    missing_files: tuple[str, ...]
    kept_newest_verified: int | None
    dry_run: bool
    stale_partials: tuple[str, ...] = ()
    # files in [backups] directory that no row of backups records: reported, never deleted
    unrecorded: tuple[str, ...] = ()


# --------------------------------------------------------------------------- recording


def file_digest(path: str | Path) -> FileDigest:
    """Size and SHA-256 (lowercase hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(size, digest.hexdigest())


def record_backup(
    conn: psycopg.Connection[Any],
    *,
    kind: str,
    file_path: str | Path,
    size_bytes: int | None = None,
    sha256: str | None = None,
    row_counts: Mapping[str, int] | None = None,
    database_name: str | None = None,
    compression: str | None = None,
    server_version: str | None = None,
    tool_version: str | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    created_at: datetime | None = None,
) -> Backup:
    """Insert a row into ``backups`` for a file that is complete on disk; return it.

    For the partition archiver: ``record_backup(conn, kind="partition_archive",
    file_path=path, **dataclasses.asdict(file_digest(path)), row_counts={"public.logs_p…": n})``
    once the archive file is fsynced and renamed into place.
    """
    if kind not in KINDS:
        raise UsageError(f"unknown backup kind {kind!r} (one of {', '.join(KINDS)})")
    if sha256 is not None:
        sha256 = sha256.lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise UsageError(f"not a SHA-256 hex digest: {sha256!r}")
    params = {
        "created_at": created_at,
        "file_path": str(file_path),
        "kind": kind,
        "database_name": database_name,
        "size_bytes": size_bytes,
        "sha256": sha256,
        "compression": compression,
        "row_counts": Jsonb(dict(row_counts)) if row_counts is not None else None,
        "server_version": server_version,
        "tool_version": tool_version,
        "started_at": started_at,
        "finished_at": finished_at,
    }
    with conn.cursor(row_factory=class_row(Backup)) as cur:
        row = cur.execute(query("backups", "insert_backup"), params).fetchone()
    assert row is not None
    return row


def list_backups(
    conn: psycopg.Connection[Any],
    *,
    kind: str | None = None,
    include_pruned: bool = False,
    limit: int = 1000,
) -> list[Backup]:
    """Backups newest first."""
    with conn.cursor(row_factory=class_row(Backup)) as cur:
        return cur.execute(
            query("backups", "select_backups"),
            {"kind": kind, "include_pruned": include_pruned, "limit": limit},
        ).fetchall()


def get_backup(conn: psycopg.Connection[Any], backup_id: int) -> Backup:
    with conn.cursor(row_factory=class_row(Backup)) as cur:
        row = cur.execute(query("backups", "select_backup"), {"id": backup_id}).fetchone()
    if row is None:
        raise UsageError(f"no backup with id {backup_id} (see `kronos-db backup list`)")
    return row


# --------------------------------------------------------------------------- external tools


@dataclasses.dataclass(frozen=True)
class Libpq:
    """How to hand a target to a libpq program: a password-free conninfo and an environment."""

    conninfo: str
    environment: dict[str, str]


def libpq_for(target: db.Target) -> Libpq:
    """The target for pg_dump and pg_restore (also used by ``migrate --rehearse``)."""
    params = {k: v for k, v in target.params.items() if v not in (None, "")}
    environment = dict(os.environ)
    password = params.get("password")
    for key in _SECRET_PARAMETERS:
        params.pop(key, None)
    if password:
        environment["PGPASSWORD"] = str(password)
    return Libpq(make_conninfo(**params), environment)


def _tool_version(program: str) -> str:
    try:
        completed = subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise BackupError(
            f"{program}: not found; install postgresql-client or set its path "
            "in [backups] of the configuration"
        ) from None
    except OSError as exc:
        raise BackupError(f"{program}: cannot run: {exc.strerror}") from None
    return completed.stdout.strip()


def _tool_failure(program: str, code: int, stderr: str, target: db.Target) -> BackupError:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    # pg_dump prefixes with "pg_dump: error: "; the last lines say why
    reason = " / ".join(line.strip() for line in lines[-3:]) or "no message"
    return BackupError(target.redact(f"{Path(program).name} failed (exit {code}): {reason}"))


def _start_tool(arguments: list[str], libpq: Libpq) -> subprocess.Popen[str]:
    try:
        return subprocess.Popen(
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=libpq.environment,
            text=True,
        )
    except FileNotFoundError:
        raise BackupError(
            f"{arguments[0]}: not found; install postgresql-client or set its "
            "path in [backups] of the configuration"
        ) from None
    except OSError as exc:
        raise BackupError(f"{arguments[0]}: cannot run: {exc.strerror}") from None


def _wait_tool(
    process: subprocess.Popen[str],
    target: db.Target,
    *,
    while_running: Callable[[], None] | None = None,
) -> None:
    try:
        while True:
            try:
                _, stderr = process.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if while_running is not None:
                    while_running()
    except BaseException:
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        program = process.args[0] if isinstance(process.args, list) else str(process.args)
        raise _tool_failure(str(program), process.returncode, stderr, target)


def run_tool(arguments: list[str], libpq: Libpq, target: db.Target) -> None:
    """Run a libpq program to completion; its failure is one ``BackupError`` line."""
    _wait_tool(_start_tool(arguments, libpq), target)


# --------------------------------------------------------------------------- row counts


def table_row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact rows per table (``schema.table`` → count), in the connection's current snapshot."""
    tables = conn.execute(query("backups", "select_data_tables")).fetchall()
    counts: dict[str, int] = {}
    for schema_name, table_name in tables:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema_name, table_name))
        ).fetchone()
        counts[f"{schema_name}.{table_name}"] = int(row[0]) if row else 0
    return counts


def compare_row_counts(recorded: Mapping[str, int], restored: Mapping[str, int]) -> list[str]:
    problems = []
    for table, expected in sorted(recorded.items()):
        if table not in restored:
            problems.append(f"table {table} is missing from the restored database")
        elif restored[table] != expected:
            problems.append(
                f"table {table} has {restored[table]} rows, the backup recorded {expected}"
            )
    problems += [
        f"table {table} was restored but the backup recorded no such table"
        for table in sorted(set(restored) - set(recorded))
    ]
    return problems


# --------------------------------------------------------------------------- on a standby


def primary_target(settings: Settings) -> db.Target | None:
    """``[backups] primary_url`` as a target, or None when it is not set."""
    if not settings.backups.primary_url:
        return None
    found = db.resolve_target(settings.backups.primary_url, settings)
    origin = settings.sources.get("backups.primary_url", "the configuration")
    return dataclasses.replace(found, source=f"[backups] primary_url in {origin}")


def records_target(target: db.Target, settings: Settings, purpose: str) -> db.Target:
    """Where ``purpose``'s rows, lock and scratch database go: ``target`` itself on a primary;
    on a standby, ``[backups] primary_url``, checked to reach a primary.

    Asked before anything is written: a standby without ``primary_url`` is refused in one line
    (``StandbyError``), never after a whole dump was written that nothing could record.
    """
    with db.connection(target) as conn:
        if replication.writable(conn):
            return target
        primary = primary_target(settings)
        if primary is None:
            raise replication.refusal(
                conn,
                replication.server_role(conn),
                purpose,
                db.url_setting(target),
                alternative="or set [backups] primary_url to take the dump on this standby and "
                "record it on the primary",
            )
    replication.require_primary_at(primary, f"{purpose} ([backups] primary_url)")
    return primary


@contextmanager
def _records_connection(
    records: db.Target, target: db.Target, conn: psycopg.Connection[Any]
) -> Iterator[psycopg.Connection[Any]]:
    """``conn`` when the rows live on ``target``, else a connection to ``records``."""
    if records is target:
        yield conn
        return
    with db.connection(records) as other:
        yield other


# --------------------------------------------------------------------------- create


def _backup_directory(settings: Settings, directory: str | Path | None) -> Path:
    chosen = directory or settings.backups.directory
    if not chosen:
        raise UsageError(
            "no backup directory: set [backups] directory in the configuration or pass --directory"
        )
    path = Path(chosen).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create the backup directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):  # a read-only mount, or another user's directory
        reason = os.strerror(errno.EROFS) if _read_only(path) else "permission denied"
        raise BackupError(f"cannot write to the backup directory {path}: {reason}")
    return path


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _remove_partial(partial: Path) -> None:
    """Remove a half-written dump, never letting the cleanup hide the failure that led here
    (on a read-only file system even removing a missing file fails)."""
    try:
        partial.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove %s: %s", partial, exc.strerror)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_and_digest(path: Path) -> FileDigest:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return file_digest(path)


def _final_path(directory: Path, database: str, now: datetime) -> Path:
    stem = f"{database or 'kronos'}_{now.strftime('%Y%m%dT%H%M%SZ')}"
    candidate = directory / f"{stem}.dump"
    number = 1
    while candidate.exists():
        candidate = directory / f"{stem}-{number}.dump"
        number += 1
    return candidate


@contextmanager
def _exported_snapshot(
    target: db.Target, settings: Settings
) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    """A READ ONLY REPEATABLE READ transaction kept open while pg_dump imports its snapshot."""
    conn = db.connect(target, autocommit=False)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        # the exporting transaction sits idle while pg_dump works: a server-wide
        # idle_in_transaction_session_timeout must not end it before pg_dump imported it
        snapshot_settings = {
            "idle_in_transaction_session_timeout": "0",
            "lock_timeout": postgres_interval(settings.backups.lock_wait_timeout),
        }
        with db.transaction_settings(conn, snapshot_settings):
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            yield conn, str(row[0])
            # read only: nothing to keep; leaving the block commits the empty transaction
    except psycopg.Error as exc:
        error = translate_database_error(exc, target=target.describe())
        raise type(error)(target.redact(error.message)) from exc
    finally:
        conn.close()


def create_backup(
    target: db.Target,
    settings: Settings,
    *,
    now: datetime,
    directory: str | Path | None = None,
    progress: Progress | None = None,
) -> Backup | None:
    """Dump the target database to the backup directory and record it.

    On a standby the dump is taken there (offloading the primary) and recorded, under the lock,
    on ``[backups] primary_url``; without it a standby is refused before anything is written.
    A file whose row cannot be inserted is removed: a dump on disk is always a recorded one.
    Returns ``None`` when another ``backup create`` holds the lock (it did nothing).
    """
    if settings.backups.compression > 9:
        raise UsageError("[backups] compression must be between 0 and 9")
    db.require_session(
        target,
        settings.database.pooler,
        "backup create hands pg_dump a snapshot exported by a transaction it keeps open",
    )
    records = records_target(target, settings, "backup create")
    folder = _backup_directory(settings, directory)
    program = settings.backups.pg_dump
    tool_version = _tool_version(program)
    started = time.monotonic()
    with (
        db.connection(target) as conn,
        _records_connection(records, target, conn) as records_conn,
        locks.try_advisory_lock(records_conn, CREATE_LOCK) as acquired,
    ):
        if not acquired:
            return None
        server_version = str(conn.execute(query("backups", "select_server_version")).fetchone()[0])  # type: ignore[index]
        database = target.dbname or str(conn.info.dbname)
        final = _final_path(folder, database, now)
        partial = folder / f".{final.name}.{os.getpid()}.partial"
        libpq = libpq_for(target)

        def report() -> None:
            if partial.exists():
                size = partial.stat().st_size
                if progress is not None:
                    progress(size)
                if (current := logs.current_step()) is not None:
                    current.progress(size, detail=f"{size / 1048576:,.1f} MB")

        try:
            with (
                logs.step(
                    f"pg_dump {database} to {partial.name}",
                    interrupted="the partial dump file is removed and nothing is recorded",
                    locks="ACCESS SHARE on every table it dumps (waiting at most "
                    f"{format_duration(settings.backups.lock_wait_timeout)}), and a snapshot "
                    "held until it ends",
                    log=logger,
                ),
                _exported_snapshot(target, settings) as (snapshot_conn, snapshot),
            ):
                arguments = [
                    program,
                    "--format=custom",
                    f"--compress={settings.backups.compression}",
                    f"--snapshot={snapshot}",
                    "--no-password",
                    f"--lock-wait-timeout={postgres_interval(settings.backups.lock_wait_timeout)}",
                    f"--file={partial}",
                    f"--dbname={libpq.conninfo}",
                ]
                # pg_dump imports the snapshot as it starts; count in the same snapshot
                # meanwhile, so counts and file agree whatever the services write
                process = _start_tool(arguments, libpq)
                try:
                    counts = table_row_counts(snapshot_conn)
                except BaseException:
                    process.kill()
                    process.communicate()
                    raise
                _wait_tool(process, target, while_running=report)
            with logs.step(
                f"fsync, SHA-256 and rename to {final.name}",
                interrupted="the partial dump file is removed and nothing is recorded",
                log=logger,
            ):
                digest = _sync_and_digest(partial)
                if progress is not None:
                    progress(digest.size_bytes)
                os.rename(partial, final)
                _fsync_directory(folder)
        except BaseException:
            _remove_partial(partial)
            raise
        seconds = time.monotonic() - started
        try:
            return record_backup(
                records_conn,
                kind="pg_dump",
                file_path=final,
                size_bytes=digest.size_bytes,
                sha256=digest.sha256,
                row_counts=counts,
                database_name=database,
                compression=f"zlib:{settings.backups.compression}",
                server_version=server_version,
                tool_version=tool_version,
                started_at=now,
                finished_at=now + timedelta(seconds=seconds),
                created_at=now,
            )
        except psycopg.Error as exc:
            # an unrecorded file would never be verified, listed or pruned: it goes
            final.unlink(missing_ok=True)
            _fsync_directory(folder)
            error = translate_database_error(exc, target=records.describe())
            raise BackupError(
                records.redact(
                    f"{final} was written but could not be recorded in backups, so it was "
                    f"removed: {error.message}"
                )
            ) from exc


# --------------------------------------------------------------------------- verify and restore


def _check_file(backup: Backup) -> list[str]:
    """Size and checksum problems of a backup's file (empty: the file is what was recorded)."""
    path = Path(backup.file_path)
    if not path.is_file():
        return [f"{path}: the file is missing"]
    problems = []
    size = path.stat().st_size
    if backup.size_bytes is not None and size != backup.size_bytes:
        how = "it is truncated" if size < backup.size_bytes else "it was altered"
        problems.append(
            f"{path}: the file has {size} bytes but {backup.size_bytes} were recorded: {how}"
        )
    if backup.sha256 is not None:
        actual = file_digest(path).sha256
        if actual != backup.sha256:
            problems.append(
                f"{path}: checksum mismatch (SHA-256 {actual[:12]}…, recorded "
                f"{backup.sha256[:12]}…): the file is corrupted"
            )
    return problems


def _server_connection(target: db.Target) -> db.Target:
    return db.maintenance_target(target)


def _create_empty_database(target: db.Target, name: str) -> None:
    try:
        with db.connection(_server_connection(target)) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
    except InsufficientPrivilegeError:
        raise InsufficientPrivilegeError(
            f"cannot create database {name!r}: the connected role needs CREATEDB "
            "(backup verify and restore create a database on the same server)"
        ) from None


def _restore_into(
    settings: Settings,
    target: db.Target,
    backup: Backup,
    database: str,
    *,
    keep_owners: bool,
) -> dict[str, int]:
    """pg_restore the backup into the (empty) database; return its row counts."""
    restore_target = target.with_dbname(database)
    libpq = libpq_for(restore_target)
    arguments = [
        settings.backups.pg_restore,
        "--exit-on-error",
        "--no-password",
        f"--jobs={settings.backups.restore_jobs}",
        f"--dbname={libpq.conninfo}",
    ]
    if not keep_owners:
        arguments += ["--no-owner", "--no-privileges"]
    arguments.append(backup.file_path)
    run_tool(arguments, libpq, target)
    with db.connection(restore_target) as conn:
        return table_row_counts(conn)


def _check_archive(settings: Settings, backup: Backup, target: db.Target) -> list[str]:
    """pg_restore --list reads the whole table of contents: a cut file fails here."""
    libpq = libpq_for(target)
    try:
        run_tool([settings.backups.pg_restore, "--list", backup.file_path], libpq, target)
    except BackupError as exc:
        return [f"{backup.file_path}: not a readable pg_dump archive: {exc.message}"]
    return []


def _verifiable(backup: Backup) -> None:
    if backup.status == "pruned":
        raise BackupError(
            f"backup {backup.id} was pruned (its file was deleted) at "
            f"{backup.pruned_at:%Y-%m-%d %H:%M} UTC"
        )
    if backup.kind != "pg_dump" and backup.sha256 is None:
        raise BackupError(
            f"backup {backup.id} ({backup.kind}) has no recorded checksum: "
            "there is nothing to verify it against"
        )


def verify_backup(
    target: db.Target,
    settings: Settings,
    backup_id: int,
    *,
    now: datetime,
) -> VerifyResult:
    """Check the file, restore it into a scratch database, compare row counts; record the result.

    A ``partition_archive`` has its size and checksum checked only. The connecting role needs
    CREATEDB (the scratch database is created and dropped on the same server). On a standby
    (where the files of its dumps are), the row, the scratch database and the result go to
    ``[backups] primary_url``.
    """
    started = time.monotonic()
    target = records_target(target, settings, "backup verify")
    with db.connection(target) as conn:
        backup = get_backup(conn, backup_id)
    _verifiable(backup)
    problems = _check_file(backup)
    if not problems and backup.kind == "pg_dump":
        db.require_session(target, settings.database.pooler, RESTORE_NEEDS_A_SESSION)
    scratch: str | None = None
    tables = rows = 0
    if not problems and backup.kind == "pg_dump":
        problems = _check_archive(settings, backup, target)
    if not problems and backup.kind == "pg_dump":
        scratch = f"kronos_verify_{backup.id}_{secrets.token_hex(4)}"
        _create_empty_database(target, scratch)
        try:
            restored = _restore_into(settings, target, backup, scratch, keep_owners=False)
            problems = compare_row_counts(backup.row_counts or {}, restored)
            tables, rows = len(restored), sum(restored.values())
        except BackupError as exc:
            problems = [f"restore failed: {exc.message}"]
        finally:
            db.drop_database(target.with_dbname(scratch), force=True)
    result = VerifyResult(
        backup.id,
        backup.file_path,
        not problems,
        tuple(problems),
        tables,
        rows,
        scratch,
        time.monotonic() - started,
    )
    with db.connection(target) as conn:
        conn.execute(
            query("backups", "update_backup_verification"),
            {
                "id": backup.id,
                "verified_at": now,
                "verify_result": "passed" if result.passed else "failed",
                "verify_message": result.message,
            },
        )
    return result


_PROTECTED_DATABASES = ("postgres", "template0", "template1")


def restore_backup(
    target: db.Target,
    settings: Settings,
    backup_id: int,
    *,
    database: str,
    force: bool = False,
    keep_owners: bool = True,
) -> RestoreResult:
    """Restore a backup into a new database ``database`` on the target's server.

    Refuses an existing database unless ``force`` (which drops it first, ending its sessions),
    and always refuses the database the connection points at and the system databases. The
    file's checksum is checked first: a corrupted file is never restored.
    """
    started = time.monotonic()
    if not database:
        raise UsageError("the target database needs a name")
    # the new database is created on the target's server: a standby cannot
    replication.require_primary_at(target, "backup restore")
    if database == target.dbname or database in _PROTECTED_DATABASES:
        raise UsageError(
            f"refusing to restore over {database!r}: restore into a new database, "
            "then rename it if you must replace the live one"
        )
    db.require_session(target, settings.database.pooler, RESTORE_NEEDS_A_SESSION)
    with db.connection(target) as conn:
        backup = get_backup(conn, backup_id)
    if backup.kind != "pg_dump":
        raise UsageError(f"backup {backup.id} is a {backup.kind}, not a pg_dump archive")
    _verifiable(backup)
    problems = _check_file(backup)
    if problems:
        raise BackupVerificationError(
            f"backup {backup.id} cannot be restored: " + "; ".join(problems)
        )
    destination = target.with_dbname(database)
    replaced = db.database_exists(destination)
    if replaced and not force:
        raise UsageError(
            f"database {database!r} already exists; pass --force to replace it "
            "(its sessions are terminated)"
        )
    if replaced:
        db.drop_database(destination, force=True)
    _create_empty_database(target, database)
    try:
        restored = _restore_into(settings, target, backup, database, keep_owners=keep_owners)
    except KronosError as exc:
        raise BackupError(
            f"{exc.message} (the partly restored database {database!r} was left "
            "for inspection; drop it or rerun with --force)"
        ) from exc
    problems = compare_row_counts(backup.row_counts or {}, restored)
    return RestoreResult(
        backup.id,
        database,
        replaced,
        len(restored),
        sum(restored.values()),
        tuple(problems),
        time.monotonic() - started,
    )


# --------------------------------------------------------------------------- prune


STALE_PARTIAL_AGE = timedelta(days=1)


def _stale_partials(settings: Settings, now: datetime) -> list[Path]:
    """Temporary dump files a killed ``backup create`` left in the backup directory.

    pg_dump keeps writing to a live one, so one untouched for a day is dead.
    """
    if not settings.backups.directory:
        return []
    folder = Path(settings.backups.directory).expanduser()
    if not folder.is_dir():
        return []
    cutoff = (now - STALE_PARTIAL_AGE).timestamp()
    return sorted(path for path in folder.glob(".*.partial") if path.stat().st_mtime < cutoff)


def _unrecorded_files(conn: psycopg.Connection[Any], settings: Settings) -> tuple[str, ...]:
    """Files in ``[backups] directory`` that no row of ``backups`` records as available
    (hidden temporary files aside): a dump whose recording failed before kronos-db removed
    such files, a file a pruned row should no longer have, a copy made by hand."""
    if not settings.backups.directory:
        return ()
    folder = Path(settings.backups.directory).expanduser().resolve()
    if not folder.is_dir():
        return ()
    recorded = {
        Path(path).resolve()
        for (path,) in conn.execute(query("backups", "select_backup_paths")).fetchall()
    }
    return tuple(
        str(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.resolve() not in recorded
    )


def prune_backups(
    target: db.Target,
    settings: Settings,
    *,
    now: datetime,
    keep: int | None = None,
    older_than: timedelta | None = None,
    dry_run: bool = False,
) -> PruneResult | None:
    """Delete the files of old dumps and mark their rows pruned.

    A dump is pruned when every given rule matches it: beyond the newest ``keep`` and/or older
    than ``older_than``; with neither, ``[backups] keep`` applies. The newest dump that passed
    verification is never pruned, whatever the rules. Only ``pg_dump`` rows are considered:
    partition archives are the only copy of their rows. Temporary files a killed ``backup
    create`` left in ``[backups] directory`` (untouched for a day) are removed too. Returns
    ``None`` when another prune holds the lock. Files in the directory that no row records
    are reported (``unrecorded``), never deleted. On a standby (where the files of its dumps
    are) the rows and the lock are on ``[backups] primary_url``.
    """
    if keep is not None and keep < 1:
        raise UsageError("--keep must be at least 1")
    if keep is None and older_than is None:
        keep = settings.backups.keep
    before = now - older_than if older_than is not None else None
    records = records_target(target, settings, "backup prune")
    with db.connection(records) as conn, locks.try_advisory_lock(conn, PRUNE_LOCK) as acquired:
        if not acquired:
            return None
        with conn.cursor(row_factory=class_row(Backup)) as cur:
            candidates = cur.execute(
                query("backups", "select_prunable_backups"), {"keep": keep, "before": before}
            ).fetchall()
        newest_verified = next(
            (b.id for b in list_backups(conn, kind="pg_dump") if b.verify_result == "passed"),
            None,
        )
        unrecorded = _unrecorded_files(conn, settings)
        if dry_run:
            stale = _stale_partials(settings, now)
            return PruneResult(
                tuple(candidates),
                (),
                newest_verified,
                True,
                tuple(map(str, stale)),
                unrecorded,
            )
        pruned: list[Backup] = []
        missing: list[str] = []
        for backup in candidates:
            with conn.transaction():
                if (
                    conn.execute(
                        query("backups", "lock_available_backup"), {"id": backup.id}
                    ).fetchone()
                    is None
                ):
                    continue  # pruned meanwhile, or being pruned by someone else
                path = Path(backup.file_path)
                try:
                    path.unlink()
                except FileNotFoundError:
                    missing.append(str(path))
                except OSError as exc:
                    raise BackupError(f"cannot delete {path}: {exc.strerror}") from None
                conn.execute(
                    query("backups", "update_backup_pruned"), {"id": backup.id, "pruned_at": now}
                )
            pruned.append(dataclasses.replace(backup, status="pruned", pruned_at=now))
        removed = []
        for leftover in _stale_partials(settings, now):
            leftover.unlink(missing_ok=True)
            removed.append(str(leftover))
        return PruneResult(
            tuple(pruned), tuple(missing), newest_verified, False, tuple(removed), unrecorded
        )


# --------------------------------------------------------------------------- status

# a file changed after this much past its recording was touched by something else
_CTIME_SLACK = timedelta(seconds=2)
FileState = Literal["ok", "missing", "resized", "changed", "unreadable", "unreachable"]


@dataclasses.dataclass(frozen=True)
class DumpFile:
    """What the file of a recorded dump looks like now."""

    backup: Backup
    state: FileState
    detail: str

    @property
    def usable(self) -> bool:
        return self.state == "ok"

    @property
    def known(self) -> bool:
        """False: this host cannot tell (the directory is not here, or not readable)."""
        return self.state not in ("unreadable", "unreachable")


def check_dump_file(backup: Backup) -> DumpFile:
    """The dump's file, checked cheaply on every call: it exists and has its recorded size;
    its SHA-256 is computed again only when the file's ctime says it changed after it was
    recorded or last verified (content cannot change without the ctime moving)."""
    path = Path(backup.file_path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        if not path.parent.is_dir():
            return DumpFile(
                backup, "unreachable", f"{path.parent} is not on this host: cannot check {path}"
            )
        return DumpFile(backup, "missing", f"{path} no longer exists")
    except PermissionError:
        return DumpFile(backup, "unreadable", f"{path}: permission denied")
    if backup.size_bytes is not None and stat.st_size != backup.size_bytes:
        return DumpFile(
            backup,
            "resized",
            f"{path} holds {stat.st_size:,} bytes, {backup.size_bytes:,} were recorded",
        )
    recorded = max(
        moment
        for moment in (backup.finished_at, backup.created_at, backup.verified_at)
        if moment is not None
    )
    changed_at = datetime.fromtimestamp(stat.st_ctime, tz=recorded.tzinfo)
    if backup.sha256 is not None and changed_at > recorded + _CTIME_SLACK:
        try:
            digest = file_digest(path)
        except PermissionError:
            return DumpFile(backup, "unreadable", f"{path}: permission denied")
        if digest.sha256 != backup.sha256:
            return DumpFile(
                backup,
                "changed",
                f"{path} was changed on {changed_at:%Y-%m-%d %H:%M %Z}: its SHA-256 no longer "
                "matches the recorded one",
            )
    return DumpFile(backup, "ok", f"{path} matches its record")


def backup_thresholds(
    settings: Settings,
    *,
    warning_age: timedelta | None = None,
    critical_age: timedelta | None = None,
) -> tuple[Threshold, ...]:
    """``[backups] warning_age`` and ``critical_age``, or the command's own levels: one given
    alone takes the other along when they would cross (``--critical 1d`` with the default
    warning of 26h warns from 1d too)."""
    threshold = Threshold.from_settings(settings, "backups.warning_age", "backups.critical_age")
    if warning_age is None and critical_age is None:
        return (threshold,)
    warning = warning_age.total_seconds() if warning_age is not None else threshold.warning
    critical = critical_age.total_seconds() if critical_age is not None else threshold.critical
    if warning is not None and critical is not None and critical < warning:
        if warning_age is None:
            warning = critical
        elif critical_age is None:
            critical = warning
    return (
        Threshold(
            warning,
            critical,
            keys=("--warning", "--critical"),
            spelled=(
                describe(timedelta(seconds=warning)) if warning is not None else "",
                describe(timedelta(seconds=critical)) if critical is not None else "",
            ),
        ),
    )


def backup_status(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
    warning_age: timedelta | None = None,
    critical_age: timedelta | None = None,
) -> Outcome:
    """Is there a recent dump that is known to restore? The one answer ``backup status`` and
    health's last_backup give.

    Only a dump that passed verification *and whose file still matches its record* counts:
    an unverified file is a hope, not a backup, and a verified file deleted or changed since
    is no backup either. The files are checked on every call, cheaply (size, and the SHA-256
    only of a file changed since it was recorded: :func:`check_dump_file`). The newest dump
    having failed verification, or its file being gone or changed, is at least a WARNING;
    a file this host cannot see makes the verdict UNKNOWN rather than a guess.
    """
    (threshold,) = backup_thresholds(settings, warning_age=warning_age, critical_age=critical_age)
    dumps = fetch(
        conn,
        query("backups", "select_backups"),
        {"kind": "pg_dump", "include_pruned": False, "limit": 1000},
        Backup,
        limits,
        privilege_hint=data_hint("backups"),
    )
    newest = dumps[0] if dumps else None
    checked: list[DumpFile] = []
    verified: DumpFile | None = None
    for dump in dumps:
        if dump is not newest and dump.verify_result != "passed":
            continue
        state = check_dump_file(dump)
        checked.append(state)
        if dump.verify_result == "passed" and state.usable:
            verified = state
            break
        if dump.verify_result == "passed" and not state.known:
            break  # this host cannot tell whether it is usable: an older one says nothing
    age = (now - verified.backup.created_at).total_seconds() if verified else None
    metric = Metric("backup_age", age, "seconds", threshold)
    statuses = [metric.grade()]
    parts: list[str] = []
    findings: list[Finding] = []
    if verified is not None:
        parts.append(
            f"newest usable verified backup is {verified.backup.id}, "
            f"{human_seconds(age or 0)} old ({verified.backup.file_path})"
        )
    elif any(not state.known and state.backup.verify_result == "passed" for state in checked):
        pass  # its verified dump may well be usable: this host cannot tell (UNKNOWN below)
    else:
        statuses.append(Status.CRITICAL)
        parts.append(
            "no usable verified backup"
            + (
                f" (newest dump is backup {newest.id}, not verified)"
                if newest and newest.verify_result is None
                else ""
            )
        )
    for state in checked:
        if state.usable:
            continue
        statuses.append(Status.WARNING if state.known else Status.UNKNOWN)
        what = "unusable" if state.known else "cannot be checked from here"
        parts.append(f"backup {state.backup.id} {what}: {state.detail}")
        findings.append(Finding(f"backup {state.backup.id}", f"{what}: {state.detail}"))
    if newest is not None and newest.verify_result == "failed":
        statuses.append(Status.WARNING)
        parts.append(f"newest backup {newest.id} FAILED verification: {newest.verify_message}")
        findings.append(
            Finding(f"backup {newest.id}", f"failed verification: {newest.verify_message}")
        )
    status = worst(statuses)
    hint = ""
    if any(not state.known for state in checked):
        hint = "run this check where [backups] directory is mounted (and readable)"
    elif status is not Status.OK:
        hint = (
            "is the backup job running? `kronos-db backup create` then `kronos-db backup "
            "verify ID` (see docs/backups.md)"
        )
    return Outcome(
        status,
        "; ".join(parts),
        (metric,),
        tuple(findings),
        hint,
        tuple(state.backup for state in checked),
    )


def check_backups(ctx: Context) -> Outcome:
    """health's last_backup: the backups module's answer, as ``backup status`` gives it."""
    return backup_status(ctx.conn, ctx.settings, now=ctx.now, limits=ctx.limits)
