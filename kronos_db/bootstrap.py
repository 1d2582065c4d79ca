"""``kronos-db bootstrap``: the one step that needs a superuser, so that nothing else does.

Run once per database (again after the mapping changes; it is idempotent), as a superuser:

* creates the mapping's extensions (``[bootstrap] extensions``) the server offers and the
  database lacks: on PostgreSQL 15 ``pg_stat_statements`` is not a trusted extension, so the
  revision that asks for it (``CREATE EXTENSION IF NOT EXISTS``) then finds it and does nothing
  when it runs as the owner;
* takes ``CREATE`` on the schema away from ``PUBLIC`` (what revision 0009 asks for, and may not
  do as the owner when the schema belongs to someone else);
* creates the ``kronos_leases`` table (kronos-db's locks) when it is missing;
* makes every role of the mapping what it says (:func:`kronos_db.roles.apply_roles`, as a
  superuser): the owner, maintenance and monitoring roles with their memberships, the service
  roles, CONNECT and USAGE, and the schema and every object in it
  handed to the owner. Table privileges of tables that do not exist yet (a database before its
  first ``migrate``) are left for ``roles apply``, which the owner can run.

After it, ``migrate`` and ``check`` run as the owner, ``maintain`` and the housekeeping commands
as the maintenance role, ``health`` and the reports as the monitoring role (docs/roles.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
from psycopg import sql

from kronos_db import db, locks, role_mapping, roles
from kronos_db.config import Settings
from kronos_db.durations import postgres_interval
from kronos_db.errors import ConfigError, InsufficientPrivilegeError
from kronos_db.resources import query


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    database: str
    created_database: bool
    extensions_created: tuple[str, ...]
    extensions_unavailable: tuple[str, ...]  # the server does not offer them
    public_create_revoked: bool
    applied: roles.ApplyResult  # what the roles needed
    dry_run: bool

    @property
    def pending_table_grants(self) -> tuple[roles.Drift, ...]:
        """Grants left for ``roles apply`` because their tables do not exist yet."""
        return tuple(d for d in self.applied.remaining if d.kind == "missing table")


def _require_superuser(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(query("roles", "select_current_role_attributes")).fetchone()
    if not row or not row[0]:
        raise InsufficientPrivilegeError(
            f"bootstrap creates roles and extensions and hands objects over: {conn.info.user} "
            "is not a superuser; run it once as one (for example the postgres role, directly, "
            "not through a pooler)"
        )


def bootstrap(
    target: db.Target,
    settings: Settings,
    *,
    create_database: bool = False,
    dry_run: bool = False,
) -> BootstrapResult:
    """Create what needs a superuser; see the module's documentation."""
    mapping = role_mapping.load_mapping(settings)
    if mapping.owner is None:
        raise ConfigError(f"{mapping.source}: the mapping names no [toolkit.owner] role")
    created = db.create_database(target) if create_database and not dry_run else False
    with db.connection(target) as conn:
        _require_superuser(conn)
        wanted = list(mapping.extensions)
        rows = conn.execute(query("roles", "select_extensions"), {"names": wanted}).fetchall()
        available = {name for name, _installed in rows}
        missing = [name for name, installed in rows if not installed]
        revoke = conn.execute(
            query("roles", "select_public_create_on_schema"), {"schema": mapping.schema}
        ).fetchone() == (True,)
        if not dry_run:
            with db.transaction_settings(
                conn, {"lock_timeout": postgres_interval(settings.migrations.lock_timeout)}
            ):
                for name in missing:
                    conn.execute(
                        sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name))
                    )
                if revoke:
                    conn.execute(
                        sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(
                            sql.Identifier(mapping.schema)
                        )
                    )
            locks.ensure_lease_table(conn)
        applied = roles.apply_roles(
            conn, settings, mapping, dry_run=dry_run, missing_tables="leave"
        )
    return BootstrapResult(
        database=target.describe(),
        created_database=created,
        extensions_created=tuple(missing),
        extensions_unavailable=tuple(name for name in wanted if name not in available),
        public_create_revoked=revoke,
        applied=applied,
        dry_run=dry_run,
    )


__all__ = ["BootstrapResult", "bootstrap"]
