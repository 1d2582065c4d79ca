"""The housekeeping commands as cron runs them: a subprocess, no terminal."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kronos_db import locks

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parent.parent
COMMANDS = [
    ("expire", "sessions"),
    ("expire", "cache"),
    ("queue", "stats"),
    ("queue", "requeue-stuck"),
    ("queue", "purge"),
    ("ratelimits", "reset"),
    ("maintain",),
]


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        (["queue", "requeue-stuck", "--older-than", "5x"], "--older-than"),
        (["queue", "purge", "--older-than", "5x"], "--older-than"),
        (["ratelimits", "reset", "--older-than", "5x"], "--older-than"),
        (["expire", "sessions", "--idle-timeout", "soon"], "--idle-timeout"),
        (["expire", "sessions", "--batch-size", "-5"], "--batch-size"),
        (["expire", "cache", "--batch-time", "0"], "--batch-time"),
        (["queue", "requeue-stuck", "--max-attempts", "0"], "--max-attempts"),
        (["maintain", "--pause", "-1s"], "--pause"),
        (["maintain", "--job", "vacuum-everything"], "vacuum-everything"),
        (["expire", "cache", "--now", "yesterday"], "--now"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    cli: Any, arguments: list[str], option: str
) -> None:
    # an unreachable server: bad input is refused before any connection is tried
    result = cli(*arguments, "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert result.code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kronos-db: error: ")
    assert option in lines[0]
    assert result.stdout == ""


def test_a_negative_batch_size_in_the_configuration_is_exit_2(cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "kronos.toml"
    config.write_text("[housekeeping]\nbatch_size = -1\n")
    result = cli("expire", "cache", "--config", str(config))
    assert result.code == 2
    assert "housekeeping.batch_size: must be at least 0" in result.stderr


def _seed(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO sessions (token, expires_at, last_active_at)"
        " SELECT 's' || n, %(now)s::timestamptz - interval '1 minute', %(now)s"
        "   FROM generate_series(1, 25) AS n",
        {"now": NOW},
    )


def test_expire_sessions_prints_one_line_then_stays_quiet(
    cli: Any, conn: psycopg.Connection[Any], database: Any
) -> None:
    _seed(conn)
    args = ("expire", "sessions", "--database-url", database.url, "--now", NOW.isoformat())
    dry = cli(*args, "--dry-run")
    assert dry.code == 0
    assert (
        dry.stdout == "expire-sessions: 25 rows would be affected (expired 25, idle 0) (dry run)\n"
    )
    first = cli(*args, "--batch-size", "10")
    assert first.code == 0, first.output
    assert re.match(r"expire-sessions: 25 rows \(expired 25, idle 0\) in \d+ batch", first.stdout)
    assert first.stderr == ""
    second = cli(*args)
    assert (second.code, second.stdout, second.stderr) == (0, "", "")  # cron mails nothing
    as_json = json.loads(cli(*args, "--json").stdout)
    assert as_json["rows"] == 0
    assert as_json["job"] == "expire-sessions"
    assert as_json["now"] == NOW.isoformat()


def test_an_overlapping_run_exits_0_having_done_nothing(
    cli: Any, conn: psycopg.Connection[Any], database: Any
) -> None:
    _seed(conn)
    with locks.try_advisory_lock(conn, "housekeeping:expire-sessions") as held:
        assert held
        result = cli(
            "expire", "sessions", "--database-url", database.url, "--now", NOW.isoformat(), "--json"
        )
    assert result.code == 0, result.output
    assert json.loads(result.stdout)["skipped"] is True
    assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (25,)


def test_maintain_exits_1_when_a_job_failed_and_writes_metrics(
    cli: Any, conn: psycopg.Connection[Any], database: Any, tmp_path: Path
) -> None:
    _seed(conn)
    config = tmp_path / "kronos.toml"
    config.write_text('[housekeeping]\nlock_timeout = "200ms"\n')
    metrics = tmp_path / "kronos.prom"
    with database.connect(autocommit=False) as migration:
        migration.execute("LOCK TABLE cache IN ACCESS EXCLUSIVE MODE")
        result = cli(
            "maintain",
            "--database-url",
            database.url,
            "--config",
            str(config),
            "--metrics",
            str(metrics),
            "--now",
            NOW.isoformat(),
        )
        migration.rollback()
    assert result.code == 1, result.output
    assert "expire-cache: FAILED" in result.stderr
    assert "lock timeout" in result.stderr
    assert "maintain: 1 of 6 jobs failed: expire-cache" in result.stderr
    assert "\nexpire-sessions: 25 rows" in result.stdout
    text = metrics.read_text()
    assert 'kronos_maintenance_job_success{job="expire-cache"} 0' in text
    assert 'kronos_maintenance_job_rows{job="expire-sessions"} 25' in text


def test_maintain_json(cli: Any, database: Any) -> None:
    result = cli(
        "maintain",
        "--database-url",
        database.url,
        "--json",
        "--job",
        "expire-cache",
        "--now",
        NOW.isoformat(),
    )
    assert result.code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["failed"] == []
    assert [job["job"] for job in report["jobs"]] == ["expire-cache"]


def test_queue_stats_json(cli: Any, conn: psycopg.Connection[Any], database: Any) -> None:
    conn.execute(
        "INSERT INTO message_queue (topic, payload, created_at) VALUES ('t', 'p', %(c)s)",
        {"c": NOW - timedelta(minutes=5)},
    )
    result = cli(
        "queue", "stats", "--database-url", database.url, "--json", "--now", NOW.isoformat()
    )
    assert result.code == 0, result.output
    [row] = json.loads(result.stdout)
    assert (row["topic"], row["status"], row["messages"], row["oldest_age"]) == (
        "t",
        "pending",
        1,
        300.0,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_and_is_documented(cli: Any, command: tuple[str, ...]) -> None:
    result = cli(*command, "--help")
    assert result.code == 0
    assert "Example:" in result.stdout
    docs = (REPO / "docs" / "housekeeping.md").read_text()
    assert f"kronos-db {' '.join(command)}" in docs
