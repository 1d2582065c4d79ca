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
import sys
from difflib import get_close_matches
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from kronos_db.cli.common import configure_logging, emit_json, redact, stderr
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
        bool, typer.Option("--verbose", "-v", help="Log what kronos-db does on stderr.")
    ] = False,
) -> None:
    """Schema-first migrations and DBA toolkit for the Kronos PostgreSQL database.

    Example: kronos-db migrate --create-db
    """
    configure_logging(verbose)


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
    stderr.print(f"kronos-db: error: {message}", markup=False)
    sys.exit(code)


def main() -> None:
    """Entry point of the ``kronos-db`` script."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("interrupted", 130)
    except typer.TyperException as exc:
        # Typer's usage errors (a bad option, a missing argument): one line, exit 2
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message(), err=True)
            sys.exit(ExitCode.USAGE)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        _fail(exc.format_message().replace("\n", " ") + hint, getattr(exc, "exit_code", 2))
    except KronosError as exc:
        _fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        if os.environ.get("KRONOS_DEBUG"):
            raise
        _fail(
            f"internal error: {type(exc).__name__}: {exc} (KRONOS_DEBUG=1 shows the traceback)",
            ExitCode.FAILED,
        )
    sys.exit(code if isinstance(code, int) else 0)
