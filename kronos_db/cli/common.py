"""What every command shares: the common options, settings and target, and output."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from kronos_db import db
from kronos_db.config import Settings, load_settings
from kronos_db.durations import format_duration, parse_duration

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

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
    return load_settings(config, overrides)


def target_for(database_url: str | None, settings: Settings) -> db.Target:
    target = db.resolve_target(database_url, settings)
    _SECRETS.update(target.secrets)
    return target


def redact(text: str) -> str:
    return db.redact(text, tuple(_SECRETS))


def is_terminal() -> bool:
    return stdout.is_terminal


def notify(message: str) -> None:
    """Progress and warnings: stderr, so stdout stays data."""
    stderr.print(f"kronos-db: {redact(message)}", markup=False)


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


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kronos-db: %(message)s"))
    handler.addFilter(_RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("kronos_db").setLevel(logging.INFO if verbose else logging.WARNING)
