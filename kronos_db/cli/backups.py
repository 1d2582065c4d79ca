"""``kronos-db backup``: create, list, prune, restore and verify pg_dump backups."""

from __future__ import annotations

import dataclasses
from datetime import UTC, timedelta
from pathlib import Path
from typing import Annotated

import typer

from kronos_db import backups, db
from kronos_db.checks import Context, Limits, answer_check
from kronos_db.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    NowOption,
    detail,
    duration_option,
    emit_json,
    human_size,
    notify,
    parse_now,
    settings_for,
    stdout,
    target_for,
)
from kronos_db.cli.monitoring import OutputFormat, fail_unknown, write
from kronos_db.durations import parse_duration
from kronos_db.errors import BackupVerificationError, KronosError, UsageError
from kronos_db.reports import formats

app = typer.Typer(
    help="Backups: pg_dump files recorded in the backups table, verified by restoring them.",
    no_args_is_help=True,
)


def _verified(backup: backups.Backup) -> str:
    if backup.verify_result is None or backup.verified_at is None:
        return "never"
    return f"{backup.verify_result} {backup.verified_at:%Y-%m-%d %H:%M}"


@app.command("create")
def create(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--directory",
            help="Write the dump here (default: backups.directory).",
            show_default=False,
        ),
    ] = None,
    verify_after: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Then verify the new dump (restore into a scratch database, compare row "
            "counts); exit 1 when it fails.",
        ),
    ] = False,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Dump the database (pg_dump custom format), write it atomically and record it.

    Row counts are taken in the dump's own snapshot, so `backup verify` can compare them
    exactly. A second run while one is in progress does nothing and exits 0.

    Example: kronos-db backup create --directory /var/backups/kronos --verify
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    moment = parse_now(now)
    # a terminal shows pg_dump's progress (TerminalSteps), cron nothing
    backup = backups.create_backup(target, settings, now=moment, directory=directory)
    if backup is None:
        notify("another `backup create` is running on this database: nothing done")
        return
    result = (
        backups.verify_backup(target, settings, backup.id, now=moment) if verify_after else None
    )
    if json:
        emit_json(
            {**dataclasses.asdict(backup), "verification": result and _as_dict(result)}
            if verify_after
            else backup
        )
    else:
        _print_created(backup)
        if result is not None and result.passed:
            stdout.print(f"  verified: {result.message} ({result.seconds:.1f}s)", markup=False)
    if result is not None and not result.passed:
        raise BackupVerificationError(
            f"backup {result.backup_id} FAILED verification: {result.message}"
        )


def _print_created(backup: backups.Backup) -> None:
    seconds = (
        (backup.finished_at - backup.started_at).total_seconds()
        if backup.finished_at and backup.started_at
        else 0.0
    )
    stdout.print(f"backup {backup.id}: {backup.file_path}", markup=False)
    stdout.print(
        f"  {human_size(backup.size_bytes)}, sha256 {backup.sha256}, "
        f"{len(backup.row_counts or {})} tables, {backup.total_rows} rows, "
        f"{seconds:.1f}s",
        markup=False,
    )


@app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all", help="Include pruned backups.")] = False,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="Only this kind: pg_dump, partition_archive or unknown.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")] = 50,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """List the recorded backups, newest first.

    Example: kronos-db backup list --kind pg_dump
    """
    if kind is not None and kind not in backups.KINDS:
        raise typer.BadParameter(f"one of {', '.join(backups.KINDS)}", param_hint="--kind")
    settings = settings_for(config)
    target = target_for(database_url, settings)
    with db.connection(target) as conn:
        rows = backups.list_backups(conn, kind=kind, include_pruned=all_, limit=limit)
    if json:
        emit_json(rows)
        return
    if not rows:
        if stdout.is_terminal:
            stdout.print("no backups recorded")
        return
    from rich.table import Table

    table = Table("id", "created (UTC)", "kind", "status", "size", "verified", "file")
    for row in rows:
        table.add_row(
            str(row.id),
            f"{row.created_at.astimezone(UTC):%Y-%m-%d %H:%M}",
            row.kind,
            row.status,
            human_size(row.size_bytes),
            _verified(row),
            row.file_path,
        )
    stdout.print(table)


@app.command("prune")
def prune(
    keep: Annotated[
        int | None,
        typer.Option(
            "--keep",
            min=1,
            help="Keep the newest N dumps (default: backups.keep when --older-than is not given).",
            show_default=False,
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than", help="Only dumps older than this, e.g. 30d.", show_default=False
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go.")] = False,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Delete old dump files and mark their rows pruned.

    With both options a dump must match both. The newest dump that passed `backup verify` is
    never pruned, and partition archives are never touched. Files of the backup directory
    that no backup row records are reported, not deleted.

    Example: kronos-db backup prune --keep 7 --older-than 30d
    """
    age = duration_option(older_than)
    settings = settings_for(config)
    target = target_for(database_url, settings)
    result = backups.prune_backups(
        target, settings, now=parse_now(now), keep=keep, older_than=age, dry_run=dry_run
    )
    if result is None:
        notify("another `backup prune` is running on this database: nothing done")
        return
    if json:
        emit_json(result)
        return
    for path in result.missing_files:
        notify(f"warning: {path} was already gone; its row is marked pruned")
    for path in result.stale_partials:
        verb_partial = "would remove" if result.dry_run else "removed"
        notify(f"{verb_partial} {path}, left by an interrupted backup create")
    for path in result.unrecorded:
        notify(f"warning: {path} is not recorded in backups: left alone (delete it or record it)")
    verb = "would prune" if result.dry_run else "pruned"
    if not result.pruned:
        if stdout.is_terminal:
            stdout.print("nothing to prune")
        else:
            detail("nothing to prune")
        return
    for backup in result.pruned:
        created = f"{backup.created_at.astimezone(UTC):%Y-%m-%d %H:%M}"
        stdout.print(
            f"{verb} backup {backup.id} ({created}, {human_size(backup.size_bytes)}): "
            f"{backup.file_path}",
            markup=False,
        )
    if result.kept_newest_verified is not None:
        stdout.print(f"kept backup {result.kept_newest_verified}, the newest verified one")


@app.command("restore")
def restore(
    backup_id: Annotated[int, typer.Argument(help="The backup's id (see `backup list`).")],
    target_db: Annotated[
        str,
        typer.Option("--target-db", help="The new database to restore into.", show_default=False),
    ],
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace TARGET_DB when it exists (its sessions are terminated)."
        ),
    ] = False,
    no_owner: Annotated[
        bool,
        typer.Option(
            "--no-owner",
            help="Skip ownership and GRANTs (restoring on a server without the same roles).",
        ),
    ] = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Restore a backup into a new database on the same server, then compare row counts.

    Refuses an existing database unless --force, and always refuses the database you are
    connected to. The file's checksum is checked first.

    Example: kronos-db backup restore 42 --target-db kronos_restored
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    if not json:
        notify(f"restoring backup {backup_id} into {target_db}…")
    result = backups.restore_backup(
        target, settings, backup_id, database=target_db, force=force, keep_owners=not no_owner
    )
    if json:
        emit_json(result)
    else:
        replaced = " (replaced)" if result.replaced else ""
        stdout.print(
            f"restored backup {result.backup_id} into {result.database}{replaced}: "
            f"{result.tables_compared} tables, {result.rows_compared} rows, "
            f"{result.seconds:.1f}s"
        )
    if result.problems:
        raise BackupVerificationError(
            f"backup {result.backup_id} restored into {result.database}, but its row counts "
            f"differ: {'; '.join(result.problems[:5])}"
        )


@app.command("verify")
def verify(
    backup_id: Annotated[int, typer.Argument(help="The backup's id (see `backup list`).")],
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Check a backup's size and SHA-256, restore it into a scratch database and compare row counts.

    The scratch database is dropped afterwards and the result recorded in `backups`. Exits 1
    when the backup fails, naming why (missing, truncated, corrupted, restore error, counts).
    Needs CREATEDB.

    Example: kronos-db backup verify 42
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    result = backups.verify_backup(target, settings, backup_id, now=parse_now(now))
    if json:
        emit_json({**_as_dict(result), "message": result.message})
    elif result.passed:
        stdout.print(f"backup {result.backup_id} passed: {result.message} ({result.seconds:.1f}s)")
    if not result.passed:
        raise BackupVerificationError(
            f"backup {result.backup_id} FAILED verification: {result.message}"
        )


def _as_dict(result: backups.VerifyResult) -> dict[str, object]:
    return dataclasses.asdict(result)


@app.command("status")
def status(
    warning: Annotated[
        str | None,
        typer.Option(
            "--warning",
            help="WARNING when the newest verified dump is older "
            "(default: backups.warning_age, 26h).",
            show_default=False,
        ),
    ] = None,
    critical: Annotated[
        str | None,
        typer.Option(
            "--critical",
            help="CRITICAL when the newest verified dump is older "
            "(default: backups.critical_age, 50h).",
            show_default=False,
        ),
    ] = None,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Monitoring check: is there a recent backup that passed verification and whose file
    still matches its record? (health's last_backup gives the same answer.)

    The files are checked on every run, cheaply: size, and the SHA-256 of a file changed since
    it was recorded. Output: the Nagios plugin line with performance data (or --json, the
    document of docs/health.schema.json). Exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    (the check could not run: no connection, a bad option or configuration, a file this host
    cannot see).

    Example: kronos-db backup status --warning 26h --critical 50h
    """
    moment = parse_now(now)
    chosen = OutputFormat.json if json else OutputFormat.text
    database = ""
    try:
        warning_age = _monitoring_duration(warning, "--warning")
        critical_age = _monitoring_duration(critical, "--critical")
        settings = settings_for(config)
        target = target_for(database_url, settings)
        database = target.dbname
        backups.backup_thresholds(settings, warning_age=warning_age, critical_age=critical_age)[
            0
        ].validate()
        with db.connection(target) as conn:
            result = answer_check(
                "last_backup",
                "Kronos: last backup",
                lambda ctx: backups.backup_status(
                    ctx.conn,
                    ctx.settings,
                    now=ctx.now,
                    limits=ctx.limits,
                    warning_age=warning_age,
                    critical_age=critical_age,
                ),
                Context(conn, settings, moment, Limits.from_settings(settings)),
            )
    except KronosError as exc:
        fail_unknown(
            "BACKUP",
            "backup status",
            exc.message,
            output_format=chosen,
            database=database,
            now=moment,
        )
    if chosen is OutputFormat.json:
        emit_json(formats.health_document("backup status", database, moment, (result,)))
    else:
        write(formats.nagios_output("BACKUP", (result,)))
    raise typer.Exit(int(result.status))


def _monitoring_duration(value: str | None, option: str) -> timedelta | None:
    """A duration option of a monitoring command: a bad one is UNKNOWN (exit 3), not 2."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="backup", rich_help_panel="Backups")
