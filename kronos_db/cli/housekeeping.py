"""Housekeeping commands for cron: expire, queue, ratelimits, maintain.

On a terminal a job shows a progress bar (stderr) and a summary; otherwise it prints one
summary line (rows, batches, time) when it did something and nothing when it did not, so cron
mails only news. ``--json`` prints the result for machines; ``--dry-run`` counts what would go.
A run that finds another run holding the job's advisory lock does nothing and exits 0.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from kronos_db import db, housekeeping, maintenance, queue
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
    settings_for,
    stdout,
    target_for,
)
from kronos_db.config import Settings
from kronos_db.durations import parse_duration
from kronos_db.housekeeping import BatchOptions, JobResult, ProgressCallback

expire_app = typer.Typer(
    help="Delete expired rows (sessions, cache), in batches.", no_args_is_help=True
)
queue_app = typer.Typer(
    help="Keep the message queue healthy: stats, requeue, purge.", no_args_is_help=True
)
ratelimits_app = typer.Typer(
    help="Reset rate-limit counters whose window has passed.", no_args_is_help=True
)

BatchTimeOption = Annotated[
    str | None,
    typer.Option(
        "--batch-time",
        help="Target duration of one batch (one short transaction), e.g. 25ms: each batch is "
        "sized from the last ones' durations (default: housekeeping.batch_time, 25ms).",
        show_default=False,
        rich_help_panel="Batches",
    ),
]
BatchSizeOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Rows per batch, fixed, instead of sizing batches by time (default: "
        "housekeeping.batch_size, 0: by time).",
        show_default=False,
        rich_help_panel="Batches",
    ),
]
PauseOption = Annotated[
    str | None,
    typer.Option(
        "--pause",
        help="Pause between batches, e.g. 50ms (default: housekeeping.batch_pause, 0).",
        show_default=False,
        rich_help_panel="Batches",
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Count what would be deleted or updated; change nothing.")
]


def _check_duration(value: str | None, option: str, *, allow_zero: bool = True) -> None:
    if value is None:
        return
    try:
        parsed = parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None
    if not allow_zero and parsed <= timedelta(0):
        raise typer.BadParameter(f"must be longer than 0, got {value!r}", param_hint=option)


def _check_positive(value: int | None, option: str, *, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise typer.BadParameter(f"must be at least {minimum}, got {value}", param_hint=option)


def _settings(
    config: Path | None,
    batch_time: str | None,
    batch_size: int | None,
    pause: str | None,
    **overrides: tuple[Any, str],
) -> Settings:
    # validate the options first, so that the error names the option
    _check_duration(batch_time, "--batch-time", allow_zero=False)
    _check_positive(batch_size, "--batch-size", minimum=0)
    _check_duration(pause, "--pause")
    values: dict[str, tuple[Any, str]] = {
        "housekeeping.batch_time": (batch_time, "option --batch-time"),
        "housekeeping.batch_size": (batch_size, "option --batch-size"),
        "housekeeping.batch_pause": (pause, "option --pause"),
    }
    values.update({f"housekeeping.{key}": value for key, value in overrides.items()})
    return settings_for(config, values)


def _options(conn: Any, settings: Settings, job: str, dry_run: bool) -> BatchOptions:
    return housekeeping.job_options(conn, settings, job, dry_run=dry_run)


def _run_job(
    description: str,
    json: bool,
    dry_run: bool,
    job: Callable[[BatchOptions, ProgressCallback | None], JobResult],
    options: BatchOptions,
) -> None:
    """Run a job with the output every housekeeping command shares (its progress on a terminal
    comes from the library's steps, see ``TerminalSteps``)."""
    del description
    result = job(options, None)
    _report(result, json)


def _report(result: JobResult, json: bool) -> None:
    if json:
        emit_json(result)
        return
    if result.skipped:
        if is_terminal():
            notify(result.summary())
        return
    if result.dry_run or ((result.rows or is_terminal()) and not output.quiet):
        stdout.print(result.summary(), markup=False)


def _connection(database_url: str | None, settings: Settings) -> Any:
    return db.connection(target_for(database_url, settings))


@expire_app.command("sessions")
def expire_sessions(
    idle_timeout: Annotated[
        str | None,
        typer.Option(
            "--idle-timeout",
            help="Also delete sessions unused for longer than this, "
            "e.g. 30m; 0 turns the idle rule off (default: "
            "housekeeping.session_idle_timeout, 1h).",
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
    """Delete sessions past expires_at and sessions idle longer than the idle timeout.

    Example: kronos-db expire sessions --batch-size 5000
    """
    _check_duration(idle_timeout, "--idle-timeout")
    settings = _settings(
        config,
        batch_time,
        batch_size,
        pause,
        session_idle_timeout=(idle_timeout, "option --idle-timeout"),
    )
    moment = parse_now(now)
    with _connection(database_url, settings) as conn:
        _run_job(
            "expire sessions",
            json,
            dry_run,
            lambda options, progress: maintenance.run_job(
                conn, "expire-sessions", settings, moment, options, progress
            ),
            _options(conn, settings, "expire-sessions", dry_run),
        )


@expire_app.command("cache")
def expire_cache(
    batch_time: BatchTimeOption = None,
    batch_size: BatchSizeOption = None,
    pause: PauseOption = None,
    dry_run: DryRunOption = False,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Delete cache rows past expires_at (rows without an expiry stay).

    Example: kronos-db expire cache
    """
    settings = _settings(config, batch_time, batch_size, pause)
    moment = parse_now(now)
    with _connection(database_url, settings) as conn:
        _run_job(
            "expire cache",
            json,
            dry_run,
            lambda options, progress: maintenance.run_job(
                conn, "expire-cache", settings, moment, options, progress
            ),
            _options(conn, settings, "expire-cache", dry_run),
        )


def _age(value: timedelta | None) -> str:
    if value is None:
        return "—"
    seconds = int(value.total_seconds())
    if seconds < 0:
        return "0s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


@queue_app.command("stats")
def queue_stats(
    topic: Annotated[
        str | None, typer.Option("--topic", help="Only this topic.", show_default=False)
    ] = None,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Messages per topic and status: count, oldest message's age, longest time in the status.

    Example: kronos-db queue stats --json
    """
    settings = settings_for(config)
    moment = parse_now(now)
    with _connection(database_url, settings) as conn:
        rows = queue.stats(
            conn,
            moment,
            topic=topic,
            statement_timeout=settings.housekeeping.statement_timeout,
        )
    if json:
        emit_json(rows)
        return
    if not rows:
        stdout.print(
            "the message queue is empty" + (f" for topic {topic!r}" if topic else ""), markup=False
        )
        return
    from rich.table import Table

    table = Table("topic", "status", "messages", "oldest", "longest in status", "max attempts")
    for row in rows:
        table.add_row(
            row.topic,
            row.status,
            f"{row.messages:,}",
            _age(row.oldest_age),
            _age(row.longest_in_status),
            str(row.max_attempts),
        )
    stdout.print(table)


@queue_app.command("requeue-stuck")
def queue_requeue_stuck(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="A message in processing for longer is stuck, e.g. "
            "15m (default: housekeeping.stuck_after, 15m).",
            show_default=False,
        ),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            help="The attempt reaching this count sends the message "
            "to failed instead (default: housekeeping.max_attempts, 5).",
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
    """Put messages stuck in processing back to pending; at the retry limit, to failed.

    Example: kronos-db queue requeue-stuck --older-than 15m
    """
    _check_duration(older_than, "--older-than", allow_zero=False)
    _check_positive(max_attempts, "--max-attempts")
    settings = _settings(
        config,
        batch_time,
        batch_size,
        pause,
        stuck_after=(older_than, "option --older-than"),
        max_attempts=(max_attempts, "option --max-attempts"),
    )
    moment = parse_now(now)
    with _connection(database_url, settings) as conn:
        _run_job(
            "requeue stuck messages",
            json,
            dry_run,
            lambda options, progress: maintenance.run_job(
                conn, "requeue-stuck", settings, moment, options, progress
            ),
            _options(conn, settings, "requeue-stuck", dry_run),
        )


@queue_app.command("purge")
def queue_purge(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Delete messages processed longer ago than this, "
            "e.g. 7d (default: housekeeping.purge_after, 7d).",
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
    """Delete processed messages (pending, processing and failed ones always stay).

    Example: kronos-db queue purge --older-than 7d
    """
    _check_duration(older_than, "--older-than")
    settings = _settings(
        config, batch_time, batch_size, pause, purge_after=(older_than, "option --older-than")
    )
    moment = parse_now(now)
    with _connection(database_url, settings) as conn:
        _run_job(
            "purge processed messages",
            json,
            dry_run,
            lambda options, progress: maintenance.run_job(
                conn, "purge-processed", settings, moment, options, progress
            ),
            _options(conn, settings, "purge-processed", dry_run),
        )


@ratelimits_app.command("reset")
def ratelimits_reset(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Reset counters whose last request is older than "
            "this, e.g. 1h (default: housekeeping.ratelimit_window, 1h).",
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
    """Set rate-limit counters whose window has passed back to 0.

    Example: kronos-db ratelimits reset --older-than 1h
    """
    _check_duration(older_than, "--older-than", allow_zero=False)
    settings = _settings(
        config,
        batch_time,
        batch_size,
        pause,
        ratelimit_window=(older_than, "option --older-than"),
    )
    moment = parse_now(now)
    with _connection(database_url, settings) as conn:
        _run_job(
            "reset rate limits",
            json,
            dry_run,
            lambda options, progress: maintenance.run_job(
                conn, "reset-ratelimits", settings, moment, options, progress
            ),
            _options(conn, settings, "reset-ratelimits", dry_run),
        )


def register(app: typer.Typer) -> None:
    app.add_typer(expire_app, name="expire", rich_help_panel="Housekeeping")
    app.add_typer(queue_app, name="queue", rich_help_panel="Housekeeping")
    app.add_typer(ratelimits_app, name="ratelimits", rich_help_panel="Housekeeping")
