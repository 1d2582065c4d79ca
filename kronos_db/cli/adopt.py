"""Commands that take a database built outside kronos-db under it: adopt, stamp, quarantine.

The library (``kronos_db.adopt``, ``kronos_db.baseline``) plans and does the work; these
commands parse, call and render. ``kronos_db.adopt`` pulls in Alembic, so it is imported inside
the commands.
"""

from __future__ import annotations

import json as json_module
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kronos_db.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    NowOption,
    duration_option,
    emit_json,
    notify,
    parse_now,
    settings_for,
    stdout,
    target_for,
)
from kronos_db.config import Settings
from kronos_db.errors import ExitCode

if TYPE_CHECKING:
    from kronos_db.adopt import AdoptionPlan, AdoptionResult

RuleOption = Annotated[
    list[str] | None,
    typer.Option(
        metavar="RULE",
        help="A rule (a constraint head adds) whose breaking rows to treat this way; repeat it.",
        show_default=False,
        rich_help_panel="Rows that break head's rules",
    ),
]


def _settings(config: Path | None, lock_timeout: str | None, retries: int | None) -> Settings:
    duration_option(lock_timeout)
    return settings_for(
        config,
        {
            "adopt.lock_timeout": (lock_timeout, "option --lock-timeout"),
            "adopt.retries": (retries, "option --retries"),
        },
    )


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"~{max(seconds * 1000, 1):.0f} ms"
    if seconds < 120:
        return f"~{seconds:.1f} s"
    return f"~{seconds / 60:.1f} min"


def _render_plan(plan: AdoptionPlan, show_sql: bool) -> None:
    stdout.print(
        f"{plan.database}: adoption into revision {plan.revision} (head {plan.head})",
        markup=False,
    )
    stdout.print(f"history: {plan.history}", markup=False)
    if plan.adopted:
        stdout.print("nothing to adopt: kronos-db manages this database (use kronos-db migrate)")
        return
    facts = plan.timestamps
    if facts.naive_columns:
        columns = ", ".join(facts.naive_columns)
        if facts.timestamps_in is None:
            how = (
                "--apply needs --timestamps-in ZONE, the zone the services wrote them in "
                f"(this session's TimeZone is {facts.session_time_zone}"
                + (
                    f", the database sets {facts.database_time_zone}"
                    if facts.database_time_zone
                    else ", the database sets none"
                )
                + "; kronos-db never guesses)"
            )
        elif facts.in_place:
            how = f"read as {facts.timestamps_in}: converted in place, no table rewrite"
        else:
            how = (
                f"read as {facts.timestamps_in}: converted through shadow columns filled in "
                "batches (a zone other than UTC changes every stored value)"
            )
        stdout.print(
            f"timestamps: {len(facts.naive_columns)} naive column(s) ({columns}); {how}",
            markup=False,
        )
    for blocker in plan.blockers:
        stdout.print(f"cannot adopt: {blocker}", markup=False)
    for warning in plan.warnings:
        stdout.print(f"warning: {warning}", markup=False)
    if plan.violations:
        total = sum(v.count for v in plan.violations)
        stdout.print(
            f"\nRows that break head's rules ({len(plan.violations)} rule(s), {total} row(s));"
            " --apply changes none of them without your choice:"
        )
        for v in plan.violations:
            stdout.print(
                f"  {v.rule} on {v.table}: {v.count} row(s): {v.description}", markup=False
            )
            for row in v.sample:
                shown = ", ".join(
                    f"{k}={json_module.dumps(val, default=str)}" for k, val in row.items()
                )
                stdout.print(f"      e.g. {shown}", markup=False)
            if v.dependents:
                refs = ", ".join(f"{d.table}: {d.rows} row(s)" for d in v.dependents)
                stdout.print(
                    f"      referenced by {refs} (a quarantine moves them too)", markup=False
                )
            if v.fix:
                repairs = (
                    f"repairs {v.fixable} of {v.count}" if v.fixable < v.count else "repairs all"
                )
                stdout.print(f"      --fix {v.rule}: {v.fix} ({repairs})", markup=False)
                stdout.print(f"          {v.fix_sql}", markup=False)
            else:
                stdout.print("      no automatic fix", markup=False)
            stdout.print(
                f"      --quarantine {v.rule}: moved to kronos_quarantine, restorable", markup=False
            )
            stdout.print(f"          {v.quarantine_sql}", markup=False)
            stdout.print(f"      find them: {v.select_sql}", markup=False)
    pending = plan.pending
    if not plan.blockers:
        longest = plan.longest_lock
        summary = f"{len(pending)} of {len(plan.steps)} pending, {_duration(plan.expected_seconds)}"
        if longest is not None:
            summary += (
                f"; longest lock that stops writes {_duration(longest.lock_seconds)} "
                f"(step {longest.number}: {longest.description})"
            )
        stdout.print(f"\nSteps ({summary}):", markup=False)
        for step in pending:
            blocks = (
                f"stops writes {_duration(step.lock_seconds)}"
                if step.blocks_writes
                else "writes go on"
            )
            stdout.print(f"  {step.number:>3}  {step.table:<14} {step.description}", markup=False)
            stdout.print(
                f"       {'':<14} lock: {step.lock} ({blocks}); expected "
                f"{_duration(step.expected_seconds)}",
                markup=False,
            )
        if show_sql:
            for step in pending:
                stdout.print(f"-- step {step.number}: {step.description}", markup=False)
                for statement in step.sql:
                    stdout.print(f"{statement};", markup=False)
        stdout.print(
            f"then: compare the schema with revision {plan.revision}'s, record it with its "
            f"checksums, apply later revisions, rotate the log partitions (moving "
            f"~{plan.logs_default_rows:,} row(s) out of the default partition), check",
            markup=False,
        )


def _render_result(result: AdoptionResult) -> None:
    if result.already_adopted:
        stdout.print(f"{result.database}: already under kronos-db; nothing to adopt", markup=False)
    else:
        stdout.print(
            f"{result.database}: adopted at revision {result.revision} in {result.seconds:.1f} s",
            markup=False,
        )
    for step in result.steps:
        lock = f", lock {step.lock_seconds * 1000:.0f} ms" if step.blocks_writes else ""
        detail = f" — {step.detail}" if step.detail else ""
        stdout.print(
            f"  {step.number:>3}  {step.description}{detail} ({step.seconds * 1000:.0f} ms{lock})",
            markup=False,
        )
    longest = result.longest_lock
    if longest is not None:
        stdout.print(
            f"longest lock that stopped writes: {longest.lock_seconds * 1000:.0f} ms "
            f"(step {longest.number}: {longest.description})",
            markup=False,
        )
    if result.stamped:
        stdout.print(
            f"recorded revisions {result.stamped[0]}…{result.stamped[-1]} with their checksums"
        )
    if result.migrated:
        stdout.print(f"then applied {', '.join(result.migrated)}")
    if result.rotated:
        stdout.print(
            f"rotation: {result.rotation_steps} step(s), {result.rotation_rows_moved:,} row(s) "
            "moved out of the default partition"
        )
    else:
        stdout.print("rotation: left to the next `kronos-db partitions rotate`")
    for failure in result.rotation_failures:
        notify(f"rotation: {failure} (the next `kronos-db partitions rotate` goes on)")
    if result.check_differences:
        stdout.print(f"check: {len(result.check_differences)} difference(s) from head:")
        for difference in result.check_differences:
            stdout.print(f"  · {difference.describe()}", markup=False)
    else:
        stdout.print("check: the schema matches head")


def adopt(
    plan_only: Annotated[
        bool,
        typer.Option(
            "--plan", help="Show what --apply would do (the default).", show_default=False
        ),
    ] = False,
    apply: Annotated[
        bool, typer.Option("--apply", help="Do it: every step, resumable, then stamp.")
    ] = False,
    timestamps_in: Annotated[
        str | None,
        typer.Option(
            "--timestamps-in",
            metavar="ZONE",
            help="The time zone the services wrote the naive timestamps in (UTC converts them "
            "in place). Required by --apply while such columns remain; never guessed.",
            show_default=False,
        ),
    ] = None,
    fix: RuleOption = None,
    quarantine: RuleOption = None,
    show_sql: Annotated[
        bool, typer.Option("--show-sql", help="With --plan: print each step's SQL.")
    ] = False,
    rotate: Annotated[
        bool,
        typer.Option(
            "--rotate/--no-rotate",
            help="After the stamp, run `partitions rotate` to start moving the old logs out "
            "of the default partition (--no-rotate: leave it to cron's next rotation).",
        ),
    ] = True,
    lock_timeout: Annotated[
        str | None,
        typer.Option(
            "--lock-timeout",
            help="lock_timeout of each step, e.g. 2s (default: adopt.lock_timeout).",
            show_default=False,
            rich_help_panel="Safety",
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            "--retries",
            min=0,
            help="Retries of a step that hit lock_timeout (default: adopt.retries).",
            show_default=False,
            rich_help_panel="Safety",
        ),
    ] = None,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Take over a Kronos database built outside kronos-db (the original design's DDL).

    --plan (the default) reads the database and prints every step with the lock it takes and
    its expected duration, and every row that breaks a rule head adds: a count, a sample, the
    SQL to fix or quarantine them. --apply does it in place, with the services running, and
    can be killed and rerun at any point; it ends by recording the revision and `check`.

    Rows head refuses are never deleted silently: choose per rule --fix RULE or
    --quarantine RULE (kept in kronos_quarantine, `kronos-db quarantine restore`).

    Example: kronos-db adopt --apply --timestamps-in UTC --quarantine users_password_hash_argon2
    """
    from kronos_db import adopt as library

    if plan_only and apply:
        raise typer.BadParameter("--plan and --apply exclude each other", param_hint="--apply")
    settings = _settings(config, lock_timeout, retries)
    target = target_for(database_url, settings)
    fix_rules, quarantine_rules = tuple(fix or ()), tuple(quarantine or ())
    if not apply:
        plan = library.plan(
            settings,
            target,
            timestamps_in=timestamps_in,
            fix=fix_rules,
            quarantine=quarantine_rules,
        )
        if json:
            emit_json(
                {
                    **_asdict(plan),
                    "expected_seconds": plan.expected_seconds,
                    "longest_lock": _asdict(plan.longest_lock),
                }
            )
        else:
            _render_plan(plan, show_sql)
        if plan.blockers:
            raise typer.Exit(ExitCode.FAILED)
        return
    result = library.apply(
        settings,
        target,
        now=parse_now(now),
        timestamps_in=timestamps_in,
        fix=fix_rules,
        quarantine=quarantine_rules,
        rotate=rotate,
        notify=notify,
    )
    if json:
        emit_json({**_asdict(result), "longest_lock": _asdict(result.longest_lock)})
    else:
        _render_result(result)
    if result.check_differences:
        raise typer.Exit(ExitCode.DRIFT)


def _asdict(value: Any) -> Any:
    import dataclasses

    return dataclasses.asdict(value) if value is not None else None


def stamp(
    revision: Annotated[str, typer.Argument(help="The revision to record: an id, head or base.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Record it even though the live schema differs from the revision's.",
            rich_help_panel="Safety",
        ),
    ] = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Record REVISION as applied without running it (for experts; prefer `adopt`).

    The live schema is compared with the revision's first (a scratch database is migrated
    to it); when they differ the stamp is refused with exit 6, listing the differences, unless
    --force. The checksums of every revision up to it are recorded too.

    Example: kronos-db stamp head
    """
    from kronos_db import baseline

    settings = settings_for(config)
    target = target_for(database_url, settings)
    result = baseline.stamp(settings, target, revision, force=force, notify=notify)
    if json:
        emit_json(result)
        return
    before = ", ".join(result.before) or "base"
    stdout.print(f"{result.database}: stamped {result.revision} (was {before})", markup=False)
    for difference in result.differences:
        notify(f"warning: forced past: {difference.describe()}")


quarantine_app = typer.Typer(
    help="The rows `adopt` moved out of their tables (restorable) or changed (kept for the "
    "record).\n\nExample: kronos-db quarantine list",
    no_args_is_help=True,
)


@quarantine_app.command("list")
def quarantine_list(
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """List what kronos_quarantine holds, oldest first.

    Example: kronos-db quarantine list --json
    """
    from kronos_db.adopt import quarantine as library

    settings = settings_for(config)
    rows = library.list_rows(target_for(database_url, settings))
    if json:
        emit_json(rows)
        return
    if not rows:
        stdout.print("kronos_quarantine is empty")
        return
    for row in rows:
        text = json_module.dumps(row.row_data, default=str)
        stdout.print(
            f"{row.id:>6}  {row.action:<11} {row.table_name}  {row.rule}  batch {row.batch[:8]}  "
            f"{row.moved_at:%Y-%m-%d %H:%M}",
            markup=False,
        )
        stdout.print(f"        {text if len(text) <= 200 else text[:199] + '…'}", markup=False)


@quarantine_app.command("restore")
def quarantine_restore(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Quarantined row ids (their whole batch goes back).")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Restore every quarantined batch.")
    ] = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Put quarantined rows back in their tables, a batch per transaction, parents first.

    A batch whose rows still break a rule stays in quarantine (exit 1, saying why): fix the
    row's data in kronos_quarantine.row_data, or the rule's cause, and restore it again.

    Example: kronos-db quarantine restore 12
    """
    from kronos_db.adopt import quarantine as library

    settings = settings_for(config)
    results = library.restore(
        target_for(database_url, settings), ids or (), everything=everything, notify=notify
    )
    if json:
        emit_json(results)
    else:
        for result in results:
            if result.error:
                continue
            stdout.print(
                f"restored batch {result.batch[:8]}: {result.rows} row(s) into "
                f"{', '.join(result.tables)}"
            )
    if any(r.error for r in results):
        raise typer.Exit(ExitCode.FAILED)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Migrations")(adopt)
    app.command(rich_help_panel="Migrations")(stamp)
    app.add_typer(quarantine_app, name="quarantine", rich_help_panel="Migrations")
