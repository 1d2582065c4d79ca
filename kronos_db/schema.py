"""Schema drift: compare a live database with what head defines (``kronos-db check``).

Head's schema is not a file that could drift itself: it is built by migrating a scratch
database to head (a temporary database on the same server, dropped afterwards, or one given
with ``--reference-url``). Both databases are then read as (kind, name, attribute, value) facts
from the catalogs (``sql/queries/schema.sql``) and compared; every fact that differs is one
difference, phrased for the DBA who has to fix it.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psycopg

from kronos_db import db, migrations
from kronos_db.config import Settings
from kronos_db.resources import query

Facts = dict[tuple[str, str], dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Difference:
    kind: str  # table, column, constraint, index, trigger, function, extension, revision
    name: str
    change: str  # missing, unexpected, changed
    attribute: str | None = None
    expected: str | None = None
    actual: str | None = None

    def describe(self) -> str:
        if self.change == "missing":
            return f"{self.kind} {self.name}: missing (dropped by hand?)"
        if self.change == "unexpected":
            return f"{self.kind} {self.name}: not defined by head (added by hand?)"
        return (
            f"{self.kind} {self.name}: {self.attribute} is {self.actual!r}, "
            f"head has {self.expected!r}"
        )


@dataclasses.dataclass(frozen=True)
class CheckReport:
    database: str
    head: str
    current: tuple[str, ...]
    differences: tuple[Difference, ...]


def schema_facts(conn: psycopg.Connection[Any]) -> Facts:
    """The live schema of ``conn``'s database, as facts keyed by (kind, qualified name)."""
    facts: Facts = defaultdict(dict)
    for kind, name, attribute, value in conn.execute(query("schema", "select_schema_facts")):
        facts[(kind, name)][attribute] = value
    return dict(facts)


def compare(expected: Facts, actual: Facts) -> list[Difference]:
    """Every difference between head's facts and the live ones."""
    differences: list[Difference] = []
    for key in sorted(expected.keys() | actual.keys()):
        kind, name = key
        if key not in actual:
            differences.append(Difference(kind, name, "missing"))
            continue
        if key not in expected:
            # an extension a DBA installed for monitoring is not drift
            if kind != "extension":
                differences.append(Difference(kind, name, "unexpected"))
            continue
        for attribute in sorted(expected[key].keys() | actual[key].keys()):
            want, have = expected[key].get(attribute), actual[key].get(attribute)
            if want != have:
                differences.append(Difference(kind, name, "changed", attribute, want, have))
    return differences


def _belongs_to_missing_table(
    difference: Difference, missing_tables: set[str], expected: Facts
) -> bool:
    """A dropped table is one difference, not one more per column, index, sequence…"""
    if difference.change != "missing":
        return False
    if difference.kind in {"column", "constraint", "trigger"}:
        return any(difference.name.startswith(table + ".") for table in missing_tables)
    attributes = expected.get((difference.kind, difference.name), {})
    owner = attributes.get("table") if difference.kind == "index" else attributes.get("owned by")
    return owner in missing_tables


def check(
    settings: Settings,
    target: db.Target,
    *,
    reference: db.Target | None = None,
    notify: Callable[[str], None] = lambda _message: None,
) -> CheckReport:
    """Compare ``target``'s schema with head's; an empty ``differences`` means no drift."""
    tree = migrations.MigrationTree.from_settings(settings)
    head = ",".join(tree.script_directory().get_heads())
    with db.connection(target) as conn:
        current = migrations.current_revisions(conn)
        actual = schema_facts(conn)
    expected = _head_facts(settings, target, reference, notify)
    differences = compare(expected, actual)
    missing_tables = {d.name for d in differences if d.kind == "table" and d.change == "missing"}
    differences = [
        d for d in differences if not _belongs_to_missing_table(d, missing_tables, expected)
    ]
    if ",".join(current) != head:
        differences.insert(
            0,
            Difference(
                "revision",
                "alembic_version",
                "changed",
                "revision",
                head,
                ",".join(current) or "base",
            ),
        )
    return CheckReport(
        database=target.describe(), head=head, current=current, differences=tuple(differences)
    )


def _head_facts(
    settings: Settings,
    target: db.Target,
    reference: db.Target | None,
    notify: Callable[[str], None],
) -> Facts:
    if reference is not None:
        migrations.upgrade(settings, reference, "head")
        with db.connection(reference) as conn:
            return schema_facts(conn)
    scratch = target.with_dbname(f"kronos_check_{secrets.token_hex(6)}")
    notify(f"building head's schema in the scratch database {scratch.dbname}")
    db.create_database(scratch)
    try:
        migrations.upgrade(settings, scratch, "head")
        with db.connection(scratch) as conn:
            return schema_facts(conn)
    finally:
        db.drop_database(scratch)
