"""What `backup create` and `backup verify` cost on top of plain pg_dump / pg_restore.

kronos-db adds, to a dump: an exported snapshot, exact row counts of every table in it, fsync,
SHA-256 and a rename; to a restore: size/SHA-256 check, `pg_restore --list`, row counts and the
comparison. Baselines: `pg_dump -Fc` to a file; createdb + `pg_restore` + dropdb.

    .venv/bin/python bench/backups.py [--rows 200000] [--repeat 3]

Uses the test server (KRONOS_TEST_HOST/PORT/USER, 127.0.0.1:5432 postgres) and a database of
its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from kronos_db import backups, db, migrations
from kronos_db.config import BackupSettings, Settings

HOST = os.environ.get("KRONOS_TEST_HOST", "127.0.0.1")
PORT = os.environ.get("KRONOS_TEST_PORT", "5432")
USER = os.environ.get("KRONOS_TEST_USER", "postgres")


def url(name: str) -> str:
    return f"postgresql://{USER}@{HOST}:{PORT}/{name}"


def timed(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="log rows to seed")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, median kept")
    options = parser.parse_args()

    name = f"kronos_bench_backups_{os.getpid()}_{secrets.token_hex(3)}"
    target = db.resolve_target(url(name), Settings())
    db.create_database(target)
    try:
        migrations.upgrade(Settings(), target, "head")
        with psycopg.connect(url(name), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO logs (service_name, level, message) "
                "SELECT 'svc-' || (i %% 7), 'INFO', repeat(md5(i::text), 3) "
                "FROM generate_series(1, %(rows)s::int) AS i",
                {"rows": options.rows},
            )
            conn.execute(
                "INSERT INTO message_queue (topic, payload) "
                "SELECT 'topic-' || (i %% 5), md5(i::text) "
                "FROM generate_series(1, %(rows)s::int / 4) AS i",
                {"rows": options.rows},
            )
            conn.execute("VACUUM ANALYZE")
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
            database_size = size.fetchone()[0]  # type: ignore[index]

        with tempfile.TemporaryDirectory() as directory:
            settings = Settings(backups=BackupSettings(directory=directory, compression=1))
            plain = Path(directory) / "plain.dump"

            def baseline_dump() -> None:
                subprocess.run(
                    ["pg_dump", "-Fc", "-Z1", f"--file={plain}", f"--dbname={url(name)}"],
                    check=True,
                )

            made: list[backups.Backup] = []

            def kronos_dump() -> None:
                backup = backups.create_backup(target, settings, now=datetime.now(UTC))
                assert backup is not None
                made.append(backup)

            def baseline_restore() -> None:
                scratch = f"{name}_r"
                subprocess.run(
                    ["createdb", "-h", HOST, "-p", PORT, "-U", USER, "-T", "template0", scratch],
                    check=True,
                )
                subprocess.run(
                    [
                        "pg_restore",
                        "--exit-on-error",
                        "--no-owner",
                        "--no-privileges",
                        f"--dbname={url(scratch)}",
                        str(plain),
                    ],
                    check=True,
                )
                subprocess.run(["dropdb", "-h", HOST, "-p", PORT, "-U", USER, scratch], check=True)

            def kronos_verify() -> None:
                result = backups.verify_backup(target, settings, made[-1].id, now=datetime.now(UTC))
                assert result.passed, result.problems

            dump_base = timed(baseline_dump, options.repeat)
            dump_kronos = timed(kronos_dump, options.repeat)
            restore_base = timed(baseline_restore, options.repeat)
            restore_kronos = timed(kronos_verify, options.repeat)
            dump_size = made[-1].size_bytes

        print(
            f"database: {options.rows} log rows + {options.rows // 4} queue rows, "
            f"{database_size}; dump {dump_size / 1e6:.1f} MB (zlib level 1); "
            f"median of {options.repeat}"
        )
        print(f"{'operation':<38}{'baseline':>10}{'kronos-db':>11}{'ratio':>8}")
        for label, base, ours in (
            ("dump (pg_dump -Fc vs backup create)", dump_base, dump_kronos),
            ("restore check (pg_restore vs verify)", restore_base, restore_kronos),
        ):
            print(f"{label:<38}{base:>9.2f}s{ours:>10.2f}s{ours / base:>7.2f}x")
    finally:
        db.drop_database(target)


if __name__ == "__main__":
    main()
