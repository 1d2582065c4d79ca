"""`kronos-db lint`: the revisions' SQL through squawk and Kronos's own rules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kronos_db.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    emit_json,
    notify,
    settings_for,
    stdout,
    target_for,
)
from kronos_db.errors import ExitCode

if TYPE_CHECKING:
    from kronos_db.lint import Finding, LintReport

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim", "waived": "green"}


def lint(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="SQL files to lint (default: the upgrade SQL of every revision in the tree).",
            show_default=False,
        ),
    ] = None,
    pending: Annotated[
        bool,
        typer.Option(
            "--pending", help="Only the revisions the database has not applied yet (connects)."
        ),
    ] = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also list information-level findings.")
    ] = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Lint migrations: squawk's rules and Kronos's own, judged on the live tables.

    Connected (--database-url, $KRONOS_DATABASE_URL, $DATABASE_URL or database.url), a
    finding on a small quiet table is a warning and on a large or busy one an error; without a
    database, a blocking finding on an existing table is an error. Exits 8 when a revision not
    yet released has an error-level finding without a reasoned `-- kronos: waive` comment.

    Example: kronos-db lint --pending --database-url postgresql://deploy@db/kronos
    """
    from kronos_db import lint as lint_module
    from kronos_db import migrations

    settings = settings_for(config)
    target = target_for(database_url, settings)
    live = pending or target.source != "libpq"
    if paths:
        report = lint_module.lint_files(settings, paths, target=target if live else None)
    elif pending:
        from kronos_db import db

        tree = migrations.MigrationTree.from_settings(settings)
        with db.connection(target) as conn:
            current = migrations.current_revisions(conn)
        revisions = migrations.pending_revisions(tree, current)
        report = lint_module.lint_revisions(settings, target=target, revisions=revisions)
    else:
        report = lint_module.lint_revisions(settings, target=target if live else None)
    if json:
        emit_json(report.as_dict())
    else:
        _render(report, show_all)
    if report.blocking:
        raise typer.Exit(ExitCode.UNSAFE)


def _render(report: LintReport, show_all: bool) -> None:
    shown_levels = {"error", "warning", "waived"} | ({"info"} if show_all else set())
    by_file: dict[str, list[Finding]] = {}
    released: dict[str, bool] = {}
    for finding in report.findings:
        by_file.setdefault(finding.file, []).append(finding)
        released[finding.file] = finding.released
    for file, findings in by_file.items():
        visible = [f for f in findings if f.level in shown_levels]
        if not visible:
            continue
        note = "  (released: shown, never blocking; fix forward in a new revision)"
        stdout.print(f"[bold]{file}[/bold]" + (note if released[file] else ""), highlight=False)
        for finding in visible:
            style = _STYLE[finding.level]
            stdout.print(
                f"  {finding.line}:{finding.column}  [{style}]{finding.level:<7}[/{style}] ",
                end="",
            )
            stdout.print(f"{finding.rule}  {finding.message}", markup=False)
            if finding.context:
                stdout.print(f"           {finding.context}", markup=False, style="dim")
            if finding.waiver:
                stdout.print(f"           waived: {finding.waiver}", markup=False, style="green")
            elif finding.help and finding.level in {"error", "warning"}:
                stdout.print(f"           fix: {finding.help}", markup=False, style="dim")
    counts = report.counts()
    where = f"against {report.database}" if report.database else "without a database"
    hidden = "" if show_all or not counts["info"] else " (--all lists them)"
    stdout.print(
        f"{len(report.files)} file(s) linted {where}: {counts['error']} error(s), "
        f"{counts['warning']} warning(s), {counts['info']} info{hidden}, "
        f"{counts['waived']} waived; {len(report.blocking)} blocking",
        markup=False,
    )
    if report.blocking:
        notify(
            f"{len(report.blocking)} error-level finding(s) in unreleased revisions: fix them, "
            "or waive one with `-- kronos: waive RULE: why it is safe here`"
        )


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Migrations")(lint)
