"""``kronos-db health``: every check with a status, the monitoring plugin way.

Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also when it cannot run at all: no connection, a
bad configuration). Nagios runs it every minute per check, so it imports only the health
module and what that runs; Rich only to draw the table on a terminal.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

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
    stderr,
    stdout,
    target_for,
)
from kronos_db.config import Settings
from kronos_db.durations import format_duration
from kronos_db.errors import KronosError
from kronos_db.reports import health

logger = logging.getLogger(__name__)


class HealthFormat(enum.StrEnum):
    text = "text"
    json = "json"
    prometheus = "prometheus"


_STYLE = {
    health.Status.OK: "green",
    health.Status.WARNING: "yellow",
    health.Status.CRITICAL: "bold red",
    health.Status.UNKNOWN: "dim",
}


def _health_json(report: health.HealthReport) -> dict[str, Any]:
    return {
        "database": report.database,
        "checked_at": report.checked_at,
        "status": report.status.name,
        "exit_code": int(report.status),
        "checks": [
            {**dataclasses.asdict(result), "status": result.status.name} for result in report.checks
        ],
    }


def health_command(
    output_format: Annotated[
        HealthFormat,
        typer.Option("--format", help="text, json or prometheus (text exposition format)."),
    ] = HealthFormat.text,
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
    try:
        settings = settings_for(config)
        with db.connection(target_for(database_url, settings)) as conn:
            report = health.health_report(
                conn,
                settings.health,
                now=moment,
                only=only or (),
                skip=skip or (),
                with_charts=html_file is not None,
                partitions=settings.partitions,
            )
    except KronosError as exc:
        # a monitoring plugin that cannot check says UNKNOWN, whatever went wrong
        stderr.print(f"kronos-db: UNKNOWN: {exc.message}", markup=False)
        if json or output_format is HealthFormat.json:
            emit_json({"status": "UNKNOWN", "exit_code": 3, "error": exc.message, "checks": []})
        raise typer.Exit(int(health.Status.UNKNOWN)) from None
    _log_checks(report, settings)
    if html_file is not None:
        from kronos_db.reports.html import render_html

        try:
            html_file.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            stderr.print(
                f"kronos-db: UNKNOWN: cannot write {html_file}: {exc.strerror}", markup=False
            )
            raise typer.Exit(int(health.Status.UNKNOWN)) from None
        notify(f"HTML report written to {html_file}")
    if json or output_format is HealthFormat.json:
        emit_json(_health_json(report))
    elif output_format is HealthFormat.prometheus:
        sys.stdout.write(health.prometheus_text(report))
        sys.stdout.flush()
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
    # the first line is what Nagios shows: status and a summary
    problems = [r for r in report.checks if r.status is not health.Status.OK]
    first = "; ".join(f"{r.name}: {r.summary}" for r in problems[:3]) or "all checks OK"
    stdout.print(f"KRONOS {report.status.name} - {first}", markup=False, highlight=False)
    if not is_terminal():
        # Nagios' long output and mail from cron: one line per check, never wrapped
        for result in report.checks:
            hint = f" (hint: {result.hint})" if result.hint else ""
            stdout.print(
                f"{result.status.name:<8} {result.name}: {result.summary}{hint}",
                markup=False,
                highlight=False,
            )
        return
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
    for result in report.checks:
        finding = Text(result.summary)
        if result.hint:
            finding.append(f"\nhint: {result.hint}", style="dim")
        table.add_row(
            Text(result.status.name, style=_STYLE[result.status]),
            Text(result.name),
            finding,
            Text(f"{result.warning} / {result.critical}"),
        )
    stdout.print(table)


def register(root: typer.Typer) -> None:
    root.command("health")(health_command)
