"""Running one report query safely on a busy server.

Every query runs in a transaction of its own with ``statement_timeout`` and ``lock_timeout``
set LOCAL (:func:`kronos_db.db.transaction_settings`), so that a catalog query never hangs
behind a DDL lock (PgHero's known failure) and the settings never leak into the next query.
A missing privilege, extension or object, or a timeout, becomes
:class:`ReportUnavailableError` with a hint: the health command turns it into one UNKNOWN
check instead of a crash.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import class_row

from kronos_db import db
from kronos_db.config import HealthSettings
from kronos_db.durations import format_duration, postgres_interval
from kronos_db.errors import ReportUnavailableError

RowT = TypeVar("RowT")
# SQL from our own files, or composed from them with psycopg.sql identifiers
Statement = LiteralString | sql.Composed

MONITOR_HINT = "connect as a role with pg_monitor (GRANT pg_monitor TO <role>)"


@dataclasses.dataclass(frozen=True)
class Limits:
    """How long one report query may run, and wait for a lock."""

    statement_timeout: timedelta = timedelta(seconds=5)
    lock_timeout: timedelta = timedelta(milliseconds=500)

    @classmethod
    def from_settings(cls, health: HealthSettings) -> Limits:
        return cls(health.statement_timeout, health.lock_timeout)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextmanager
def guarded(
    conn: psycopg.Connection[Any], limits: Limits, *, privilege_hint: str = MONITOR_HINT
) -> Iterator[None]:
    """A transaction with the limits set LOCAL; expected failures become ReportUnavailable."""
    try:
        with db.transaction_settings(
            conn,
            {
                "statement_timeout": postgres_interval(limits.statement_timeout),
                "lock_timeout": postgres_interval(limits.lock_timeout),
            },
        ):
            yield
    except pg_errors.InsufficientPrivilege as exc:
        raise ReportUnavailableError(
            f"permission denied: {_first_line(exc)}", hint=privilege_hint
        ) from exc
    except pg_errors.LockNotAvailable as exc:
        raise ReportUnavailableError(
            f"gave up waiting for a lock after {format_duration(limits.lock_timeout)} "
            "(a DDL statement holds it?)",
            hint="retry later, or raise health.lock_timeout",
        ) from exc
    except pg_errors.QueryCanceled as exc:
        raise ReportUnavailableError(
            f"cancelled after statement_timeout {format_duration(limits.statement_timeout)}",
            hint="raise health.statement_timeout for this server",
        ) from exc
    except (
        pg_errors.UndefinedTable,
        pg_errors.UndefinedColumn,
        pg_errors.UndefinedFunction,
        pg_errors.UndefinedObject,
    ) as exc:
        raise ReportUnavailableError(
            f"not available here: {_first_line(exc)}",
            hint="is the database migrated (kronos-db migrate)?",
        ) from exc
    except pg_errors.ObjectNotInPrerequisiteState as exc:
        # pg_stat_statements installed but not preloaded says so with this SQLSTATE
        raise ReportUnavailableError(
            _first_line(exc),
            hint="add pg_stat_statements to shared_preload_libraries and restart the server",
        ) from exc


def fetch(
    conn: psycopg.Connection[Any],
    statement: Statement,
    params: Mapping[str, Any],
    row_type: type[RowT],
    limits: Limits,
    *,
    privilege_hint: str = MONITOR_HINT,
) -> list[RowT]:
    """Run one report query under ``limits`` and return its rows as ``row_type``."""
    with (
        guarded(conn, limits, privilege_hint=privilege_hint),
        conn.cursor(row_factory=class_row(row_type)) as cursor,
    ):
        return cursor.execute(statement, dict(params)).fetchall()


def fetch_one(
    conn: psycopg.Connection[Any],
    statement: Statement,
    params: Mapping[str, Any],
    row_type: type[RowT],
    limits: Limits,
    *,
    privilege_hint: str = MONITOR_HINT,
) -> RowT:
    rows = fetch(conn, statement, params, row_type, limits, privilege_hint=privilege_hint)
    if not rows:
        raise ReportUnavailableError("the query returned no row")
    return rows[0]
