"""Safe against production: concurrent runs, a run killed half-way, lock timeouts, the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from conftest import (
    REPO,
    Database,
    clean_environment,
    migration_waiting_on_a_lock,
    run_cli,
    wait_for,
    wait_until_backend_ends,
)

from kronos_db import locks, migrations
from kronos_db.config import Settings

HEAD = migrations.MigrationTree(REPO).script_directory().get_heads()[0]
REVISION_COUNT = len(migrations.MigrationTree(REPO).revisions())


@pytest.mark.slow
def test_ten_concurrent_migrations_apply_each_revision_once(empty_database: Database) -> None:
    def run(_: int) -> Any:
        return run_cli(
            "migrate", "--json", "--lock-wait", "120s", "--database-url", empty_database.url
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(run, range(10)))
    assert [r.code for r in results] == [0] * 10, [r.stderr for r in results]
    applied = [step["revision"] for r in results for step in json.loads(r.stdout)["steps"]]
    assert sorted(applied) == sorted({*applied}), "a revision was applied twice"
    assert len(applied) == REVISION_COUNT
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == (HEAD,)
        assert conn.execute("SELECT count(*) FROM kronos_migrations").fetchone() == (
            REVISION_COUNT,
        )


@pytest.mark.slow
def test_a_run_killed_half_way_leaves_the_previous_revision(empty_database: Database) -> None:
    settings = Settings()
    migrations.upgrade(settings, empty_database.target, "0004")
    with empty_database.connect() as observer, empty_database.connect(autocommit=False) as blocker:
        # 0005 creates routes, then rate_limits with a foreign key to users: it waits there
        blocker.execute("LOCK TABLE users IN EXCLUSIVE MODE")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kronos_db",
                "migrate",
                "--lock-timeout",
                "60s",
                "--database-url",
                empty_database.url,
            ],
            cwd=REPO,
            env=clean_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(
                lambda: migration_waiting_on_a_lock(observer) is not None,
                "the migration to wait on the lock",
            )
            orphan = migration_waiting_on_a_lock(observer)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
        blocker.rollback()
        wait_until_backend_ends(observer, orphan)
        assert migrations.current_revisions(observer) == ("0004",)
        assert observer.execute("SELECT to_regclass('routes')").fetchone() == (None,)
    result = run_cli("migrate", "--database-url", empty_database.url)
    assert result.code == 0, result.stderr
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == (HEAD,)


def test_lock_timeout_gives_up_quickly_and_names_the_blocker(empty_database: Database) -> None:
    migrations.upgrade(Settings(), empty_database.target, "0004")
    with empty_database.connect(autocommit=False) as blocker:
        blocker.execute("SET application_name = 'long-report'")
        blocker.execute("LOCK TABLE users IN EXCLUSIVE MODE")
        blocker_pid = blocker.info.backend_pid
        started = time.monotonic()
        result = run_cli(
            "migrate",
            "--lock-timeout",
            "1s",
            "--retries",
            "0",
            "--database-url",
            empty_database.url,
        )
        elapsed = time.monotonic() - started
        blocker.rollback()
    assert result.code == 4, result.output
    assert f"pid {blocker_pid}" in result.stderr
    assert "long-report" in result.stderr
    assert "0005" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert elapsed < 15
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == ("0004",)


def _lock_wait_started(conn: psycopg.Connection[Any]) -> Any:
    """When the kronos-db statement now waiting for a lock started, if one waits."""
    row = conn.execute(
        "SELECT query_start FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'kronos-db' AND wait_event_type = 'Lock'"
    ).fetchone()
    return row[0] if row else None


def test_retries_wait_out_a_short_blocker(empty_database: Database) -> None:
    migrations.upgrade(Settings(), empty_database.target, "0004")
    argv = [sys.executable, "-m", "kronos_db", "migrate", "--lock-timeout", "500ms"]
    argv += ["--retries", "6", "--database-url", empty_database.url]
    with (
        empty_database.connect() as observer,
        empty_database.connect(autocommit=False) as blocker,
    ):
        blocker.execute("LOCK TABLE users IN EXCLUSIVE MODE")
        with subprocess.Popen(
            argv,
            cwd=REPO,
            env=clean_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            try:
                # the blocker goes away only once a first attempt gave up and a second waits,
                # however slowly the machine starts the process
                wait_for(lambda: _lock_wait_started(observer), "a first attempt to wait")
                first = _lock_wait_started(observer)
                wait_for(
                    lambda: (_lock_wait_started(observer) or first) > first,
                    "a second attempt to wait",
                )
                blocker.rollback()
                _, stderr = process.communicate(timeout=120)
            finally:
                process.kill()
    assert process.returncode == 0, stderr
    assert "retry 1/6" in stderr
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == (HEAD,)


def test_a_busy_migration_lock_is_reported_with_its_holder(empty_database: Database) -> None:
    with (
        psycopg.connect(empty_database.url, application_name="other-deploy") as holder,
        locks.advisory_lock(holder, migrations.MIGRATION_LOCK),
    ):
        result = run_cli("migrate", "--lock-wait", "1s", "--database-url", empty_database.url)
    assert result.code == 4, result.output
    error = result.stderr.strip().splitlines()[-1]
    assert f"pid {os.getpid()} (other-deploy)" in error
    assert "gave up after 1s" in error
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == ()


def test_the_lock_is_released_after_a_run(empty_database: Database) -> None:
    assert run_cli("migrate", "--database-url", empty_database.url).code == 0
    with empty_database.connect() as conn:
        lease = locks.holder(conn, migrations.MIGRATION_LOCK)
        assert lease is not None and lease.released and lease.free
        with locks.try_advisory_lock(conn, migrations.MIGRATION_LOCK) as acquired:
            assert acquired
