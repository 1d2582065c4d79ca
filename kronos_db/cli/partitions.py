"""``kronos-db partitions``: status (a monitoring check), rotate (the cron job), adopt."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

import typer

from kronos_db import db
from kronos_db.checks import CheckResult
from kronos_db.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    NowOption,
    duration_option,
    emit_json,
    human_size,
    is_terminal,
    notify,
    parse_now,
    settings_for,
    stdout,
    target_for,
)
from kronos_db.cli.monitoring import OutputFormat, fail_unknown, write
from kronos_db.config import Settings
from kronos_db.errors import KronosError
from kronos_db.partitions import rotation
from kronos_db.partitions.status import (
    PartitionStatus,
    coverage_thresholds,
    partition_status,
    status_outcome,
)
from kronos_db.reports import formats

app = typer.Typer(
    help="Keep the logs table's partitions created ahead and retire old ones.",
    no_args_is_help=True,
)


IntervalOption = Annotated[
    str | None,
    typer.Option(
        "--interval",
        help="Partition width: hourly, daily, weekly or monthly.",
        show_default=False,
        rich_help_panel="Policy",
    ),
]
PremakeOption = Annotated[
    int | None,
    typer.Option(
        "--premake",
        min=1,
        help="Partitions to keep ready after the current one.",
        show_default=False,
        rich_help_panel="Policy",
    ),
]
RetentionOption = Annotated[
    str | None,
    typer.Option(
        "--retention",
        help="Retire partitions older than this, e.g. 30d (0: never).",
        show_default=False,
        rich_help_panel="Policy",
    ),
]
ActionOption = Annotated[
    str | None,
    typer.Option(
        "--retention-action",
        help="drop, detach (keep as a plain table) or archive.",
        show_default=False,
        rich_help_panel="Policy",
    ),
]
ArchiveDirectoryOption = Annotated[
    str | None,
    typer.Option(
        "--archive-directory",
        help="Where archive files go.",
        show_default=False,
        rich_help_panel="Policy",
    ),
]
BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend", help="auto, native or partman.", show_default=False, rich_help_panel="Policy"
    ),
]
LockTimeoutOption = Annotated[
    str | None,
    typer.Option(
        "--lock-timeout",
        help="Longest an insert may queue behind a lock rotate asks for, e.g. 200ms.",
        show_default=False,
        rich_help_panel="Safety",
    ),
]
HoldTimeoutOption = Annotated[
    str | None,
    typer.Option(
        "--hold-timeout",
        help="Longest a lock inserts wait on may be held (the attach's check), e.g. 50ms.",
        show_default=False,
        rich_help_panel="Safety",
    ),
]
BudgetOption = Annotated[
    str | None,
    typer.Option(
        "--budget",
        help="Time one run may spend retrying locks, e.g. 2m.",
        show_default=False,
        rich_help_panel="Safety",
    ),
]


def _choice(value: str | None, choices: tuple[str, ...], option: str) -> str | None:
    if value is not None and value not in choices:
        raise typer.BadParameter(
            f"expected one of {', '.join(choices)}, got {value!r}", param_hint=option
        )
    return value


def _settings(
    config: Any,
    *,
    interval: str | None = None,
    premake: int | None = None,
    retention: str | None = None,
    retention_action: str | None = None,
    archive_directory: str | None = None,
    backend: str | None = None,
    lock_timeout: str | None = None,
    hold_timeout: str | None = None,
    budget: str | None = None,
) -> Settings:
    _choice(interval, ("hourly", "daily", "weekly", "monthly"), "--interval")
    _choice(retention_action, ("drop", "detach", "archive"), "--retention-action")
    _choice(backend, ("auto", "native", "partman"), "--backend")
    for value in (retention, lock_timeout, hold_timeout, budget):
        duration_option(value)
    overrides: dict[str, tuple[Any, str]] = {
        "partitions.interval": (interval, "option --interval"),
        "partitions.premake": (premake, "option --premake"),
        "partitions.retention": (retention, "option --retention"),
        "partitions.retention_action": (retention_action, "option --retention-action"),
        "partitions.archive_directory": (archive_directory, "option --archive-directory"),
        "partitions.backend": (backend, "option --backend"),
        "partitions.lock_timeout": (lock_timeout, "option --lock-timeout"),
        "partitions.hold_timeout": (hold_timeout, "option --hold-timeout"),
        "partitions.budget": (budget, "option --budget"),
    }
    return settings_for(config, overrides)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


@app.command("status")
def status(
    interval: IntervalOption = None,
    premake: PremakeOption = None,
    retention: RetentionOption = None,
    retention_action: ActionOption = None,
    backend: BackendOption = None,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Show every partition, the default partition's rows, strays, coverage and the next rotation.

    A monitoring check (health's log_partitions check reports the same verdict): exits 0 OK,
    1 WARNING (coverage under coverage_warning, rows waiting in the default partition, a stray
    table that may hold log rows, an unfinished retirement such as a pending archive),
    2 CRITICAL (now not covered, or coverage under coverage_critical), 3 UNKNOWN (the check
    itself failed).

    Output: the Nagios plugin line with performance data first, then the partitions (or
    --json: the document of docs/health.schema.json, the details under "data").

    Example: kronos-db partitions status --json
    """
    moment = parse_now(now)
    chosen = OutputFormat.json if json else OutputFormat.text
    database = ""
    started = time.monotonic()
    try:
        settings = _settings(
            config,
            interval=interval,
            premake=premake,
            retention=retention,
            retention_action=retention_action,
            backend=backend,
        )
        coverage_thresholds(settings)[0].validate()
        target = target_for(database_url, settings)
        database = target.dbname
        with db.connection(target) as conn:
            result = partition_status(conn, settings, moment)
    except KronosError as exc:
        fail_unknown(
            "PARTITIONS",
            "partitions status",
            exc.message,
            output_format=chosen,
            database=database,
            now=moment,
        )
    check = CheckResult.of(
        "log_partitions",
        "Kronos: logs partitions",
        status_outcome(result, settings),
        time.monotonic() - started,
    )
    if json:
        document = formats.health_document("partitions status", database, moment, (check,))
        emit_json({**document, "data": {**_plain(result), "level": result.level.name}})
        raise typer.Exit(result.exit_code)
    write(formats.nagios_output("PARTITIONS", (check,)))
    from rich.table import Table

    table = Table("partition", "from (UTC)", "to (UTC)", "rows≈", "size")
    for partition in result.partitions:
        name = partition.name + (" (detach pending)" if partition.detach_pending else "")
        if partition.is_default:
            rows = (
                str(result.default_rows)
                if result.default_rows_exact
                else "≈" + str(result.default_rows)
            )
            table.add_row(name, "DEFAULT", "", rows, human_size(partition.total_bytes))
        else:
            table.add_row(
                name,
                _when(partition.lower),
                _when(partition.upper),
                str(partition.row_estimate),
                human_size(partition.total_bytes),
            )
    stdout.print(table)
    for stray in result.strays:
        held = "?" if stray.rows is None else str(stray.rows)
        verdict = "adoptable" if stray.adoptable else f"not adoptable: {stray.reason}"
        stdout.print(
            f"stray: {stray.name} [{_when(stray.lower)}, {_when(stray.upper)}), {held} row(s), "
            f"{verdict}",
            markup=False,
        )
    stdout.print(
        f"table: {result.table} ({result.backend} backend, {result.interval}, "
        f"premake {result.premake}, retention "
        f"{_retention(result)} then {result.retention_action})",
        markup=False,
    )
    stdout.print(
        f"coverage: until {_when(result.covered_until)} UTC, "
        f"{result.partitions_ahead} partition(s) ahead",
        markup=False,
    )
    if result.plan:
        stdout.print("next rotation:")
        for action in result.plan:
            stdout.print(f"  · {action.describe()}", markup=False)
    else:
        stdout.print("next rotation: nothing to do")
    for warning in result.warnings:
        notify(f"warning: {warning}")
    raise typer.Exit(result.exit_code)


def _retention(result: PartitionStatus) -> str:
    from kronos_db.durations import format_duration

    return format_duration(result.retention) if result.retention else "none"


def _plain(value: Any) -> Any:
    import dataclasses

    return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}


@app.command("rotate")
def rotate(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the exact SQL it would run; run nothing.")
    ] = False,
    interval: IntervalOption = None,
    premake: PremakeOption = None,
    retention: RetentionOption = None,
    retention_action: ActionOption = None,
    archive_directory: ArchiveDirectoryOption = None,
    backend: BackendOption = None,
    lock_timeout: LockTimeoutOption = None,
    hold_timeout: HoldTimeoutOption = None,
    budget: BudgetOption = None,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Adopt strays, move default-partition rows, create partitions, retire old ones.

    Every row stays visible through the table exactly once; an insert waits at most
    --lock-timeout (+ --hold-timeout) because of it. Safe for cron: a second run while one is
    working exits 0 having done nothing; quiet when there is nothing to do and no terminal.
    Exits 1 when a step failed (the others still run), 4 when every failure was a lock not
    granted within the run's budget (the next run retries).

    Example: kronos-db partitions rotate --dry-run
    """
    settings = _settings(
        config,
        interval=interval,
        premake=premake,
        retention=retention,
        retention_action=retention_action,
        archive_directory=archive_directory,
        backend=backend,
        lock_timeout=lock_timeout,
        hold_timeout=hold_timeout,
        budget=budget,
    )
    moment = parse_now(now)
    target = target_for(database_url, settings)
    with db.connection(target) as conn:
        result = rotation.rotate(conn, settings, moment, dry_run=dry_run, notify=notify)
    if json:
        emit_json({**_plain(result), "exit_code": result.exit_code})
        raise typer.Exit(result.exit_code)
    if result.skipped:
        if is_terminal():
            notify(result.reason or f"another rotation of {result.table} is running: nothing done")
        return
    if dry_run:
        for statement in result.statements:
            stdout.print(statement.rstrip(";") + ";", markup=False)
        if not result.statements and is_terminal():
            notify(f"{result.table}: nothing to do")
        return
    if not result.steps:
        if is_terminal():
            stdout.print(f"{result.table}: nothing to do")
        return
    for step in result.steps:
        if step.ok:
            extra = (
                f", {step.rows_moved} row(s) moved ({step.rows_planned} planned)"
                if step.rows_moved or step.rows_planned
                else ""
            )
            if step.archive_file:
                extra += f", {step.archived_rows} row(s) archived to {step.archive_file}"
            stdout.print(f"{step.description} [dim]({step.seconds * 1000:.0f} ms{extra})[/dim]")
        else:
            stdout.print(f"FAILED {step.description}: {step.error}", markup=False)
    raise typer.Exit(result.exit_code)


@app.command("adopt")
def adopt(
    backend: Annotated[
        str, typer.Option("--backend", help="The backend to hand the table to: partman.")
    ] = "partman",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the SQL instead of running it.")
    ] = False,
    interval: IntervalOption = None,
    premake: PremakeOption = None,
    retention: RetentionOption = None,
    retention_action: ActionOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Register the table with pg_partman (its partitions and default partition kept).

    Needs the extension: CREATE EXTENSION pg_partman SCHEMA partman. From then on `rotate` and
    `status` use the partman backend (backend = auto).

    Example: kronos-db partitions adopt --backend partman
    """
    from kronos_db import partman

    if backend != "partman":
        raise typer.BadParameter("only partman can adopt the table", param_hint="--backend")
    settings = _settings(
        config,
        interval=interval,
        premake=premake,
        retention=retention,
        retention_action=retention_action,
    )
    target = target_for(database_url, settings)
    with db.connection(target) as conn:
        result = partman.adopt(conn, settings, dry_run=dry_run)
    if json:
        emit_json(result)
        return
    if dry_run:
        for statement in result.statements:
            stdout.print(statement + ";", markup=False)
        return
    if result.created:
        stdout.print(f"{result.table} is now managed through pg_partman ({result.schema})")
    else:
        stdout.print(f"{result.table} was already registered with pg_partman")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="partitions")
