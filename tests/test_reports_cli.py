"""The report and health commands as cron, Nagios and a DBA run them: exit codes, JSON,
Prometheus, and the HTML page rendered in a real headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from conftest import REPO, Database, retry_on_eviction

from kronos_db.config import HealthSettings
from kronos_db.reports.health import CHECK_NAMES

REPORTS = (
    "slow-queries",
    "indexes",
    "bloat",
    "vacuum",
    "locks",
    "activity",
    "connections",
    "cache",
    "sequences",
    "settings",
    "space",
    "kronos",
    "snapshot",
    "replication",
)


def write_config(tmp_path: Path, **health: str) -> Path:
    path = tmp_path / "kronos.toml"
    lines = ["[health]"] + [
        f'{key} = "{value}"' if not value.isdigit() else f"{key} = {value}"
        for key, value in health.items()
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def health(cli: Any, database: Database, *args: str) -> Any:
    # autovacuum is off on the shared test server: the settings check would always be CRITICAL
    return cli("health", "--database-url", database.url, "--skip", "settings", *args)


def test_snapshot_is_quiet_for_cron(cli: Any, database: Database) -> None:
    result = cli("report", "snapshot", "--database-url", database.url, "--keep", "30d")
    assert result.code == 0
    assert result.output == ""
    result = cli(
        "report", "slow-queries", "--database-url", database.url, "--since", "1h", "--json"
    )
    assert result.code == 0, result.output
    assert json.loads(result.stdout)["window_start"] is not None
    result = cli("report", "space", "--database-url", database.url, "--since", "bogus")
    assert result.code == 2


def test_every_report_runs_as_json(cli: Any, database: Database) -> None:
    for name in REPORTS:
        result = cli("report", name, "--database-url", database.url, "--json")
        assert result.code == 0, (name, result.output)
        json.loads(result.stdout)


def test_every_report_renders_a_table(cli: Any, database: Database) -> None:
    result = cli("report", "indexes", "--database-url", database.url)
    assert result.code == 0
    assert "Unused indexes" in result.stdout
    result = cli("report", "kronos", "--database-url", database.url)
    assert result.code == 0
    assert "8 partitions" in result.stdout


def test_health_exit_codes(cli: Any, database: Database, conn: psycopg.Connection[Any]) -> None:
    result = health(cli, database)
    assert result.code == 2, result.output  # no verified backup: CRITICAL (backups' verdict)
    assert result.stdout.startswith("KRONOS CRITICAL: last_backup: no usable verified backup")
    result = health(cli, database, "--skip", "last_backup")
    assert result.code == 0, result.output
    assert result.stdout.startswith("KRONOS OK: all 24 checks OK | ")
    conn.execute("SELECT setval('users_id_seq', 2100000000)")
    result = health(cli, database, "--skip", "last_backup", "--json")
    assert result.code == 2
    data = json.loads(result.stdout)
    assert data["status"] == "CRITICAL"
    assert data["exit_code"] == 2
    (sequences,) = [c for c in data["checks"] if c["name"] == "sequences"]
    assert sequences["status"] == "CRITICAL"
    assert "users_id_seq" in sequences["summary"]
    # one check at a time, as a Nagios service per check
    assert health(cli, database, "--check", "connections").code == 0


def test_health_unknown(cli: Any, database: Database, conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP EXTENSION pg_stat_statements")
    result = cli("report", "slow-queries", "--database-url", database.url)
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1  # one line, with the way out
    assert "not installed in this database (hint: add pg_stat_statements" in result.stderr
    result = health(cli, database, "--check", "slow_queries")
    assert result.code == 3
    assert result.stdout.startswith("KRONOS UNKNOWN: ")
    assert "CREATE EXTENSION pg_stat_statements" in result.stdout
    result = cli("health", "--database-url", "postgresql://postgres@127.0.0.1:1/nowhere")
    assert result.code == 3
    # Nagios reads stdout only: the UNKNOWN line is there
    assert result.stdout.startswith("KRONOS UNKNOWN: ")
    assert "Traceback" not in result.output
    result = health(cli, database, "--check", "no_such_check")
    assert result.code == 3
    assert "unknown check" in result.stdout


def test_health_thresholds_from_the_configuration(
    cli: Any, database: Database, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    conn.execute(
        "INSERT INTO cache (key, value, expires_at) "
        "SELECT 'k' || g, 'v', now() - interval '1 hour' FROM generate_series(1, 3) g"
    )
    args = ("--check", "expired_rows")
    assert health(cli, database, *args).code == 0
    config = write_config(tmp_path, expired_rows_warning="1", expired_rows_critical="2")
    result = health(cli, database, *args, "--config", str(config))
    assert result.code == 2
    assert "cache 3" in result.stdout
    assert "expired_rows=3;~:1;~:2;0;" in result.stdout
    bad = write_config(tmp_path, idle_in_transaction_warning="soon")
    result = health(cli, database, *args, "--config", str(bad))
    assert result.code == 3
    assert "health.idle_in_transaction_warning" in result.stdout
    swapped = write_config(tmp_path, long_query_warning="2d", long_query_critical="1d")
    result = health(cli, database, "--check", "long_queries", "--config", str(swapped))
    assert result.code == 3
    assert "health.long_query_critical (1d) is below health.long_query_warning (2d)" in (
        result.stdout
    )
    # a setting that moved to the module owning the question says where it went
    moved = write_config(tmp_path, backup_age_warning="2d")
    result = health(cli, database, "--config", str(moved))
    assert result.code == 3
    assert "health.backup_age_warning is no longer a setting" in result.stdout
    assert "backups.warning_age" in result.stdout


def test_reports_are_documented() -> None:
    docs = (REPO / "docs" / "reports.md").read_text(encoding="utf-8")
    for name in REPORTS:
        assert f"report {name}" in docs, name
    for name in CHECK_NAMES:
        assert f"`{name}`" in docs, name
    for field in HealthSettings.__dataclass_fields__:
        assert f"`{field}`" in docs, field


def test_every_command_has_help(cli: Any) -> None:
    result = cli("report", "--help")
    assert result.code == 0
    for name in REPORTS:
        assert name in result.stdout
        sub = cli("report", name, "--help")
        assert sub.code == 0
        assert "Example:" in sub.stdout
    assert "Nagios" in cli("health", "--help").stdout


def test_slow_queries_reset_only_when_asked(
    cli: Any, database: Database, conn: psycopg.Connection[Any]
) -> None:
    args = ("report", "slow-queries", "--database-url", database.url, "--json", "--limit", "500")

    def sleeps() -> list[dict[str, Any]]:
        result = cli(*args)
        assert result.code == 0, result.output
        return [q for q in json.loads(result.stdout)["queries"] if "pg_sleep" in q["query"]]

    def reading_never_resets(_attempt: int) -> None:  # PgHero's fault
        conn.execute("SELECT pg_sleep(0.01)")
        assert sleeps()
        assert sleeps()

    retry_on_eviction(conn, reading_never_resets)
    result = cli("report", "slow-queries", "--database-url", database.url, "--reset")
    assert result.code == 0
    assert "reset for this database" in result.stderr
    assert sleeps() == []


def test_health_on_a_database_without_the_kronos_schema(cli: Any, empty_database: Database) -> None:
    result = cli("health", "--database-url", empty_database.url, "--skip", "settings", "--json")
    assert result.code == 3, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    for name in ("log_partitions", "expired_rows", "message_queue", "last_backup"):
        assert checks[name]["status"] == "UNKNOWN"
        assert "migrate" in checks[name]["hint"] or "no public.logs" in checks[name]["summary"]
    assert checks["connections"]["status"] == "OK"  # the server-level checks still ran
