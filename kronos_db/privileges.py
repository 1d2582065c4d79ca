"""What a permission error means: the privilege that is missing, and the GRANT that gives it.

PostgreSQL says ``permission denied for table sessions`` without saying which privilege was
missing. The roles mapping knows what kronos-db's own roles (owner, maintenance, monitoring)
hold on each table; the catalog knows what the connected role lacks of it. The difference is
the GRANT to name. Other refusals (an extension only a superuser may create, an object another
role owns, a schema, a database) have their own fix, named the same way. ``health`` and the
reports already name theirs (``kronos_db.reports.runner``); this is the same for every other
command, applied once, where database errors are translated (:func:`kronos_db.db.database_error`).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from kronos_db import role_mapping
from kronos_db.config import Settings
from kronos_db.errors import ConfigError
from kronos_db.resources import query

_RELATION = re.compile(
    r"permission denied for (?P<kind>table|view|materialized view|sequence) (?P<name>\S+)"
)
_SCHEMA = re.compile(r"permission denied for schema (?P<name>\S+)")
_DATABASE = re.compile(r"permission denied for database (?P<name>\S+)")
_FUNCTION = re.compile(r"permission denied for (?:function|procedure) (?P<name>\S+)")
_OWNER = re.compile(r"must be owner of (?P<kind>[a-z ]+?) (?P<name>\S+)$")
_EXTENSION = re.compile(r'permission denied to create extension "(?P<name>[^"]+)"')
_CREATEDB = re.compile(r"permission denied to create database")
BOOTSTRAP = "`kronos-db bootstrap` (once, as a superuser)"


def _mapping(settings: Settings | None) -> role_mapping.RoleMapping | None:
    try:
        return role_mapping.load_mapping(settings or Settings())
    except ConfigError:
        return None


def _toolkit_privileges(
    mapping: role_mapping.RoleMapping | None, table: str
) -> dict[str, set[str]]:
    """role kind -> the privileges the mapping gives that kronos-db role on ``table``."""
    return {
        role.kind: set(role.tables[table])
        for role in (mapping.toolkit if mapping is not None else ())
        if table in role.tables
    }


def _relation(
    conn: psycopg.Connection[Any], mapping: role_mapping.RoleMapping | None, kind: str, name: str
) -> str:
    user = conn.info.user
    row = conn.execute(query("privileges", "select_relation"), {"name": name}).fetchone()
    if row is None:
        return f"{user} may not use {kind} {name}"
    qualified = str(row[0])
    by_role = _toolkit_privileges(mapping, qualified.split(".")[-1].strip('"'))
    if kind == "sequence":
        wanted = {"USAGE", "SELECT"}
    elif by_role:
        wanted = set().union(*by_role.values())
    else:
        # no role of the mapping but the owner works on it: the owner's business
        return _owner(conn, mapping, name)
    missing = [
        privilege
        for privilege in sorted(wanted)
        if not conn.execute(
            query("privileges", "has_relation_privilege"),
            {"relation": qualified, "privilege": privilege},
        ).fetchone()[0]  # type: ignore[index]
    ]
    if not missing:
        return _owner(conn, mapping, name)
    holders = [kind for kind, privileges in sorted(by_role.items()) if set(missing) <= privileges]
    grant = f"GRANT {', '.join(missing)} ON {qualified} TO {user}"
    who = (
        f" (the roles mapping gives it to the {' and '.join(holders)} role; `kronos-db roles "
        "apply` grants it)"
        if holders
        else ""
    )
    return f"{user} lacks {', '.join(missing)} on {qualified}: {grant}{who}"


def _owner(
    conn: psycopg.Connection[Any], mapping: role_mapping.RoleMapping | None, name: str
) -> str:
    user = conn.info.user
    row = conn.execute(query("privileges", "select_relation"), {"name": name}).fetchone()
    owner = str(row[1]) if row else "its owner"
    intended = mapping.owner if mapping is not None else None
    fix = f"run it as {owner}, or GRANT {owner} TO {user}"
    if intended and owner != intended:
        fix += f"; {BOOTSTRAP} hands every object of the schema to the owner role"
    return f"only the owner of {name} ({owner}) and its members may do this: {fix}"


def _schema(
    conn: psycopg.Connection[Any], mapping: role_mapping.RoleMapping | None, name: str
) -> str:
    user = conn.info.user
    missing = [
        privilege
        for privilege in ("USAGE", "CREATE")
        if not conn.execute(
            query("privileges", "has_schema_privilege"),
            {"schema": name, "privilege": privilege},
        ).fetchone()[0]  # type: ignore[index]
    ] or ["USAGE"]
    grant = f"GRANT {', '.join(missing)} ON SCHEMA {name} TO {user}"
    owner = mapping.owner if mapping is not None else None
    if "CREATE" in missing and owner:
        # what creates objects in the schema is the owner (migrations) or a member (rotation)
        grant += f", or GRANT {owner} TO {user} (the owner role has CREATE)"
    return (
        f"{user} lacks {', '.join(missing)} on schema {name}: {grant}; {BOOTSTRAP} grants USAGE "
        "to every role of the mapping and makes the owner role own the schema"
    )


def explain_without_connection(message: str, user: str) -> str | None:
    """The fix for refusals that need no catalog lookup (and may come before any login)."""
    if match := _EXTENSION.search(message):
        extension = match.group("name")
        return (
            f'extension "{extension}" may only be created by a superuser on this server: run '
            f"{BOOTSTRAP} first, which creates the extensions of the roles mapping"
        )
    if match := _DATABASE.search(message):
        database = match.group("name").strip('"')
        return f"GRANT CONNECT ON DATABASE {database} TO {user} ({BOOTSTRAP} grants it)"
    if _CREATEDB.search(message):
        return (
            f"{user} needs CREATEDB (ALTER ROLE {user} CREATEDB), or run this as a role that has it"
        )
    if match := _FUNCTION.search(message):
        return f"GRANT EXECUTE ON FUNCTION {match.group('name')} TO {user}"
    return None


def explain(
    conn: psycopg.Connection[Any],
    exc: pg_errors.InsufficientPrivilege,
    settings: Settings | None = None,
) -> str:
    """``permission denied …: <what is missing>: <the GRANT or bootstrap that fixes it>``.

    ``settings`` says which roles mapping (and role prefix) to read; the defaults otherwise.
    """
    message = (exc.diag.message_primary or str(exc)).strip().splitlines()[0]
    user = str(conn.info.user)
    fix = explain_without_connection(message, user)
    if fix is None:
        try:
            mapping = _mapping(settings)
            if match := _RELATION.search(message):
                fix = _relation(conn, mapping, match.group("kind"), match.group("name"))
            elif match := _OWNER.search(message):
                fix = _owner(conn, mapping, match.group("name"))
            elif match := _SCHEMA.search(message):
                fix = _schema(conn, mapping, match.group("name"))
        except psycopg.Error:
            fix = None
    if fix is None:
        fix = "`kronos-db roles check` lists what the roles of the mapping lack (docs/roles.md)"
    return f"{message}: {fix}"


__all__ = ["explain", "explain_without_connection"]
