"""`-- kronos: concurrently-per-partition`: an index on the partitioned `logs`, built partition
by partition without blocking log inserts, and finished by the next run after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from conftest import REPO, Database, TimedWriter, clean_environment, run_cli, write_revision

from kronos_db import migrations
from kronos_db.config import MigrationSettings, Settings
from kronos_db.migration_sql import MigrationScript, partition_index_name, sql_path

LOCK_TIMEOUT = 0.5  # the migration's lock_timeout in this test, and so the bound on an insert
SLACK = 0.5  # scheduling on a loaded, shared test machine

UPGRADE = """\
-- logs by level, for the log viewer's filter
-- kronos: no-transaction

-- kronos: concurrently-per-partition
CREATE INDEX IF NOT EXISTS logs_level_idx ON logs (level, "timestamp");
"""
DOWNGRADE = """\
-- kronos: no-transaction
DROP INDEX IF EXISTS logs_level_idx;
"""


def _log_insert() -> tuple[str, tuple[Any, ...]]:
    return "INSERT INTO logs (service_name, level, message) VALUES ('auth', 'INFO', 'login')", ()


def _write_revision(root: Path) -> Path:
    return write_revision(root, "index logs by level", UPGRADE, DOWNGRADE)


def _cic_waiting(conn: psycopg.Connection[Any]) -> int | None:
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query ILIKE 'CREATE INDEX CONCURRENTLY%%' AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else None


def _wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def _index_state(conn: psycopg.Connection[Any]) -> tuple[bool, set[str], set[str], list[str]]:
    """(parent valid, partitions, partitions with an attached index, invalid indexes on logs)."""
    (valid,) = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'logs_level_idx'::regclass"
    ).fetchone() or (False,)
    partitions = {
        r[0]
        for r in conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'logs'::regclass"
        )
    }
    attached = {
        r[0]
        for r in conn.execute(
            "SELECT i.indrelid::regclass::text FROM pg_inherits AS inh"
            " JOIN pg_index AS i ON i.indexrelid = inh.inhrelid"
            " WHERE inh.inhparent = to_regclass('logs_level_idx')"
        )
    }
    invalid = [
        r[0]
        for r in conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index"
            " WHERE NOT indisvalid AND indrelid IN"
            " (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'logs'::regclass)"
        )
    ]
    return bool(valid), partitions, attached, invalid


def test_partitioned_index_never_blocks_inserts_and_resumes_after_a_kill(
    tree_copy: tuple[Path, Path], database: Database
) -> None:
    root, config = tree_copy
    _write_revision(root)
    with database.connect() as conn:
        # partitions a fresh database would not have, under a name no static script could know,
        # and rows in every partition and in the default one
        conn.execute(
            "CREATE TABLE logs_archive_2020 PARTITION OF logs"
            " FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-02-01 00:00+00')"
        )
        conn.execute(
            'INSERT INTO logs (service_name, level, message, "timestamp")'
            " SELECT 'svc' || i % 7, (ARRAY['INFO','WARN','ERROR'])[1 + i % 3], 'm' || i,"
            "        now() - (i % 9) * interval '1 hour' + (i % 5) * interval '1 day'"
            "   FROM generate_series(1, 20000) AS i"
        )
        conn.execute(
            'INSERT INTO logs (service_name, level, message, "timestamp")'
            " SELECT 'old', 'INFO', 'x', timestamptz '2020-01-15 00:00+00' + i * interval '1 s'"
            "   FROM generate_series(1, 2000) AS i"
        )
        conn.execute(
            'INSERT INTO logs (service_name, level, message, "timestamp")'
            " VALUES ('lost', 'INFO', 'x', '2019-06-01 00:00+00')"
        )
    args = ("--config", str(config), "--database-url", database.url)
    writer = TimedWriter(database, 0.01, _log_insert)
    writer.start()
    try:
        # first run: killed while a partition's concurrent build waits for an old snapshot
        with database.connect() as observer, database.connect(autocommit=False) as reader:
            reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            reader.execute("SELECT count(*) FROM users")  # a long report holding a snapshot
            process = subprocess.Popen(
                [sys.executable, "-m", "kronos_db", "migrate", "--lock-timeout", "500ms", *args],
                cwd=REPO,
                env=clean_environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                backend = _wait_for(lambda: _cic_waiting(observer))
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
                observer.execute("SELECT pg_terminate_backend(%s)", (backend,))
            finally:
                if process.poll() is None:
                    process.kill()
                process.communicate()
            reader.rollback()
            valid, partitions, attached, invalid = _index_state(observer)
            assert not valid
            assert attached < partitions
            assert invalid, "the interrupted build left an INVALID index"
        # the next run finishes the job, under the same writer
        resumed = run_cli("migrate", "--lock-timeout", "500ms", *args)
        assert resumed.code == 0, resumed.output
        assert "INVALID" in resumed.stderr
    finally:
        writer.stop.set()
        writer.join()
    assert writer.errors == []
    assert len(writer.waits) > 50
    print(f"worst insert wait {max(writer.waits) * 1000:.0f} ms over {len(writer.waits)} inserts")
    assert max(writer.waits) < LOCK_TIMEOUT + SLACK, sorted(writer.waits)[-5:]
    with database.connect() as conn:
        valid, partitions, attached, invalid = _index_state(conn)
        assert valid
        assert attached == partitions
        assert "logs_archive_2020" in partitions
        assert invalid == []
        names = {
            r[0]
            for r in conn.execute(
                "SELECT indexrelid::regclass::text FROM pg_index"
                " WHERE indrelid = 'logs_archive_2020'::regclass"
            )
        }
        assert partition_index_name("logs_archive_2020", "logs", "logs_level_idx") in names
        assert "logs_archive_2020_level_idx" in names
        # a partition made later (rotation) gets the index from PostgreSQL itself
        conn.execute(
            "CREATE TABLE logs_p2099_01_01 PARTITION OF logs"
            " FOR VALUES FROM ('2099-01-01 00:00+00') TO ('2099-01-02 00:00+00')"
        )
        assert _index_state(conn)[0]
    settings = Settings(migrations=MigrationSettings(directory=str(root)))
    migrations.downgrade(settings, database.target, "-1")
    with database.connect() as conn:
        assert conn.execute("SELECT to_regclass('logs_level_idx')").fetchone() == (None,)


def test_the_directive_is_parsed_and_shown_offline(tree_copy: tuple[Path, Path]) -> None:
    root, config = tree_copy
    head = migrations.MigrationTree(REPO).script_directory().get_heads()[0]
    revision_file = _write_revision(root)
    (statement,) = MigrationScript.load(sql_path(revision_file, "upgrade")).statements
    assert statement.per_partition
    assert statement.line == 5
    index = statement.index
    assert index is not None
    assert (index.name, index.table, index.rest) == (
        "logs_level_idx",
        "logs",
        '(level, "timestamp")',
    )
    result = run_cli("migrate", "--sql", "--from", head, "--config", str(config))
    assert result.code == 0, result.output
    assert 'CREATE INDEX IF NOT EXISTS logs_level_idx ON ONLY logs (level, "timestamp");' in (
        result.stdout
    )
    assert "ATTACH PARTITION" in result.stdout
    long_name = partition_index_name("p" * 40, "logs", "logs_" + "x" * 40)
    assert len(long_name) == 63
    assert long_name != partition_index_name("p" * 40, "logs", "logs_" + "x" * 41)
