"""The one exception hierarchy of kronos-db, and the exit codes the CLI maps it to.

Each subclass's docstring is its default message. psycopg and SQLAlchemy errors are translated
once, at the connection boundary (:func:`translate_database_error`), so callers catch
``KronosError`` and nothing else.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ExitCode(enum.IntEnum):
    """Process exit codes. Few, fixed, and documented in the README."""

    OK = 0
    FAILED = 1  # the operation failed (an SQL error, a migration that failed)
    USAGE = 2  # bad input: an option, a configuration file, an unknown revision
    CONNECTION = 3  # the server is unreachable, refused the login, or the database is missing
    LOCKED = 4  # a lock could not be had in time (lock_timeout, the migration lock)
    PENDING = 5  # `status`: revisions are waiting to be applied
    DRIFT = 6  # `check`: the live schema differs from what head defines
    CHECKSUM = 7  # an applied migration's SQL file was edited afterwards
    UNSAFE = 8  # lint or rehearsal: the change would stall or break the services


class KronosError(Exception):
    """kronos-db failed."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(KronosError):
    """Invalid input."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """The configuration is invalid."""


class UnknownRevisionError(UsageError):
    """No such revision."""


class MigrationTreeError(UsageError):
    """The migration tree is inconsistent (a duplicate revision id, a missing parent, two heads)."""


class SessionRequiredError(UsageError):
    """This command needs one server session; the connection goes through a transaction pooler."""


class ConnectionFailedError(KronosError):
    """Cannot connect to the database server."""

    exit_code = ExitCode.CONNECTION


class AuthenticationError(ConnectionFailedError):
    """The server refused the login (wrong user or password)."""


class DatabaseMissingError(ConnectionFailedError):
    """The database does not exist."""


class StandbyError(ConnectionFailedError):
    """The server is a standby (or read-only): this needs the primary."""


class ReplicationLagError(KronosError):
    """A standby or a replication slot stayed too far behind: the job stopped waiting for it."""

    def __init__(self, message: str | None = None, *, waited_seconds: float = 0.0) -> None:
        super().__init__(message)
        self.waited_seconds = waited_seconds


class LockTimeoutError(KronosError):
    """A lock could not be acquired within lock_timeout."""

    exit_code = ExitCode.LOCKED


class LockBusyError(LockTimeoutError):
    """Another kronos-db run holds the lock."""


class ChecksumMismatchError(KronosError):
    """An applied migration's SQL file was edited after it was applied."""

    exit_code = ExitCode.CHECKSUM


class UnsafeMigrationError(KronosError):
    """The change would stall or break the services (a lint error, a rehearsal stall)."""

    exit_code = ExitCode.UNSAFE


class NotAdoptedError(KronosError):
    """The database holds Kronos tables that kronos-db did not create: run kronos-db adopt."""


class DataLossError(KronosError):
    """The downgrade would drop tables or columns that hold rows."""


class PartitionError(KronosError):
    """A partition maintenance step failed."""


class ArchiveError(PartitionError):
    """An archive file could not be written or did not hold every row of its partition."""


class InsufficientPrivilegeError(KronosError):
    """The connected role lacks a privilege this operation needs."""


class BackupError(KronosError):
    """The backup operation failed."""


class BackupVerificationError(BackupError):
    """The backup failed verification."""


class RoleDriftError(KronosError):
    """The service roles differ from the mapping."""

    exit_code = ExitCode.DRIFT


class ReportUnavailableError(KronosError):
    """A report could not run here (a missing extension or privilege, a timeout)."""

    def __init__(self, message: str | None = None, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    @property
    def message(self) -> str:
        text = str(self.args[0])
        return f"{text} (hint: {self.hint})" if self.hint else text


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text.strip()


def _connection_reason(text: str) -> str:
    """Keep libpq's last meaningful reason ("Connection refused", "password authentication...")."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        reason = line.split("failed:", 1)[-1].strip() if "failed:" in line else line
        reason = reason.removeprefix("FATAL:").strip()
        if reason:
            return reason
    return text.strip()


def translate_database_error(exc: BaseException, *, target: str = "") -> KronosError:
    """Turn a psycopg (or SQLAlchemy-wrapped psycopg) error into a ``KronosError``.

    ``target`` is a password-free description of the server and database, used in messages.
    """
    # imported here: a command that never reaches a database (help, completion, `config show`)
    # does not pay for psycopg
    import psycopg
    from psycopg import errors as pg_errors

    original = getattr(exc, "orig", None) or exc
    where = f" ({target})" if target else ""
    if isinstance(original, KronosError):
        return original
    if isinstance(original, pg_errors.LockNotAvailable):
        return LockTimeoutError(f"lock timeout: {_first_line(str(original))}{where}")
    if isinstance(original, pg_errors.ReadOnlySqlTransaction):
        # the writers ask kronos_db.replication first; this is the net for any write that
        # reaches a standby (or a read-only session) anyway
        return StandbyError(
            f"cannot write: the server{where} is a standby or read-only "
            f"({_first_line(str(original))}); point the URL at the primary, or name every "
            "node with target_session_attrs=read-write"
        )
    if isinstance(original, pg_errors.InsufficientPrivilege):
        return InsufficientPrivilegeError(f"permission denied: {_first_line(str(original))}")
    if isinstance(original, pg_errors.InvalidCatalogName):
        return DatabaseMissingError(f"{_first_line(str(original))}{where}")
    if isinstance(
        original, pg_errors.InvalidPassword | pg_errors.InvalidAuthorizationSpecification
    ):
        return AuthenticationError(f"login refused: {_first_line(str(original))}{where}")
    if isinstance(original, psycopg.OperationalError) and original.sqlstate is None:
        text = str(original)
        reason = _connection_reason(text)
        if "does not exist" in reason and "database" in reason:
            return DatabaseMissingError(f"{reason}{where}; create it with --create-db")
        if "authentication failed" in text or "password" in reason.lower():
            return AuthenticationError(f"login refused: {reason}{where}")
        return ConnectionFailedError(f"cannot connect{where}: {reason}")
    if isinstance(original, psycopg.Error):
        state = f" [{original.sqlstate}]" if original.sqlstate else ""
        return KronosError(f"database error{state}: {_first_line(str(original))}")
    return KronosError(_first_line(str(original)) or type(original).__name__)
