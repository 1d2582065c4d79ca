"""Schema drift: compare a live database with what head defines (``kronos-db check``).

Both databases are read as (kind, name, attribute, value) facts from the catalogs
(``sql/queries/schema.sql``) and compared; every fact that differs is one difference, phrased
for the DBA who has to fix it. Head's facts come from, in this order:

* ``--reference-url``: a database migrated to head for the occasion;
* the **snapshot** shipped with the package (``migrations/head_schema.json``): head's facts as
  a scratch build gave them, with a fingerprint of every revision's SQL and of the facts query,
  and the PostgreSQL major version it was taken on. It is used when all three match, so that
  ``check`` needs nothing but catalog reads (the owner, without CREATEDB, can run it). A test
  proves it equal to a scratch build; :func:`write_head_snapshot` (``python -m
  kronos_db.schema``) regenerates it;
* otherwise (a tree with revisions of its own, another major version) a **scratch build**:
  a temporary database on the same server, migrated to head and dropped afterwards (needs
  CREATEDB).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import secrets
from collections import defaultdict
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import psycopg

from kronos_db import db, migrations, role_mapping
from kronos_db.config import Settings
from kronos_db.errors import InsufficientPrivilegeError
from kronos_db.migration_sql import checksum, sql_path
from kronos_db.partitions.backend import kept_tables
from kronos_db.resources import query

SNAPSHOT_FILE = "head_schema.json"

Facts = dict[tuple[str, str], dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Difference:
    kind: str  # table, column, constraint, index, trigger, function, policy, schema, partition …
    name: str
    change: str  # missing, unexpected, changed
    attribute: str | None = None
    expected: str | None = None  # None: head has no such attribute (no privilege, …)
    actual: str | None = None

    def describe(self) -> str:
        if self.change == "missing":
            return f"{self.kind} {self.name}: missing (dropped by hand?)"
        if self.change == "unexpected":
            return f"{self.kind} {self.name}: not defined by head (added by hand?)"
        if _multiline(self.expected) or _multiline(self.actual):
            return f"{self.kind} {self.name}: {self.attribute} differs from head's:\n" + "\n".join(
                f"    {line}" for line in self.diff()
            )
        return (
            f"{self.kind} {self.name}: {self.attribute} is {_shown(self.actual)}, "
            f"head has {_shown(self.expected)}"
        )

    def diff(self) -> list[str]:
        """Head's value against the live one, as a unified diff (a function's body, a view)."""
        return list(
            difflib.unified_diff(
                (self.expected or "").splitlines(),
                (self.actual or "").splitlines(),
                "head",
                "live",
                n=1,
                lineterm="",
            )
        )


def _multiline(value: str | None) -> bool:
    return value is not None and "\n" in value.strip()


def _shown(value: str | None) -> str:
    return "none" if value is None else repr(value)


@dataclasses.dataclass(frozen=True)
class CheckReport:
    database: str
    head: str
    current: tuple[str, ...]
    differences: tuple[Difference, ...]
    # what differs from head but is not drift: kronos-db's own commands made it so (a
    # partition detached and kept by rotation, pg_partman's adoption), or another check owns it
    notes: tuple[str, ...] = ()


def schema_facts(conn: psycopg.Connection[Any]) -> Facts:
    """The live schema of ``conn``'s database, as facts keyed by (kind, qualified name)."""
    facts: Facts = defaultdict(dict)
    for kind, name, attribute, value in conn.execute(query("schema", "select_schema_facts")):
        facts[(kind, name)][attribute] = value
    return dict(facts)


# the grantees whose privileges are the schema's own: everyone, the owner, the role that migrates
SCHEMA_GRANTEES = ("PUBLIC", "the owner", "the migrating role")
_PRIVILEGES = "privileges of "


def _compared(attribute: str, head: dict[str, str]) -> bool:
    """A named role's privileges are compared only where head itself grants some: otherwise
    they are access control (the role mapping, :mod:`kronos_db.roles`), noted, not drift."""
    if not attribute.startswith(_PRIVILEGES):
        return True
    return attribute.removeprefix(_PRIVILEGES) in SCHEMA_GRANTEES or attribute in head


def compare(expected: Facts, actual: Facts) -> list[Difference]:
    """Every difference between head's facts and the live ones.

    Privileges are compared for PUBLIC, the owner and the migrating role, and for a role head
    grants to itself; what other roles were granted is :func:`other_grants`.
    """
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
            if not _compared(attribute, expected[key]):
                continue
            want, have = expected[key].get(attribute), actual[key].get(attribute)
            if want != have:
                differences.append(Difference(kind, name, "changed", attribute, want, have))
    return differences


_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")


def _qualified(schema: str, name: str) -> str:
    """``schema.name`` as the facts spell it (quote_ident's quoting)."""
    return ".".join(
        part if _PLAIN_IDENTIFIER.fullmatch(part) else '"' + part.replace('"', '""') + '"'
        for part in (schema, name)
    )


def _belongs_to_table(difference: Difference, tables: set[str], facts: Facts) -> bool:
    """A table kronos-db left on purpose, with its columns, constraints, indexes, triggers."""
    if difference.change != "unexpected":
        return False
    if difference.kind == "table" and difference.name in tables:
        return True
    if difference.kind in {"column", "constraint", "trigger", "policy"}:
        return any(difference.name.startswith(table + ".") for table in tables)
    attributes = facts.get((difference.kind, difference.name), {})
    owner = attributes.get("table") if difference.kind == "index" else attributes.get("owned by")
    return owner in tables


def other_grants(expected: Facts, actual: Facts) -> dict[str, list[str]]:
    """Roles granted privileges head does not grant them: role -> the objects, by name."""
    found: dict[str, list[str]] = defaultdict(list)
    for key, attributes in actual.items():
        head = expected.get(key, {})
        for attribute in attributes:
            if not _compared(attribute, head):
                found[attribute.removeprefix(_PRIVILEGES)].append(f"{key[0]} {key[1]}")
    return dict(found)


def _grant_notes(grants: dict[str, list[str]], mapped: Collection[str]) -> list[str]:
    """Grants are access control, whose owner is the role mapping: say what there is."""
    notes = []
    ours = sorted(role for role in grants if role in mapped)
    if ours:
        notes.append(
            f"the privileges of {', '.join(ours)} (roles of the role mapping) are `kronos-db "
            "roles check`'s to compare, not this one's"
        )
    for role in sorted(role for role in grants if role not in mapped):
        objects = sorted(grants[role])
        shown = ", ".join(objects[:3]) + (
            f" and {len(objects) - 3} more" if len(objects) > 3 else ""
        )
        notes.append(
            f"{role}, a role outside the role mapping, holds privileges on {len(objects)} "
            f"object(s) ({shown}): add it to the mapping for `kronos-db roles check` to watch "
            "them, or revoke them"
        )
    return notes


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
    script_dir = tree.script_directory()
    heads = sorted(script_dir.get_heads())
    head = ",".join(heads)
    notes: list[str] = []
    if len(heads) > 1:
        notes.append(f"{migrations.describe_heads(script_dir)}; head here is every branch")
    with db.connection(target) as conn:
        current = migrations.current_revisions(conn)
        actual = schema_facts(conn)
        kept = kept_tables(conn, settings.partitions)
    expected = _head_facts(settings, target, reference, notify)
    differences = compare(expected, actual)
    notes += _grant_notes(
        other_grants(expected, actual), role_mapping.load_mapping(settings).role_names
    )
    leftovers = {_qualified(table.schema, table.name): table.why for table in kept}
    differences = [d for d in differences if not _belongs_to_table(d, set(leftovers), actual)]
    notes += [
        f"table {name}: {why}, not drift"
        for name, why in sorted(leftovers.items())
        if ("table", name) in actual
    ]
    # a table added by hand is one difference too, not one more per column and index
    added = {d.name for d in differences if d.kind == "table" and d.change == "unexpected"}
    differences = [
        d for d in differences if d.kind == "table" or not _belongs_to_table(d, added, actual)
    ]
    missing_tables = {d.name for d in differences if d.kind == "table" and d.change == "missing"}
    differences = [
        d for d in differences if not _belongs_to_missing_table(d, missing_tables, expected)
    ]
    if ",".join(sorted(current)) != head:
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
        database=target.describe(),
        head=head,
        current=current,
        differences=tuple(differences),
        notes=tuple(notes),
    )


def _head_facts(
    settings: Settings,
    target: db.Target,
    reference: db.Target | None,
    notify: Callable[[str], None],
) -> Facts:
    if reference is not None:
        migrations.upgrade(settings, reference, "heads")
        with db.connection(reference) as conn:
            return schema_facts(conn)
    tree = migrations.MigrationTree.from_settings(settings)
    snapshot = read_head_snapshot(tree)
    with db.connection(target) as conn:
        major = server_major(conn)
        available = {row[0] for row in conn.execute(query("schema", "select_extensions_offered"))}
    fingerprint = tree_fingerprint(tree)
    if snapshot is not None and (snapshot.fingerprint, snapshot.server_major) == (
        fingerprint,
        major,
    ):
        # an extension the server does not offer is one head's revision skipped here too
        return {
            key: facts
            for key, facts in snapshot.facts.items()
            if key[0] != "extension" or key[1].strip('"') in available
        }
    why = (
        f"the shipped snapshot of head was taken on PostgreSQL {snapshot.server_major}"
        if snapshot is not None and snapshot.fingerprint == fingerprint
        else "the migration tree is not the one the shipped snapshot of head describes"
    )
    try:
        return build_head_facts(settings, target, notify)
    except InsufficientPrivilegeError as exc:
        raise InsufficientPrivilegeError(
            f"{why}, so head's schema must be built in a scratch database, and {exc.message}; "
            "or pass --reference-url (an empty database head may be built in)"
        ) from exc


def build_head_facts(
    settings: Settings, target: db.Target, notify: Callable[[str], None] = lambda _m: None
) -> Facts:
    """Head's facts from a scratch database on ``target``'s server (created, then dropped)."""
    scratch = target.with_dbname(f"kronos_check_{secrets.token_hex(6)}")
    notify(f"building head's schema in the scratch database {scratch.dbname}")
    db.create_database(scratch)
    try:
        migrations.upgrade(settings, scratch, "heads")
        with db.connection(scratch) as conn:
            return schema_facts(conn)
    finally:
        db.drop_database(scratch)


# --------------------------------------------------------------------------- the snapshot


@dataclasses.dataclass(frozen=True)
class HeadSnapshot:
    """Head's catalog facts, and what they are valid for."""

    head: str
    fingerprint: str  # tree_fingerprint() of the tree they were built from
    server_major: int  # PostgreSQL major version they were taken on
    facts: Facts


def server_major(conn: psycopg.Connection[Any]) -> int:
    return int(conn.info.server_version) // 10000


def tree_fingerprint(tree: migrations.MigrationTree) -> str:
    """SHA-256 of every revision's SQL pair and of the facts query (what it reads and leaves out):
    what head's facts depend on."""
    digest = hashlib.sha256(query("schema", "select_schema_facts").encode("utf-8"))
    for script in tree.revisions():
        for direction in ("upgrade", "downgrade"):
            path = sql_path(script.path, direction)
            digest.update(f"{script.revision}:{direction}:".encode())
            digest.update(checksum(path).encode() if path.is_file() else b"-")
    return digest.hexdigest()


def snapshot_path(tree: migrations.MigrationTree) -> Path:
    return tree.migrations_dir / SNAPSHOT_FILE


def read_head_snapshot(tree: migrations.MigrationTree) -> HeadSnapshot | None:
    path = snapshot_path(tree)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    facts: Facts = defaultdict(dict)
    for kind, name, attribute, value in data["facts"]:
        facts[(kind, name)][attribute] = value
    return HeadSnapshot(data["head"], data["fingerprint"], int(data["server_major"]), dict(facts))


def write_head_snapshot(settings: Settings, target: db.Target) -> Path:
    """Build head in a scratch database on ``target``'s server and write the snapshot file.

    One fact per line, sorted, so that a change of head reads as a diff in review.
    """
    tree = migrations.MigrationTree.from_settings(settings)
    facts = build_head_facts(settings, target)
    with db.connection(target) as conn:
        major = server_major(conn)
    rows = sorted(
        [kind, name, attribute, value]
        for (kind, name), attributes in facts.items()
        for attribute, value in attributes.items()
    )
    lines = ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    header = {
        "head": ",".join(sorted(tree.script_directory().get_heads())),
        "fingerprint": tree_fingerprint(tree),
        "server_major": major,
    }
    text = json.dumps(header, indent=1)[:-2] + ',\n "facts": [\n' + lines + "\n ]\n}\n"
    path = snapshot_path(tree)
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m kronos_db.schema [URL]``: regenerate the snapshot of head (any server role
    that may create a database; the default is the local server as the libpq defaults say)."""
    import sys

    from kronos_db.config import load_settings

    args = sys.argv[1:] if argv is None else argv
    settings = load_settings()
    target = db.resolve_target(args[0] if args else None, settings).with_dbname("postgres")
    print(f"wrote {write_head_snapshot(settings, target)}")


if __name__ == "__main__":
    main()
