"""Backups: consistent under writes, atomic, verified by restoring, pruned safely."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from kronos_db import backups, db, locks
from kronos_db.checks import Status
from kronos_db.config import BackupSettings, Settings
from kronos_db.errors import BackupError, UsageError

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def backup_settings(tmp_path: Path) -> Settings:
    return Settings(backups=BackupSettings(directory=str(tmp_path / "backups"), compression=1))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "kronos.toml"
    path.write_text(f'[backups]\ndirectory = "{tmp_path / "backups"}"\ncompression = 1\n')
    return path


def _seed(conn: psycopg.Connection[Any], rows: int = 20_000) -> None:
    conn.execute(
        "INSERT INTO logs (service_name, level, message) "
        "SELECT 'svc-' || (i %% 7), 'INFO', repeat(md5(i::text), 4) "
        "FROM generate_series(1, %(rows)s::int) AS i",
        {"rows": rows},
    )
    conn.execute(
        "INSERT INTO message_queue (topic, payload) "
        "SELECT 'topic', md5(i::text) FROM generate_series(1, 1000) AS i"
    )


class Writer(threading.Thread):
    """A service inserting rows as fast as it can until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.inserted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self.stop.is_set():
                    conn.execute("INSERT INTO message_queue (topic, payload) VALUES ('w', 'x')")
                    conn.execute(
                        "INSERT INTO logs (service_name, level, message) "
                        "VALUES ('writer', 'INFO', 'x')"
                    )
                    self.inserted += 1
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def test_backup_taken_while_services_write_is_restorable_and_verifies(
    database: Any, conn: psycopg.Connection[Any], backup_settings: Settings
) -> None:
    _seed(conn)
    writer = Writer(database.url)
    writer.start()
    try:
        while writer.inserted < 20:  # the writer is really writing when the dump starts
            pass
        backup = backups.create_backup(database.target, backup_settings, now=NOW)
        during = writer.inserted
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None
    assert backup is not None
    assert writer.inserted > during >= 20
    counts = backup.row_counts or {}
    recorded_queue = counts["public.message_queue"]
    # the snapshot holds some of the writer's rows, not all of them
    assert 1000 + 20 <= recorded_queue < 1000 + writer.inserted
    assert sum(v for k, v in counts.items() if k.startswith("public.logs_")) >= 20_000 + 20
    path = Path(backup.file_path)
    assert path.is_file()
    assert path.stat().st_size == backup.size_bytes
    assert backups.file_digest(path).sha256 == backup.sha256
    assert not list(path.parent.glob(".*partial"))  # no temporary file left behind

    result = backups.verify_backup(database.target, backup_settings, backup.id, now=NOW)
    assert result.passed, result.problems
    assert result.rows_compared == sum(counts.values())
    row = conn.execute(
        "SELECT verify_result, verified_at, verify_message FROM backups WHERE id = %(id)s",
        {"id": backup.id},
    ).fetchone()
    assert row is not None
    assert row[0] == "passed"
    assert row[1] == NOW
    # the scratch database is gone
    assert conn.execute(
        "SELECT count(*) FROM pg_database WHERE datname = %(n)s", {"n": result.scratch_database}
    ).fetchone() == (0,)


def test_truncated_copy_fails_verify_with_a_clear_message(
    database: Any, conn: psycopg.Connection[Any], config_file: Path, cli: Any
) -> None:
    _seed(conn, 2000)
    created = cli(
        "backup",
        "create",
        "--config",
        str(config_file),
        "--database-url",
        database.url,
        "--verify",
        "--json",
    )
    assert created.code == 0, created.stderr
    assert json.loads(created.stdout)["verification"]["passed"] is True
    row = conn.execute("SELECT id, file_path, size_bytes FROM backups").fetchone()
    assert row is not None
    backup_id, file_path, size = row
    with open(file_path, "r+b") as handle:
        handle.truncate(size // 2)
    result = cli(
        "backup",
        "verify",
        str(backup_id),
        "--config",
        str(config_file),
        "--database-url",
        database.url,
    )
    assert result.code == 1
    assert f"backup {backup_id} FAILED verification" in result.stderr
    assert "truncated" in result.stderr
    assert "Traceback" not in result.output
    assert conn.execute(
        "SELECT verify_result FROM backups WHERE id = %(id)s", {"id": backup_id}
    ).fetchone() == ("failed",)


def test_corrupted_and_missing_files_are_named(database: Any, backup_settings: Settings) -> None:
    backup = backups.create_backup(database.target, backup_settings, now=NOW)
    assert backup is not None
    path = Path(backup.file_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = backups.verify_backup(database.target, backup_settings, backup.id, now=NOW)
    assert not result.passed
    assert "checksum mismatch" in result.message
    assert "corrupted" in result.message
    path.unlink()
    result = backups.verify_backup(database.target, backup_settings, backup.id, now=NOW)
    assert not result.passed
    assert "missing" in result.message
    with pytest.raises(BackupError, match="cannot be restored"):
        backups.restore_backup(
            database.target, backup_settings, backup.id, database=f"{database.name}_r"
        )


def test_restore_into_new_database_and_refuse_existing_one(
    database: Any,
    conn: psycopg.Connection[Any],
    backup_settings: Settings,
    cli: Any,
    tmp_path: Path,
) -> None:
    _seed(conn, 500)
    backup = backups.create_backup(database.target, backup_settings, now=NOW)
    assert backup is not None
    restored = f"{database.name}_r"
    try:
        result = backups.restore_backup(
            database.target, backup_settings, backup.id, database=restored
        )
        assert result.problems == ()
        assert not result.replaced
        with psycopg.connect(database.url.rsplit("/", 1)[0] + "/" + restored) as other:
            assert other.execute("SELECT count(*) FROM logs").fetchone() == (500,)
        config = tmp_path / "restore.toml"
        config.write_text(f'[backups]\ndirectory = "{tmp_path}"\n')
        refused = cli(
            "backup",
            "restore",
            str(backup.id),
            "--target-db",
            restored,
            "--config",
            str(config),
            "--database-url",
            database.url,
        )
        assert refused.code == 2
        assert "already exists; pass --force" in refused.stderr
        replaced = backups.restore_backup(
            database.target, backup_settings, backup.id, database=restored, force=True
        )
        assert replaced.replaced
        with pytest.raises(UsageError, match="refusing to restore over"):
            backups.restore_backup(
                database.target, backup_settings, backup.id, database=database.name, force=True
            )
    finally:
        db.drop_database(database.target.with_dbname(restored))


def test_prune_never_deletes_the_newest_verified_backup(
    database: Any, conn: psycopg.Connection[Any], backup_settings: Settings
) -> None:
    made = []
    for days_ago in (30, 20, 10, 0):
        backup = backups.create_backup(
            database.target, backup_settings, now=NOW - timedelta(days=days_ago)
        )
        assert backup is not None
        made.append(backup)
    oldest, second, third, newest = made
    assert backups.verify_backup(database.target, backup_settings, oldest.id, now=NOW).passed
    archive = tmp_archive = Path(backup_settings.backups.directory) / "logs_p2026_01_01.csv.gz"
    tmp_archive.write_bytes(b"archived rows")
    backups.record_backup(
        conn,
        kind="partition_archive",
        file_path=archive,
        created_at=NOW - timedelta(days=300),
        **backups.file_digest(archive).__dict__,
    )

    leftover = Path(backup_settings.backups.directory) / ".kronos_x.dump.123.partial"
    leftover.write_bytes(b"half a dump")
    os.utime(leftover, (NOW.timestamp() - 2 * 86400,) * 2)
    fresh_leftover = Path(backup_settings.backups.directory) / ".kronos_y.dump.456.partial"
    fresh_leftover.write_bytes(b"a dump being written")
    os.utime(fresh_leftover, (NOW.timestamp() - 60,) * 2)
    dry = backups.prune_backups(database.target, backup_settings, now=NOW, keep=1, dry_run=True)
    assert dry is not None
    assert [b.id for b in dry.pruned] == [second.id, third.id]
    assert all(Path(b.file_path).exists() for b in made)

    result = backups.prune_backups(database.target, backup_settings, now=NOW, keep=1)
    assert result is not None
    assert [b.id for b in result.pruned] == [second.id, third.id]
    assert result.kept_newest_verified == oldest.id
    assert Path(oldest.file_path).exists()  # the newest *verified* one, though old
    assert Path(newest.file_path).exists()
    assert not Path(second.file_path).exists()
    assert not Path(third.file_path).exists()
    assert archive.exists()  # partition archives are never pruned
    assert result.stale_partials == (str(leftover),)
    assert not leftover.exists()
    assert fresh_leftover.exists()  # a dump in progress keeps its file
    statuses = dict(conn.execute("SELECT id, status FROM backups").fetchall())
    assert statuses[second.id] == "pruned"
    assert statuses[oldest.id] == "available"

    # --older-than alone: the old verified one stays all the same
    result = backups.prune_backups(
        database.target, backup_settings, now=NOW, older_than=timedelta(days=1)
    )
    assert result is not None
    assert result.pruned == ()
    assert Path(oldest.file_path).exists()
    with pytest.raises(UsageError):
        backups.prune_backups(database.target, backup_settings, now=NOW, keep=0)


def test_second_create_does_nothing_while_one_runs(
    database: Any, backup_settings: Settings
) -> None:
    with database.connect() as holder, locks.advisory_lock(holder, backups.CREATE_LOCK):
        assert backups.create_backup(database.target, backup_settings, now=NOW) is None
    assert not any(Path(backup_settings.backups.directory).glob("*.dump"))


def test_failed_dump_leaves_no_file_and_no_row(
    database: Any, conn: psycopg.Connection[Any], backup_settings: Settings, tmp_path: Path
) -> None:
    failing = tmp_path / "pg_dump"
    failing.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && exec pg_dump --version\n'
        'for a; do case $a in --file=*) echo partial > "${a#--file=}";; esac; done\n'
        "echo 'pg_dump: error: disk full' >&2; exit 1\n"
    )
    failing.chmod(0o755)
    settings = Settings(
        backups=BackupSettings(directory=backup_settings.backups.directory, pg_dump=str(failing))
    )
    with pytest.raises(BackupError, match=r"pg_dump failed .*disk full"):
        backups.create_backup(database.target, settings, now=NOW)
    assert list(Path(settings.backups.directory).iterdir()) == []
    assert conn.execute("SELECT count(*) FROM backups").fetchone() == (0,)


def test_backups_table_rules(conn: psycopg.Connection[Any]) -> None:
    # a job that knows only the path (the partition archiver before it records more)
    conn.execute("INSERT INTO backups (file_path) VALUES ('/srv/a.gz')")
    assert conn.execute("SELECT kind, status FROM backups").fetchone() == ("unknown", "available")
    with pytest.raises(pg_errors.CheckViolation):
        conn.execute("INSERT INTO backups (file_path, kind) VALUES ('/srv/b.dump', 'pg_dump')")
    with pytest.raises(pg_errors.CheckViolation):
        conn.execute(
            "INSERT INTO backups (file_path, sha256) VALUES ('/x', %(s)s)", {"s": "Z" * 64}
        )
    with pytest.raises(UsageError):
        backups.record_backup(conn, kind="tape", file_path="/x")


def test_status_is_critical_without_a_verified_backup_and_ages(
    database: Any,
    conn: psycopg.Connection[Any],
    backup_settings: Settings,
    cli: Any,
    config_file: Path,
) -> None:
    common = ("--config", str(config_file), "--database-url", database.url)
    empty = cli("backup", "status", "--now", NOW.isoformat(), *common)
    assert empty.code == 2
    assert empty.stdout.startswith("BACKUP CRITICAL: no usable verified backup")
    backup = backups.create_backup(database.target, backup_settings, now=NOW)
    assert backup is not None
    assert cli("backup", "status", "--now", NOW.isoformat(), *common).code == 2  # unverified
    assert backups.verify_backup(database.target, backup_settings, backup.id, now=NOW).passed
    fresh = cli("backup", "status", "--now", (NOW + timedelta(hours=1)).isoformat(), *common)
    assert fresh.code == 0, fresh.output
    stale = cli("backup", "status", "--now", (NOW + timedelta(hours=30)).isoformat(), *common)
    assert stale.code == 1
    old = cli(
        "backup",
        "status",
        "--critical",
        "1d",
        "--now",
        (NOW + timedelta(hours=30)).isoformat(),
        *common,
    )
    assert old.code == 2
    bad = cli("backup", "status", "--warning", "soon", *common)
    assert bad.code == 3  # a monitoring command that cannot run is UNKNOWN
    assert bad.stdout.startswith("BACKUP UNKNOWN: --warning: invalid duration")
    # a newer dump that fails verification is a warning even while the old one is fresh
    newer = backups.create_backup(database.target, backup_settings, now=NOW + timedelta(hours=1))
    assert newer is not None
    Path(newer.file_path).unlink()
    assert not backups.verify_backup(database.target, backup_settings, newer.id, now=NOW).passed
    health = backups.backup_status(conn, backup_settings, now=NOW + timedelta(hours=2))
    assert health.status is Status.WARNING
    assert f"newest backup {newer.id} FAILED verification" in health.summary


def test_prune_and_list_from_the_command_line(
    database: Any, backup_settings: Settings, cli: Any, config_file: Path
) -> None:
    for days_ago in (40, 35, 1):
        assert backups.create_backup(
            database.target, backup_settings, now=NOW - timedelta(days=days_ago)
        )
    common = ("--config", str(config_file), "--database-url", database.url)
    dry = cli(
        "backup", "prune", "--older-than", "30d", "--dry-run", "--now", NOW.isoformat(), *common
    )
    assert dry.code == 0, dry.output
    assert dry.stdout.count("would prune backup") == 2
    done = cli(
        "backup", "prune", "--older-than", "30d", "--now", NOW.isoformat(), "--json", *common
    )
    assert done.code == 0, done.output
    assert len(json.loads(done.stdout)["pruned"]) == 2
    again = cli("backup", "prune", "--older-than", "30d", "--now", NOW.isoformat(), *common)
    assert again.code == 0
    assert again.stdout == ""  # nothing to do, no terminal: quiet
    listed = json.loads(cli("backup", "list", "--json", *common).stdout)
    assert [b["status"] for b in listed] == ["available"]
    everything = json.loads(cli("backup", "list", "--all", "--json", *common).stdout)
    assert [b["status"] for b in everything] == ["available", "pruned", "pruned"]
    assert cli("backup", "prune", "--older-than", "a while", *common).code == 2
    assert cli("backup", "prune", "--keep", "0", *common).code == 2
    assert cli("backup", "verify", "999", *common).code == 2
