"""What cron, a log collector and an operator see: log lines, -v, --quiet, Ctrl-C, failures.

Subprocesses, as cron runs them (no terminal): the output is what is tested.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import REPO, Database, clean_environment, run_cli

from kronos_db import locks

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


def expired_sessions(conn: psycopg.Connection[Any], count: int) -> None:
    conn.execute(
        "INSERT INTO sessions (token, expires_at, last_active_at)"
        " SELECT 'op-' || n, %(past)s, %(now)s FROM generate_series(1, %(n)s) AS n",
        {"past": NOW - timedelta(hours=1), "now": NOW, "n": count},
    )


def test_log_lines_carry_time_level_and_job(
    conn: psycopg.Connection[Any], database: Database
) -> None:
    expired_sessions(conn, 30)
    args = ("expire", "sessions", "--now", NOW.isoformat(), "--database-url", database.url)
    result = run_cli("--log-format", "json", "-v", *args, env={"KRONOS_BACKUP_DIRECTRY": "/x"})
    assert result.code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert records
    for record in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert record["level"] in ("info", "notice", "warning", "error")
        assert record["job"]
    warning = next(r for r in records if r["level"] == "warning")
    assert "KRONOS_BACKUP_DIRECTRY" in warning["message"]
    assert "KRONOS_BACKUPS_DIRECTORY" in warning["message"]
    steps = [r for r in records if "duration_ms" in r]
    assert {r["job"] for r in steps} == {"expire-sessions"}
    assert any("lock_timeout" in r["message"] for r in steps)  # a step says what it locks
    text = run_cli("--log-format", "text", "-v", *args)
    assert text.code == 0, text.output
    for line in text.stderr.splitlines():
        assert re.match(r"^\d{4}-\d\d-\d\dT\S+Z (INFO|NOTICE|WARNING|ERROR) [a-z-]+: ", line), line
    # the default, for people: no time, one prefix; errors as one line in every format
    bad = ("expire", "sessions", "--database-url", "postgresql://nobody@127.0.0.1:1/x")
    assert run_cli(*bad).stderr.startswith("kronos-db: error: cannot connect")
    failure = json.loads(run_cli("--log-format", "json", *bad).stderr)
    assert (failure["level"], failure["exit_code"]) == ("error", 3)


def test_verbose_says_each_step_with_its_duration_and_locks(
    empty_database: Database, tmp_path: Path
) -> None:
    migrated = run_cli("-v", "migrate", "0002", "--database-url", empty_database.url)
    assert migrated.code == 0, migrated.output
    assert re.search(
        r"upgrade 0002 \(auth-service: sessions\): \d+ ms; locks on tables at its commit: "
        r"AccessExclusiveLock on sessions; ShareRowExclusiveLock on users",
        migrated.stderr,
    ), migrated.stderr
    quiet = run_cli("migrate", "0002", "--database-url", empty_database.url)
    assert quiet.stderr == ""
    run_cli("migrate", "--database-url", empty_database.url)
    checks = run_cli("-v", "health", "--check", "connections", "--database-url", empty_database.url)
    assert re.search(r"check connections: OK in \d+ ms", checks.stderr), checks.output
    assert "lock_timeout" in checks.stderr
    dump = run_cli(
        "-v", "backup", "create", "--directory", str(tmp_path), "--database-url", empty_database.url
    )
    assert dump.code == 0, dump.output
    assert re.search(r"pg_dump \S+ to \S+\.partial: \d+ ms \(ACCESS SHARE on every", dump.stderr)
    rotate = ("-v", "partitions", "rotate", "--now", NOW.isoformat())
    rotated = run_cli(*rotate, "--database-url", empty_database.url)
    assert rotated.code == 0, rotated.output
    assert re.search(
        r"create logs_p2030_01_15 .*: \d+ ms \(ACCESS SHARE on the parent", rotated.stderr
    )
    again = run_cli(*rotate, "--database-url", empty_database.url)
    assert again.code == 0, again.output
    assert "public.logs: nothing to do at 2030-01-15T12:00:00+00:00" in again.stderr
    prune = ("backup", "prune", "--keep", "5", "--database-url", empty_database.url)
    assert run_cli("-v", *prune).stderr == "kronos-db: nothing to prune\n"
    assert run_cli(*prune).stderr == ""  # cron: nothing to say


def test_quiet_prints_only_errors(conn: psycopg.Connection[Any], database: Database) -> None:
    expired_sessions(conn, 5)
    args = ("expire", "sessions", "--now", NOW.isoformat(), "--database-url", database.url)
    result = run_cli("-q", *args, env={"KRONOS_NO_SUCH_SETTING": "1"})
    assert (result.code, result.stdout, result.stderr) == (0, "", "")
    assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
    loud = run_cli(*args, env={"KRONOS_NO_SUCH_SETTING": "1"})
    assert "KRONOS_NO_SUCH_SETTING" in loud.stderr  # what -q hid
    failed = run_cli("-q", "expire", "sessions", "--database-url", "postgresql://x@127.0.0.1:1/x")
    assert failed.code == 3
    assert failed.stderr.startswith("kronos-db: error: ")


def forty_expired_among_many(conn: psycopg.Connection[Any]) -> None:
    """40 expired sessions of 4,040: expiry walks them by key, one row a batch with
    --batch-size 1, so a signal finds it between or inside batches."""
    expired_sessions(conn, 40)
    conn.execute(
        "INSERT INTO sessions (token, expires_at) SELECT 'ok-' || n, %(later)s"
        " FROM generate_series(1, 4000) AS n",
        {"later": NOW + timedelta(days=1)},
    )
    conn.execute("ANALYZE sessions")


@contextlib.contextmanager
def started(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "kronos_db", *args],
        cwd=REPO,
        env=clean_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        process.kill()
        process.communicate()


@pytest.mark.parametrize(("signal_number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_job_says_what_it_was_doing_and_what_it_left(
    signal_number: int, code: int, conn: psycopg.Connection[Any], database: Database
) -> None:
    forty_expired_among_many(conn)
    with started(
        "expire",
        "sessions",
        "--batch-size",
        "1",
        "--pause",
        "100ms",
        "--now",
        NOW.isoformat(),
        "--database-url",
        database.url,
    ) as process:
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(*) FROM sessions WHERE token LIKE 'op-%%'").fetchone() == (
            40,
        ):
            assert time.monotonic() < deadline, "the job never started deleting"
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    name = signal.Signals(signal_number).name
    match = re.fullmatch(
        rf"kronos-db: error: interrupted \({name}\) during expire-sessions > .*, after [\d.]+s: "
        r".*(?:^|; )(\d+) rows done in \d+ committed batches(?:, and maybe the (\d+) rows of "
        r"the batch it was committing)?, nothing half-done; the next run carries on",
        lines[0],
    )
    assert match, lines[0]
    (left,) = conn.execute("SELECT count(*) FROM sessions WHERE token LIKE 'op-%%'").fetchone()
    # what it says it did is what it did; a signal in a COMMIT leaves that batch unknown
    done, maybe = int(match.group(1)), int(match.group(2) or 0)
    assert 40 - left in {done, done + maybe}
    assert 0 < left < 40


@pytest.mark.parametrize(("signal_number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_job_interrupted_inside_a_statement_says_one_line(
    signal_number: int, code: int, conn: psycopg.Connection[Any], database: Database
) -> None:
    """The signal lands while a batch's statement waits on the server (here, for a lock): the
    interrupted transaction's cleanup must not add lines of its own to the one that says it."""
    forty_expired_among_many(conn)
    args = ["expire", "sessions", "--batch-size", "1", "--pause", "50ms"]
    args += ["--now", NOW.isoformat(), "--database-url", database.url]
    with database.connect(autocommit=False) as blocker:
        with started(*args, env={"KRONOS_HOUSEKEEPING_LOCK_TIMEOUT": "60s"}) as process:
            deadline = time.monotonic() + 30
            while conn.execute(
                "SELECT count(*) FROM sessions WHERE token LIKE 'op-%%'"
            ).fetchone() == (40,):
                assert time.monotonic() < deadline, "the job never started deleting"
                time.sleep(0.02)
            blocker.execute("LOCK TABLE sessions IN SHARE MODE")  # the next DELETE waits
            while conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'kronos-db' AND wait_event_type = 'Lock'"
            ).fetchone() == (0,):
                assert time.monotonic() < deadline, "the job's statement never waited"
                time.sleep(0.02)
            process.send_signal(signal_number)
            _, stderr = process.communicate(timeout=30)
        blocker.rollback()
    assert process.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(
        f"kronos-db: error: interrupted ({signal.Signals(signal_number).name}) during "
        "expire-sessions"
    ), lines[0]
    assert "nothing half-done" in lines[0]
    (left,) = conn.execute("SELECT count(*) FROM sessions WHERE token LIKE 'op-%%'").fetchone()
    assert 0 < left < 40
    # its connection was closed by the cancel; the lease was released on one of its own
    lease = locks.holder(conn, "housekeeping:expire-sessions")
    assert lease is not None and lease.released, lease


def test_a_job_interrupted_in_its_commit_says_that_batch_may_be_done(
    conn: psycopg.Connection[Any], database: Database
) -> None:
    """A signal that lands in a COMMIT cannot know whether the server committed the batch: the
    line says so, with the batch's rows, rather than a count that may be one batch short."""
    forty_expired_among_many(conn)
    # every COMMIT of a deletion takes 300 ms: a deferred trigger sleeps in it
    conn.execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$"
    )
    conn.execute(
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER DELETE ON sessions"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
    )
    args = ["expire", "sessions", "--batch-size", "1", "--pause", "10ms"]
    with started(*args, "--now", NOW.isoformat(), "--database-url", database.url) as process:
        deadline = time.monotonic() + 30
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'kronos-db' AND query = 'COMMIT'"
            " AND wait_event = 'PgSleep'"
        ).fetchone() == (0,):
            assert time.monotonic() < deadline, "the job never committed"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    (line,) = stderr.strip().splitlines()
    match = re.search(
        r"(\d+) rows done in \d+ committed batches, and maybe the (\d+) rows of the batch it "
        r"was committing, nothing half-done",
        line,
    )
    assert match, line
    (left,) = conn.execute("SELECT count(*) FROM sessions WHERE token LIKE 'op-%%'").fetchone()
    done, maybe = int(match.group(1)), int(match.group(2))
    assert maybe == 1 and 40 - left in {done, done + maybe}


def test_a_read_only_backup_directory_is_one_line_and_exit_1(database: Database) -> None:
    directory = Path(tempfile.mkdtemp(prefix="kronos-ro-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        directory.rmdir()
        pytest.skip(f"cannot mount a read-only file system here: {mounted.stderr.strip()!r}")
    try:
        result = run_cli(
            "backup", "create", "--directory", str(directory), "--database-url", database.url
        )
    finally:
        subprocess.run(["umount", str(directory)], check=False)
        directory.rmdir()
    assert result.code == 1, result.output
    assert "internal error" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"kronos-db: error: cannot write to the backup directory {directory}: Read-only file system"
    ]
