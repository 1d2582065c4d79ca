"""Least privilege: one PostgreSQL role per Kronos service, granted exactly what the mapping says.

The mapping (``kronos_db/roles.toml``, or ``[security] roles_file``) lists each service's tables
and privileges. :func:`check_roles` compares it with the catalog and returns every difference
(:class:`Drift`); :func:`apply_roles` fixes them in one transaction: creates missing roles,
resets their attributes, grants what is missing, revokes what is beyond the mapping (other
tables, columns, grant options, schemas, the database, memberships) and hands objects a service
role owns back to the connecting (migration) role. Running it twice changes nothing the second
time. Passwords are never set here (see docs/security.md).

Roles are cluster-wide, privileges are per database: ``apply`` covers the connected database.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import dict_row

from kronos_db import db, locks
from kronos_db.config import Settings
from kronos_db.durations import postgres_interval
from kronos_db.errors import ConfigError, UsageError
from kronos_db.resources import query

SERVICES = ("auth", "user", "log", "cache", "router", "messaging")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
# every privilege aclexplode can report, as the SQL keyword to GRANT/REVOKE it with
_KEYWORDS: dict[str, sql.SQL] = {
    name: sql.SQL(name)
    for name in (*TABLE_PRIVILEGES, "USAGE", "CREATE", "CONNECT", "TEMPORARY", "MAINTAIN")
}
ROLES_LOCK = "roles"
CATALOG_TIMEOUT = timedelta(seconds=30)
_ROLE_ATTRIBUTES = ("superuser", "createdb", "createrole", "replication", "bypassrls")


def default_roles_file() -> Path:
    return Path(__file__).resolve().parent / "roles.toml"


@dataclasses.dataclass(frozen=True)
class ServiceRole:
    service: str
    role: str
    description: str
    tables: Mapping[str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class PartitionPrivileges:
    """What a new partition gets: its owner (None: its partitioned table's) and grants by role."""

    owner: str | None = None
    grants: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RoleMapping:
    schema: str
    services: tuple[ServiceRole, ...]
    source: str
    partitions: PartitionPrivileges = PartitionPrivileges()

    @property
    def role_names(self) -> list[str]:
        return [service.role for service in self.services]


def load_mapping(settings: Settings) -> RoleMapping:
    """Read and validate the mapping; role names get ``[security] role_prefix``."""
    path = (
        Path(settings.security.roles_file) if settings.security.roles_file else default_roles_file()
    )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the roles mapping: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_mapping(data, settings.security.role_prefix, str(path))


def parse_mapping(data: Mapping[str, Any], prefix: str, source: str) -> RoleMapping:
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{source}: {reason}")

    schema = data.get("schema", "public")
    if not isinstance(schema, str) or not schema:
        raise fail("schema must be a non-empty string")
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise fail("no [services.<name>] tables")
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise fail(
            f"unknown service(s) {', '.join(sorted(unknown))} (known: {', '.join(SERVICES)})"
        )
    roles = []
    for name in SERVICES:
        entry = services.get(name)
        if entry is None:
            raise fail(f"service {name} has no [services.{name}] table")
        tables = entry.get("tables", {})
        if not isinstance(tables, dict):
            raise fail(f"services.{name}.tables must be a table")
        checked = {
            table: _privileges(f"services.{name}.tables.{table}", privileges, fail)
            for table, privileges in tables.items()
        }
        roles.append(
            ServiceRole(name, f"{prefix}{name}", str(entry.get("description", "")), checked)
        )
    return RoleMapping(schema, tuple(roles), source, _parse_partitions(data, prefix, fail))


def _parse_partitions(
    data: Mapping[str, Any], prefix: str, fail: Callable[[str], ConfigError]
) -> PartitionPrivileges:
    """``[partitions]``: the owner (``"parent"``, or a role) and the grants of every partition."""
    section = data.get("partitions", {})
    if not isinstance(section, dict):
        raise fail("[partitions] must be a table")
    owner = section.get("owner", "parent")
    if not isinstance(owner, str) or not owner:
        raise fail('partitions.owner must be "parent" or a role name')
    grants = section.get("grants", {})
    if not isinstance(grants, dict):
        raise fail("partitions.grants must be a table: service = [privileges]")
    unknown = set(grants) - set(SERVICES)
    if unknown:
        raise fail(
            f"partitions.grants: unknown service(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(SERVICES)})"
        )
    checked = {
        f"{prefix}{service}": _privileges(f"partitions.grants.{service}", privileges, fail)
        for service, privileges in grants.items()
    }
    return PartitionPrivileges(
        None if owner == "parent" else owner,
        {role: privileges for role, privileges in checked.items() if privileges},
    )


def _privileges(key: str, value: Any, fail: Callable[[str], ConfigError]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise fail(f"{key} must be a list of privileges")
    upper = tuple(sorted({p.upper() for p in value}))
    bad = [p for p in upper if p not in TABLE_PRIVILEGES]
    if bad:
        raise fail(
            f"{key}: unknown privilege(s) {', '.join(bad)} (known: {', '.join(TABLE_PRIVILEGES)})"
        )
    return upper


@dataclasses.dataclass(frozen=True)
class Drift:
    """One difference between the mapping and the database."""

    role: str
    kind: str  # missing role, attributes, missing privilege, extra privilege, membership,
    #            owns objects, missing table
    target: str
    detail: str

    def describe(self) -> str:
        return f"{self.role}: {self.kind}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class RolesReport:
    database: str
    roles: tuple[str, ...]
    drift: tuple[Drift, ...]

    @property
    def in_sync(self) -> bool:
        return not self.drift


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    database: str
    roles: tuple[str, ...]
    changes: tuple[Drift, ...]
    remaining: tuple[Drift, ...]


@dataclasses.dataclass(frozen=True)
class _Fix:
    drift: Drift
    statement: sql.Composed | None  # None: cannot be fixed by apply


def _catalog_timeout(conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
    """One transaction for the catalog reads of a plan, under a bounded statement_timeout."""
    return db.transaction_settings(conn, {"statement_timeout": postgres_interval(CATALOG_TIMEOUT)})


def _rows(
    conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("roles", name), params).fetchall()


def _keyword(privilege: str) -> sql.SQL:
    try:
        return _KEYWORDS[privilege]
    except KeyError:
        raise UsageError(f"unexpected privilege {privilege!r} in the catalog") from None


def _role_options(login: bool) -> sql.Composed:
    return sql.SQL(
        "{} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
    ).format(sql.SQL("LOGIN" if login else "NOLOGIN"))


def _plan(conn: psycopg.Connection[Any], mapping: RoleMapping, settings: Settings) -> list[_Fix]:
    login = settings.security.role_login
    names = mapping.role_names
    params = {"roles": names, "schema": mapping.schema}
    database = str(conn.info.dbname)
    fixes: list[_Fix] = []

    attributes = {row["role_name"]: row for row in _rows(conn, "select_role_attributes", params)}
    for role in names:
        ident = sql.Identifier(role)
        if role not in attributes:
            create = sql.SQL("CREATE ROLE {} WITH {}").format(ident, _role_options(login))
            fixes.append(_Fix(Drift(role, "missing role", role, "the role does not exist"), create))
            continue
        row = attributes[role]
        wrong = [f"{name} is on" for name in _ROLE_ATTRIBUTES if row[name]]
        if row["login"] != login:
            wrong.append("LOGIN is " + ("off" if login else "on"))
        if wrong:
            fixes.append(
                _Fix(
                    Drift(role, "attributes", role, ", ".join(wrong)),
                    sql.SQL("ALTER ROLE {} WITH {}").format(ident, _role_options(login)),
                )
            )

    existing_tables = {
        row["relation_name"] for row in _rows(conn, "select_schema_relations", params)
    }
    sequences: dict[str, list[tuple[str, str]]] = {}
    for row in _rows(conn, "select_owned_sequences", params):
        sequences.setdefault(row["table_name"], []).append(
            (row["sequence_schema"], row["sequence_name"])
        )

    # (role, kind, schema, relation, privilege)
    wanted: set[tuple[str, str, str, str, str]] = set()
    for service in mapping.services:
        for table, privileges in service.tables.items():
            if table not in existing_tables:
                fixes.append(
                    _Fix(
                        Drift(
                            service.role,
                            "missing table",
                            f"{mapping.schema}.{table}",
                            f"the mapping names {mapping.schema}.{table}, which does "
                            "not exist (migrate first?)",
                        ),
                        None,
                    )
                )
                continue
            for privilege in privileges:
                wanted.add((service.role, "table", mapping.schema, table, privilege))
            if "INSERT" in privileges:
                for sequence_schema, sequence in sequences.get(table, []):
                    wanted.add((service.role, "sequence", sequence_schema, sequence, "USAGE"))

    # partitions get what [partitions] grants says (nothing by default): anything else on a
    # partition is an extra privilege, e.g. a grant copied from the parent by another tool
    if mapping.partitions.grants:
        for row in _rows(conn, "select_schema_partitions", params):
            for role, privileges in mapping.partitions.grants.items():
                for privilege in privileges:
                    wanted.add((role, "table", mapping.schema, row["relation_name"], privilege))

    granted: dict[tuple[str, str, str, str, str], bool] = {
        (
            row["role_name"],
            row["relation_kind"],
            row["schema_name"],
            row["relation_name"],
            row["privilege"],
        ): row["grantable"]
        for row in _rows(conn, "select_relation_privileges", params)
    }
    for key in sorted(wanted - set(granted)):
        role, kind, schema, relation, privilege = key
        on = sql.SQL("SEQUENCE" if kind == "sequence" else "TABLE")
        fixes.append(
            _Fix(
                Drift(
                    role,
                    "missing privilege",
                    f"{schema}.{relation}",
                    f"{privilege} on {kind} {schema}.{relation} is not granted",
                ),
                sql.SQL("GRANT {} ON {} {} TO {}").format(
                    _keyword(privilege), on, sql.Identifier(schema, relation), sql.Identifier(role)
                ),
            )
        )
    for key, grantable in sorted(granted.items()):
        role, kind, schema, relation, privilege = key
        on = sql.SQL("SEQUENCE" if kind == "sequence" else "TABLE")
        target = sql.Identifier(schema, relation)
        if key not in wanted:
            fixes.append(
                _Fix(
                    Drift(
                        role,
                        "extra privilege",
                        f"{schema}.{relation}",
                        f"{privilege} on {kind} {schema}.{relation} is granted beyond the mapping",
                    ),
                    sql.SQL("REVOKE {} ON {} {} FROM {}").format(
                        _keyword(privilege), on, target, sql.Identifier(role)
                    ),
                )
            )
        elif grantable:
            fixes.append(
                _Fix(
                    Drift(
                        role,
                        "extra privilege",
                        f"{schema}.{relation}",
                        f"{privilege} on {kind} {schema}.{relation} carries GRANT OPTION",
                    ),
                    sql.SQL("REVOKE GRANT OPTION FOR {} ON {} {} FROM {}").format(
                        _keyword(privilege), on, target, sql.Identifier(role)
                    ),
                )
            )

    for row in _rows(conn, "select_column_privileges", params):
        role, schema, relation = row["role_name"], row["schema_name"], row["relation_name"]
        column, privilege = row["column_name"], row["privilege"]
        fixes.append(
            _Fix(
                Drift(
                    role,
                    "extra privilege",
                    f"{schema}.{relation}.{column}",
                    f"{privilege} on column {schema}.{relation}.{column} (column grants are "
                    "not in the mapping)",
                ),
                sql.SQL("REVOKE {} ({}) ON TABLE {} FROM {}").format(
                    _keyword(privilege),
                    sql.Identifier(column),
                    sql.Identifier(schema, relation),
                    sql.Identifier(role),
                ),
            )
        )

    schema_grants = {
        (row["role_name"], row["schema_name"], row["privilege"]): row["grantable"]
        for row in _rows(conn, "select_schema_privileges", params)
    }
    database_grants = {
        (row["role_name"], database, row["privilege"]): row["grantable"]
        for row in _rows(conn, "select_database_privileges", params)
    }
    for scope, grants, wanted_privilege, target_name in (
        ("SCHEMA", schema_grants, "USAGE", mapping.schema),
        ("DATABASE", database_grants, "CONNECT", database),
    ):
        scope_keyword = sql.SQL("SCHEMA") if scope == "SCHEMA" else sql.SQL("DATABASE")
        for role in names:
            if (role, target_name, wanted_privilege) not in grants:
                fixes.append(
                    _Fix(
                        Drift(
                            role,
                            "missing privilege",
                            target_name,
                            f"{wanted_privilege} on {scope.lower()} {target_name} is not granted",
                        ),
                        sql.SQL("GRANT {} ON {} {} TO {}").format(
                            _keyword(wanted_privilege),
                            scope_keyword,
                            sql.Identifier(target_name),
                            sql.Identifier(role),
                        ),
                    )
                )
        for (role, name, privilege), grantable in sorted(grants.items()):
            expected = (privilege, name) == (wanted_privilege, target_name)
            if expected and not grantable:
                continue
            what = "carries GRANT OPTION" if expected else "is granted beyond the mapping"
            revoke = (
                sql.SQL("REVOKE GRANT OPTION FOR {} ON {} {} FROM {}")
                if expected
                else sql.SQL("REVOKE {} ON {} {} FROM {}")
            )
            fixes.append(
                _Fix(
                    Drift(
                        role,
                        "extra privilege",
                        name,
                        f"{privilege} on {scope.lower()} {name} {what}",
                    ),
                    revoke.format(
                        _keyword(privilege),
                        scope_keyword,
                        sql.Identifier(name),
                        sql.Identifier(role),
                    ),
                )
            )

    for row in _rows(conn, "select_role_memberships", params):
        role, granted_role = row["role_name"], row["granted_role"]
        fixes.append(
            _Fix(
                Drift(
                    role,
                    "membership",
                    granted_role,
                    f"is a member of {granted_role} (inherits its privileges)",
                ),
                sql.SQL("REVOKE {} FROM {}").format(
                    sql.Identifier(granted_role), sql.Identifier(role)
                ),
            )
        )

    for row in _rows(conn, "select_owned_object_counts", params):
        role = row["role_name"]
        fixes.append(
            _Fix(
                Drift(
                    role,
                    "owns objects",
                    database,
                    f"owns {row['objects']} object(s) in {database}; services never own objects",
                ),
                sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)),
            )
        )
    return fixes


def check_roles(
    conn: psycopg.Connection[Any], settings: Settings, mapping: RoleMapping | None = None
) -> RolesReport:
    """Every difference between the mapping and the connected database."""
    mapping = mapping or load_mapping(settings)
    with _catalog_timeout(conn):
        fixes = _plan(conn, mapping, settings)
    return RolesReport(
        str(conn.info.dbname), tuple(mapping.role_names), tuple(fix.drift for fix in fixes)
    )


def _run_fixes(conn: psycopg.Connection[Any], fixes: list[_Fix], settings: Settings) -> None:
    # REASSIGN first (owners keep implicit privileges), then roles, then the rest
    order = {"owns objects": 0, "missing role": 1, "attributes": 2, "membership": 3}
    with db.transaction_settings(
        conn, {"lock_timeout": postgres_interval(settings.migrations.lock_timeout)}
    ):
        for fix in sorted(fixes, key=lambda fix: order.get(fix.drift.kind, 9)):
            assert fix.statement is not None
            conn.execute(fix.statement)


def apply_roles(
    conn: psycopg.Connection[Any],
    settings: Settings,
    mapping: RoleMapping | None = None,
    *,
    dry_run: bool = False,
) -> ApplyResult:
    """Make the roles and their privileges match the mapping, in one transaction.

    Refuses (``UsageError``) when the mapping names a table the database lacks. Takes the
    ``roles`` advisory lock (waiting up to ``[migrations] lock_wait``) and runs under
    ``[migrations] lock_timeout``. ``remaining`` lists what could not be fixed (for example a
    privilege granted by a third role, which only that role can revoke).
    """
    mapping = mapping or load_mapping(settings)
    database = str(conn.info.dbname)
    with locks.advisory_lock(conn, ROLES_LOCK, wait=settings.migrations.lock_wait):
        # The advisory lock is per database, roles are per cluster: an apply in another
        # database may create the same role between our plan and our CREATE ROLE. The
        # transaction then rolls back whole, and a fresh plan sees the role.
        for attempt in range(3):
            with _catalog_timeout(conn):
                fixes = _plan(conn, mapping, settings)
            unfixable = [fix.drift for fix in fixes if fix.statement is None]
            if unfixable:
                raise UsageError("; ".join(drift.detail for drift in unfixable))
            if dry_run or not fixes:
                return ApplyResult(
                    database, tuple(mapping.role_names), tuple(fix.drift for fix in fixes), ()
                )
            try:
                _run_fixes(conn, fixes, settings)
                break
            except (pg_errors.DuplicateObject, pg_errors.UniqueViolation):
                if attempt == 2:
                    raise
        with _catalog_timeout(conn):
            remaining = [fix.drift for fix in _plan(conn, mapping, settings)]
    return ApplyResult(
        database, tuple(mapping.role_names), tuple(fix.drift for fix in fixes), tuple(remaining)
    )
