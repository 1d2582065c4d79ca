"""Least privilege: one PostgreSQL role per Kronos service, granted exactly what the mapping says.

The mapping (``kronos_db/roles.toml``, or ``[security] roles_file``, read by
:mod:`kronos_db.role_mapping`) lists each service's tables and privileges. :func:`check_roles`
compares it with the catalog and returns every difference (:class:`Drift`); :func:`apply_roles`
fixes them in one transaction: creates missing roles,
resets their attributes, grants what is missing, revokes what is beyond the mapping (other
tables, columns, grant options, schemas, the database, memberships) and hands objects a service
role owns back to the connecting (migration) role. Running it twice changes nothing the second
time. Passwords are never set here (see docs/security.md).

Roles are cluster-wide, privileges are per database: ``apply`` covers the connected database.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import dict_row

from kronos_db import db, locks
from kronos_db.config import Settings
from kronos_db.durations import postgres_interval
from kronos_db.errors import UsageError
from kronos_db.resources import query
from kronos_db.role_mapping import TABLE_PRIVILEGES, RoleMapping, load_mapping

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
