"""Putting a database under kronos-db's history: is its schema a revision's, and the stamp.

A stamp records a revision as applied without running it (Alembic's ``stamp``, Flyway's
``baseline``). Recorded blindly it is how a database ends up "at head" with the original
design's schema and every later command fails on it. Here a stamp is checked first: the live
schema is compared with the revision's (:func:`differences`, built from head's ``check`` when the
revision is head, from a scratch database migrated to it otherwise) and the stamp is refused
when they differ, unless forced. It is recorded like a migration: ``alembic_version`` and the
checksum of every revision's upgrade SQL up to it, in one transaction, under the migration lock.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable

import psycopg
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError

from kronos_db import db, locks, migrations, schema
from kronos_db.config import Settings
from kronos_db.errors import ExitCode, KronosError, UnknownRevisionError, translate_database_error
from kronos_db.migration_sql import checksum
from kronos_db.resources import query

# tables the stamp itself creates: their absence before it is not a difference
BOOKKEEPING = (
    "public.alembic_version",
    "public.kronos_migrations",
    "public.kronos_migrations_progress",
)

Notify = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


class SchemaDiffersError(KronosError):
    """The live schema differs from the revision's."""

    exit_code = ExitCode.DRIFT

    def __init__(self, message: str, differences: tuple[schema.Difference, ...] = ()) -> None:
        super().__init__(message)
        self.differences = differences


def _bookkeeping(difference: schema.Difference) -> bool:
    return any(
        difference.name == table or difference.name.startswith(table + ".") for table in BOOKKEEPING
    )


def resolve_revision(settings: Settings, revision: str) -> str:
    """An id for ``head``, ``base`` or an id; UnknownRevisionError otherwise."""
    tree = migrations.MigrationTree.from_settings(settings)
    migrations.validate_revision(tree, revision)
    script = tree.script_directory()
    if revision == "base":
        return "base"
    try:
        found = script.get_revision(revision)
    except CommandError as exc:
        raise UnknownRevisionError(f"unknown revision {revision!r}: {exc}") from None
    if found is None:
        raise UnknownRevisionError(f"unknown revision {revision!r}")
    return str(found.revision)


def differences(
    settings: Settings, target: db.Target, revision: str, *, notify: Notify = _quiet
) -> list[schema.Difference]:
    """How the live schema differs from ``revision``'s, its version table left aside."""
    tree = migrations.MigrationTree.from_settings(settings)
    revision = resolve_revision(settings, revision)
    heads = tree.script_directory().get_heads()
    if revision in heads:
        report = schema.check(settings, target, notify=notify)
        found = list(report.differences)
    else:
        expected = _revision_facts(settings, target, revision, notify)
        with db.connection(target) as conn:
            actual = schema.schema_facts(conn)
        found = schema.compare(expected, actual)
    return [d for d in found if d.kind != "revision" and not _bookkeeping(d)]


def _revision_facts(
    settings: Settings, target: db.Target, revision: str, notify: Notify
) -> schema.Facts:
    scratch = target.with_dbname(f"kronos_stamp_{secrets.token_hex(6)}")
    notify(f"building revision {revision}'s schema in the scratch database {scratch.dbname}")
    db.create_database(scratch)
    try:
        if revision != "base":
            migrations.upgrade(settings, scratch, revision)
        with db.connection(scratch) as conn:
            return schema.schema_facts(conn)
    finally:
        db.drop_database(scratch)


def record(
    settings: Settings, target: db.Target, revision: str, *, lease: locks.Lease
) -> tuple[str, ...]:
    """Record ``revision`` as applied, with the checksums of it and every revision before it.

    One transaction, fenced by ``lease`` (the migration lock the caller holds). Returns the
    revisions recorded.
    """
    tree = migrations.MigrationTree.from_settings(settings)
    script = tree.script_directory()
    chain = (
        []
        if revision == "base"
        else list(reversed(list(script.iterate_revisions(revision, "base"))))
    )
    engine = migrations.sqlalchemy_engine(target)
    try:
        with engine.connect() as connection, connection.begin():
            connection.exec_driver_sql(query("migrations", "create_migration_checksums"))
            connection.exec_driver_sql(query("migrations", "create_migration_progress"))
            MigrationContext.configure(connection).stamp(script, revision)
            recorded = {
                row[0]
                for row in connection.exec_driver_sql(
                    query("migrations", "select_migration_checksums")
                )
            }
            wanted = {s.revision for s in chain}
            for old in sorted(recorded - wanted):
                connection.exec_driver_sql(
                    query("migrations", "delete_migration_checksum"), {"revision": old}
                )
            for revision_script in chain:
                connection.exec_driver_sql(
                    query("migrations", "upsert_migration_checksum"),
                    {
                        "revision": revision_script.revision,
                        "checksum": checksum(tree.upgrade_sql(revision_script)),
                    },
                )
            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            lease.fence(driver)
    except KronosError:
        raise
    except Exception as exc:
        error = translate_database_error(exc, target=target.describe())
        raise type(error)(target.redact(error.message)) from exc
    finally:
        engine.dispose()
    return tuple(s.revision for s in chain)


@dataclasses.dataclass(frozen=True)
class StampResult:
    database: str
    revision: str
    before: tuple[str, ...]
    recorded: tuple[str, ...]
    forced: bool
    differences: tuple[schema.Difference, ...]


def stamp(
    settings: Settings,
    target: db.Target,
    revision: str,
    *,
    force: bool = False,
    notify: Notify = _quiet,
) -> StampResult:
    """Record ``revision`` as applied once the live schema is that revision's.

    Refuses (``SchemaDiffersError``, exit 6) listing every difference when it is not, unless
    ``force``: then the differences are returned, and the history says something the schema
    does not, on the caller's word.
    """
    revision = resolve_revision(settings, revision)
    with migrations.migration_lock(settings, target, notify) as lease:
        with db.connection(target) as conn:
            before = migrations.current_revisions(conn)
        found = tuple(differences(settings, target, revision, notify=notify))
        if found and not force:
            raise SchemaDiffersError(
                f"the live schema is not revision {revision}'s ({len(found)} difference(s): "
                + "; ".join(d.describe() for d in found[:5])
                + ("; …" if len(found) > 5 else "")
                + "): adopt it with `kronos-db adopt`, or pass --force if you know better",
                found,
            )
        recorded = record(settings, target, revision, lease=lease)
    return StampResult(target.describe(), revision, before, recorded, force, found)
