"""The ``kronos-db`` command line: parses, calls the library, renders. No SQL here.

Expected failures (``KronosError``) become one line on stderr and a documented exit code;
usage errors exit 2; an unexpected failure says so in one line (``KRONOS_DEBUG=1`` shows the
traceback).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from kronos_db import __version__
from kronos_db.cli import backups as backup_commands
from kronos_db.cli import config as config_commands
from kronos_db.cli import housekeeping as housekeeping_commands
from kronos_db.cli import migrate as migrate_commands
from kronos_db.cli import partitions as partitions_commands
from kronos_db.cli import reports as report_commands
from kronos_db.cli import security as security_commands
from kronos_db.cli.common import configure_logging, emit_json, redact, stderr
from kronos_db.errors import ExitCode, KronosError

app = typer.Typer(
    name="kronos-db",
    help="Schema-first migrations and DBA toolkit for the Kronos PostgreSQL database.\n\n"
    "Example: kronos-db migrate --create-db",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
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


migrate_commands.register(app)
app.add_typer(config_commands.app, name="config")
housekeeping_commands.register(app)
app.add_typer(partitions_commands.app, name="partitions")
app.add_typer(backup_commands.app, name="backup", rich_help_panel="Backups")
security_commands.register(app)
report_commands.register(app)


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
