"""`maintain`: every job once, independent of the others, with Prometheus textfile metrics."""

from __future__ import annotations

import dataclasses
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kronos_db import locks, maintenance
from kronos_db.config import HousekeepingSettings, Settings
from kronos_db.errors import KronosError, UsageError
from kronos_db.housekeeping import JobResult

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


def seed(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO sessions (token, expires_at, last_active_at) VALUES"
        " ('old', %(past)s, %(now)s), ('new', %(future)s, %(now)s)",
        {"past": NOW - timedelta(hours=1), "future": NOW + timedelta(hours=1), "now": NOW},
    )
    conn.execute(
        "INSERT INTO cache (key, value, expires_at) VALUES ('old', 'v', %(past)s)",
        {"past": NOW - timedelta(hours=1)},
    )
    conn.execute(
        "INSERT INTO message_queue (topic, payload, status, status_changed_at) VALUES"
        " ('t', 'p', 'processing', %(stuck)s), ('t', 'p', 'processed', %(old)s)",
        {"stuck": NOW - timedelta(hours=1), "old": NOW - timedelta(days=8)},
    )


def test_maintain_runs_every_job(conn: psycopg.Connection[Any], database: Any) -> None:
    seed(conn)
    report = maintenance.run_maintenance(database.target, Settings(), NOW)
    assert report.ok
    assert [o.job for o in report.jobs] == list(maintenance.job_names())
    rows = {o.job: o.rows for o in report.jobs}
    # the clock is years past the migration: its partitions go, the new days' come
    assert rows.pop("rotate-partitions") > 0
    assert rows == {
        "expire-sessions": 1,
        "expire-cache": 1,
        "requeue-stuck": 1,
        "purge-processed": 1,
        "reset-ratelimits": 0,
    }
    assert conn.execute("SELECT token FROM sessions").fetchall() == [("new",)]


def _boom(*_args: Any) -> JobResult:
    raise KronosError("boom: the disk is on fire")


def _bug(*_args: Any) -> JobResult:
    return {}["missing"]  # type: ignore[no-any-return]


def test_a_failing_job_does_not_stop_the_others(
    conn: psycopg.Connection[Any], database: Any
) -> None:
    seed(conn)
    jobs = (
        maintenance.MaintenanceJob("boom", "fails", _boom),
        maintenance.MaintenanceJob("bug", "has a bug", _bug),
        *maintenance.JOBS,
    )
    report = maintenance.run_maintenance(database.target, Settings(), NOW, jobs=jobs)
    assert report.failed == ("boom", "bug")
    assert not report.ok
    outcomes = {o.job: o for o in report.jobs}
    assert outcomes["boom"].error == "boom: the disk is on fire"
    assert outcomes["bug"].error is not None
    assert "KeyError" in outcomes["bug"].error
    assert all(o.status == "ok" for o in report.jobs[2:])
    assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (1,)


def test_jobs_share_a_connection_until_one_fails(database: Any) -> None:
    seen: list[int] = []

    def spy(conn: psycopg.Connection[Any], *_args: Any) -> JobResult:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        seen.append(row[0])
        return JobResult("spy", 0, 0, 0.0, NOW)

    def unfinished(conn: psycopg.Connection[Any], *_args: Any) -> JobResult:
        # a job that does not end its transaction must not hand it to the next one
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        return JobResult("unfinished", 0, 0, 0.0, NOW)

    jobs = [
        maintenance.MaintenanceJob("spy1", "", spy),
        maintenance.MaintenanceJob("spy2", "", spy),
        maintenance.MaintenanceJob("unfinished", "", unfinished),
        maintenance.MaintenanceJob("spy3", "", spy),
        maintenance.MaintenanceJob("boom", "", _boom),
        maintenance.MaintenanceJob("spy4", "", spy),
    ]
    report = maintenance.run_maintenance(database.target, Settings(), NOW, jobs=jobs)
    assert report.failed == ("boom",)
    first, second, third, fourth = seen
    assert first == second  # jobs that end cleanly share the connection
    assert second != third  # a fresh one after a transaction left open
    assert third != fourth  # and after a failure


def test_a_table_locked_by_ddl_fails_that_job_only(
    conn: psycopg.Connection[Any], database: Any
) -> None:
    seed(conn)
    settings = dataclasses.replace(
        Settings(), housekeeping=HousekeepingSettings(lock_timeout=timedelta(milliseconds=200))
    )
    with database.connect(autocommit=False) as migration:
        migration.execute("LOCK TABLE cache IN ACCESS EXCLUSIVE MODE")
        report = maintenance.run_maintenance(database.target, settings, NOW)
        migration.rollback()
    assert report.failed == ("expire-cache",)
    failed = next(o for o in report.jobs if o.job == "expire-cache")
    assert failed.error is not None
    assert "lock timeout" in failed.error
    assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (1,)


def test_a_job_another_run_holds_is_skipped_not_failed(
    conn: psycopg.Connection[Any], database: Any
) -> None:
    with database.connect() as other, locks.try_advisory_lock(other, "housekeeping:expire-cache"):
        report = maintenance.run_maintenance(database.target, Settings(), NOW)
    assert report.ok
    assert {o.job: o.status for o in report.jobs}["expire-cache"] == "skipped"


def test_select_jobs() -> None:
    assert [j.name for j in maintenance.select_jobs(["expire-cache"])] == ["expire-cache"]
    assert "expire-cache" not in [j.name for j in maintenance.select_jobs(skip=["expire-cache"])]
    with pytest.raises(UsageError, match="unknown job 'nope'"):
        maintenance.select_jobs(["nope"])


def _report(*outcomes: maintenance.JobOutcome) -> maintenance.MaintenanceReport:
    return maintenance.MaintenanceReport(NOW, 1_900_000_000.5, 1.25, False, outcomes)


def _ok(job: str, rows: int) -> maintenance.JobOutcome:
    return maintenance.JobOutcome(job, "ok", 0.5, result=JobResult(job, rows, 2, 0.5, NOW))


def test_metrics_are_prometheus_text_and_keep_the_last_success(tmp_path: Path) -> None:
    path = tmp_path / "kronos.prom"
    maintenance.write_metrics(path, _report(_ok("expire-cache", 12), _ok("requeue-stuck", 0)))
    first = path.read_text()
    assert 'kronos_maintenance_job_rows{job="expire-cache"} 12\n' in first
    assert 'kronos_maintenance_job_success{job="requeue-stuck"} 1\n' in first
    assert "# TYPE kronos_maintenance_job_duration_seconds gauge\n" in first
    assert (
        'kronos_maintenance_job_last_success_timestamp_seconds{job="expire-cache"} 1900000000.5\n'
    ) in first
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    later = maintenance.MaintenanceReport(
        NOW,
        1_900_000_300.0,
        1.0,
        False,
        (
            maintenance.JobOutcome("expire-cache", "failed", 0.1, error="lock timeout"),
            _ok("requeue-stuck", 3),
        ),
    )
    maintenance.write_metrics(path, later)
    second = path.read_text()
    assert 'kronos_maintenance_job_success{job="expire-cache"} 0\n' in second
    assert "kronos_maintenance_last_run_failed_jobs 1\n" in second
    # the failed job keeps its previous success time: `time() - …` grows and the alert fires
    assert (
        'kronos_maintenance_job_last_success_timestamp_seconds{job="expire-cache"} 1900000000.5\n'
    ) in second
    assert (
        'kronos_maintenance_job_last_success_timestamp_seconds{job="requeue-stuck"} 1900000300\n'
    ) in second
    assert [p.name for p in tmp_path.iterdir()] == ["kronos.prom"]  # no temporary file left
    for line in second.splitlines():
        assert line.startswith("#") or line.startswith("kronos_maintenance_"), line


def test_metrics_write_failure_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KronosError, match="cannot write the metrics file"):
        maintenance.write_metrics(tmp_path / "missing-dir" / "kronos.prom", _report())


def test_two_overlapping_maintain_runs_do_each_job_once(
    conn: psycopg.Connection[Any], database: Any
) -> None:
    seed(conn)
    conn.execute(
        "INSERT INTO cache (key, value, expires_at)"
        " SELECT 'k' || n, 'v', %(past)s FROM generate_series(1, 300) AS n",
        {"past": NOW - timedelta(hours=1)},
    )
    settings = dataclasses.replace(
        Settings(),
        housekeeping=HousekeepingSettings(batch_size=10, batch_pause=timedelta(milliseconds=5)),
    )
    reports: list[maintenance.MaintenanceReport] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        reports.append(maintenance.run_maintenance(database.target, settings, NOW))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(reports) == 2
    assert all(report.ok for report in reports)
    rows: dict[str, int] = {}
    for report in reports:
        for outcome in report.jobs:
            rows[outcome.job] = rows.get(outcome.job, 0) + outcome.rows
    assert rows.pop("rotate-partitions") > 0
    assert rows == {
        "expire-sessions": 1,
        "expire-cache": 301,
        "requeue-stuck": 1,
        "purge-processed": 1,
        "reset-ratelimits": 0,
    }
    assert conn.execute("SELECT count(*) FROM cache").fetchone() == (0,)
