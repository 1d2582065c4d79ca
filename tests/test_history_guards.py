"""kronos-db's history is never assumed: migrate on a database it did not build, a stamp that
would lie, and a downgrade that would drop data are each refused in one line."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import seed
from conftest import REPO, Database, run_cli, run_process

from kronos_db import baseline, migrations, schema
from kronos_db.config import Settings
from kronos_db.errors import DataLossError

HEAD = migrations.MigrationTree(REPO).script_directory().get_heads()[0]


def _one_error_line(result: Any, code: int) -> str:
    """The command failed with ``code`` and one error line (after any progress lines)."""
    assert result.code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("kronos-db: error: ")
    return errors[0]


@pytest.fixture
def seed_database(empty_database: Database) -> Database:
    """The original design's tables, with a little data, and no kronos-db history."""
    with empty_database.connect() as conn:
        seed.create_seed_schema(conn)
        seed.fill(
            conn, seed.SEED_NOW, seed.Sizes(logs=200, users=20, sessions=40, cache=10, messages=30)
        )
    return empty_database


def _tool_tables(database: Database) -> tuple[Any, ...]:
    with database.connect() as conn:
        row = conn.execute(
            "SELECT to_regclass('alembic_version'), to_regclass('kronos_migrations')"
        ).fetchone()
        assert row is not None
        return tuple(row)


def test_migrate_refuses_kronos_tables_without_history(seed_database: Database) -> None:
    line = _one_error_line(run_cli("migrate", "--database-url", seed_database.url), 1)
    assert "9 Kronos table(s)" in line
    assert "kronos-db adopt" in line
    assert _tool_tables(seed_database) == (None, None), "the refusal left something behind"
    # plain Alembic with the project's alembic.ini runs the same environment
    completed = run_process(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
        env={"KRONOS_DATABASE_URL": seed_database.url},
    )
    assert completed.code != 0
    assert "kronos-db adopt" in completed.stderr
    assert _tool_tables(seed_database) == (None, None)
    # status says why, instead of "base, 10 pending" alone
    result = run_cli("status", "--database-url", seed_database.url)
    assert result.code == 5, result.output
    assert "not under kronos-db" in result.stdout
    assert "kronos-db adopt --plan" in result.stdout


def test_a_history_stamped_by_hand_is_not_trusted(seed_database: Database) -> None:
    """The issue's trap: `alembic stamp head`, then migrate says nothing to do and downgrade
    drops the backups."""
    # with the project's alembic.ini, the stamp itself is refused (the same environment)
    completed = run_process(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "stamp", "head"],
        env={"KRONOS_DATABASE_URL": seed_database.url},
    )
    assert completed.code != 0
    assert "kronos-db adopt" in completed.stderr
    # as Alembic with any other configuration writes it
    with seed_database.connect() as conn:
        conn.execute(
            "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL"
            " CONSTRAINT alembic_version_pkc PRIMARY KEY)"
        )
        conn.execute("INSERT INTO alembic_version VALUES (%s)", (HEAD,))
    line = _one_error_line(run_cli("migrate", "--database-url", seed_database.url), 1)
    assert f"alembic_version says {HEAD}" in line
    assert "stamped outside kronos-db" in line
    line = _one_error_line(run_cli("downgrade", "base", "--database-url", seed_database.url), 1)
    assert "kronos-db adopt" in line
    with seed_database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM backups").fetchone() == (30,)
    result = run_cli("status", "--database-url", seed_database.url)
    assert "stamped outside kronos-db" in result.stdout


def test_stamp_refuses_a_schema_that_is_not_the_revisions(seed_database: Database) -> None:
    line = _one_error_line(run_cli("stamp", "head", "--database-url", seed_database.url), 6)
    assert f"not revision {HEAD}'s" in line
    assert "kronos-db adopt" in line
    assert "--force" in line
    with seed_database.connect() as conn:
        assert migrations.current_revisions(conn) == ()
    # --force records it anyway, checksums included, and says what it forced past
    result = baseline.stamp(Settings(), seed_database.target, "head", force=True)
    assert any(d.name == "public.users.users_password_hash_argon2" for d in result.differences)
    with seed_database.connect() as conn:
        assert migrations.current_revisions(conn) == (HEAD,)
        recorded = conn.execute("SELECT count(*) FROM kronos_migrations").fetchone()
    assert recorded == (len(migrations.MigrationTree(REPO).revisions()),)


def _forget_history(database: Database) -> None:
    with database.connect() as conn:
        conn.execute("DROP TABLE alembic_version")
        conn.execute("DROP TABLE kronos_migrations")


def test_stamp_records_a_revision_whose_schema_is_there(empty_database: Database) -> None:
    """A database built by migrating to 0007, its history lost: stamp 0007 (a scratch database
    migrated to 0007 is the reference), then migrate goes on from there."""
    settings = Settings()
    migrations.upgrade(settings, empty_database.target, "0007")
    _forget_history(empty_database)
    result = baseline.stamp(settings, empty_database.target, "0007")
    assert result.recorded == ("0001", "0002", "0003", "0004", "0005", "0006", "0007")
    assert result.differences == ()
    upgraded = migrations.upgrade(settings, empty_database.target, "head")
    assert upgraded.before == ("0007",)
    assert schema.check(settings, empty_database.target).differences == ()


# ---------------------------------------------------------------- destructive downgrades


def test_a_downgrade_that_drops_rows_is_refused_listing_them(database: Database) -> None:
    with database.connect() as conn:
        conn.execute(
            "INSERT INTO backups (file_path) SELECT '/b/' || i FROM generate_series(1, 30) i"
        )
        conn.execute("INSERT INTO kronos_stat_snapshots DEFAULT VALUES")
    line = _one_error_line(run_cli("downgrade", "0008", "--database-url", database.url), 1)
    assert "table kronos_stat_snapshots (1 row, revision 0010)" in line
    assert "column backups.kind (30 values, revision 0009)" in line
    assert "--drop-data" in line
    assert "sessions" not in line, "empty columns are not data loss"
    with database.connect() as conn:
        assert migrations.current_revisions(conn) == (HEAD,)
        assert conn.execute("SELECT count(*) FROM kronos_stat_snapshots").fetchone() == (1,)
    result = run_cli("downgrade", "0008", "--drop-data", "--database-url", database.url)
    assert result.code == 0, result.output
    with database.connect() as conn:
        assert migrations.current_revisions(conn) == ("0008",)
        assert conn.execute("SELECT count(*) FROM backups").fetchone() == (30,)


def test_a_downgrade_of_empty_objects_needs_no_flag(database: Database) -> None:
    with database.connect() as conn:
        conn.execute("INSERT INTO sessions (token) VALUES ('t')")  # 0002 is not reverted
    result = migrations.downgrade(Settings(), database.target, "-1")
    parent = migrations.MigrationTree(REPO).script_directory().get_revision(HEAD).down_revision
    assert result.after == (parent,)
    with pytest.raises(DataLossError, match=r"column sessions.last_active_at \(1 value"):
        migrations.downgrade(Settings(), database.target, "0007")


def test_relative_and_named_downgrades_revert_the_same_revisions() -> None:
    tree = migrations.MigrationTree(REPO)
    by_count = migrations.reverted_revisions(tree, (HEAD,), "-3")
    by_name = migrations.reverted_revisions(tree, (HEAD,), by_count[-1].down_revision)
    assert [s.revision for s in by_count] == [s.revision for s in by_name]
    dropped = {
        (table, column)
        for script in migrations.reverted_revisions(tree, (HEAD,), "base")
        for table, column in migrations.dropped_objects(script)
    }
    assert ("backups", None) in dropped
    assert ("message_queue", "attempts") in dropped
    assert not any(column == "backups_kind_check" for _table, column in dropped)
