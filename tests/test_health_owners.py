"""One owner per question: for each pair of commands that answer the same question, the
situation where the old code gave two answers now gives one; checks that cannot know say
UNKNOWN with the privilege they need; slow-query false alarms are gone; a table never vacuumed
or analyzed is found, and the fix it offers settles it."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from conftest import Database, retry_on_eviction, unique_name, url_for
from psycopg import sql

from kronos_db import backups
from kronos_db.checks import Limits, Status
from kronos_db.config import HealthSettings, PartitionSettings, Settings
from kronos_db.partitions.rotation import rotate
from kronos_db.partitions.status import partition_status
from kronos_db.reports import kronos, snapshots
from kronos_db.reports.health import health_report


def now() -> datetime:
    return datetime.now(UTC)


def check(conn: psycopg.Connection[Any], name: str, settings: Settings, at: datetime) -> Any:
    (result,) = health_report(conn, settings, now=at, only=[name]).checks
    return result


def health_settings(**thresholds: Any) -> Settings:
    return Settings(health=dataclasses.replace(HealthSettings(), **thresholds))


# ----------------------------------------------------------------------------- backups


def _record_dump(conn: psycopg.Connection[Any], path: Path, at: datetime) -> backups.Backup:
    path.write_bytes(b"PGDMP" + b"\0" * 4096)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return backups.record_backup(
        conn,
        kind="pg_dump",
        file_path=path,
        size_bytes=path.stat().st_size,
        sha256=digest,
        row_counts={"public.users": 0},
        created_at=at,
        started_at=at,
        finished_at=at,
    )


def test_backup_status_and_health_give_one_answer(
    cli: Any, database: Database, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    moment = now()
    dump = _record_dump(conn, tmp_path / "kronos.dump", moment - timedelta(hours=1))
    args = ("--database-url", database.url)
    # one complete but unverified dump: `backup status` said CRITICAL, health OK
    status = cli("backup", "status", *args)
    health = cli("health", "--check", "last_backup", *args)
    assert (status.code, health.code) == (2, 2), (status.output, health.output)
    assert "no usable verified backup" in status.stdout
    assert "no usable verified backup" in health.stdout
    conn.execute(
        "UPDATE backups SET verified_at = %s, verify_result = 'passed' WHERE id = %s",
        (moment - timedelta(minutes=50), dump.id),
    )
    settings = Settings()

    def both() -> tuple[Status, Status]:
        direct = backups.backup_status(conn, settings, now=moment)
        return direct.status, check(conn, "last_backup", settings, moment).status

    assert both() == (Status.OK, Status.OK)
    # backup status checks the file on every run: a truncated one is no backup any more
    with open(dump.file_path, "r+b") as handle:
        handle.truncate(100)
    assert both() == (Status.CRITICAL, Status.CRITICAL)
    result = backups.backup_status(conn, settings, now=moment)
    assert f"backup {dump.id} unusable" in result.summary
    # the same size with other bytes (the ctime moved): its SHA-256 no longer matches
    Path(dump.file_path).write_bytes(b"XXXXX" + b"\0" * 4096)
    assert both() == (Status.CRITICAL, Status.CRITICAL)
    assert "SHA-256 no longer matches" in backups.backup_status(conn, settings, now=moment).summary
    Path(dump.file_path).unlink()
    assert both() == (Status.CRITICAL, Status.CRITICAL)
    assert "no longer exists" in backups.backup_status(conn, settings, now=moment).summary
    # an older verified dump whose file is intact still counts; the broken newest warns
    older = _record_dump(conn, tmp_path / "older.dump", moment - timedelta(hours=3))
    conn.execute(
        "UPDATE backups SET verified_at = %s, verify_result = 'passed' WHERE id = %s",
        (moment - timedelta(hours=2), older.id),
    )
    assert both() == (Status.WARNING, Status.WARNING)
    # a directory this host cannot see: UNKNOWN, never a guess
    conn.execute(
        "UPDATE backups SET file_path = '/nonexistent-kronos-dir/kronos.dump' WHERE id = %s",
        (dump.id,),
    )
    assert both() == (Status.UNKNOWN, Status.UNKNOWN)


# ----------------------------------------------------------------------------- partitions


def test_partitions_status_and_health_agree_on_another_hourly_table(
    cli: Any, database: Database, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The old health hard-coded public.logs and judged hours ahead: with hourly partitions
    and the default premake, `partitions status` said OK and health CRITICAL."""
    conn.execute("CREATE SCHEMA ops")
    conn.execute(
        "CREATE TABLE ops.events (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at)"
    )
    conn.execute("CREATE TABLE ops.events_default PARTITION OF ops.events DEFAULT")
    settings = Settings(
        partitions=PartitionSettings(table="ops.events", interval="hourly", retention=timedelta(0))
    )
    moment = now()
    assert not rotate(conn, settings, moment).failed
    config = tmp_path / "kronos.toml"
    config.write_text('[partitions]\ntable = "ops.events"\ninterval = "hourly"\n', "utf-8")
    common = ("--database-url", database.url, "--config", str(config))
    for at, code in ((moment, 0), (moment + timedelta(hours=5, minutes=30), 1)):
        stamp = ("--now", at.isoformat())
        status = cli("partitions", "status", *stamp, *common)
        health = cli("health", "--check", "log_partitions", *stamp, *common)
        assert (status.code, health.code) == (code, code), (status.output, health.output)
        assert (
            status.stdout.split(" | ")[0].split(": ", 1)[1]
            == (health.stdout.split(" | ")[0].split(": ", 1)[1])
        )
    # report kronos collects the same answers as health
    at = moment + timedelta(hours=5, minutes=30)
    collected = {
        r.name: (r.status, r.summary) for r in kronos.kronos_report(conn, settings, now=at)
    }
    graded = health_report(conn, settings, now=at, only=list(kronos.KRONOS_CHECKS))
    assert collected == {r.name: (r.status, r.summary) for r in graded.checks}


# ----------------------------------------------------------------------------- pg_monitor


def test_checks_that_cannot_know_say_unknown_with_the_grant(database: Database) -> None:
    role = unique_name("kronos_monitor")
    with psycopg.connect(url_for(database.name), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(role))
        )
        # 500 rows wait in the default partition; no ANALYZE: the planner's estimate says 0
        admin.execute(
            'INSERT INTO logs (service_name, level, message, "timestamp") '
            "SELECT 'auth', 'INFO', 'in a gap', now() + interval '20 days' "
            "FROM generate_series(1, 500)"
        )
        # a table large enough to be estimated, analyzed: its statistics exist, but pg_stats
        # shows them only to a role that may read it
        admin.execute(
            "CREATE TABLE readings AS SELECT g AS id, md5(g::text) AS v "
            "FROM generate_series(1, 20000) g"
        )
    # a session's row counts reach the shared statistics when it ends: ANALYZE after them
    with psycopg.connect(url_for(database.name), autocommit=True) as admin:
        admin.execute("ANALYZE readings")
    settings = health_settings(bloat_minimum_bytes=64 * 1024)  # not the empty tables
    try:
        with psycopg.connect(url_for(database.name, user=role), autocommit=True) as monitor:
            moment = now()
            result = check(monitor, "log_partitions", settings, moment)
            status = partition_status(monitor, settings, moment)
            assert (result.status, status.level) == (Status.UNKNOWN, Status.UNKNOWN)
            assert "cannot count the rows waiting in the default partition" in result.summary
            assert "GRANT SELECT ON public.logs_default" in result.hint
            bloat = check(monitor, "bloat", settings, moment)
            assert bloat.status is Status.UNKNOWN, bloat
            assert "GRANT SELECT" in bloat.hint
            assert any("readings" in f.subject for f in bloat.findings)
        with psycopg.connect(url_for(database.name), autocommit=True) as admin:
            # the role that may read them knows: WARNING for the rows, a trusted estimate
            assert check(admin, "log_partitions", settings, moment).status is Status.WARNING
            assert check(admin, "bloat", settings, moment).status is not Status.UNKNOWN
    finally:
        with psycopg.connect(url_for(database.name), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# ----------------------------------------------------------------------------- slow queries


def test_slow_queries_without_false_alarms(conn: psycopg.Connection[Any]) -> None:
    settings = health_settings(slow_query_warning=timedelta(milliseconds=40))

    def scenario(attempt: int) -> None:
        # one-off bulk statements, VACUUM and a DO block: slow by nature, no alarm
        conn.execute("VACUUM (ANALYZE) users")
        conn.execute("DO $$ BEGIN PERFORM pg_sleep(0.1); END $$")
        conn.execute("SELECT pg_sleep(0.1) AS one_off")
        start = now() + timedelta(hours=attempt)
        result = check(conn, "slow_queries", settings, start)
        assert result.status is Status.OK, result
        # a statement slow on every call is still found
        for _ in range(10):
            conn.execute("SELECT 1 AS every_call FROM pg_sleep(0.05)")
        result = check(conn, "slow_queries", settings, start)
        assert result.status is Status.WARNING, result
        assert "every_call" in result.summary
        assert result.findings[0].query.startswith("SELECT $1 AS every_call")
        # once a snapshot was taken after it, only what ran since counts
        assert snapshots.take_snapshot(conn, now=start, limits=Limits()).taken
        later = start + timedelta(minutes=5)
        assert check(conn, "slow_queries", settings, later).status is Status.OK

    retry_on_eviction(conn, scenario)


# ----------------------------------------------------------------------------- unmaintained


def test_table_never_vacuumed_nor_analyzed(conn: psycopg.Connection[Any]) -> None:
    # autovacuum is off on the shared test server: nothing vacuums it behind the test's back
    conn.execute("CREATE TABLE archive_rows (id bigint, payload text)")
    conn.execute(
        "INSERT INTO archive_rows SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g"
    )
    settings = health_settings(unmaintained_table_warning=1024 * 1024)
    result = check(conn, "unmaintained_tables", settings, now())
    assert result.status is Status.WARNING, result
    (finding,) = [f for f in result.findings if "archive_rows" in f.subject]
    assert "never vacuumed nor analyzed" in finding.detail
    assert finding.fix == 'VACUUM (ANALYZE, VERBOSE) "public"."archive_rows";'
    conn.execute(finding.fix)  # the fix it offers settles it
    result = check(conn, "unmaintained_tables", settings, now())
    assert not [f for f in result.findings if "archive_rows" in f.subject], result
