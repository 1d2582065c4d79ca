"""Replication health on a real primary and streaming standby (tests/standby.py builds them).

One pair serves the whole module: building it costs a few seconds, and each test leaves it as
it found it (replay resumed, slots dropped, settings reset).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import run_cli
from psycopg import sql
from standby import StreamingPair, streaming_pair, wait_for

from kronos_db import backups, db, housekeeping, maintenance, migrations, replication
from kronos_db.config import HealthSettings, Settings, load_settings
from kronos_db.errors import KronosError
from kronos_db.partitions.rotation import rotate
from kronos_db.reports import health

MB = 1024 * 1024
REPLICATION_CHECKS = ("replication_lag", "replication_slots", "wal_archiving")


@pytest.fixture(scope="module")
def pair() -> Iterator[StreamingPair]:
    with streaming_pair() as built:
        built.primary.execute("CREATE TABLE traffic (id bigserial PRIMARY KEY, payload text)")
        built.wait_for_replay()
        yield built


def checks(
    conn: psycopg.Connection[Any], thresholds: HealthSettings | None = None
) -> dict[str, health.CheckResult]:
    report = health.health_report(
        conn,
        Settings(health=thresholds or HealthSettings()),
        now=datetime.now(UTC),
        only=REPLICATION_CHECKS,
    )
    return {result.name: result for result in report.checks}


def write_wal(pair: StreamingPair, *, segments: int = 0, rows: int = 2000) -> None:
    """Some real rows, then ``segments`` switches to a new WAL segment (16 MB of WAL each,
    without writing 16 MB: the rest of a segment is skipped)."""
    with pair.primary.connect() as conn:
        conn.execute(
            "INSERT INTO traffic (payload) SELECT repeat('x', 200) FROM generate_series(1, %s)",
            (rows,),
        )
        for _ in range(segments):
            conn.execute("INSERT INTO traffic (payload) VALUES ('switch')")
            conn.execute("SELECT pg_switch_wal()")


@contextlib.contextmanager
def setting(server: Any, name: str, value: str) -> Iterator[None]:
    """``ALTER SYSTEM`` on a test-owned server for the block, reloaded, then reset."""
    server.execute(
        sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
    )
    server.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        server.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
        server.execute("SELECT pg_reload_conf()")


def test_replay_paused_under_wal_traffic_goes_warning_then_critical(pair: StreamingPair) -> None:
    with pair.primary.connect() as primary, pair.standby.connect() as standby:
        quiet = checks(primary)
        assert quiet["replication_lag"].status is health.Status.OK, quiet["replication_lag"]
        assert checks(standby)["replication_lag"].status is health.Status.OK
        with pair.replay_paused():
            # the finding: 276 MB and 24 s behind and every check said OK. With the
            # defaults (64 MB), 5 segments behind is a WARNING on both sides
            write_wal(pair, segments=5)
            wait_for(
                lambda: (replication.standbys(primary)[0].replay_lag_bytes or 0) > 64 * MB,
                "the primary to see the lag",
            )
            # the standby judges by what it has received: the primary may be ahead of that
            wait_for(
                lambda: (
                    (replication.standby_replay(standby, datetime.now(UTC)).replay_lag_bytes or 0)
                    > 64 * MB
                ),
                "the standby to receive what it does not replay",
            )
            on_primary = checks(primary)["replication_lag"]
            assert on_primary.status is health.Status.WARNING, on_primary
            assert "replica1 (streaming, async): replay" in on_primary.summary
            assert (on_primary.metrics[0].value or 0) > 64 * MB
            on_standby = checks(standby)["replication_lag"]
            assert on_standby.status is health.Status.WARNING, on_standby
            assert "replay is paused" in on_standby.summary
            assert "pg_wal_replay_resume()" in on_standby.hint
            # and CRITICAL past the critical level, by bytes on one side and time on the other
            strict = dataclasses.replace(
                HealthSettings(),
                replication_lag_bytes_warning=1 * MB,
                replication_lag_bytes_critical=32 * MB,
            )
            assert checks(primary, strict)["replication_lag"].status is health.Status.CRITICAL
            assert checks(standby, strict)["replication_lag"].status is health.Status.CRITICAL
            replay = replication.standby_replay(standby, datetime.now(UTC))
            assert replay.paused and replay.streaming and replay.replay_delay_seconds > 0
        pair.wait_for_replay()
        wait_for(
            lambda: replication.standbys(primary)[0].replay_lag_bytes == 0,
            "the primary to see the standby caught up",
        )
        assert checks(primary)["replication_lag"].status is health.Status.OK
        assert checks(standby)["replication_lag"].status is health.Status.OK


def test_an_inactive_slot_retaining_wal_goes_warning_then_critical(pair: StreamingPair) -> None:
    with pair.primary.connect() as primary:
        assert checks(primary)["replication_slots"].status is health.Status.OK
        primary.execute("SELECT pg_create_physical_replication_slot('kronos_forgotten', true)")
        try:
            write_wal(pair, segments=9)  # 144 MB retained: over the default 128 MB
            result = checks(primary)["replication_slots"]
            assert result.status is health.Status.WARNING, result
            assert "inactive physical slot kronos_forgotten retains" in result.summary
            assert "pg_drop_replication_slot('kronos_forgotten')" in result.hint
            assert [slot.slot_name for slot in result.data] == ["kronos_forgotten"]
            strict = dataclasses.replace(
                HealthSettings(), slot_retained_warning=64 * MB, slot_retained_critical=128 * MB
            )
            assert checks(primary, strict)["replication_slots"].status is health.Status.CRITICAL
            # the standby's own, active slot is listed but not flagged
            names = {slot.slot_name: slot for slot in replication.slots(primary)}
            assert names["kronos_test_standby"].active
            assert not names["kronos_forgotten"].active
        finally:
            primary.execute("SELECT pg_drop_replication_slot('kronos_forgotten')")
        assert checks(primary)["replication_slots"].status is health.Status.OK


def test_failing_wal_archiving_is_critical(pair: StreamingPair) -> None:
    with pair.primary.connect() as primary:
        assert checks(primary)["wal_archiving"].status is health.Status.OK
        before = replication.archiver(primary).failed_count
        with setting(pair.primary, "archive_command", "/bin/false"):
            write_wal(pair, segments=1, rows=10)
            wait_for(
                lambda: replication.archiver(primary).failed_count > before, "a failed archive"
            )
            result = checks(primary)["wal_archiving"]
            assert result.status is health.Status.CRITICAL, result
            assert "archiving fails" in result.summary
            assert "pg_wal" in result.hint
        write_wal(pair, segments=1, rows=10)
        wait_for(lambda: not replication.archiver(primary).failing, "archiving to work again")
        assert checks(primary)["wal_archiving"].status is health.Status.OK


def test_a_standby_that_receives_nothing_is_critical(pair: StreamingPair) -> None:
    with pair.standby.connect() as standby:
        (conninfo,) = standby.execute("SHOW primary_conninfo").fetchone()  # type: ignore[misc]
        dead = conninfo.replace(f"port={pair.primary.port}", "port=1")
        assert dead != conninfo
        standby.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(dead)))
        standby.execute("SELECT pg_reload_conf()")
        try:
            wait_for(
                lambda: not replication.standby_replay(standby, datetime.now(UTC)).streaming,
                "the WAL receiver to stop",
            )
            result = checks(standby)["replication_lag"]
            assert result.status is health.Status.CRITICAL, result
            assert "the WAL receiver is" in result.summary
            assert "primary_conninfo" in result.hint
        finally:
            standby.execute(
                sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo))
            )
            standby.execute("SELECT pg_reload_conf()")
        wait_for(
            lambda: replication.standby_replay(standby, datetime.now(UTC)).streaming,
            "the WAL receiver to stream again",
        )


def test_a_role_without_pg_monitor_gets_unknown_with_the_grant(pair: StreamingPair) -> None:
    # a role of the test-owned cluster: created here, replicated to the standby
    pair.primary.execute("CREATE ROLE kronos_plain LOGIN")
    try:
        pair.wait_for_replay()
        for server in (pair.primary, pair.standby):
            with psycopg.connect(
                f"postgresql://kronos_plain@127.0.0.1:{server.port}/postgres", autocommit=True
            ) as conn:
                result = checks(conn)["replication_lag"]
                assert result.status is health.Status.UNKNOWN, (server.name, result)
                assert "GRANT pg_monitor" in result.hint
    finally:
        pair.primary.execute("DROP ROLE kronos_plain")


def test_report_replication_on_both_sides(pair: StreamingPair) -> None:
    primary = run_cli("report", "replication", "--json", "--database-url", pair.primary.url())
    assert primary.code == 0, primary.output
    data = json.loads(primary.stdout)
    assert data["role"]["in_recovery"] is False
    assert [s["slot_name"] for s in data["standbys"]] == ["kronos_test_standby"]
    assert data["archiver"]["archive_mode"] == "on"
    assert data["replay"] is None
    standby = run_cli("report", "replication", "--database-url", pair.standby.url())
    assert standby.code == 0, standby.output
    assert "this server is a standby (in recovery), streaming from 127.0.0.1:" in standby.stdout
    assert "not paused" in standby.stdout


# ----------------------------------------------------------------------------- standby-aware


@pytest.fixture(scope="module")
def kronos_pair(pair: StreamingPair) -> StreamingPair:
    """The pair with the Kronos schema at head on the primary, replicated to the standby."""
    pair.primary.execute("CREATE DATABASE kronos")
    migrations.upgrade(
        Settings(), db.resolve_target(pair.primary.url("kronos"), Settings()), "head"
    )
    pair.wait_for_database("kronos")
    return pair


def test_cron_on_the_standby_skips_quietly_or_fails_when_told(
    kronos_pair: StreamingPair, tmp_path: Path
) -> None:
    standby_url = kronos_pair.standby.url("kronos")
    quiet = run_cli("maintain", "--database-url", standby_url)
    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, "", "")  # cron mails nothing
    verbose = run_cli("-v", "maintain", "--database-url", standby_url)
    assert verbose.code == 0, verbose.output
    assert f"standby: skipped: 127.0.0.1:{kronos_pair.standby.port} is a standby" in verbose.stderr
    as_json = run_cli("maintain", "--json", "--database-url", standby_url)
    assert as_json.code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["skipped"].startswith("standby: skipped")
    assert {job["status"] for job in report["jobs"]} == {"skipped"}
    # the metrics say so too: an alert on "no node ran the jobs" needs it
    outcome = maintenance.run_maintenance(
        db.resolve_target(standby_url, Settings()), Settings(), datetime.now(UTC)
    )
    assert outcome.ok and outcome.skipped is not None
    metrics = maintenance.render_metrics(outcome)
    assert "kronos_maintenance_last_run_standby 1\n" in metrics
    assert 'kronos_maintenance_job_skipped{job="expire-sessions"} 1\n' in metrics
    config = tmp_path / "kronos.toml"
    config.write_text('[replication]\non_standby = "fail"\n', encoding="utf-8")
    failing = run_cli("maintain", "--config", str(config), "--database-url", standby_url)
    assert failing.code == 3, failing.output
    assert failing.stderr.count("\n") == 1
    assert "maintain needs the primary" in failing.stderr


def test_writers_on_the_standby_fail_with_one_line(kronos_pair: StreamingPair) -> None:
    standby_url = kronos_pair.standby.url("kronos")
    migrate = run_cli("migrate", "--database-url", standby_url)
    assert migrate.code == 3, migrate.output
    assert migrate.stdout == ""
    (line,) = migrate.stderr.splitlines()
    assert line.startswith(
        f"kronos-db: error: migrate needs the primary, but 127.0.0.1:{kronos_pair.standby.port} "
        f"is a standby (in recovery, streaming from 127.0.0.1:{kronos_pair.primary.port})"
    ), line
    assert "point option --database-url at the primary" in line
    assert "target_session_attrs=read-write" in line
    # a writer that takes a lease gets the same line from the lease; nothing was written
    snapshot = run_cli("report", "snapshot", "--database-url", standby_url)
    assert snapshot.code == 3, snapshot.output
    assert "the report-snapshot lock needs the primary" in snapshot.stderr
    # read-only commands run on the standby
    for args in (
        ("status",),
        ("check",),
        ("queue", "stats"),
        ("backup", "list"),
        ("partitions", "status"),
    ):
        result = run_cli(*args, "--database-url", standby_url)
        assert result.code == 0, (args, result.output)


def test_multi_host_urls_reach_the_right_node(kronos_pair: StreamingPair) -> None:
    # the standby is listed first: read-write and primary pass it by for the primary
    for attrs in ("read-write", "primary"):
        url = kronos_pair.multi_host_url("kronos", attrs)
        migrate = run_cli("migrate", "--database-url", url)
        assert migrate.code == 0, (attrs, migrate.output)
        maintain = run_cli("maintain", "--json", "--database-url", url)
        assert maintain.code == 0, (attrs, maintain.output)
        assert json.loads(maintain.stdout)["skipped"] is None
    # prefer-standby: the read-only commands run on the standby, the writers are refused there
    url = kronos_pair.multi_host_url("kronos", "prefer-standby")
    report = run_cli("report", "replication", "--json", "--database-url", url)
    assert report.code == 0, report.output
    assert json.loads(report.stdout)["role"]["in_recovery"] is True
    refused = run_cli("migrate", "--database-url", url)
    assert refused.code == 3 and "is a standby" in refused.stderr, refused.output


def test_backups_from_the_standby_are_recorded_on_the_primary_or_refused(
    kronos_pair: StreamingPair, tmp_path: Path
) -> None:
    standby_url = kronos_pair.standby.url("kronos")
    folder = tmp_path / "dumps"
    # without a primary to record on: refused before anything is written (the bug
    # wrote the whole dump, then failed to record it, and the file stayed)
    refused = run_cli("backup", "create", "--directory", str(folder), "--database-url", standby_url)
    assert refused.code == 3, refused.output
    (line,) = refused.stderr.splitlines()
    assert "backup create needs the primary" in line and "[backups] primary_url" in line
    assert not folder.exists() or not any(folder.iterdir())
    # with [backups] primary_url: the dump is taken on the standby, recorded on the primary
    config = tmp_path / "kronos.toml"
    config.write_text(
        f'[backups]\ndirectory = "{folder}"\nprimary_url = "{kronos_pair.primary.url("kronos")}"\n',
        encoding="utf-8",
    )
    created = run_cli(
        "backup", "create", "--verify", "--json", "--config", str(config),
        "--database-url", standby_url,
    )  # fmt: skip
    assert created.code == 0, created.output
    backup = json.loads(created.stdout)
    assert backup["verification"]["passed"], backup
    assert [path.name for path in folder.iterdir()] == [Path(backup["file_path"]).name]
    (recorded,) = kronos_pair.primary.execute(
        "SELECT file_path FROM backups WHERE id = %s", (backup["id"],), dbname="kronos"
    )
    assert recorded == backup["file_path"]
    # prune, on the standby's host where the files are, reports a file nothing records
    stray = folder / "copied-by-hand.dump"
    stray.write_bytes(b"not a backup")
    pruned = run_cli(
        "backup", "prune", "--keep", "1", "--json", "--config", str(config),
        "--database-url", standby_url,
    )  # fmt: skip
    assert pruned.code == 0, pruned.output
    assert json.loads(pruned.stdout)["unrecorded"] == [str(stray)]
    assert stray.exists()


def test_a_dump_that_cannot_be_recorded_is_removed(
    kronos_pair: StreamingPair, tmp_path: Path
) -> None:
    # a role that may dump everything and take the lease, but not insert into backups
    kronos_pair.primary.execute(
        "CREATE ROLE kronos_dumper LOGIN IN ROLE pg_read_all_data", dbname="kronos"
    )
    kronos_pair.primary.execute(
        "GRANT INSERT, UPDATE ON kronos_leases TO kronos_dumper", dbname="kronos"
    )
    try:
        url = f"postgresql://kronos_dumper@127.0.0.1:{kronos_pair.primary.port}/kronos"
        with pytest.raises(KronosError) as failure:
            backups.create_backup(
                db.resolve_target(url, Settings()),
                Settings(),
                now=datetime.now(UTC),
                directory=tmp_path,
            )
        assert "could not be recorded in backups, so it was removed" in failure.value.message
        assert list(tmp_path.iterdir()) == []
    finally:
        kronos_pair.primary.execute("DROP OWNED BY kronos_dumper", dbname="kronos")
        kronos_pair.primary.execute("DROP ROLE kronos_dumper")


def test_each_cron_command_skips_on_the_standby(kronos_pair: StreamingPair) -> None:
    standby_url = kronos_pair.standby.url("kronos")
    for args in (
        ("expire", "sessions"),
        ("expire", "cache"),
        ("queue", "requeue-stuck"),
        ("queue", "purge"),
        ("ratelimits", "reset"),
    ):
        quiet = run_cli(*args, "--database-url", standby_url)
        assert (quiet.code, quiet.stdout, quiet.stderr) == (0, "", ""), (args, quiet.output)
    as_json = run_cli("expire", "sessions", "--json", "--database-url", standby_url)
    assert as_json.code == 0, as_json.output
    result = json.loads(as_json.stdout)
    assert result["skipped"] is True
    assert result["reason"].startswith("standby: skipped: 127.0.0.1:")
    verbose = run_cli("-v", "queue", "purge", "--database-url", standby_url)
    assert "standby: skipped" in verbose.stderr, verbose.output
    # a dry run only reads: it runs on the standby
    dry = run_cli("expire", "sessions", "--dry-run", "--json", "--database-url", standby_url)
    assert dry.code == 0 and json.loads(dry.stdout)["dry_run"] is True, dry.output


def seed_expired_sessions(pair: StreamingPair, rows: int) -> None:
    pair.primary.execute(
        "INSERT INTO sessions (token, expires_at)"
        " SELECT 'paced-' || n || '-' || md5(random()::text), now() - interval '1 day'"
        "   FROM generate_series(1, %s) AS n",
        (rows,),
        dbname="kronos",
    )
    pair.wait_for_replay()


def paced_settings(max_wait: str) -> Settings:
    return load_settings(
        overrides={
            "replication.max_replay_lag": (256 * 1024, "test"),
            "replication.max_wait": (max_wait, "test"),
            "housekeeping.batch_size": (200, "test"),
        }
    )


def test_pacing_stops_a_job_the_standby_cannot_follow(kronos_pair: StreamingPair) -> None:
    seed_expired_sessions(kronos_pair, 20_000)
    target = db.resolve_target(kronos_pair.primary.url("kronos"), Settings())
    jobs = maintenance.select_jobs(["expire-sessions"])
    with kronos_pair.replay_paused():
        started = time.monotonic()
        report = maintenance.run_maintenance(
            target, paced_settings("1s"), datetime.now(UTC), jobs=jobs
        )
        elapsed = time.monotonic() - started
    (outcome,) = report.jobs
    assert outcome.status == "failed", outcome
    assert outcome.error is not None
    assert "expire-sessions stopped: standby replica1 is" in outcome.error
    assert "behind in replay (limit 256.0 kB, [replication] max_replay_lag)" in outcome.error
    assert "stay done, the rest is left for the next run" in outcome.error
    assert 1.0 <= outcome.paced_seconds <= elapsed
    metrics = maintenance.render_metrics(report)
    assert 'kronos_maintenance_job_pacing_wait_seconds{job="expire-sessions"} 1.' in metrics
    (left,) = kronos_pair.primary.execute(
        "SELECT count(*) FROM sessions WHERE token LIKE 'paced-%%'", dbname="kronos"
    )
    assert 0 < left < 20_000  # the batches before the stop are done and stay done


def test_pacing_waits_for_the_standby_then_finishes(kronos_pair: StreamingPair) -> None:
    seed_expired_sessions(kronos_pair, 20_000)
    kronos_pair.standby.execute("SELECT pg_wal_replay_pause()")
    # replay resumes after a second: the job waits for it, then finishes the work
    resume = threading.Timer(1.0, kronos_pair.standby.execute, ("SELECT pg_wal_replay_resume()",))
    resume.start()
    try:
        with psycopg.connect(kronos_pair.primary.url("kronos"), autocommit=True) as conn:
            options = housekeeping.job_options(conn, paced_settings("1m"), "expire-sessions")
            result = housekeeping.expire_sessions(conn, datetime.now(UTC), options=options)
    finally:
        resume.join()
        kronos_pair.standby.execute("SELECT pg_wal_replay_resume()")
    (left,) = kronos_pair.primary.execute(
        "SELECT count(*) FROM sessions WHERE expires_at < now()", dbname="kronos"
    )
    assert left == 0 and result.rows >= 20_000, result
    assert result.paced_seconds >= 0.5, result
    assert "waited" in result.summary()
    assert options.pacer is not None and options.pacer.waits >= 1


def test_partitions_rotate_skips_on_the_standby_and_paces_its_moves(
    kronos_pair: StreamingPair,
) -> None:
    standby_url = kronos_pair.standby.url("kronos")
    skipped = run_cli("partitions", "rotate", "--json", "--database-url", standby_url)
    assert skipped.code == 0, skipped.output
    assert json.loads(skipped.stdout)["reason"].startswith("standby: skipped")
    dry = run_cli("partitions", "rotate", "--dry-run", "--database-url", standby_url)
    assert dry.code == 0, dry.output  # a dry run reads only: it runs on the standby
    # rows 20 days ahead wait in the default partition: rotate moves them into a new partition,
    # in batches, inside the transaction that attaches it; a paused standby stops the move
    kronos_pair.primary.execute(
        'INSERT INTO logs (service_name, level, message, "timestamp")'
        " SELECT 'test', 'info', repeat('x', 200), now() + interval '20 days'"
        "   FROM generate_series(1, 20000)",
        dbname="kronos",
    )
    kronos_pair.wait_for_replay()
    settings = load_settings(
        overrides={
            "replication.max_replay_lag": (256 * 1024, "test"),
            "replication.max_wait": ("1s", "test"),
            "partitions.move_batch_size": (500, "test"),
        }
    )
    target = db.resolve_target(kronos_pair.primary.url("kronos"), Settings())

    def in_default() -> int:
        (rows,) = kronos_pair.primary.execute("SELECT count(*) FROM logs_default", dbname="kronos")
        return int(rows)

    with kronos_pair.replay_paused():
        stopped = rotate(target, settings, datetime.now(UTC))
    (failed,) = [step for step in stopped.steps if not step.ok]
    assert "stopped: standby replica1 is" in (failed.error or ""), failed
    assert in_default() == 20_000  # the move rolled back with its transaction: nothing lost
    moved = rotate(target, settings, datetime.now(UTC))
    assert not moved.failed, moved.failed
    assert in_default() == 0
