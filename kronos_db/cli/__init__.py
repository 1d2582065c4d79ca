"""The ``kronos-db`` command line: parses, calls the library, renders. No SQL here.

Expected failures (``KronosError``) become one line on stderr and a documented exit code;
usage errors exit 2; an unexpected failure says so in one line (``KRONOS_DEBUG=1`` shows the
traceback).

Start-up is what a cron job pays every few minutes, so a command imports only what it runs:
each top-level command lives in a module of ``kronos_db.cli`` that is imported when that
command is invoked (or listed in ``--help``), never before. :data:`COMMANDS` is the registry:
adding a command is adding its module's ``register(app)`` and one entry there.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import sys
from difflib import get_close_matches
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from kronos_db.cli.common import (
    LOG_FORMATS,
    configure_logging,
    emit_json,
    error,
    output,
    redact,
    start_progress,
    stop_progress,
)
from kronos_db.errors import ExitCode, KronosError


@dataclasses.dataclass(frozen=True)
class LazyCommand:
    """A top-level command: the module whose ``register(app)`` defines it, and its short help.

    The help is repeated here so that shell completion can describe every command without
    importing them all (a test checks that it matches the command's own).
    """

    module: str
    help: str


# name: (module under kronos_db.cli, the first line of its help), in the order of --help
COMMANDS: dict[str, LazyCommand] = {
    "migrate": LazyCommand(
        "kronos_db.cli.migrate",
        "Apply migrations up to REVISION (head by default), under the migration lock.",
    ),
    "downgrade": LazyCommand(
        "kronos_db.cli.migrate",
        "Revert migrations down to REVISION; `base` removes every Kronos object.",
    ),
    "status": LazyCommand(
        "kronos_db.cli.migrate",
        "Show the current revision and the pending ones.",
    ),
    "history": LazyCommand(
        "kronos_db.cli.migrate",
        "List every revision, oldest first, and whether the database has it.",
    ),
    "check": LazyCommand(
        "kronos_db.cli.migrate",
        "Compare the live schema with what head defines; exit 6 listing each difference.",
    ),
    "revision": LazyCommand(
        "kronos_db.cli.migrate",
        "Write a new revision: its Alembic file and an empty upgrade/downgrade SQL pair.",
    ),
    "merge": LazyCommand(
        "kronos_db.cli.migrate",
        "Join the heads of a branched migration tree with a new, empty revision.",
    ),
    "adopt": LazyCommand(
        "kronos_db.cli.adopt",
        "Take over a Kronos database built outside kronos-db (the original design's DDL).",
    ),
    "stamp": LazyCommand(
        "kronos_db.cli.adopt",
        "Record REVISION as applied without running it (for experts; prefer `adopt`).",
    ),
    "quarantine": LazyCommand(
        "kronos_db.cli.adopt",
        "The rows `adopt` moved out of their tables (restorable) or changed (kept for the record).",
    ),
    "lint": LazyCommand(
        "kronos_db.cli.lint",
        "Lint migrations: squawk's rules and Kronos's own, judged on the live tables.",
    ),
    "config": LazyCommand(
        "kronos_db.cli.config",
        "Inspect the configuration.",
    ),
    "expire": LazyCommand(
        "kronos_db.cli.housekeeping",
        "Delete expired rows (sessions, cache), in batches.",
    ),
    "queue": LazyCommand(
        "kronos_db.cli.housekeeping",
        "Keep the message queue healthy: stats, requeue, purge.",
    ),
    "ratelimits": LazyCommand(
        "kronos_db.cli.housekeeping",
        "Reset rate-limit counters whose window has passed.",
    ),
    "maintain": LazyCommand(
        "kronos_db.cli.maintain",
        "Run every periodic job once, each independent of the others: one cron line for all.",
    ),
    "partitions": LazyCommand(
        "kronos_db.cli.partitions",
        "Keep the logs table's partitions created ahead and retire old ones.",
    ),
    "backup": LazyCommand(
        "kronos_db.cli.backups",
        "Backups: pg_dump files recorded in the backups table, verified by restoring them.",
    ),
    "bootstrap": LazyCommand(
        "kronos_db.cli.security",
        "Once, as a superuser: the extensions, kronos-db's own roles, ownership, the grants.",
    ),
    "roles": LazyCommand(
        "kronos_db.cli.security",
        "Least privilege: one PostgreSQL role per Kronos service.",
    ),
    "users": LazyCommand(
        "kronos_db.cli.security",
        "Kronos accounts with Argon2id password hashes.",
    ),
    "report": LazyCommand(
        "kronos_db.cli.reports",
        "DBA reports: slow queries, indexes, bloat, vacuum, locks, space, replication, Kronos.",
    ),
    "health": LazyCommand(
        "kronos_db.cli.health",
        "Every check with a status; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios).",
    ),
}

_MARKUP: Literal["rich"] = "rich"


def load_command(name: str) -> Any:
    """Import the module of command ``name`` and build its Click command."""
    entry = COMMANDS[name]
    holder = typer.Typer(rich_markup_mode=_MARKUP)
    importlib.import_module(entry.module).register(holder)
    group = typer.main.get_group(holder)
    return group.commands[name]


class LazyGroup(TyperGroup):
    """The root group: lists every command of :data:`COMMANDS`, imports one when it runs."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in COMMANDS:
            command = self.commands[cmd_name] = load_command(cmd_name)
        return command

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return self._click_resolve_command(ctx, args)
        except typer.TyperException as exc:
            # Typer suggests only among commands already loaded: suggest among them all
            matches = get_close_matches(args[0], self.list_commands(ctx)) if args else []
            message = getattr(exc, "message", None)
            if matches and isinstance(message, str):
                suggestions = ", ".join(repr(match) for match in matches)
                exc.message = f"{message.rstrip('.')}. Did you mean {suggestions}?"
            raise

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        # the names and their help from the registry: a TAB imports no command module
        from typer._click.shell_completion import CompletionItem

        results = [
            CompletionItem(name, help=entry.help)
            for name, entry in COMMANDS.items()
            if name.startswith(incomplete)
        ]
        # the root's own options (--help, --version…), as Click's Command does it
        results.extend(super(TyperGroup, self).shell_complete(ctx, incomplete))
        return results


app = typer.Typer(
    name="kronos-db",
    cls=LazyGroup,
    help="Schema-first migrations and DBA toolkit for the Kronos PostgreSQL database.\n\n"
    "Example: kronos-db migrate --create-db",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=_MARKUP,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from kronos_db import __version__

        typer.echo(f"kronos-db {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="Log each step with its duration and locks on stderr; -vv also each batch.",
        ),
    ] = 0,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only errors: no notice or warning on stderr, no job summary on stdout "
            "(data asked for, --json, reports, health, still prints).",
        ),
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            envvar="KRONOS_LOG_FORMAT",
            metavar="text|json",
            help="stderr as log lines with time, level and job: text or json (one object a "
            "line). Default: lines for people.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Schema-first migrations and DBA toolkit for the Kronos PostgreSQL database.

    Example: kronos-db migrate --create-db
    """
    if log_format is not None and log_format not in LOG_FORMATS:
        raise typer.BadParameter(
            f"expected text or json, got {log_format!r}", param_hint="--log-format"
        )
    configure_logging(verbose, quiet=quiet, log_format=log_format)
    start_progress()


# What an interruption leaves behind, per command, when no step of the library said more.
_INTERRUPTED_STATE = {
    "migrate": "each revision is one transaction: the one under way is rolled back, those "
    "before it stay applied (a no-transaction revision resumes on the next run); "
    "`kronos-db status` shows where the database is",
    "downgrade": "each revision is one transaction: the one under way is rolled back, those "
    "before it stay reverted; `kronos-db status` shows where the database is",
    "partitions-rotate": "each step is a short transaction of its own: finished steps stay, the "
    "one under way is rolled back; the next run carries on",
    "backup-create": "the partial dump file is removed and nothing is recorded",
    "backup-verify": "the scratch database may be left behind (kronos_verify_*); the backup is "
    "not marked verified",
    "backup-restore": "the target database may be left half-restored: drop it or restore again "
    "with --force",
    "backup-prune": "files already deleted have their rows marked pruned; run it again",
    "roles-apply": "each change is its own statement: those made stay; run it again",
}
_READ_ONLY = "nothing was changed"


def _interruption(signal_name: str) -> str:
    """``interrupted (SIGINT) during <what>, after <n>s: <the state it left>``."""
    from kronos_db import logs

    steps = logs.interrupted_steps()
    if steps:
        what = " > ".join(
            dict.fromkeys(
                part
                for step, _ in reversed(steps)
                for part in (step.job or "", step.description)
                if part
            )
        )
        # what each step left, innermost first ("page 8 of 34 reached…; 12 rows done…")
        state = "; ".join(dict.fromkeys(state for _, state in steps if state))
        seconds = max(step.seconds for step, _ in steps)
    else:
        what = output.command or "kronos-db"
        state = _INTERRUPTED_STATE.get(output.command or "", "")
        seconds = 0.0
    after = f", after {seconds:.1f}s" if seconds else ""
    return f"interrupted ({signal_name}) during {what}{after}: {state or _READ_ONLY}"


_signal_received: list[str] = []


def _on_signal(number: int, frame: object) -> None:
    """SIGINT and SIGTERM: remember which, then interrupt as Ctrl-C does (psycopg cancels the
    query under way on KeyboardInterrupt, so the server stops too)."""
    _signal_received.append(signal.Signals(number).name)
    raise KeyboardInterrupt


def _json_requested(argv: list[str]) -> bool:
    """``--json`` among the options (not after ``--``): errors then go to stdout as JSON too."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


def _fail(message: str, code: int) -> None:
    """One line on stderr; under ``--json`` also one JSON object on stdout, for the machine
    that parses stdout (a PR bot, a deploy script) and would otherwise read nothing."""
    message = redact(message)
    if _json_requested(sys.argv[1:]):
        emit_json({"error": message, "exit_code": int(code)})
    error(message, exit_code=int(code))
    sys.exit(code)


# the monitoring commands and the service name their plugin output starts with: a bad option
# or argument is UNKNOWN (exit 3, on stdout) for them, as the Monitoring Plugins guidelines ask,
# not 2 (which Nagios would read as CRITICAL)
MONITORING_SERVICES = {
    ("health",): "KRONOS",
    ("partitions", "status"): "PARTITIONS",
    ("backup", "status"): "BACKUP",
    ("report", "security"): "SECURITY",
}
_ROOT_OPTIONS_WITH_VALUE = frozenset({"--log-format"})


def _monitoring_service(argv: list[str]) -> str | None:
    """The plugin service name when ``argv`` runs a monitoring command, else None."""
    words: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
            continue
        if argument in _ROOT_OPTIONS_WITH_VALUE:
            skip = True
            continue
        if argument.startswith("-"):
            continue
        words.append(argument)
    for command, service in MONITORING_SERVICES.items():
        if tuple(words[: len(command)]) == command:
            return service
    return None


def _monitoring_usage_error(service: str, message: str) -> None:
    """A monitoring command's bad input: UNKNOWN on stdout (and stderr for a person), exit 3."""
    message = redact(message)
    if _json_requested(sys.argv[1:]):
        emit_json({"schema_version": 1, "status": "UNKNOWN", "exit_code": 3, "error": message})
    else:
        sys.stdout.write(f"{service} UNKNOWN: {' '.join(message.split())}\n".replace("|", "¦"))
        sys.stdout.flush()
    error(message, exit_code=3)
    sys.exit(3)


def _signal_code(name: str) -> int:
    """128 + the signal's number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    return 128 + int(getattr(signal, name, signal.SIGINT))


def main() -> None:
    """Entry point of the ``kronos-db`` script."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _on_signal)
    try:
        _main()
    finally:
        stop_progress()


def _main() -> None:
    try:
        # the program's name, however it was started (completion is keyed on it)
        code = app(prog_name="kronos-db", standalone_mode=False)
        if _signal_received:  # Typer turns KeyboardInterrupt into a silent exit 130
            _fail(_interruption(_signal_received[0]), _signal_code(_signal_received[0]))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail(_interruption(_signal_received[0] if _signal_received else "SIGINT"), 130)
    except typer.TyperException as exc:
        # Typer's usage errors (a bad option, a missing argument): one line, exit 2
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message(), err=True)
            sys.exit(ExitCode.USAGE)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        message = exc.format_message().replace("\n", " ") + hint
        service = _monitoring_service(sys.argv[1:])
        if service is not None:
            _monitoring_usage_error(service, message)
        _fail(message, getattr(exc, "exit_code", 2))
    except KronosError as exc:
        _fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        received = _signal_received[0] if _signal_received else "SIGINT"
        _fail(_interruption(received), _signal_code(received))
    except Exception as exc:
        if os.environ.get("KRONOS_DEBUG"):
            raise
        _fail(
            f"internal error: {type(exc).__name__}: {exc} (KRONOS_DEBUG=1 shows the traceback)",
            ExitCode.FAILED,
        )
    sys.exit(code if isinstance(code, int) else 0)
