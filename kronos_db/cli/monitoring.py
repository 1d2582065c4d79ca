"""What the monitoring commands share: how they say UNKNOWN, and where.

A monitoring command (``health``, ``partitions status``, ``backup status``) is read by a
program: Nagios reads stdout and the exit code, a Prometheus textfile collector reads the file,
a script reads the JSON. So when the command cannot run at all (no connection, a configuration
it cannot read, a bad option) it still answers on stdout, in the format asked for, and exits 3
(UNKNOWN), never 1 or 2 (which Nagios would read as WARNING or CRITICAL).
"""

from __future__ import annotations

import enum
import sys
from datetime import datetime
from typing import NoReturn

import typer

from kronos_db.cli.common import emit_json, redact

UNKNOWN_EXIT = 3


class OutputFormat(enum.StrEnum):
    text = "text"
    json = "json"
    prometheus = "prometheus"


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def fail_unknown(
    service: str,
    command: str,
    message: str,
    *,
    output_format: OutputFormat = OutputFormat.text,
    database: str = "",
    now: datetime,
) -> NoReturn:
    """Answer UNKNOWN on stdout in ``output_format`` and exit 3."""
    from kronos_db.checks import Status
    from kronos_db.reports import formats

    message = redact(message)
    if output_format is OutputFormat.json:
        emit_json(
            formats.health_document(
                command, database, now, (), status=Status.UNKNOWN, error=message
            )
        )
    elif output_format is OutputFormat.prometheus:
        write(formats.prometheus_text(database, (), up=False))
    else:
        write(formats.nagios_unknown(service, message))
    raise typer.Exit(UNKNOWN_EXIT)
