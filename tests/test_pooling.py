"""Through a real PgBouncer, in transaction and in session pooling mode.

Each scenario starts its PgBouncer once (tests/topology.py) and runs several commands through
it, the way Kronos's cron jobs and deploys reach the database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import (
    REPO,
    CliResult,
    Database,
    clean_environment,
    migration_waiting_on_a_lock,
    run_cli,
    wait_for,
    wait_until_backend_ends,
)
from topology import PgBouncer, pgbouncer

from kronos_db import db, locks, maintenance, migrations
from kronos_db.config import HousekeepingSettings, Settings
from kronos_db.reports import health

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
HEAD = migrations.MigrationTree(REPO).script_directory().get_heads()[0]
# 0008 and 0011 run outside a transaction (CREATE INDEX CONCURRENTLY): between them, 0009 and
# 0010 are what a transaction pool may apply
LAST_TRANSACTIONAL = "0010"
# what kronos-db sets, and what must never stay behind on a pooled server connection
SETTINGS = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"
ROWS = 24  # per job; with batches of 3, each statement runs 8 times (psycopg prepares at 5)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def transaction_pool() -> Iterator[PgBouncer]:
    with pgbouncer("transaction") as bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def session_pool() -> Iterator[PgBouncer]:
    # a session pool needs a server connection per client connection: ten deploys use ~30
    with pgbouncer("session", pool_size=40) as bouncer:
        yield bouncer


def _server_defaults(database: Database) -> dict[str, str]:
    with database.connect() as conn:
        return {
            name: str(conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0])  # type: ignore[index]
            for name in SETTINGS
        }


def assert_nothing_left_behind(bouncer: PgBouncer, database: Database) -> None:
    """No kronos-db setting on any pooled server connection, no lock, no lease held."""
    defaults = _server_defaults(database)
    for pid, values in bouncer.server_settings(database.name, SETTINGS).items():
        assert values == defaults, f"server connection {pid} kept {values}"
    with database.connect() as conn:
        advisory = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        assert advisory == (0,)
        held = conn.execute(
            "SELECT name FROM kronos_leases"
            " WHERE released_at IS NULL AND expires_at > clock_timestamp()"
        ).fetchall()
        assert held == []


def _concurrently(count: int, *args: str) -> list[CliResult]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: run_cli(*args, timeout=300), range(count)))


def _applied(results: list[CliResult]) -> list[str]:
    return sorted(step["revision"] for r in results for step in json.loads(r.stdout)["steps"])


def _kill_a_blocked_migration(url: str, database: Database) -> None:
    """Start `migrate`, let it block inside revision 0009, SIGKILL it, let its backend end."""
    with database.connect() as observer, database.connect(autocommit=False) as blocker:
        blocker.execute("LOCK TABLE backups IN EXCLUSIVE MODE")  # 0009 alters backups
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kronos_db",
                "migrate",
                LAST_TRANSACTIONAL,
                "--lock-timeout=60s",
                f"--database-url={url}",
            ],
            cwd=REPO,
            env=clean_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as process:
            try:
                wait_for(lambda: migration_waiting_on_a_lock(observer) is not None, "0009 to block")
                orphan = migration_waiting_on_a_lock(observer)
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
            finally:
                process.kill()
        blocker.rollback()
        # the pooler drops the killed client's server connection; its transaction rolls back
        wait_until_backend_ends(observer, orphan)
        assert migrations.current_revisions(observer) == ("0008",)
        stale = locks.holder(observer, migrations.MIGRATION_LOCK)
        assert stale is not None and not stale.free, "the killed run's lease is still there"


def test_migrate_through_a_transaction_pool(
    transaction_pool: PgBouncer, empty_database: Database
) -> None:
    url = transaction_pool.url(empty_database.name)
    # 0008 builds its indexes with CREATE INDEX CONCURRENTLY: refused up front, in one line
    refused = run_cli("migrate", "--database-url", url)
    assert refused.code == 2, refused.output
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "revision 0008" in refused.stderr
    assert "transaction pooler" in refused.stderr
    assert "option --database-url" in refused.stderr
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == ()

    migrations.upgrade(Settings(), empty_database.target, "0008")  # directly, as documented
    _kill_a_blocked_migration(url, empty_database)

    # ten deploys at once, through the pool, right after the kill: each revision applied once
    results = _concurrently(
        10, "migrate", LAST_TRANSACTIONAL, "--json", "--lock-wait", "120s", "--database-url", url
    )
    assert [r.code for r in results] == [0] * 10, [r.stderr for r in results]
    assert _applied(results) == ["0009", "0010"]
    # the killed run's lease did not make anyone wait for it to expire
    assert sum("took over the migrations lock" in r.stderr for r in results) == 1
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == (LAST_TRANSACTIONAL,)
    # the rest of the way (0011 is CONCURRENTLY again) is refused up front, then done directly
    rest = run_cli("migrate", "--database-url", url)
    assert rest.code == 2 and "revision 0011" in rest.stderr, rest.output
    migrations.upgrade(Settings(), empty_database.target, "head")
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == (HEAD,)
    assert_nothing_left_behind(transaction_pool, empty_database)


def _seed(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """ROWS rows for each housekeeping job; returns what each job must change."""
    past, long_ago = NOW - timedelta(hours=2), NOW - timedelta(days=30)
    conn.execute(
        "INSERT INTO sessions (token, expires_at, last_active_at)"
        " SELECT 's' || n || %(tag)s, %(past)s, %(now)s FROM generate_series(1, %(n)s) AS n",
        {"past": past, "now": NOW, "n": ROWS, "tag": time.monotonic_ns()},
    )
    conn.execute(
        "INSERT INTO cache (key, value, expires_at)"
        " SELECT 'c' || n || %(tag)s, 'v', %(past)s FROM generate_series(1, %(n)s) AS n",
        {"past": past, "n": ROWS, "tag": time.monotonic_ns()},
    )
    for status in ("processing", "processed"):
        conn.execute(
            "INSERT INTO message_queue (topic, payload, status, status_changed_at)"
            " SELECT 't', 'p', %(status)s, %(then)s FROM generate_series(1, %(n)s)",
            {"status": status, "then": long_ago, "n": ROWS},
        )
    conn.execute(
        "INSERT INTO rate_limits (user_id, route_id, request_count, last_request)"
        " SELECT u.id, r.id, 5, %(past)s FROM users AS u CROSS JOIN routes AS r"
        " ON CONFLICT (user_id, route_id) DO UPDATE SET request_count = 5",
        {"past": past},
    )
    return {
        "expire-sessions": ROWS,
        "expire-cache": ROWS,
        "requeue-stuck": ROWS,
        "purge-processed": ROWS,
        "reset-ratelimits": ROWS,
    }


def _users_and_routes(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO roles (name, permissions) VALUES ('user', '{}')")
    conn.execute(
        "INSERT INTO users (username, email, password_hash, role_id)"
        " SELECT 'u' || n, 'u' || n || '@example.org', %(hash)s, 1"
        "   FROM generate_series(1, %(n)s) AS n",
        {"hash": HASH, "n": ROWS},
    )
    conn.execute("INSERT INTO routes (path, service, method) VALUES ('/api', 'api', 'GET')")


def _rows_per_job(reports: list[dict[str, Any]]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for report in reports:
        for job in report["jobs"]:
            rows.setdefault(job["job"], []).append(job["result"]["rows"] if job["result"] else 0)
    return rows


def test_maintenance_through_a_transaction_pool(
    transaction_pool: PgBouncer, database: Database
) -> None:
    url = transaction_pool.url(database.name)
    with database.connect() as conn:
        _users_and_routes(conn)
        expected = _seed(conn)

    # three overlapping cron runs: each job is done once, by one of them
    results = _concurrently(
        3,
        "maintain",
        "--json",
        "--now",
        NOW.isoformat(),
        "--batch-size",
        "3",
        "--pause",
        "40ms",
        "--database-url",
        url,
    )
    assert [r.code for r in results] == [0] * 3, [r.output for r in results]
    reports = [json.loads(r.stdout) for r in results]
    rows = _rows_per_job(reports)
    assert sum(rows.pop("rotate-partitions")) > 0
    assert {job: sum(counts) for job, counts in rows.items()} == expected
    for job, counts in rows.items():
        assert sorted(counts)[:2] == [0, 0], f"{job} was done by more than one run: {counts}"
    statuses = [job["status"] for report in reports for job in report["jobs"]]
    assert "skipped" in statuses, "the runs did not overlap: nothing shows the exclusion"

    # a warm pool, again and again: no prepared statement of one client meets another
    target = db.resolve_target(url, Settings())
    settings = Settings(housekeeping=HousekeepingSettings(batch_size=3))
    for _ in range(3):
        with database.connect() as conn:
            expected = _seed(conn)
        report = maintenance.run_maintenance(target, settings, NOW)
        assert [o.error for o in report.jobs if o.status != "ok"] == []
        assert {o.job: o.rows for o in report.jobs if o.job in expected} == expected
        with db.connection(target) as conn:
            checks = health.health_report(conn, Settings(), now=NOW).checks
        assert not [c for c in checks if "prepared statement" in c.summary], checks
    for command in (("expire", "sessions"), ("queue", "stats"), ("ratelimits", "reset")):
        result = run_cli(*command, "--database-url", url)
        assert result.code == 0, result.output

    # a command that needs one session says so, in one line, and does nothing
    backup = run_cli("backup", "create", "--directory", "/nonexistent", "--database-url", url)
    assert backup.code == 2, backup.output
    assert len(backup.stderr.strip().splitlines()) == 1
    assert "transaction pooler" in backup.stderr and "pool_mode = session" in backup.stderr
    assert_nothing_left_behind(transaction_pool, database)


def test_maintenance_leaves_a_services_session_lock_alone(database: Database) -> None:
    """Through a one-connection transaction pool, maintain shares a service's server connection.

    A service that (wrongly, but it happens) holds a session-level advisory lock behind the
    pooler keeps it on that server connection; nothing kronos-db sends between its jobs may
    release it or reset that session.
    """
    with database.connect() as conn:
        _users_and_routes(conn)
        expected = _seed(conn)
    with pgbouncer("transaction", pool_size=1) as bouncer:
        url = bouncer.url(database.name)
        with bouncer.connect(database.name) as service:
            service.execute("SELECT pg_advisory_lock(4242)")
            holder = service.execute("SELECT pg_backend_pid()").fetchone()
            report = maintenance.run_maintenance(
                db.resolve_target(url, Settings()),
                Settings(housekeeping=HousekeepingSettings(batch_size=3)),
                NOW,
            )
            assert [o.error for o in report.jobs if o.status != "ok"] == []
            assert {o.job: o.rows for o in report.jobs if o.job in expected} == expected
            with database.connect() as observer:
                held = observer.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242"
                    " AND granted"
                ).fetchone()
            assert held == holder, "maintain released the service's lock"
            # the jobs ran on the service's server connection: the pool has only that one
            assert service.execute("SELECT pg_backend_pid()").fetchone() == holder


def test_migrate_and_maintain_through_a_session_pool(
    session_pool: PgBouncer, empty_database: Database
) -> None:
    url = session_pool.url(empty_database.name)
    results = _concurrently(10, "migrate", "--json", "--lock-wait", "120s", "--database-url", url)
    assert [r.code for r in results] == [0] * 10, [r.stderr for r in results]
    tree = migrations.MigrationTree(REPO)
    assert _applied(results) == sorted(s.revision for s in tree.revisions())
    maintained = run_cli("maintain", "--database-url", url)
    assert maintained.code == 0, maintained.output
    assert_nothing_left_behind(session_pool, empty_database)
