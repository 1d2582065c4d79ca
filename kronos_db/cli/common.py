"""What every command shares: the common options, settings and target, and output.

Start-up matters (cron runs these commands every few minutes): this module imports neither
Rich nor psycopg. The consoles are built on first use, so a run that prints nothing never
imports Rich.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kronos_db.config import Settings, load_settings
from kronos_db.durations import format_duration, parse_duration

if TYPE_CHECKING:
    from rich.console import Console

    from kronos_db import db, logs


class LazyConsole:
    """A Rich console made on first use; ``is_terminal`` answers without importing Rich."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """The Rich console itself (for ``Progress(console=…)`` and the like)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True)
        return self._console

    @property
    def is_terminal(self) -> bool:
        if self._console is None and not _TERMINAL_OVERRIDES.intersection(os.environ):
            stream = sys.stderr if self._stderr else sys.stdout
            return bool(getattr(stream, "isatty", lambda: False)())
        return self.console.is_terminal

    def print(self, *objects: Any, **options: Any) -> None:
        plain = (
            options.get("markup", True) is False
            and options.keys() <= _PLAIN_OPTIONS
            and all(isinstance(item, str) for item in objects)
        )
        if plain and self._console is None and not self.is_terminal:
            # what Rich would write off a terminal (no markup, no style, no wrapping), without
            # importing it: cron's and Nagios's one-line outputs
            stream = sys.stderr if self._stderr else sys.stdout
            stream.write(options.get("sep", " ").join(objects) + options.get("end", "\n"))
            stream.flush()
            return
        self.console.print(*objects, **options)


_PLAIN_OPTIONS = frozenset({"markup", "highlight", "sep", "end"})
# variables with which Rich decides for itself whether a stream is a terminal
_TERMINAL_OVERRIDES = frozenset({"FORCE_TERMINAL", "TTY_COMPATIBLE", "TTY_INTERACTIVE"})

stdout = LazyConsole()
stderr = LazyConsole(stderr=True)

# secrets of the targets this process resolved: scrubbed from anything printed as an error
_SECRETS: set[str] = set()

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL or libpq string (default: $KRONOS_DATABASE_URL, $DATABASE_URL, "
        "kronos.toml, then the libpq defaults and PG* variables; database name kronos).",
        show_default=False,
        rich_help_panel="Connection",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Configuration file (default: $KRONOS_CONFIG, else ./kronos.toml when present).",
        show_default=False,
        rich_help_panel="Connection",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for machines instead of a table.")
]


NowOption = Annotated[
    str | None,
    typer.Option(
        "--now",
        hidden=True,
        help="Run as if it were this time (ISO 8601; no offset means UTC). For tests and "
        "rehearsals.",
        show_default=False,
    ),
]


def parse_now(value: str | None) -> datetime:
    """``--now``: the real time when absent; an ISO 8601 time (naive means UTC), in UTC."""
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"expected an ISO 8601 time such as 2026-01-31T12:00:00Z, got {value!r}",
            param_hint="--now",
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def human_size(value: float | None) -> str:
    """Bytes as pg_size_pretty shows them (1024-based: B, kB, MB, GB, TB); empty for None."""
    if value is None:
        return ""
    number = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(number) < 1024:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} TB"


def duration_option(value: str | None) -> timedelta | None:
    """A Typer parser for duration options: ``15m``, ``5s``…"""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def settings_for(
    config: Path | None, overrides: dict[str, tuple[Any, str]] | None = None
) -> Settings:
    """The settings of a command (which every command loads first: it also notes which command
    is under way, for the job name of log lines and for Ctrl-C)."""
    output.command = _command_job() or output.command
    ensure_logging()
    return load_settings(config, overrides)


def target_for(database_url: str | None, settings: Settings) -> db.Target:
    from kronos_db import db

    target = db.resolve_target(database_url, settings)
    _SECRETS.update(target.secrets)
    return target


def redact(text: str) -> str:
    from kronos_db import redaction

    return redaction.redact(text, _SECRETS)


def is_terminal() -> bool:
    return stdout.is_terminal


def notify(message: str) -> None:
    """A notice for the user (stderr, so stdout stays data; hidden by --quiet)."""
    ensure_logging()
    _cli_logger.log(NOTICE, message)


def detail(message: str) -> None:
    """What -v adds (stderr): a step or a finding a cron run need not mention."""
    ensure_logging()
    _cli_logger.info(message)


def warn(message: str) -> None:
    """A warning (stderr; --quiet hides it too: it shows errors only)."""
    ensure_logging()
    _cli_logger.warning(message)


def error(message: str, **fields: Any) -> None:
    """The one line of a failure (stderr, in the log format)."""
    ensure_logging()
    _cli_logger.error(message, extra=fields)


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_json_default, indent=2) + "\n")
    sys.stdout.flush()


def human_duration(value: timedelta) -> str:
    return format_duration(value)


# --------------------------------------------------------------------------- logging

NOTICE = 25  # between INFO and WARNING: what a command tells its user (hidden by --quiet)
logging.addLevelName(NOTICE, "NOTICE")
LOG_FORMATS = ("text", "json")
_STANDARD_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "job", "asctime"}
)


@dataclasses.dataclass
class Output:
    """How this process talks on stderr: set once by the root options."""

    log_format: str | None = None  # None: lines for people (kronos-db: …)
    quiet: bool = False
    verbosity: int = 0
    command: str | None = None  # the command under way, as a job name (expire-sessions)


output = Output()


def _command_job() -> str | None:
    """The command under way, as a job name: ``expire sessions`` -> ``expire-sessions``."""
    from typer._click.globals import get_current_context

    context = get_current_context(silent=True)
    if context is None:
        return None
    path = context.command_path.split(" ", 1)
    return path[1].replace(" ", "-") if len(path) > 1 else None


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now: Rich swaps it while a progress line is drawn,
    so that log lines go above the line instead of through it."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HumanFormatter(logging.Formatter):
    """``kronos-db: error: …``, ``kronos-db: warning: …``, ``kronos-db: …``: for people."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.ERROR:
            prefix = "error: "
        elif record.levelno >= logging.WARNING:
            prefix = "warning: "
        else:
            prefix = ""
        return f"kronos-db: {prefix}{record.getMessage()}"


class TextFormatter(logging.Formatter):
    """``2026-01-31T12:00:00.000Z WARNING expire-sessions: …``: time, level and job on every
    line, for log files."""

    def format(self, record: logging.LogRecord) -> str:
        job = getattr(record, "job", "") or "kronos-db"
        message = record.getMessage().removeprefix(f"{job}: ")  # the job is said once
        return f"{_timestamp(record)} {record.levelname} {job}: {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``job``, ``logger``, ``message`` and the
    record's extra fields (``duration_ms``, ``step``, …), for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "job": getattr(record, "job", "") or None,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_FIELDS and not key.startswith("_"):
                data.setdefault(key, value)
        return json.dumps(data, default=str)


def configure_logging(
    verbosity: int = 0, *, quiet: bool = False, log_format: str | None = None
) -> None:
    """stderr: lines for people by default, ``text`` or ``json`` lines for machines.

    Levels: errors and warnings always (not warnings with ``quiet``), notices (what a command
    tells its user) unless ``quiet``, each step with its duration from ``-v``, batches from
    ``-vv``.
    """
    output.log_format, output.quiet, output.verbosity = log_format, quiet, verbosity
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    elif log_format == "text":
        formatter = TextFormatter()
    else:
        formatter = HumanFormatter()
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(_RedactingFilter())
    from kronos_db.logs import JobFilter

    handler.addFilter(JobFilter(_command_job))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    if quiet:
        level = logging.ERROR
    elif verbosity >= 2:
        level = logging.DEBUG
    elif verbosity == 1:
        level = logging.INFO
    else:
        level = NOTICE
    logging.getLogger("kronos_db").setLevel(level)
    # psycopg warns when it cleans up after an error or an interrupt (a rollback that failed, a
    # cancelled query, a connection it closed): the command's own error line already says what
    # happened and what it left, so those show from -v only
    logging.getLogger("psycopg").setLevel(logging.WARNING if verbosity >= 1 else logging.ERROR)


_cli_logger = logging.getLogger("kronos_db.cli")


def ensure_logging() -> None:
    """Logging as the root options would set it, for what happens before (or without) them."""
    if not logging.getLogger().handlers:
        configure_logging(log_format=os.environ.get("KRONOS_LOG_FORMAT") or None)


class TerminalSteps:
    """Progress lines on a terminal's stderr for the library's steps that run over a second.

    An observer of :mod:`kronos_db.logs`: any step of any job (a physical pass, a partition's
    move, pg_dump, an adoption) that is still running after ``delay`` seconds gets a line with a
    spinner, what it is doing, how far it is and for how long; it goes when the step ends. Made
    only on a terminal and without --quiet or --log-format (cron sees nothing), and Rich is
    imported only when a line is drawn.
    """

    def __init__(self, *, delay: float = 1.0) -> None:
        self.delay = delay
        self._lock = threading.Lock()
        self._timers: dict[int, threading.Timer] = {}
        self._tasks: dict[int, Any] = {}
        self._progress: Any = None

    def step_started(self, step: logs.Step) -> None:
        timer = threading.Timer(self.delay, self._show, args=(step,))
        timer.daemon = True
        with self._lock:
            self._timers[id(step)] = timer
        timer.start()

    def step_progressed(self, step: logs.Step) -> None:
        with self._lock:
            task = self._tasks.get(id(step))
            if task is not None:
                self._progress.update(
                    task, completed=step.done, total=step.total, detail=step.detail
                )

    def step_finished(self, step: logs.Step) -> None:
        with self._lock:
            timer = self._timers.pop(id(step), None)
            if timer is not None:
                timer.cancel()
            task = self._tasks.pop(id(step), None)
            if task is not None:
                self._progress.remove_task(task)

    def _show(self, step: logs.Step) -> None:
        with self._lock:
            if id(step) not in self._timers:
                return  # finished meanwhile
            if self._progress is None:
                from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

                self._progress = Progress(
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    TextColumn("[dim]{task.fields[detail]}"),
                    TimeElapsedColumn(),
                    console=stderr.console,
                    transient=True,
                )
                self._progress.start()
            self._tasks[id(step)] = self._progress.add_task(
                step.description, total=step.total, completed=step.done, detail=step.detail
            )

    def stop(self) -> None:
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
            self._tasks.clear()
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


_terminal_steps: TerminalSteps | None = None


def start_progress() -> None:
    """Progress lines for long steps, when stderr is a terminal a person reads."""
    global _terminal_steps
    if _terminal_steps is not None or output.quiet or output.log_format is not None:
        return
    if not stderr.is_terminal:
        return
    from kronos_db import logs

    _terminal_steps = TerminalSteps()
    logs._observers.append(_terminal_steps)


def stop_progress() -> None:
    global _terminal_steps
    if _terminal_steps is None:
        return
    from kronos_db import logs

    _terminal_steps.stop()
    if _terminal_steps in logs._observers:
        logs._observers.remove(_terminal_steps)
    _terminal_steps = None
