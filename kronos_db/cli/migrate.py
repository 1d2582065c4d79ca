"""Commands that move the schema: migrate, downgrade, status, history, check, revision.

``kronos_db.migrations`` and ``kronos_db.schema`` pull in Alembic and SQLAlchemy (about 200 ms
of imports); they are imported inside the commands, so that a cron job running another command
does not pay for them at every start.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from kronos_db import db
from kronos_db.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    duration_option,
    emit_json,
    notify,
    settings_for,
    stdout,
    target_for,
)
from kronos_db.config import Settings
from kronos_db.errors import ConnectionFailedError, ExitCode, MigrationTreeError

if TYPE_CHECKING:
    from kronos_db import migrations, rehearse

LockTimeoutOption = Annotated[
    str | None,
    typer.Option(
        "--lock-timeout",
        help="lock_timeout for DDL, e.g. 500ms (default: from the configuration, 500ms; "
        "0 is refused: it would wait forever).",
        show_default=False,
        rich_help_panel="Safety",
    ),
]
LockWaitOption = Annotated[
    str | None,
    typer.Option(
        "--lock-wait",
        help="How long to wait for another run's migration lock, e.g. 5m.",
        show_default=False,
        rich_help_panel="Safety",
    ),
]
RetriesOption = Annotated[
    int | None,
    typer.Option(
        "--retries",
        min=0,
        help="Retry a revision that hit lock_timeout this many times, with jittered back-off, "
        "within migrations.retry_budget (default: from the configuration, 30).",
        show_default=False,
        rich_help_panel="Safety",
    ),
]


def _settings(
    config: Path | None,
    *,
    lock_timeout: str | None = None,
    lock_wait: str | None = None,
    retries: int | None = None,
) -> Settings:
    overrides: dict[str, tuple[Any, str]] = {
        "migrations.lock_timeout": (lock_timeout, "option --lock-timeout"),
        "migrations.lock_wait": (lock_wait, "option --lock-wait"),
        "migrations.retries": (retries, "option --retries"),
    }
    # validate the durations as options first, so that the error names the option
    duration_option(lock_timeout)
    duration_option(lock_wait)
    return settings_for(config, overrides)


def _print_steps(result: migrations.MigrationResult) -> None:
    for step in result.steps:
        arrow = "↑" if step.direction == "upgrade" else "↓"
        stdout.print(
            f"  {arrow} {step.revision}  {step.description}  "
            f"[dim]({step.seconds * 1000:.0f} ms)[/dim]"
        )


def _at(revisions: tuple[str, ...]) -> str:
    return ", ".join(revisions) or "base (empty)"


def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision: head, an id, or +N.")] = "head",
    create_db: Annotated[
        bool, typer.Option("--create-db", help="Create the database when it does not exist.")
    ] = False,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it (offline mode).")
    ] = False,
    from_revision: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="With --sql: the revision to start from (default: the "
            "database's current revision; without a reachable database, --from is required).",
            show_default=False,
        ),
    ] = None,
    rehearse: Annotated[
        bool,
        typer.Option(
            "--rehearse",
            help="Apply the pending revisions to a scratch copy under a synthetic Kronos "
            "workload instead, and report the services' worst stalls, the locks and rewrites; "
            "exit 8 when a stall passes --max-stall.",
            rich_help_panel="Safety",
        ),
    ] = False,
    max_stall: Annotated[
        str | None,
        typer.Option(
            "--max-stall",
            help="With --rehearse: the longest a service statement may wait, e.g. 1s "
            "(default: rehearse.max_stall, 1s).",
            show_default=False,
            rich_help_panel="Safety",
        ),
    ] = None,
    lock_timeout: LockTimeoutOption = None,
    lock_wait: LockWaitOption = None,
    retries: RetriesOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Apply migrations up to REVISION (head by default), under the migration lock.

    Pending revisions not released yet are linted first against the live tables (docs/lint.md);
    --rehearse tries them on a scratch copy under load instead of applying them.

    Example: kronos-db migrate --create-db
    """
    from kronos_db import migrations

    settings = _settings(config, lock_timeout=lock_timeout, lock_wait=lock_wait, retries=retries)
    if rehearse:
        _rehearse(settings, database_url, revision, duration_option(max_stall), json)
        return
    if sql:
        start = from_revision
        if start is None:
            target = target_for(database_url, settings)
            try:
                with db.connection(target) as conn:
                    current = migrations.current_revisions(conn)
            except ConnectionFailedError as exc:
                # rendering from base would print every revision as if the database were
                # empty: a script that fails (or worse) where it is run. Never guess.
                raise type(exc)(
                    f"{exc.message}; --sql reads the database's revision to start from: "
                    "pass --from REVISION (base for an empty database) to render without it"
                ) from exc
            if len(current) > 1:
                raise MigrationTreeError(
                    f"the database is at several revisions ({', '.join(current)}): "
                    "pass --from to say which one the script starts from"
                )
            start = current[0] if current else "base"
        typer.echo(migrations.render_sql(settings, revision, from_revision=start), nl=False)
        return
    target = target_for(database_url, settings)
    result = migrations.upgrade(
        settings, target, revision, create_database=create_db, notify=notify
    )
    if json:
        emit_json(result)
        return
    if result.created_database:
        stdout.print(f"created database {target.dbname}")
    if not result.steps:
        stdout.print(f"{result.database}: already at {_at(result.after)}, nothing to do")
        return
    stdout.print(f"{result.database}: {_at(result.before)} → {_at(result.after)}")
    _print_steps(result)


def _rehearse(
    settings: Settings,
    database_url: str | None,
    revision: str,
    max_stall: timedelta | None,
    json: bool,
) -> None:
    from kronos_db import rehearse

    target = target_for(database_url, settings)
    report = rehearse.rehearse(settings, target, revision, max_stall=max_stall, notify=notify)
    if json:
        emit_json({**dataclasses.asdict(report), "failed": report.failed})
    else:
        _print_rehearsal(report)
    if report.failed:
        raise typer.Exit(ExitCode.UNSAFE)


# lock modes that conflict with the services' ROW EXCLUSIVE (inserts, updates, deletes)
_BLOCKS_WRITES = {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}


def _print_rehearsal(report: rehearse.RehearsalReport) -> None:
    if not report.revisions:
        stdout.print(f"{report.database}: nothing pending, nothing to rehearse")
        return
    sampled = [c for c in report.copied if c.sampled]
    rows = sum(c.copied_rows for c in report.copied)
    copy = f"{len(report.copied)} tables, {rows:,} rows"
    if sampled:
        copy += ", sampled: " + ", ".join(
            f"{c.table} {c.copied_rows:,} of ~{c.estimated_rows:,}" for c in sampled
        )
    stdout.print(
        f"rehearsal on a copy of {report.database} ({copy}); workload {report.rate:g} "
        f"statements/s of each kind; bound {report.max_stall_ms:.0f} ms",
        markup=False,
    )
    for step in report.revisions:
        verdict = "[bold red]FAILED[/]" if step.failed else "[green]ok[/]"
        stdout.print(
            f"\n{verdict} {step.revision} {step.description}  ({step.seconds:.1f} s, "
            f"{step.attempts} attempt(s))"
        )
        if step.error:
            stdout.print(f"  the revision failed: {step.error}", markup=False)
        stalls = " · ".join(
            f"{s.kind} {s.worst_ms:.0f} ms" + (f" ({s.errors} failed)" if s.errors else "")
            for s in step.stalls
        )
        stdout.print(f"  worst wait: {stalls or 'no statement ran'}", markup=False)
        for stall in step.stalls:
            if stall.first_error:
                stdout.print(f"  {stall.kind} failed: {stall.first_error}", markup=False)
        strong = [lock for lock in step.locks if lock.mode in _BLOCKS_WRITES]
        if strong:
            held = "; ".join(
                f"{lock.relation} {lock.mode} {lock.held_ms:.0f} ms"
                + (f" (taken {lock.times} times)" if lock.times > 1 else "")
                + (f", {lock.most_waiting} waiting" if lock.most_waiting else "")
                for lock in strong[:8]
            )
            stdout.print(f"  locks that block writes: {held}", markup=False)
        stdout.print(f"  tables rewritten: {', '.join(step.rewritten) or 'none'}", markup=False)


def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision: an id, -N, or base.")],
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it (needs --from).")
    ] = False,
    from_revision: Annotated[
        str | None,
        typer.Option("--from", help="With --sql: the revision to start from.", show_default=False),
    ] = None,
    drop_data: Annotated[
        bool,
        typer.Option(
            "--drop-data",
            help="Let the downgrade drop tables and columns that hold rows (refused otherwise, "
            "listing them with their row counts).",
            rich_help_panel="Safety",
        ),
    ] = False,
    lock_timeout: LockTimeoutOption = None,
    lock_wait: LockWaitOption = None,
    retries: RetriesOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Revert migrations down to REVISION; `base` removes every Kronos object.

    A downgrade that would drop a table or a column holding rows is refused, listing each with
    its row count, unless --drop-data is given.

    Example: kronos-db downgrade -1
    """
    from kronos_db import migrations

    settings = _settings(config, lock_timeout=lock_timeout, lock_wait=lock_wait, retries=retries)
    if sql:
        if from_revision is None:
            raise typer.BadParameter("--sql needs --from REVISION", param_hint="--from")
        typer.echo(
            migrations.render_sql(
                settings, revision, from_revision=from_revision, downgrade_to=True
            ),
            nl=False,
        )
        return
    target = target_for(database_url, settings)
    result = migrations.downgrade(settings, target, revision, drop_data=drop_data, notify=notify)
    if json:
        emit_json(result)
        return
    if not result.steps:
        stdout.print(f"{result.database}: already at {_at(result.after)}, nothing to do")
        return
    stdout.print(f"{result.database}: {_at(result.before)} → {_at(result.after)}")
    _print_steps(result)


def status(
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Show the current revision and the pending ones.

    Exits 5 when revisions are pending (so CI can gate on it) and 7 when an applied
    migration's SQL file was edited afterwards.

    Example: kronos-db status --json
    """
    from kronos_db import migrations

    settings = settings_for(config)
    target = target_for(database_url, settings)
    result = migrations.status(settings, target)
    if json:
        emit_json({**dataclasses.asdict(result), "up_to_date": result.up_to_date})
    else:
        stdout.print(f"database: {result.database}")
        if result.not_adopted:
            stdout.print(f"not under kronos-db: {result.not_adopted}", markup=False)
        stdout.print(f"current:  {_at(result.current)}")
        stdout.print(f"head:     {result.head}")
        if result.pending:
            stdout.print(f"pending:  {len(result.pending)} revision(s)")
            for info in result.pending:
                partial = f"  [{info.partial}]" if info.partial else ""
                stdout.print(f"  · {info.revision}  {info.description}{partial}", markup=False)
        else:
            stdout.print("pending:  none, the database is at head")
        if result.branches:
            notify(f"note: {result.branches}")
    for problem in result.checksum_problems:
        notify(f"error: {problem.describe()}")
    if result.checksum_problems:
        raise typer.Exit(ExitCode.CHECKSUM)
    if result.pending:
        raise typer.Exit(ExitCode.PENDING)


def history(
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """List every revision, oldest first, and whether the database has it.

    Example: kronos-db history
    """
    from kronos_db import migrations

    settings = settings_for(config)
    target = target_for(database_url, settings)
    revisions = migrations.history(settings, target)
    if json:
        emit_json(revisions)
        return
    table = Table("revision", "applied", "description", "SQL file")
    for info in revisions:
        applied = (
            (info.applied_at.strftime("%Y-%m-%d %H:%M") if info.applied_at else "yes")
            if info.applied
            else "—"
        )
        table.add_row(info.revision, applied, info.description, info.sql_file)
    stdout.print(table)


def check(
    reference_url: Annotated[
        str | None,
        typer.Option(
            "--reference-url",
            help="Build head's schema in this (empty, scratch) "
            "database instead of a temporary one on the same server.",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Compare the live schema with what head defines; exit 6 listing each difference.

    Head's schema comes from the snapshot shipped with kronos-db, so check reads catalogs only
    (as the owner, or on a standby). A migration tree with revisions of its own, or another
    PostgreSQL major version, builds it in a temporary database on the same server instead
    (dropped afterwards; needs CREATEDB), or in the one --reference-url names.

    Example: kronos-db check
    """
    from kronos_db import schema

    settings = settings_for(config)
    target = target_for(database_url, settings)
    reference = target_for(reference_url, settings) if reference_url else None
    report = schema.check(settings, target, reference=reference, notify=notify)
    if json:
        emit_json(
            {
                **dataclasses.asdict(report),
                # a changed function or view, as a PR bot would show it
                "differences": [
                    {**dataclasses.asdict(d), "diff": d.diff() if d.change == "changed" else []}
                    for d in report.differences
                ],
            }
        )
    elif report.differences:
        stdout.print(
            f"{report.database}: {len(report.differences)} difference(s) from head ({report.head}):"
        )
        for difference in report.differences:
            stdout.print(f"  · {difference.describe()}", markup=False)
    else:
        stdout.print(f"{report.database}: the schema matches head ({report.head})")
    if not json:
        for note in report.notes:
            stdout.print(f"  note: {note}", markup=False)
    if report.differences:
        raise typer.Exit(ExitCode.DRIFT)


def revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the revision does.")],
    config: ConfigOption = None,
) -> None:
    """Write a new revision: its Alembic file and an empty upgrade/downgrade SQL pair.

    Example: kronos-db revision -m "add last_active_at to sessions"
    """
    from kronos_db import migrations

    settings = settings_for(config)
    created = migrations.create_revision(settings, message)
    _print_new_revision(created, f"after {created.down_revision or 'base'}")
    _lint_unreleased(settings)


def _print_new_revision(created: migrations.NewRevision, relation: str) -> None:
    stdout.print(f"revision {created.revision} ({relation}):")
    for path in created.files:
        stdout.print(f"  {path}")


def _lint_unreleased(settings: Settings) -> None:
    """At `revision` time: what lint says of the revisions not released yet (the work in
    progress the new revision follows), as warnings on stderr; `migrate` and CI enforce it."""
    from kronos_db import lint, migrations
    from kronos_db.lint import LintError

    tree = migrations.MigrationTree.from_settings(settings)
    try:
        fresh = lint.unreleased(settings, [s.revision for s in tree.revisions()])
        report = lint.lint_revisions(settings, revisions=fresh)
    except LintError as exc:
        notify(f"lint did not run: {exc.message}")
        return
    for finding in report.findings:
        if finding.level in {"error", "warning"}:
            notify(f"lint: {lint.describe(finding)}")


def merge(
    message: Annotated[str, typer.Option("-m", "--message", help="What the merge joins.")],
    config: ConfigOption = None,
) -> None:
    """Join the heads of a branched migration tree with a new, empty revision.

    Two people who each wrote a revision after the same parent leave two heads; `migrate`
    then refuses to guess an order. The merge revision has both as parents (Alembic's merge)
    and its SQL pair runs nothing.

    Example: kronos-db merge -m "merge 0011 and 0012"
    """
    from kronos_db import migrations

    settings = settings_for(config)
    created = migrations.merge_heads(settings, message)
    _print_new_revision(created, f"merges {created.down_revision}")


def register(app: typer.Typer) -> None:
    # relative revisions (-1) look like options: let them through as the argument
    relative = {"ignore_unknown_options": True}
    app.command(rich_help_panel="Migrations", context_settings=relative)(migrate)
    app.command(rich_help_panel="Migrations", context_settings=relative)(downgrade)
    for command in (status, history, check, revision, merge):
        app.command(rich_help_panel="Migrations")(command)
