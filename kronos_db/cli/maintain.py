"""``kronos-db maintain``: every periodic job in one run, for one cron line.

A module of its own so that the single housekeeping commands do not import partition rotation
and the rest of the registry at every start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kronos_db import maintenance
from kronos_db.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    NowOption,
    emit_json,
    is_terminal,
    notify,
    output,
    parse_now,
    stdout,
    target_for,
)
from kronos_db.cli.housekeeping import (
    BatchSizeOption,
    BatchTimeOption,
    DryRunOption,
    PauseOption,
    _settings,
)
from kronos_db.errors import ExitCode


def maintain(
    job: Annotated[
        list[str] | None,
        typer.Option(
            "--job",
            help=f"Run only this job (repeatable): {', '.join(maintenance.job_names())}.",
            show_default=False,
        ),
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option("--skip", help="Leave this job out (repeatable).", show_default=False),
    ] = None,
    metrics: Annotated[
        Path | None,
        typer.Option(
            "--metrics",
            help="Write the results to this file in the Prometheus text "
            "format (node exporter textfile collector), atomically.",
            show_default=False,
        ),
    ] = None,
    batch_time: BatchTimeOption = None,
    batch_size: BatchSizeOption = None,
    pause: PauseOption = None,
    dry_run: DryRunOption = False,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Run every periodic job once, each independent of the others: one cron line for all.

    A failing job does not stop the next one; exit code 1 when any job failed.

    A job that another run is still doing is skipped, not failed. On a standby every job is
    skipped and the run exits 0 (the same crontab on every node: only the primary acts).

    Example: kronos-db maintain --metrics /var/lib/node_exporter/textfile/kronos.prom
    """
    selected = maintenance.select_jobs(job or (), skip or ())  # an unknown name: exit 2
    settings = _settings(config, batch_time, batch_size, pause)
    target = target_for(database_url, settings)
    moment = parse_now(now)

    def on_done(outcome: maintenance.JobOutcome) -> None:
        if json:
            return
        if outcome.status == "failed":
            notify(outcome.summary())
        elif (outcome.rows or dry_run or is_terminal()) and not output.quiet:
            stdout.print(outcome.summary(), markup=False)

    report = maintenance.run_maintenance(
        target, settings, moment, jobs=selected, dry_run=dry_run, on_done=on_done
    )
    if metrics is not None and dry_run:
        notify(f"dry run: {metrics} left as it was (a dry run is not a run to report)")
    elif metrics is not None:
        maintenance.write_metrics(metrics, report)
    if json:
        emit_json(
            {
                "now": report.now,
                "seconds": report.seconds,
                "dry_run": report.dry_run,
                "skipped": report.skipped,
                "ok": report.ok,
                "failed": report.failed,
                "jobs": report.jobs,
            }
        )
    if report.failed:
        if not json:
            notify(
                f"maintain: {len(report.failed)} of {len(report.jobs)} jobs failed: "
                f"{', '.join(report.failed)}"
            )
        raise typer.Exit(ExitCode.FAILED)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Housekeeping")(maintain)
