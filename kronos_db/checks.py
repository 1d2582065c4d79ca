"""What every monitoring check shares: statuses, thresholds, answers, and the guarded runner.

One owner per question: each concern module (partitions, backups, housekeeping, queue,
replication, the report modules) answers its own checks with a function ``check_…(ctx) ->
Outcome``; ``health``, ``partitions status``, ``backup status`` and the reports only collect
and render those answers, so two commands can never give two answers to one question. This
module holds what those answers are made of:

* :class:`Status`, the monitoring plugin verdict (its value is the exit code), and
  :func:`worst`;
* :class:`Threshold`: a warning and a critical level *with their direction* (is a higher
  figure worse, or a lower one?), read from the configuration with the keys that set them,
  graded the way the Monitoring Plugins guidelines read a range (``~:10`` alerts above 10,
  ``3:`` below 3), and validated (a critical level milder than its warning one is refused);
* :class:`Metric` (a figure, its unit, its threshold), :class:`Finding` (one object at fault,
  with the SQL that fixes it) and :class:`Outcome` (a check's answer);
* the guarded query runner (:func:`guarded`, :func:`fetch`): every query in its own short
  transaction with ``statement_timeout`` and ``lock_timeout`` set LOCAL, a missing privilege,
  extension or object, or a timeout becoming :class:`ReportUnavailableError` with the GRANT or
  the step that fixes it, which :func:`run_check` turns into one UNKNOWN answer.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Literal, LiteralString, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import class_row

from kronos_db import db
from kronos_db.config import Settings, describe
from kronos_db.durations import format_duration, postgres_interval
from kronos_db.errors import ConfigError, ReportUnavailableError
from kronos_db.units import Unit, plain_number

RowT = TypeVar("RowT")
# SQL from our own files, or composed from them with psycopg.sql identifiers
Statement = LiteralString | sql.Composed

MONITOR_HINT = "connect as a role with pg_monitor (GRANT pg_monitor TO <role>)"

# ----------------------------------------------------------------------------- statuses


class Status(enum.IntEnum):
    """A check's verdict; the value is the monitoring plugin exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """CRITICAL > WARNING > UNKNOWN > OK: a check that could not run never hides a real
        problem another one found, and never passes for OK."""
        return _SEVERITY[self]


_SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


def worst(statuses: Iterator[Status] | Sequence[Status]) -> Status:
    """The most severe of ``statuses`` (CRITICAL > WARNING > UNKNOWN > OK); OK when none."""
    return max(statuses, key=lambda status: status.severity, default=Status.OK)


# ----------------------------------------------------------------------------- thresholds

Direction = Literal["above", "below"]


def _number(value: float | int | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A warning and a critical level; ``direction`` says which side is bad.

    ``above``: a figure higher than a level reaches it (ages, sizes, counts); ``below``: a
    lower one does (a cache hit rate, partitions ready ahead). ``None``: no such level (a rule
    "any is a WARNING" is ``warning=0, critical=None``). ``keys`` name the settings that set
    the levels, for the error that says one is wrong.
    """

    warning: float | None
    critical: float | None
    direction: Direction = "above"
    keys: tuple[str, str] = ("", "")
    # the levels as the configuration spells them ("1d" rather than 86400), for messages
    spelled: tuple[str, str] = ("", "")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        warning_key: str,
        critical_key: str | None = None,
        *,
        direction: Direction = "above",
    ) -> Threshold:
        """The levels ``section.key`` of ``settings`` (durations in seconds)."""
        raw_warning = _setting(settings, warning_key)
        raw_critical = _setting(settings, critical_key) if critical_key else None
        return cls(
            _number(raw_warning),
            _number(raw_critical),
            direction,
            (warning_key, critical_key or ""),
            (describe(raw_warning), describe(raw_critical)),
        )

    def reached(self, value: float | None, level: float | None) -> bool:
        if value is None or level is None:
            return False
        return value > level if self.direction == "above" else value < level

    def grade(self, value: float | None) -> Status:
        """OK, WARNING or CRITICAL for ``value`` (OK when it is None: nothing to judge)."""
        if self.reached(value, self.critical):
            return Status.CRITICAL
        if self.reached(value, self.warning):
            return Status.WARNING
        return Status.OK

    def nagios_range(self, level: float | None) -> str:
        """The level as a Monitoring Plugins range: ``~:10`` (alert above 10), ``3:`` (below)."""
        if level is None:
            return ""
        return (
            f"~:{plain_number(level)}" if self.direction == "above" else f"{plain_number(level)}:"
        )

    def validate(self) -> None:
        """A critical level milder than the warning one is a typo: say so instead of grading."""
        if self.warning is None or self.critical is None:
            return
        milder = (
            self.critical < self.warning
            if self.direction == "above"
            else self.critical > self.warning
        )
        if milder:
            warning_key, critical_key = self.keys
            relation = "below" if self.direction == "above" else "above"
            warning_shown = self.spelled[0] or plain_number(self.warning)
            critical_shown = self.spelled[1] or plain_number(self.critical)
            raise ConfigError(
                f"{critical_key} ({critical_shown}) is {relation} {warning_key} ({warning_shown})"
            )


def health_threshold(
    settings: Settings, prefix: str, *, direction: Direction = "above"
) -> Threshold:
    """``[health] <prefix>_warning`` and ``<prefix>_critical``."""
    return Threshold.from_settings(
        settings, f"health.{prefix}_warning", f"health.{prefix}_critical", direction=direction
    )


ANY = Threshold(0, None)  # "any is a WARNING": a count above 0


def _setting(settings: Settings, dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return getattr(getattr(settings, section), key)


# ----------------------------------------------------------------------------- answers


@dataclasses.dataclass(frozen=True)
class Metric:
    """A figure a check measured, in ``unit``, and the levels it is judged against.

    ``name`` is the label of the Nagios performance data and of the Prometheus series.
    ``value`` None: it could not be measured (Nagios ``U``).
    """

    name: str
    value: float | None
    unit: Unit
    threshold: Threshold | None = None

    def grade(self) -> Status:
        return self.threshold.grade(self.value) if self.threshold else Status.OK


@dataclasses.dataclass(frozen=True)
class Finding:
    """One object behind a verdict, for people: what it is, what is wrong, and the SQL that
    fixes it (to copy, as PgHero gives it). ``query``: a statement's full text, when the
    finding is a statement."""

    subject: str
    detail: str
    fix: str = ""
    query: str = ""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A check's answer. ``data``: the library's own rows behind it (frozen dataclasses), for
    programs using kronos-db as a library; the outputs show ``metrics`` and ``findings``."""

    status: Status
    summary: str
    metrics: tuple[Metric, ...] = ()
    findings: tuple[Finding, ...] = ()
    hint: str = ""
    data: tuple[Any, ...] = ()


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """An answer with its check's name and title, and how long it took."""

    name: str
    title: str
    status: Status
    summary: str
    metrics: tuple[Metric, ...]
    findings: tuple[Finding, ...]
    hint: str
    seconds: float
    data: tuple[Any, ...] = ()

    @classmethod
    def of(cls, name: str, title: str, outcome: Outcome, seconds: float = 0.0) -> CheckResult:
        return cls(
            name=name,
            title=title,
            status=outcome.status,
            summary=outcome.summary,
            metrics=outcome.metrics,
            findings=outcome.findings,
            hint=outcome.hint,
            seconds=seconds,
            data=outcome.data,
        )


@dataclasses.dataclass(frozen=True)
class Limits:
    """How long one check query may run, and wait for a lock."""

    statement_timeout: timedelta = timedelta(seconds=5)
    lock_timeout: timedelta = timedelta(milliseconds=500)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.health.statement_timeout, settings.health.lock_timeout)


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True)
class Context:
    """What a check is given: the connection, the whole configuration (each check reads its
    own section), the moment it judges at, and the limits of its queries."""

    conn: psycopg.Connection[Any]
    settings: Settings
    now: datetime
    limits: Limits = DEFAULT_LIMITS


@dataclasses.dataclass(frozen=True)
class Check:
    """A check as health lists it: its name and title, the module that owns its question, the
    function there that answers it (``(Context) -> Outcome``) and the one that gives the
    thresholds it judges by (``(Settings) -> tuple[Threshold, ...]``, validated before
    anything runs). The module is imported only when the check runs: Nagios runs one check a
    minute per service, and ``--check connections`` imports no partition or backup code."""

    name: str
    title: str
    module: str
    answer: str
    thresholds: str = ""

    def function(self) -> Callable[[Context], Outcome]:
        answer: Callable[[Context], Outcome] = getattr(
            importlib.import_module(self.module), self.answer
        )
        return answer

    def levels(self, settings: Settings) -> tuple[Threshold, ...]:
        if not self.thresholds:
            return (ANY,)
        levels: Callable[[Settings], tuple[Threshold, ...]] = getattr(
            importlib.import_module(self.module), self.thresholds
        )
        return levels(settings)


def run_check(check: Check, ctx: Context) -> CheckResult:
    """``check``'s answer; one that could not run is UNKNOWN with its reason and hint."""
    return answer_check(check.name, check.title, check.function(), ctx)


def answer_check(
    name: str, title: str, answer: Callable[[Context], Outcome], ctx: Context
) -> CheckResult:
    """``answer``'s outcome as a result; one that could not run is UNKNOWN with its reason."""
    started = time.monotonic()
    try:
        outcome = answer(ctx)
    except ReportUnavailableError as exc:
        outcome = Outcome(Status.UNKNOWN, str(exc.args[0]), hint=exc.hint)
    except psycopg.Error as exc:
        if ctx.conn.broken:
            raise  # the connection is gone: no later check can run either
        # an unexpected server error fails this check only; the others still run
        outcome = Outcome(
            Status.UNKNOWN,
            f"the check failed: {_first_line(exc)}",
            hint="report this as a kronos-db bug with the server version",
        )
    return CheckResult.of(name, title, outcome, time.monotonic() - started)


def validate(checks: Sequence[Check], settings: Settings) -> None:
    """Every threshold of ``checks`` is consistent, or ConfigError naming both keys."""
    for check in checks:
        for threshold in check.levels(settings):
            threshold.validate()


# ----------------------------------------------------------------------------- the runner


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextmanager
def guarded(
    conn: psycopg.Connection[Any], limits: Limits, *, privilege_hint: str = MONITOR_HINT
) -> Iterator[None]:
    """A transaction with the limits set LOCAL; expected failures become ReportUnavailable.

    A catalog query never hangs behind a DDL lock (PgHero's known failure) and the settings
    never leak into the next query (nor, through a pooler, into another client's).
    """
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
    """Run one query under ``limits`` and return its rows as ``row_type``."""
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


def data_hint(tables: str) -> str:
    """The GRANT a monitoring role needs to read Kronos's own tables."""
    return (
        f"GRANT SELECT ON {tables} TO <role> (or GRANT pg_read_all_data TO <role>): "
        "pg_monitor alone cannot read the Kronos tables"
    )


def quote_identifier(*names: str) -> str:
    """``schema.name`` quoted for SQL a person copies (a fix), exactly as psycopg quotes it."""
    return sql.Identifier(*names).as_string(None)


def quote_literal(value: str) -> str:
    return sql.Literal(value).as_string(None)
