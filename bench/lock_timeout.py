"""Benchmark: how long a migration's lock wait stalls the services, per lock_timeout setting.

    .venv/bin/python bench/lock_timeout.py [--server postgresql://postgres@127.0.0.1:5432]
                                           [--report-seconds 6] [--rate 200]

A revision that needs ACCESS EXCLUSIVE for an instant (``ALTER TABLE sessions ADD COLUMN``,
catalog only) is applied while:

* the auth service inserts a session every ``1/rate`` s on its own connection (each INSERT
  timed), and
* a report holds a transaction that read ``sessions`` (ACCESS SHARE) for ``--report-seconds``,
  starting half a second before the migration.

While the ALTER waits for the report, every INSERT queues behind it, so the longest INSERT is
the stall the setting allows. Each row is one setting: the old default (5s, no retry), then
shorter timeouts with retries (jittered back-off within the budget). The baseline is the same
insert loop with no migration running, in the same run.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kronos_db import db, migrations
from kronos_db.config import MigrationSettings, Settings
from kronos_db.errors import KronosError
from kronos_db.migration_sql import sql_path
from kronos_db.resources import resource_root

REVISION = "ALTER TABLE sessions ADD COLUMN bench_flag boolean;\n"
UNDO = "ALTER TABLE sessions DROP COLUMN IF EXISTS bench_flag;\n"


@dataclass(frozen=True)
class Case:
    name: str
    lock_timeout: timedelta
    retries: int


CASES = [
    Case("old default: 5s, no retry", timedelta(seconds=5), 0),
    Case("2s, retries", timedelta(seconds=2), 30),
    Case("1s, retries", timedelta(seconds=1), 30),
    Case("500ms, retries (new default)", timedelta(milliseconds=500), 30),
    Case("200ms, retries", timedelta(milliseconds=200), 30),
]


class Inserter(threading.Thread):
    def __init__(self, url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, 1.0 / rate
        self.stop = threading.Event()
        self.waits: list[float] = []

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(self.interval):
                started = time.monotonic()
                conn.execute("INSERT INTO sessions (token) VALUES (md5(random()::text))")
                self.waits.append(time.monotonic() - started)


def tree_with_revision(directory: Path) -> Path:
    root = directory / "tree"
    shutil.copytree(resource_root() / "migrations", root / "migrations")
    shutil.copytree(resource_root() / "sql", root / "sql")
    created = migrations.create_revision(
        Settings(migrations=MigrationSettings(directory=str(root))), "bench add a column"
    )
    sql_path(created.files[0], "upgrade").write_text(REVISION, encoding="utf-8")
    sql_path(created.files[0], "downgrade").write_text(UNDO, encoding="utf-8")
    return root


def run_case(url: str, tree: Path, case: Case | None, hold: float, rate: float) -> dict[str, Any]:
    target = db.resolve_target(url, Settings())
    inserter = Inserter(url, rate)
    inserter.start()
    time.sleep(0.5)
    outcome, attempts, elapsed = "no migration (baseline)", 0, 0.0
    with psycopg.connect(url) as report:
        report.execute("SELECT count(*) FROM sessions")  # ACCESS SHARE until the rollback
        release = threading.Timer(hold, report.rollback)
        release.start()
        time.sleep(0.5)
        if case is not None:
            settings = Settings(
                migrations=MigrationSettings(
                    directory=str(tree),
                    lock_timeout=case.lock_timeout,
                    retries=case.retries,
                    retry_budget=timedelta(minutes=5),
                )
            )
            started = time.monotonic()
            try:
                result = migrations.upgrade(settings, target, "head")
                outcome, attempts = "applied", result.attempts
            except KronosError as exc:
                outcome, attempts = f"failed (exit {exc.exit_code})", case.retries + 1
            elapsed = time.monotonic() - started
        release.join()
    time.sleep(0.5)
    inserter.stop.set()
    inserter.join()
    if case is not None and outcome == "applied":
        migrations.downgrade(
            Settings(migrations=MigrationSettings(directory=str(tree))), target, "-1"
        )
    waits = sorted(inserter.waits)
    return {
        "worst_ms": waits[-1] * 1000,
        "p99_ms": waits[int(len(waits) * 0.99)] * 1000,
        "stalled": sum(1 for w in waits if w > 0.1),
        "inserts": len(waits),
        "outcome": outcome,
        "attempts": attempts,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--report-seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    name = f"kronos_bench_locks_{secrets.token_hex(4)}"
    admin = psycopg.connect(f"{args.server}/postgres", autocommit=True)
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{args.server}/{name}"
    try:
        with tempfile.TemporaryDirectory() as directory:
            tree = tree_with_revision(Path(directory))
            migrations.upgrade(Settings(), db.resolve_target(url, Settings()), "head")
            print(
                f"report holds ACCESS SHARE on sessions for {args.report_seconds:g}s; "
                f"inserts at {args.rate:g}/s\n"
            )
            header = (
                f"{'lock_timeout setting':<32} {'worst insert':>12} {'p99':>8} "
                f"{'>100ms':>7} {'migration':>18} {'attempts':>8} {'took':>7}"
            )
            print(header)
            print("-" * len(header))
            baseline = run_case(url, tree, None, args.report_seconds, args.rate)
            rows = [("baseline: no migration", baseline)]
            for case in CASES:
                rows.append((case.name, run_case(url, tree, case, args.report_seconds, args.rate)))
            for label, row in rows:
                print(
                    f"{label:<32} {row['worst_ms']:>9.0f} ms {row['p99_ms']:>5.0f} ms "
                    f"{row['stalled']:>7} {row['outcome']:>18} {row['attempts']:>8} "
                    f"{row['seconds']:>6.1f}s"
                )
            old, new = rows[1][1], rows[4][1]
            print(
                f"\nworst insert stall, old default / new default: "
                f"{old['worst_ms'] / new['worst_ms']:.1f}x"
            )
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


if __name__ == "__main__":
    main()
