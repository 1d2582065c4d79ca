"""What every command shares: the common options, settings and target, and output."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sys
from datetime import UTC, date, datetime, timedelta
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
