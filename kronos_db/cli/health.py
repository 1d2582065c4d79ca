"""``kronos-db health``: every check with a status, the monitoring plugin way.

Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also when it cannot run at all: no connection, a
bad configuration). Nagios runs it every minute per check, so it imports only the health
module and what that runs; Rich only to draw the table on a terminal.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from kronos_db import db
from kronos_db.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    NowOption,
    emit_json,
    is_terminal,
    notify,
    parse_now,
    settings_for,
    stdout,
    target_for,
)
from kronos_db.cli.monitoring import OutputFormat, fail_unknown, write
from kronos_db.config import Settings
from kronos_db.durations import format_duration
from kronos_db.errors import KronosError
from kronos_db.reports import formats, health

logger = logging.getLogger(__name__)

_STYLE = {
    health.Status.OK: "green",
    health.Status.WARNING: "yellow",
    health.Status.CRITICAL: "bold red",
    health.Status.UNKNOWN: "dim",
}


def health_command(
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="text (the Nagios plugin output), json (docs/health.schema.json) or "
            "prometheus (text exposition, also OpenMetrics).",
        ),
    ] = OutputFormat.text,
    html_file: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write a self-contained HTML report to this file.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--check",
            metavar="NAME",
            help=f"Run only this check (repeatable): {', '.join(health.CHECK_NAMES)}.",
            show_default=False,
        ),
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip", metavar="NAME", help="Leave this check out (repeatable).", show_default=False
        ),
    ] = None,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Every check with a status; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios).

    Thresholds come from the health section of the configuration file. A check that cannot run
    (a missing privilege or extension, a timeout) is UNKNOWN with a hint; the others still run.

    Example: kronos-db health --format prometheus > /var/lib/node_exporter/kronos.prom
    """
    moment = parse_now(now)
    chosen = OutputFormat.json if json else output_format
    database = ""
    try:
        settings = settings_for(config)
        target = target_for(database_url, settings)
        database = target.dbname
        with db.connection(target) as conn:
            report = health.health_report(
                conn,
                settings,
                now=moment,
                only=only or (),
                skip=skip or (),
                with_charts=html_file is not None,
            )
    except KronosError as exc:
        # a monitoring plugin that cannot check says UNKNOWN, on stdout, whatever went wrong
        fail_unknown(
            "KRONOS",
            "health",
            exc.message,
            output_format=chosen,
            database=database,
            now=moment,
        )
    _log_checks(report, settings)
    if html_file is not None:
        from kronos_db.reports.html import render_html

        try:
            html_file.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            fail_unknown(
                "KRONOS",
                "health",
                f"cannot write {html_file}: {exc.strerror}",
                output_format=chosen,
                database=database,
                now=moment,
            )
        notify(f"HTML report written to {html_file}")
    if chosen is OutputFormat.json:
        emit_json(
            formats.health_document(
                "health", report.database, report.checked_at, report.checks, status=report.status
            )
        )
    elif chosen is OutputFormat.prometheus:
        write(formats.prometheus_text(report.database, report.checks))
    else:
        _print_health(report)
    raise typer.Exit(int(report.status))


def _log_checks(report: health.HealthReport, settings: Settings) -> None:
    """-v: each check with its verdict, its duration and what it locks."""
    if not logger.isEnabledFor(logging.INFO):
        return
    locks = (
        f"reads only (ACCESS SHARE), each check in a transaction of its own under lock_timeout "
        f"{format_duration(settings.health.lock_timeout)} and statement_timeout "
        f"{format_duration(settings.health.statement_timeout)}"
    )
    logger.info("%d checks: %s", len(report.checks), locks)
    for result in report.checks:
        logger.info(
            "check %s: %s in %.0f ms",
            result.name,
            result.status.name,
            result.seconds * 1000,
            extra={"step": f"check {result.name}", "duration_ms": round(result.seconds * 1000, 1)},
        )


def _print_health(report: health.HealthReport) -> None:
    counts = {s: sum(1 for r in report.checks if r.status is s) for s in health.Status}
    if not is_terminal():
        # Nagios: the first line with the performance data, then one line per check
        write(formats.nagios_output("KRONOS", report.checks, status=report.status))
        return
    first = formats.nagios_output(
        "KRONOS", report.checks, status=report.status, long_output=False
    ).split(" | ")[0]
    stdout.print(first, markup=False, highlight=False)
    from rich.table import Table
    from rich.text import Text

    table = Table(
        "status",
        "check",
        "finding",
        "warn / crit",
        title=f"{report.database}: " + ", ".join(f"{n} {s.name}" for s, n in counts.items() if n),
        title_justify="left",
    )
    for result in formats.worst_first(report.checks):
        finding = Text(result.summary)
        if result.hint:
            finding.append(f"\nhint: {result.hint}", style="dim")
        table.add_row(
            Text(result.status.name, style=_STYLE[result.status]),
            Text(result.name),
            finding,
            Text(formats.levels_text(result)),
        )
    stdout.print(table)


def register(root: typer.Typer) -> None:
    root.command("health")(health_command)
