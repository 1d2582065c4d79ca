"""Migration mechanics: the revision graph, the stairway, parity with plain Alembic, offline
SQL, new revisions, checksums of applied files, and no-transaction revisions."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import REPO, Database, run_cli, run_process, write_revision

from kronos_db import migrations, schema
from kronos_db.config import MigrationSettings, Settings
from kronos_db.migration_sql import MigrationScript, checksum, concurrent_index_name, sql_path

TREE = migrations.MigrationTree(REPO)


def _facts(database: Database) -> schema.Facts:
    with database.connect() as conn:
        return schema.schema_facts(conn)


def _revision(database: Database) -> tuple[str, ...]:
    with database.connect() as conn:
        return migrations.current_revisions(conn)


# ---------------------------------------------------------------- the graph


def test_single_head() -> None:
    assert len(TREE.script_directory().get_heads()) == 1


@pytest.mark.parametrize("script", TREE.revisions(), ids=lambda s: s.revision)
def test_revision_files_follow_the_convention(script: Any) -> None:
    path = Path(script.path)
    assert re.fullmatch(r"\d{4}_[a-z0-9_]+\.py", path.name), path.name
    assert path.name.startswith(script.revision + "_"), "the id is the file's number"
    assert sql_path(path, "upgrade").is_file()
    assert sql_path(path, "downgrade").is_file()
    assert (script.doc or "").strip(), "every revision says what it does"


def test_revisions_are_numbered_without_gaps() -> None:
    numbers = [int(s.revision) for s in TREE.revisions()]
    assert numbers == list(range(1, len(numbers) + 1))


def test_every_sql_file_belongs_to_a_revision() -> None:
    names = {Path(s.path).stem for s in TREE.revisions()}
    for path in (REPO / "sql" / "migrations").glob("*.sql"):
        assert path.name.rsplit(".", 2)[0] in names, f"{path.name} belongs to no revision"


# ---------------------------------------------------------------- the stairway


def test_stairway_up_down_up(empty_database: Database, settings: Settings) -> None:
    """Every revision upgrades, downgrades and upgrades again cleanly."""
    target = empty_database.target
    for script in TREE.revisions():
        migrations.upgrade(settings, target, script.revision)
        after_up = _facts(empty_database)
        migrations.downgrade(settings, target, "-1")
        migrations.upgrade(settings, target, script.revision)
        assert _facts(empty_database) == after_up, script.revision
    assert _revision(empty_database) == tuple(TREE.script_directory().get_heads())


def test_downgrade_base_leaves_no_kronos_object(
    database: Database, settings: Settings, template_database: Database
) -> None:
    result = migrations.downgrade(settings, database.target, "base")
    assert result.after == ()
    # pg_stat_statements stays on purpose (server-level monitoring, docs/reports.md): its
    # members belong to the extension, not to Kronos
    not_extension = (
        " AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.objid = o.oid AND d.deptype = 'e')"
    )
    with database.connect() as conn:
        relations = conn.execute(
            "SELECT relname FROM pg_class AS o WHERE relnamespace = 'public'::regnamespace"
            " AND relname NOT LIKE 'alembic_version%%' AND relname NOT LIKE 'kronos_migrations%%'"
            " AND relname NOT LIKE 'kronos_leases%%'"  # the toolkit's own, like the two above
            + not_extension
        ).fetchall()
        functions = conn.execute(
            "SELECT proname FROM pg_proc AS o WHERE pronamespace = 'public'::regnamespace"
            + not_extension
        ).fetchall()
        checksums = conn.execute("SELECT count(*) FROM kronos_migrations").fetchone()
    assert relations == []
    assert functions == []
    assert checksums == (0,)
    migrations.upgrade(settings, database.target, "head")
    assert _facts(database) == _facts(template_database)


def test_plain_alembic_gives_the_same_schema(
    empty_database: Database, template_database: Database
) -> None:
    completed = run_process(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
        env={"KRONOS_DATABASE_URL": empty_database.url},
    )
    assert completed.code == 0, completed.stderr
    assert _facts(empty_database) == _facts(template_database)
    with empty_database.connect() as conn, template_database.connect() as template_conn:
        query = "SELECT revision, checksum FROM kronos_migrations ORDER BY revision"
        assert conn.execute(query).fetchall() == template_conn.execute(query).fetchall()


def test_checksums_are_recorded_for_every_revision(conn: psycopg.Connection[Any]) -> None:
    recorded = dict(conn.execute("SELECT revision, checksum FROM kronos_migrations").fetchall())
    expected = {s.revision: checksum(TREE.upgrade_sql(s)) for s in TREE.revisions()}
    assert recorded == expected


# ---------------------------------------------------------------- offline SQL


def test_offline_sql_renders_everything_and_touches_nothing(empty_database: Database) -> None:
    result = run_cli("migrate", "--sql", "--database-url", empty_database.url)
    assert result.code == 0, result.stderr
    assert "CREATE TABLE roles" in result.stdout
    assert "PARTITION BY RANGE" in result.stdout
    assert "INSERT INTO kronos_migrations" in result.stdout
    # each revision's transaction sets its own timeouts: nothing outlives it
    transactional = [
        s for s in TREE.revisions() if MigrationScript.load(TREE.upgrade_sql(s)).transactional
    ]
    assert result.stdout.count("SET LOCAL lock_timeout = '500ms';") == len(transactional)
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == ()


def test_offline_sql_starts_from_the_database_revision(database: Database) -> None:
    with database.connect() as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0005'")
    result = run_cli("migrate", "--sql", "--database-url", database.url)
    assert result.code == 0, result.stderr
    assert "CREATE TABLE message_queue" in result.stdout
    assert "CREATE TABLE roles" not in result.stdout


def test_offline_sql_needs_no_server() -> None:
    result = run_cli(
        "migrate",
        "--sql",
        "--from",
        "0006",
        "0007",
        "--database-url",
        "postgresql://nobody@127.0.0.1:1/none",
    )
    assert result.code == 0, result.stderr
    assert "CREATE TABLE backups" in result.stdout
    result = run_cli("downgrade", "--sql", "--from", "0007", "0006")
    assert result.code == 0, result.stderr
    assert "DROP TABLE backups" in result.stdout


# ---------------------------------------------------------------- a copy of the tree


def test_revision_writes_the_sql_pair_after_head(tree_copy: tuple[Path, Path]) -> None:
    root, config = tree_copy
    head = TREE.script_directory().get_heads()[0]
    result = run_cli("revision", "-m", "Index routes by service!", "--config", str(config))
    assert result.code == 0, result.stderr
    number = f"{int(head) + 1:04d}"
    revision_file = root / "migrations" / "versions" / f"{number}_index_routes_by_service.py"
    assert revision_file.is_file(), result.stdout
    text = revision_file.read_text(encoding="utf-8")
    assert f'revision = "{number}"' in text
    assert f'down_revision = "{head}"' in text
    assert 'run_sql(__file__, "upgrade")' in text
    assert sql_path(revision_file, "upgrade").is_file()
    assert sql_path(revision_file, "downgrade").is_file()
    tree = migrations.MigrationTree(root)
    assert tree.script_directory().get_heads() == [number]


def test_revision_refuses_a_message_without_words(tree_copy: tuple[Path, Path]) -> None:
    _root, config = tree_copy
    result = run_cli("revision", "-m", "!!!", "--config", str(config))
    assert result.code == 2
    assert "message" in result.stderr


def test_edited_applied_migration_is_refused(
    tree_copy: tuple[Path, Path], empty_database: Database
) -> None:
    root, config = tree_copy
    args = ("--config", str(config), "--database-url", empty_database.url)
    assert run_cli("migrate", *args).code == 0
    edited = root / "sql" / "migrations" / "0004_cache_service.upgrade.sql"
    # new line endings only: not an edit
    edited.write_bytes(edited.read_bytes().replace(b"\n", b"\r\n"))
    assert run_cli("status", *args).code == 0
    edited.write_text(edited.read_text(encoding="utf-8") + "\n-- tweaked\n", encoding="utf-8")
    for command in ("status", "migrate"):
        result = run_cli(command, *args)
        assert result.code == 7, (command, result.output)
        assert "sql/migrations/0004_cache_service.upgrade.sql" in result.stderr
        assert "edited" in result.stderr


CONCURRENT_UPGRADE = """\
-- index routes by service, without blocking the router's writes
-- kronos: no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS routes_service_idx ON routes (service);
"""
CONCURRENT_DOWNGRADE = """\
-- kronos: no-transaction
DROP INDEX CONCURRENTLY IF EXISTS routes_service_idx;
"""


def test_no_transaction_revision_rebuilds_a_leftover_invalid_index(
    tree_copy: tuple[Path, Path], database: Database
) -> None:
    root, config = tree_copy
    write_revision(root, "index routes by service", CONCURRENT_UPGRADE, CONCURRENT_DOWNGRADE)
    with database.connect() as conn:
        # an interrupted build: a UNIQUE concurrent build fails on duplicates, leaving INVALID
        conn.execute(
            "INSERT INTO routes (path, service, method) VALUES"
            " ('/a', 'auth', 'GET'), ('/b', 'auth', 'GET')"
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY routes_service_idx ON routes (service)")
        assert conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'routes_service_idx'::regclass"
        ).fetchone() == (False,)
    args = ("--config", str(config), "--database-url", database.url)
    result = run_cli("migrate", *args)
    assert result.code == 0, result.output
    assert "INVALID" in result.stderr
    with database.connect() as conn:
        row = conn.execute(
            "SELECT indisvalid, indisunique FROM pg_index"
            " WHERE indexrelid = 'routes_service_idx'::regclass"
        ).fetchone()
        assert row == (True, False)
    assert run_cli("downgrade", "-1", *args).code == 0
    with database.connect() as conn:
        assert conn.execute("SELECT to_regclass('routes_service_idx')").fetchone() == (None,)


def test_no_transaction_statements_are_split_safely(tmp_path: Path) -> None:
    path = tmp_path / "x.upgrade.sql"
    path.write_text(
        "-- kronos: no-transaction\n"
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "Odd;Name" ON t (a);\n'
        "DO $$ BEGIN PERFORM 1; PERFORM 2; END $$;\n"
        "-- a trailing comment\n",
        encoding="utf-8",
    )
    script = MigrationScript.load(path)
    assert not script.transactional
    assert len(script.statements) == 2
    assert concurrent_index_name(script.statements[0].text) == '"Odd;Name"'
    assert concurrent_index_name(script.statements[1].text) is None


def test_settings_directory_points_every_command_at_the_tree(tree_copy: tuple[Path, Path]) -> None:
    root, _config = tree_copy
    settings = Settings(migrations=MigrationSettings(directory=str(root)))
    assert migrations.MigrationTree.from_settings(settings).root == root.resolve()


def _released() -> dict[str, str]:
    lines = (REPO / "migrations" / "released.sha256").read_text(encoding="utf-8").splitlines()
    entries = (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    return {path.strip(): digest for digest, path in entries}


@pytest.mark.parametrize("script", TREE.revisions(), ids=lambda s: s.revision)
def test_released_revisions_are_never_edited(script: Any) -> None:
    path = TREE.upgrade_sql(script)
    relative = str(path.relative_to(REPO))
    line = f"{checksum(path)}  {relative}"
    released = _released()
    assert relative in released, f"add to migrations/released.sha256: {line}"
    assert released[relative] == checksum(path), (
        f"{relative} was released and then edited: restore it and add a new revision"
    )


RESUMABLE_UPGRADE = """\
-- kronos: no-transaction
ALTER TABLE routes ADD COLUMN note text;
CREATE INDEX CONCURRENTLY routes_note_idx ON routes (note);
ALTER TABLE rate_limits ADD COLUMN note text;
"""
RESUMABLE_DOWNGRADE = """\
-- kronos: no-transaction
ALTER TABLE rate_limits DROP COLUMN IF EXISTS note;
DROP INDEX CONCURRENTLY IF EXISTS routes_note_idx;
ALTER TABLE routes DROP COLUMN IF EXISTS note;
"""


def test_a_failed_no_transaction_revision_is_reported_partial_and_resumes(
    tree_copy: tuple[Path, Path], database: Database
) -> None:
    root, config = tree_copy
    write_revision(root, "notes on routes", RESUMABLE_UPGRADE, RESUMABLE_DOWNGRADE)
    args = ("--config", str(config), "--database-url", database.url)
    with database.connect(autocommit=False) as blocker:
        blocker.execute("LOCK TABLE rate_limits IN ACCESS SHARE MODE")
        failed = run_cli("migrate", "--lock-timeout", "200ms", "--retries", "0", *args)
    assert failed.code == 4, failed.output
    assert "partly applied: statement 3 of 3 (line 4) failed" in failed.stderr
    status = run_cli("status", *args)
    assert status.code == 5
    assert "partly applied: 2 of 3 upgrade statements done" in status.stdout
    # the first two statements are not re-runnable as written: the next run must skip them
    resumed = run_cli("migrate", *args)
    assert resumed.code == 0, resumed.output
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM kronos_migrations_progress").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('routes_note_idx')").fetchone() != (None,)
    assert run_cli("downgrade", "-1", *args).code == 0
    assert run_cli("migrate", *args).code == 0


def test_a_concurrent_build_waits_for_old_snapshots_longer_than_lock_timeout(
    tree_copy: tuple[Path, Path], database: Database
) -> None:
    """CREATE INDEX CONCURRENTLY blocks no writer while it waits for older transactions, so it
    waits up to concurrent_lock_timeout, not the short lock_timeout meant for blocking DDL."""
    root, config = tree_copy
    write_revision(root, "index routes by service", CONCURRENT_UPGRADE, CONCURRENT_DOWNGRADE)
    reader = database.connect(autocommit=False)
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM users")
    release = threading.Timer(2.0, reader.rollback)
    release.start()
    try:
        result = run_cli(
            "migrate",
            "--lock-timeout",
            "200ms",
            "--retries",
            "0",
            "--config",
            str(config),
            "--database-url",
            database.url,
        )
    finally:
        release.join()
        reader.close()
    assert result.code == 0, result.output
