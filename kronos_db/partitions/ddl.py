"""The DDL a rotation step runs: a new partition's ``CREATE TABLE`` (with its bounds check and the
newest partition's storage parameters), ``ATTACH PARTITION``, the retirement mark; and the
owner and grants of a new partition from the role mapping's ``[partitions]``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from kronos_db import role_mapping
from kronos_db.partitions.catalog import RETIRED_MARK, ParentTable
from kronos_db.resources import query


def _render_with_params(
    conn: psycopg.Connection[Any], statement: sql.Composable, params: dict[str, Any]
) -> str:
    from kronos_db.resources import render_with_literals, trusted_sql

    text = render_with_literals(trusted_sql(statement.as_string(conn)), params)
    lines = text.splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines)


def _bounds_check(parent: ParentTable, lower: datetime, upper: datetime) -> sql.Composed:
    return sql.SQL("{column} >= {lower} AND {column} < {upper}").format(
        column=parent.key(), lower=sql.Literal(lower), upper=sql.Literal(upper)
    )


_RELOPTION = re.compile(r"^(?:(toast)\.)?([a-z_][a-z0-9_]*)=(.*)$", re.DOTALL)


def _storage_parameters(reloptions: Sequence[str]) -> sql.Composable:
    """``WITH (…)`` from a partition's ``reloptions`` (``autovacuum_…=…``), or nothing."""
    items: list[sql.Composable] = []
    for option in reloptions:
        match = _RELOPTION.match(option)
        if not match:
            continue
        namespace, key, value = match.groups()
        name = sql.Identifier(namespace, key) if namespace else sql.Identifier(key)
        items.append(sql.SQL("{} = {}").format(name, sql.Literal(value)))
    if not items:
        return sql.SQL("")
    return sql.SQL(" WITH ({})").format(sql.SQL(", ").join(items))


def _check_name(name: str) -> sql.Identifier:
    return sql.Identifier(f"{name}_kronos_bounds"[:63])


def _create_table_sql(
    parent: ParentTable, name: str, lower: datetime, upper: datetime, reloptions: Sequence[str]
) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE {partition} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING GENERATED INCLUDING STORAGE INCLUDING STATISTICS INCLUDING INDEXES, "
        "CONSTRAINT {check} CHECK ({bounds})){storage}"
    ).format(
        partition=sql.Identifier(parent.schema, name),
        parent=parent.identifier(),
        check=_check_name(name),
        bounds=_bounds_check(parent, lower, upper),
        storage=_storage_parameters(reloptions),
    )


def _attach_sql(parent: ParentTable, name: str, lower: datetime, upper: datetime) -> sql.Composed:
    return sql.SQL(
        "ALTER TABLE {parent} ATTACH PARTITION {partition} FOR VALUES FROM ({lower}) TO ({upper})"
    ).format(
        parent=parent.identifier(),
        partition=sql.Identifier(parent.schema, name),
        lower=sql.Literal(lower),
        upper=sql.Literal(upper),
    )


_PRIVILEGES = {
    name: sql.SQL(name)
    for name in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
}


@dataclasses.dataclass(frozen=True)
class _Grant:
    grantee: str
    privilege: str


@dataclasses.dataclass(frozen=True)
class _Owner:
    owner: str


def partition_privileges(
    conn: psycopg.Connection[Any],
    parent: ParentTable,
    name: str,
    mapping: role_mapping.PartitionPrivileges,
) -> list[sql.Composed]:
    """What makes partition ``name`` owned and granted as the role mapping's [partitions] says.

    Not a copy of the parent's grants: services reach rows through the parent only. Whatever
    else the table holds (a grant another tool copied from the parent, such as pg_partman's
    ``inherit_privileges``) is revoked. The table may be uncommitted: this runs inside the
    transaction that creates it.
    """
    target = sql.Identifier(parent.schema, name)
    owner = mapping.owner or parent.owner
    relation = target.as_string(conn)
    statements: list[sql.Composed] = []
    with conn.cursor(row_factory=class_row(_Owner)) as owners:
        row = owners.execute(
            query("partitions", "select_table_owner"), {"table": relation}
        ).fetchone()
    if row is None or row.owner != owner:
        statements.append(
            sql.SQL("ALTER TABLE {} OWNER TO {}").format(target, sql.Identifier(owner))
        )
    with conn.cursor(row_factory=class_row(_Grant)) as grants:
        held = {
            (g.grantee, g.privilege)
            for g in grants.execute(query("partitions", "select_table_grants"), {"table": relation})
            if g.grantee != owner
        }
    wanted = {(role, p) for role, privileges in mapping.grants.items() for p in privileges}

    def grantee_sql(grantee: str) -> sql.Composable:
        return sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)

    for grantee, privilege in sorted(held - wanted):
        if privilege in _PRIVILEGES:
            statements.append(
                sql.SQL("REVOKE {} ON {} FROM {}").format(
                    _PRIVILEGES[privilege], target, grantee_sql(grantee)
                )
            )
    for grantee, privilege in sorted(wanted - held):
        statements.append(
            sql.SQL("GRANT {} ON {} TO {}").format(
                _PRIVILEGES[privilege], target, grantee_sql(grantee)
            )
        )
    return statements


def _mark_sql(parent: ParentTable, name: str, retention_action: str) -> sql.Composed:
    return sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(parent.schema, name),
        sql.Literal(f"{RETIRED_MARK}{parent.qualified}: {retention_action} pending"),
    )
