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

import contextlib
import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

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
TOOLKIT_ROLES = ("owner", "maintenance", "monitoring")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
# every privilege aclexplode can report, as the SQL keyword to GRANT/REVOKE it with
_KEYWORDS: dict[str, sql.SQL] = {
    name: sql.SQL(name)
    for name in (*TABLE_PRIVILEGES, "USAGE", "CREATE", "CONNECT", "TEMPORARY", "MAINTAIN")
}
# the object kinds ALTER … OWNER TO takes, as select_objects_not_owned_by names them
_OBJECT_KINDS: dict[str, sql.SQL] = {
    name: sql.SQL(name)
    for name in (
        "TABLE",
        "VIEW",
        "MATERIALIZED VIEW",
        "FOREIGN TABLE",
        "SEQUENCE",
        "FUNCTION",
        "PROCEDURE",
        "TYPE",
        "DOMAIN",
        "SCHEMA",
    )
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
class ToolkitRole:
    """A role kronos-db itself runs as: the owner, the maintenance role, the monitoring role."""

    kind: str  # one of TOOLKIT_ROLES
    role: str
    description: str
    login: bool
    member_of: tuple[str, ...]  # role names
    tables: Mapping[str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class RoleMapping:
    schema: str
    services: tuple[ServiceRole, ...]
    source: str
    partitions: PartitionPrivileges = PartitionPrivileges()
    toolkit: tuple[ToolkitRole, ...] = ()
    extensions: tuple[str, ...] = ()  # what `bootstrap` creates (superuser-only)

    @property
    def role_names(self) -> list[str]:
        """Every role of the mapping: the services', then kronos-db's own."""
        return [service.role for service in self.services] + [r.role for r in self.toolkit]

    def toolkit_role(self, kind: str) -> ToolkitRole | None:
        return next((role for role in self.toolkit if role.kind == kind), None)

    @property
    def owner(self) -> str | None:
        """The role that owns every object of the schema (None: the mapping names none)."""
        owner = self.toolkit_role("owner")
        return owner.role if owner is not None else None


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
    _refuse_unknown(services, SERVICES, "unknown service(s)", fail)
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
    return RoleMapping(
        schema,
        tuple(roles),
        source,
        _parse_partitions(data, prefix, fail),
        _parse_toolkit(data, prefix, fail),
        _parse_extensions(data, fail),
    )


def _refuse_unknown(
    found: Mapping[str, Any],
    known: tuple[str, ...],
    what: str,
    fail: Callable[[str], ConfigError],
) -> None:
    unknown = set(found) - set(known)
    if unknown:
        raise fail(f"{what} {', '.join(sorted(unknown))} (known: {', '.join(known)})")


def _parse_toolkit(
    data: Mapping[str, Any], prefix: str, fail: Callable[[str], ConfigError]
) -> tuple[ToolkitRole, ...]:
    """``[toolkit.<kind>]``: kronos-db's own roles (a mapping without the section has none)."""
    section = data.get("toolkit", {})
    if not isinstance(section, dict):
        raise fail("[toolkit] must be a table of [toolkit.<role>] tables")
    _refuse_unknown(section, TOOLKIT_ROLES, "unknown toolkit role(s)", fail)
    toolkit = []
    for kind in TOOLKIT_ROLES:
        entry = section.get(kind)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise fail(f"toolkit.{kind} must be a table")
        login = entry.get("login", True)
        if not isinstance(login, bool):
            raise fail(f"toolkit.{kind}.login must be true or false")
        member_of = entry.get("member_of", [])
        if not isinstance(member_of, list) or not all(isinstance(m, str) and m for m in member_of):
            raise fail(f"toolkit.{kind}.member_of must be a list of role names")
        tables = entry.get("tables", {})
        if not isinstance(tables, dict):
            raise fail(f"toolkit.{kind}.tables must be a table")
        toolkit.append(
            ToolkitRole(
                kind,
                f"{prefix}{kind}",
                str(entry.get("description", "")),
                login,
                # a toolkit role is named by its kind; anything else (pg_monitor) as it is
                tuple(f"{prefix}{m}" if m in TOOLKIT_ROLES else m for m in member_of),
                {
                    table: _privileges(f"toolkit.{kind}.tables.{table}", privileges, fail)
                    for table, privileges in tables.items()
                },
            )
        )
    return tuple(toolkit)


def _parse_extensions(
    data: Mapping[str, Any], fail: Callable[[str], ConfigError]
) -> tuple[str, ...]:
    section = data.get("bootstrap", {})
    if not isinstance(section, dict):
        raise fail("[bootstrap] must be a table")
    extensions = section.get("extensions", [])
    if not isinstance(extensions, list) or not all(isinstance(e, str) and e for e in extensions):
        raise fail("bootstrap.extensions must be a list of extension names")
    return tuple(extensions)


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
    _refuse_unknown(grants, SERVICES, "partitions.grants: unknown service(s)", fail)
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
    # what the connected role may not fix (needs CREATEROLE or a superuser: `bootstrap`)
    skipped: tuple[Drift, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Fix:
    drift: Drift
    statement: sql.Composed | None  # None: cannot be fixed by apply
    needs: str = ""  # "CREATEROLE" or "SUPERUSER" when the connected role must have it


@dataclasses.dataclass(frozen=True)
class _Wanted:
    """What one role of the mapping should be, whatever its kind."""

    role: str
    login: bool
    member_of: tuple[str, ...]
    tables: Mapping[str, tuple[str, ...]]
    schema_privileges: tuple[str, ...]
    owns_schema: bool  # the owner: every object of the schema is its own


def _wanted_roles(mapping: RoleMapping, settings: Settings) -> list[_Wanted]:
    wanted = [
        _Wanted(s.role, settings.security.role_login, (), s.tables, ("USAGE",), False)
        for s in mapping.services
    ]
    for role in mapping.toolkit:
        owner = role.kind == "owner"
        wanted.append(
            _Wanted(
                role.role,
                role.login,
                role.member_of,
                role.tables,
                ("CREATE", "USAGE") if owner else ("USAGE",),
                owner,
            )
        )
    return wanted


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
    """Every attribute spelled out, so that ALTER ROLE also turns off what must be off."""
    return sql.SQL(
        "{} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
    ).format(sql.SQL("LOGIN" if login else "NOLOGIN"))


def _plan(conn: psycopg.Connection[Any], mapping: RoleMapping, settings: Settings) -> list[_Fix]:
    wanted_roles = _wanted_roles(mapping, settings)
    names = [w.role for w in wanted_roles]
    params = {"roles": names, "schema": mapping.schema}
    database = str(conn.info.dbname)
    fixes: list[_Fix] = []
    fixes += _attribute_fixes(conn, wanted_roles, params)
    fixes += _relation_fixes(conn, mapping, wanted_roles, params)
    fixes += _column_fixes(conn, params, mapping.owner)
    fixes += _scope_fixes(conn, wanted_roles, params, mapping.schema, database)
    fixes += _membership_fixes(conn, wanted_roles, params)
    fixes += _ownership_fixes(conn, mapping, wanted_roles, params, database)
    return fixes


def _attribute_fixes(
    conn: psycopg.Connection[Any], wanted_roles: list[_Wanted], params: Mapping[str, Any]
) -> list[_Fix]:
    fixes = []
    attributes = {row["role_name"]: row for row in _rows(conn, "select_role_attributes", params)}
    for wanted in wanted_roles:
        role, ident = wanted.role, sql.Identifier(wanted.role)
        if role not in attributes:
            create = sql.SQL("CREATE ROLE {} WITH {}").format(ident, _role_options(wanted.login))
            fixes.append(
                _Fix(
                    Drift(role, "missing role", role, "the role does not exist"),
                    create,
                    "CREATEROLE",
                )
            )
            continue
        row = attributes[role]
        wrong = [f"{name} is on" for name in _ROLE_ATTRIBUTES if row[name]]
        if row["login"] != wanted.login:
            wrong.append("LOGIN is " + ("off" if wanted.login else "on"))
        if not row["inherit"]:
            wrong.append("INHERIT is off")
        if wrong:
            fixes.append(
                _Fix(
                    Drift(role, "attributes", role, ", ".join(wrong)),
                    sql.SQL("ALTER ROLE {} WITH {}").format(ident, _role_options(wanted.login)),
                    "SUPERUSER" if row["superuser"] else "CREATEROLE",
                )
            )
    return fixes


def _relation_fixes(
    conn: psycopg.Connection[Any],
    mapping: RoleMapping,
    wanted_roles: list[_Wanted],
    params: Mapping[str, Any],
) -> list[_Fix]:
    fixes = []
    # a toolkit role may name a partition itself: the monitoring role counts the rows waiting
    # in the default partition, which no grant on its partitioned table lets it read
    existing_tables = {
        row["relation_name"]
        for name in ("select_schema_relations", "select_schema_partitions")
        for row in _rows(conn, name, params)
    }
    sequences: dict[str, list[tuple[str, str]]] = {}
    for row in _rows(conn, "select_owned_sequences", params):
        sequences.setdefault(row["table_name"], []).append(
            (row["sequence_schema"], row["sequence_name"])
        )

    # (role, kind, schema, relation, privilege)
    wanted: set[tuple[str, str, str, str, str]] = set()
    for role in wanted_roles:
        for table, privileges in role.tables.items():
            if table not in existing_tables:
                fixes.append(
                    _Fix(
                        Drift(
                            role.role,
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
                wanted.add((role.role, "table", mapping.schema, table, privilege))
            if "INSERT" in privileges:
                for sequence_schema, sequence in sequences.get(table, []):
                    wanted.add((role.role, "sequence", sequence_schema, sequence, "USAGE"))

    # partitions get what [partitions] grants says (nothing by default): anything else on a
    # partition is an extra privilege, e.g. a grant copied from the parent by another tool
    if mapping.partitions.grants:
        for row in _rows(conn, "select_schema_partitions", params):
            for role_name, privileges in mapping.partitions.grants.items():
                for privilege in privileges:
                    wanted.add(
                        (role_name, "table", mapping.schema, row["relation_name"], privilege)
                    )

    granted: dict[tuple[str, str, str, str, str], bool] = {
        (
            row["role_name"],
            row["relation_kind"],
            row["schema_name"],
            row["relation_name"],
            row["privilege"],
        ): row["grantable"]
        for row in _rows(conn, "select_relation_privileges", params)
        # the owner's rights on what it owns are its own, not grants
        if row["role_name"] != mapping.owner
    }
    for key in sorted(wanted - set(granted)):
        role_name, kind, schema, relation, privilege = key
        on = sql.SQL("SEQUENCE" if kind == "sequence" else "TABLE")
        fixes.append(
            _Fix(
                Drift(
                    role_name,
                    "missing privilege",
                    f"{schema}.{relation}",
                    f"{privilege} on {kind} {schema}.{relation} is not granted",
                ),
                sql.SQL("GRANT {} ON {} {} TO {}").format(
                    _keyword(privilege),
                    on,
                    sql.Identifier(schema, relation),
                    sql.Identifier(role_name),
                ),
            )
        )
    for key, grantable in sorted(granted.items()):
        role_name, kind, schema, relation, privilege = key
        on = sql.SQL("SEQUENCE" if kind == "sequence" else "TABLE")
        target = sql.Identifier(schema, relation)
        if key not in wanted:
            fixes.append(
                _Fix(
                    Drift(
                        role_name,
                        "extra privilege",
                        f"{schema}.{relation}",
                        f"{privilege} on {kind} {schema}.{relation} is granted beyond the mapping",
                    ),
                    sql.SQL("REVOKE {} ON {} {} FROM {}").format(
                        _keyword(privilege), on, target, sql.Identifier(role_name)
                    ),
                )
            )
        elif grantable:
            fixes.append(
                _Fix(
                    Drift(
                        role_name,
                        "extra privilege",
                        f"{schema}.{relation}",
                        f"{privilege} on {kind} {schema}.{relation} carries GRANT OPTION",
                    ),
                    sql.SQL("REVOKE GRANT OPTION FOR {} ON {} {} FROM {}").format(
                        _keyword(privilege), on, target, sql.Identifier(role_name)
                    ),
                )
            )
    return fixes


def _column_fixes(
    conn: psycopg.Connection[Any], params: Mapping[str, Any], owner: str | None
) -> list[_Fix]:
    fixes = []
    for row in _rows(conn, "select_column_privileges", params):
        role, schema, relation = row["role_name"], row["schema_name"], row["relation_name"]
        if role == owner:
            continue
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
    return fixes


def _scope_fixes(
    conn: psycopg.Connection[Any],
    wanted_roles: list[_Wanted],
    params: Mapping[str, Any],
    schema: str,
    database: str,
) -> list[_Fix]:
    """USAGE (and the owner's CREATE) on the schema, CONNECT on the database; nothing else."""
    fixes = []
    schema_grants = {
        (row["role_name"], row["schema_name"], row["privilege"]): row["grantable"]
        for row in _rows(conn, "select_schema_privileges", params)
    }
    database_grants = {
        (row["role_name"], database, row["privilege"]): row["grantable"]
        for row in _rows(conn, "select_database_privileges", params)
    }
    for scope, grants, target_name in (
        ("schema", schema_grants, schema),
        ("database", database_grants, database),
    ):
        keyword = sql.SQL(scope.upper())
        for wanted in wanted_roles:
            privileges = wanted.schema_privileges if scope == "schema" else ("CONNECT",)
            for privilege in privileges:
                if (wanted.role, target_name, privilege) not in grants:
                    fixes.append(
                        _Fix(
                            Drift(
                                wanted.role,
                                "missing privilege",
                                target_name,
                                f"{privilege} on {scope} {target_name} is not granted",
                            ),
                            sql.SQL("GRANT {} ON {} {} TO {}").format(
                                _keyword(privilege),
                                keyword,
                                sql.Identifier(target_name),
                                sql.Identifier(wanted.role),
                            ),
                        )
                    )
        expected_by_role = {
            w.role: (w.schema_privileges if scope == "schema" else ("CONNECT",))
            for w in wanted_roles
        }
        for (role, name, privilege), grantable in sorted(grants.items()):
            expected = name == target_name and privilege in expected_by_role.get(role, ())
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
                    Drift(role, "extra privilege", name, f"{privilege} on {scope} {name} {what}"),
                    revoke.format(
                        _keyword(privilege), keyword, sql.Identifier(name), sql.Identifier(role)
                    ),
                )
            )
    return fixes


def _membership_fixes(
    conn: psycopg.Connection[Any], wanted_roles: list[_Wanted], params: Mapping[str, Any]
) -> list[_Fix]:
    fixes = []
    actual: dict[str, set[str]] = {}
    for row in _rows(conn, "select_role_memberships", params):
        actual.setdefault(row["role_name"], set()).add(row["granted_role"])
    for wanted in wanted_roles:
        held = actual.get(wanted.role, set())
        expected = set(wanted.member_of)
        for granted_roles, kind, detail, statement in (
            (expected - held, "missing membership", "is not a member of {}", "GRANT {} TO {}"),
            (
                held - expected,
                "membership",
                "is a member of {} (inherits its privileges)",
                "REVOKE {} FROM {}",
            ),
        ):
            for granted_role in sorted(granted_roles):
                fixes.append(
                    _Fix(
                        Drift(wanted.role, kind, granted_role, detail.format(granted_role)),
                        sql.SQL(statement).format(
                            sql.Identifier(granted_role), sql.Identifier(wanted.role)
                        ),
                        "CREATEROLE",
                    )
                )
    return fixes


def _object_identifier(row: Mapping[str, Any]) -> sql.Composable:
    if row["object_kind"] == "SCHEMA":
        return sql.Identifier(row["object_name"])
    if row["signature"]:
        # a function is named with its argument types, as regprocedure spells them
        return sql.SQL(row["signature"])
    return sql.Identifier(row["schema_name"], row["object_name"])


def _owned_elsewhere(rows: list[dict[str, Any]], schema: str) -> str:
    """``schema public and 41 of its objects (e.g. public.users)``, as the rows say."""
    objects = [row for row in rows if row["object_kind"] != "SCHEMA"]
    parts = [f"schema {schema}"] if len(objects) < len(rows) else []
    if objects:
        example = _object_identifier(objects[0]).as_string()
        parts.append(f"{len(objects)} of its object(s) (e.g. {example})")
    return " and ".join(parts)


def _ownership_fixes(
    conn: psycopg.Connection[Any],
    mapping: RoleMapping,
    wanted_roles: list[_Wanted],
    params: Mapping[str, Any],
    database: str,
) -> list[_Fix]:
    """The owner owns the schema and every object in it; every other role owns nothing.

    Owning the schema (rather than a grant of CREATE on it) is what makes head's privileges
    and the live ones agree: the owner's rights on it are the owner's, as on a scratch build.
    """
    fixes = []
    owner = mapping.owner
    heir = sql.Identifier(owner) if owner else sql.SQL("CURRENT_USER")
    for row in _rows(conn, "select_owned_object_counts", params):
        role = row["role_name"]
        if role == owner:
            continue
        fixes.append(
            _Fix(
                Drift(
                    role,
                    "owns objects",
                    database,
                    f"owns {row['objects']} object(s) in {database}; only "
                    f"{owner or 'the migration role'} owns objects",
                ),
                sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(role), heir),
                "SUPERUSER",
            )
        )
    if owner is None:
        return fixes
    foreign = _rows(conn, "select_objects_not_owned_by", {**params, "owner": owner})
    if foreign:
        owners = sorted({row["owner_name"] for row in foreign})
        statements = [
            sql.SQL("ALTER {} {} OWNER TO {}").format(
                _OBJECT_KINDS[row["object_kind"]], _object_identifier(row), sql.Identifier(owner)
            )
            for row in foreign
        ]
        fixes.append(
            _Fix(
                Drift(
                    owner,
                    "not the owner",
                    mapping.schema,
                    f"{_owned_elsewhere(foreign, mapping.schema)} belong to "
                    f"{', '.join(owners)}, not to {owner}",
                ),
                sql.SQL("; ").join(statements),
                "SUPERUSER",
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


def _capabilities(conn: psycopg.Connection[Any]) -> set[str]:
    """What the connected role may do of what fixes need: SUPERUSER, CREATEROLE."""
    row = conn.execute(query("roles", "select_current_role_attributes")).fetchone()
    superuser, createrole = row if row else (False, False)
    if superuser:
        return {"SUPERUSER", "CREATEROLE"}
    return {"CREATEROLE"} if createrole else set()


def _run_fixes(conn: psycopg.Connection[Any], fixes: list[_Fix], settings: Settings) -> None:
    # REASSIGN and ownership first (owners keep implicit privileges), then roles, then the rest
    order = {
        "missing role": 0,
        "attributes": 1,
        "missing membership": 2,
        "membership": 2,
        "owns objects": 3,
        "not the owner": 4,
    }
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
    missing_tables: Literal["refuse", "leave"] = "refuse",
) -> ApplyResult:
    """Make the roles and their privileges match the mapping, in one transaction.

    Refuses (``UsageError``) when the mapping names a table the database lacks, unless
    ``missing_tables="leave"`` (``bootstrap`` before the first ``migrate``): then those grants
    are left for a later ``roles apply``. Takes the ``roles`` lease (waiting up to
    ``[migrations] lock_wait``; a dry run takes none) and runs under ``[migrations]
    lock_timeout``. What the connected role may not do (create roles and memberships without
    CREATEROLE, hand objects over without being a superuser) is left undone and listed in
    ``skipped``; ``remaining`` lists every difference still there afterwards (for example a
    privilege granted by a third role, which only that role can revoke).
    """
    mapping = mapping or load_mapping(settings)
    database = str(conn.info.dbname)
    # a dry run only reads: it takes no lease, so it writes nothing (not even the lease table)
    # and runs on a standby too
    lease = (
        contextlib.nullcontext()
        if dry_run
        else locks.advisory_lock(conn, ROLES_LOCK, wait=settings.migrations.lock_wait)
    )
    with lease:
        # The lease is per database, roles are per cluster: an apply in another database may
        # create the same role between our plan and our CREATE ROLE. The transaction then
        # rolls back whole, and a fresh plan sees the role.
        can = _capabilities(conn)
        for attempt in range(3):
            with _catalog_timeout(conn):
                fixes = _plan(conn, mapping, settings)
            unfixable = [fix.drift for fix in fixes if fix.statement is None]
            if unfixable and missing_tables == "refuse":
                raise UsageError("; ".join(drift.detail for drift in unfixable))
            doable = [f for f in fixes if f.statement is not None and f.needs in can | {""}]
            skipped = tuple(
                f.drift for f in fixes if f.statement is not None and f.needs not in can | {""}
            )
            if dry_run or not doable:
                left = () if dry_run else tuple(f.drift for f in fixes if f not in doable)
                return ApplyResult(
                    database,
                    tuple(mapping.role_names),
                    tuple(f.drift for f in doable),
                    left,
                    skipped,
                )
            try:
                _run_fixes(conn, doable, settings)
                break
            except (pg_errors.DuplicateObject, pg_errors.UniqueViolation):
                if attempt == 2:
                    raise
        with _catalog_timeout(conn):
            remaining = [fix.drift for fix in _plan(conn, mapping, settings)]
    return ApplyResult(
        database,
        tuple(mapping.role_names),
        tuple(fix.drift for fix in doable),
        tuple(remaining),
        skipped,
    )
