"""``kronos-db roles``, ``kronos-db users`` and ``kronos-db report security``.

Passwords are read from a hidden, confirmed prompt or from stdin (``--password-stdin``), never
from an argument (it would sit in the shell history and in ``ps``).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from kronos_db import db, role_mapping, roles, security
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
from kronos_db.errors import ExitCode, RoleDriftError

roles_app = typer.Typer(
    help="Least privilege: one PostgreSQL role per Kronos service.", no_args_is_help=True
)
users_app = typer.Typer(help="Kronos accounts with Argon2id password hashes.", no_args_is_help=True)

PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from stdin (one line) instead of prompting."
    ),
]


def read_password(from_stdin: bool, *, confirm: bool) -> str:
    """The password from stdin or a hidden prompt; never from the command line."""
    if from_stdin:
        text = sys.stdin.read()
        # one trailing line break is the end of the line, not part of the password
        password = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        if not password:
            raise typer.BadParameter("stdin held no password", param_hint="--password-stdin")
        return password
    if not sys.stdin.isatty():
        raise typer.BadParameter(
            "no terminal to prompt on: pipe the password with --password-stdin",
            param_hint="--password-stdin",
        )
    value = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return str(value)


# --------------------------------------------------------------------------- roles


def _print_drift(drift: tuple[roles.Drift, ...]) -> None:
    for item in drift:
        stdout.print(f"  · {item.describe()}", markup=False)


@roles_app.command("check")
def roles_check(
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Compare the service roles and their privileges with the mapping; exit 6 on any drift.

    Example: kronos-db roles check
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    with db.connection(target) as conn:
        report = roles.check_roles(conn, settings)
    if json:
        emit_json({**_report_dict(report), "in_sync": report.in_sync})
    elif report.in_sync:
        stdout.print(f"{report.database}: the {len(report.roles)} roles match the mapping")
    else:
        stdout.print(f"{report.database}: {len(report.drift)} difference(s) from the mapping:")
        _print_drift(report.drift)
    if not report.in_sync:
        raise typer.Exit(ExitCode.DRIFT)


def _report_dict(report: roles.RolesReport) -> dict[str, object]:
    return {"database": report.database, "roles": report.roles, "drift": report.drift}


@roles_app.command("apply")
def roles_apply(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change.")] = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Create the mapping's roles and grant exactly the mapping, revoking anything beyond it.

    Idempotent: a second run changes nothing. Passwords are not set (see docs/security.md).
    Exits 6 when something could not be fixed.

    Example: kronos-db roles apply
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    with db.connection(target) as conn:
        result = roles.apply_roles(conn, settings, dry_run=dry_run)
    if json:
        emit_json(result)
    elif not result.changes:
        if stdout.is_terminal:  # quiet for CI and cron when there is nothing to do
            stdout.print(f"{result.database}: the roles already match the mapping")
    else:
        verb = "would change" if dry_run else "changed"
        stdout.print(f"{result.database}: {verb} {len(result.changes)} thing(s):")
        _print_drift(result.changes)
    if result.skipped:
        notify(
            f"{len(result.skipped)} change(s) need CREATEROLE or a superuser, which this role "
            "lacks: run `kronos-db bootstrap` as a superuser (roles, memberships, ownership)"
        )
    if result.remaining:
        raise RoleDriftError(
            f"{len(result.remaining)} difference(s) remain after apply: "
            + "; ".join(d.describe() for d in result.remaining[:5])
        )


@roles_app.command("show")
def roles_show(
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Print the mapping: each service's role and its privileges.

    Example: kronos-db roles show
    """
    settings = settings_for(config)
    mapping = role_mapping.load_mapping(settings)
    if json:
        emit_json(mapping)
        return
    stdout.print(f"mapping: {mapping.source} (schema {mapping.schema})", markup=False)
    table = Table("role", "table", "privileges", "what for")
    every: list[role_mapping.ServiceRole | role_mapping.ToolkitRole] = [
        *mapping.services,
        *mapping.toolkit,
    ]
    for role in every:
        extra = (
            [f"member of {', '.join(role.member_of)}"]
            if isinstance(role, role_mapping.ToolkitRole) and role.member_of
            else []
        )
        if isinstance(role, role_mapping.ToolkitRole) and role.kind == "owner":
            extra.append(f"owns every object of schema {mapping.schema}")
        rows = [(name, ", ".join(p)) for name, p in sorted(role.tables.items())]
        rows += [("", line) for line in extra] or ([] if rows else [("", "")])
        for index, (name, privileges) in enumerate(rows):
            table.add_row(
                role.role if index == 0 else "",
                name,
                privileges,
                role.description if index == 0 else "",
            )
    stdout.print(table)
    if mapping.extensions:
        stdout.print(f"bootstrap creates: {', '.join(mapping.extensions)}", markup=False)
    grants = "; ".join(
        f"{role}: {', '.join(privileges)}" for role, privileges in mapping.partitions.grants.items()
    )
    owner = mapping.partitions.owner or "the partitioned table's owner"
    granted = grants or "nothing (services go through the partitioned table)"
    stdout.print(f"partitions: owned by {owner}, granted {granted}", markup=False)


# --------------------------------------------------------------------------- users


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="The account's username.")],
    email: Annotated[str, typer.Option("--email", help="The account's email.", show_default=False)],
    role: Annotated[
        str | None,
        typer.Option("--role", help="Name of a row of the roles table.", show_default=False),
    ] = None,
    password_stdin: PasswordStdinOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Create an account; its password (prompted, or --password-stdin) is stored as Argon2id.

    Example: kronos-db users create alice --email alice@example.com --role admin
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    password = read_password(password_stdin, confirm=True)
    with db.connection(target) as conn:
        account = security.create_user(
            conn, settings, username=username, email=email, password=password, role=role
        )
    if json:
        emit_json(account)
        return
    stdout.print(f"created user {account.username} (id {account.id})", markup=False)


@users_app.command("set-password")
def users_set_password(
    username: Annotated[str, typer.Argument(help="The account's username.")],
    password_stdin: PasswordStdinOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Replace an account's password with a new Argon2id hash.

    Example: kronos-db users set-password alice
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    password = read_password(password_stdin, confirm=True)
    with db.connection(target) as conn:
        account = security.set_password(conn, settings, username=username, password=password)
    stdout.print(f"password of {account.username} replaced", markup=False)


@users_app.command("verify")
def users_verify(
    username: Annotated[str, typer.Argument(help="The account's username.")],
    password_stdin: PasswordStdinOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Check a password against an account's stored hash: exit 0 when it matches, 1 otherwise.

    Example: kronos-db users verify alice
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    password = read_password(password_stdin, confirm=False)
    with db.connection(target) as conn:
        result = security.verify_password(conn, settings, username=username, password=password)
    if not result.matches:
        notify(f"the password does not match {result.username}'s")
        raise typer.Exit(ExitCode.FAILED)
    stdout.print(f"the password matches {result.username}'s", markup=False)
    if result.needs_rehash:
        notify("its hash uses older Argon2 parameters: `users set-password` rehashes it")


# --------------------------------------------------------------------------- report

_SEVERITY_STYLE = {"ok": "green", "warning": "yellow", "critical": "bold red", "unknown": "dim"}


def security_report(
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Superusers, trust logins, passwordless roles, PUBLIC privileges, extensions, settings.

    Monitoring-style exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (a check needs more
    privileges than the connected role has).

    Example: kronos-db report security --json
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    with db.connection(target) as conn:
        report = security.security_report(conn, settings)
    if json:
        emit_json(
            {"database": report.database, "status": report.status, "findings": report.findings}
        )
    else:
        stdout.print(f"{report.database}: security {report.status.upper()}")
        for finding in report.findings:
            style = _SEVERITY_STYLE[finding.severity]
            stdout.print(
                f"[{style}]{finding.severity.upper():8}[/{style}] {finding.check}: ", end=""
            )
            stdout.print(finding.summary, markup=False)
            for detail in finding.details:
                stdout.print(f"           {detail}", markup=False)
    raise typer.Exit(report.exit_code)


def bootstrap(
    create_db: Annotated[
        bool, typer.Option("--create-db", help="Create the database when it does not exist.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change.")] = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Once, as a superuser: the extensions, kronos-db's own roles, ownership, the grants.

    Creates the owner, maintenance and monitoring roles and the service roles of the mapping,
    the extensions only a superuser may create, and hands every object of the schema to the
    owner. Afterwards migrate, maintain and health run without a superuser (docs/roles.md).
    Idempotent.

    Example: kronos-db bootstrap --database-url postgresql://postgres@db/kronos
    """
    from kronos_db import bootstrap as setup

    settings = settings_for(config)
    target = target_for(database_url, settings)
    result = setup.bootstrap(target, settings, create_database=create_db, dry_run=dry_run)
    if json:
        emit_json(result)
    else:
        verb = "would" if dry_run else "did"
        if result.created_database:
            stdout.print(f"{result.database}: created the database")
        for name in result.extensions_created:
            stdout.print(f"{result.database}: {verb} create extension {name}", markup=False)
        for name in result.extensions_unavailable:
            notify(f"extension {name} is not available on this server: left out")
        if result.public_create_revoked:
            stdout.print(f"{result.database}: {verb} revoke CREATE on the schema from PUBLIC")
        changes = result.applied.changes
        if changes:
            stdout.print(f"{result.database}: {verb} change {len(changes)} thing(s):")
            _print_drift(changes)
        if result.pending_table_grants:
            notify(
                f"{len(result.pending_table_grants)} table grant(s) wait for their tables: run "
                "`kronos-db migrate` then `kronos-db roles apply` as the owner"
            )
    others = [d for d in result.applied.remaining if d.kind != "missing table"]
    if others:
        raise RoleDriftError(
            f"{len(others)} difference(s) remain after bootstrap: "
            + "; ".join(d.describe() for d in others[:5])
        )


def register(app: typer.Typer) -> None:
    app.command("bootstrap", rich_help_panel="Security")(bootstrap)
    app.add_typer(roles_app, name="roles", rich_help_panel="Security")
    app.add_typer(users_app, name="users", rich_help_panel="Security")
    # `report security` sits with the other reports (kronos_db.cli.reports registers it)
