"""`kronos-db lint`: each rule with a bad and a good example, levels from the live tables, the
waiver, and lint where it runs: `revision`, `migrate`, CI (the tree as it is)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import REPO, Database, run_cli, write_revision

from kronos_db import lint, migrations
from kronos_db.config import LintSettings, MigrationSettings, Settings

NO_TRANSACTION = "-- kronos: no-transaction\n"

# rule, level of the bad example without a database, bad SQL, good SQL
RULES = [
    (
        "kronos-index-on-partitioned-table",
        "error",
        "CREATE INDEX logs_level_idx ON logs (level);",
        NO_TRANSACTION + "-- kronos: concurrently-per-partition\n"
        "CREATE INDEX IF NOT EXISTS logs_level_idx ON logs (level);",
    ),
    (
        "kronos-concurrent-index-on-partitioned-table",
        "error",
        NO_TRANSACTION + "CREATE INDEX CONCURRENTLY IF NOT EXISTS logs_level_idx ON logs (level);",
        NO_TRANSACTION + "-- kronos: concurrently-per-partition\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS logs_level_idx ON logs (level);",
    ),
    (
        "kronos-detach-partition",
        "error",
        "ALTER TABLE logs DETACH PARTITION logs_p2020_01_01;",
        "CREATE TABLE audit (id bigint, at timestamptz) PARTITION BY RANGE (at);\n"
        "CREATE TABLE audit_2020 PARTITION OF audit\n"
        "    FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');\n"
        "ALTER TABLE audit DETACH PARTITION audit_2020;",
    ),
    (
        "kronos-detach-default-partition",
        "error",
        "ALTER TABLE logs DETACH PARTITION logs_default;",
        "-- (retention is `kronos-db partitions rotate`'s job)\nSELECT 1;",
    ),
    (
        "kronos-directive-misplaced",
        "error",
        "-- kronos: concurrently-per-partition\nCREATE INDEX logs_level_idx ON logs (level);",
        NO_TRANSACTION + "-- kronos: concurrently-per-partition\n"
        "CREATE INDEX IF NOT EXISTS logs_level_idx ON logs (level);",
    ),
    (
        "kronos-unreasoned-waiver",
        "error",
        "-- kronos: waive require-concurrent-index-creation\nCREATE INDEX ON routes (service);",
        "-- kronos: waive require-concurrent-index-creation: routes has 40 rows, written weekly\n"
        "CREATE INDEX ON routes (service);",
    ),
    (
        "kronos-unreasoned-waiver",
        "error",
        "-- squawk-ignore require-concurrent-index-creation\nCREATE INDEX ON routes (service);",
        NO_TRANSACTION + "CREATE INDEX CONCURRENTLY IF NOT EXISTS routes_service_idx"
        " ON routes (service);",
    ),
    (
        "require-concurrent-index-creation",
        "error",
        "CREATE INDEX sessions_token_idx ON sessions (token);",
        NO_TRANSACTION + "CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_token_idx"
        " ON sessions (token);",
    ),
    (
        "constraint-missing-not-valid",
        "error",
        "ALTER TABLE cache ADD CONSTRAINT cache_key_check CHECK (key <> '');",
        "ALTER TABLE cache ADD CONSTRAINT cache_key_check CHECK (key <> '') NOT VALID;",
    ),
    (
        "changing-column-type",
        "error",
        "ALTER TABLE rate_limits ALTER COLUMN request_count TYPE bigint;",
        "ALTER TABLE rate_limits ADD COLUMN request_count_big bigint;",
    ),
    (
        "kronos-needs-no-transaction",
        "error",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS routes_service_idx ON routes (service);",
        NO_TRANSACTION + "CREATE INDEX CONCURRENTLY IF NOT EXISTS routes_service_idx"
        " ON routes (service);",
    ),
    (
        "prefer-bigint-over-int",
        "warning",
        "CREATE TABLE api_keys (id serial PRIMARY KEY, name text);",
        "CREATE TABLE api_keys (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);",
    ),
    (
        "ban-drop-column",
        "warning",
        "ALTER TABLE cache DROP COLUMN expires_at;",
        "ALTER TABLE cache ADD COLUMN hits bigint;",
    ),
    ("syntax-error", "error", "CREATE TABL oops (id int);", "CREATE TABLE oops (id int);"),
]


def _lint_sql(tmp_path: Path, name: str, text: str, **settings: object) -> lint.LintReport:
    path = tmp_path / f"{name}.upgrade.sql"
    path.write_text(text + "\n", encoding="utf-8")
    return lint.lint_files(Settings(lint=LintSettings(**settings)), [path])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "level", "bad", "good"),
    RULES,
    ids=[f"{rule}-{i}" for i, (rule, *_rest) in enumerate(RULES)],
)
def test_each_rule_flags_the_bad_example_and_passes_the_good_one(
    tmp_path: Path, rule: str, level: str, bad: str, good: str
) -> None:
    flagged = _lint_sql(tmp_path, "bad", bad)
    found = [f for f in flagged.findings if f.rule == rule]
    assert found, [(f.rule, f.level) for f in flagged.findings]
    assert found[0].level == level, found[0]
    assert found[0].released is False
    passed = _lint_sql(tmp_path, "good", good)
    assert [f for f in passed.findings if f.rule == rule and f.level != "info"] == []
    assert passed.blocking == (), [lint.describe(f) for f in passed.blocking]


def test_a_new_table_makes_a_blocking_finding_moot(tmp_path: Path) -> None:
    report = _lint_sql(
        tmp_path,
        "new",
        NO_TRANSACTION + "CREATE TABLE IF NOT EXISTS api_keys (id bigint, owner int);\n"
        "ALTER TABLE api_keys ADD CONSTRAINT api_keys_owner_check CHECK (owner > 0);",
    )
    (finding,) = [f for f in report.findings if f.rule == "constraint-missing-not-valid"]
    assert finding.level == "info"
    assert "created by this revision" in finding.context


def test_the_size_and_traffic_of_the_live_table_set_the_level(database: Database) -> None:
    """The same finding: a warning on a 500-row quiet table, an error on a big or busy one."""
    with database.connect() as conn:
        conn.execute(
            "INSERT INTO routes (path, service, method)"
            " SELECT '/r' || i, 'svc', 'GET' FROM generate_series(1, 500) AS i"
        )
        conn.execute(
            "INSERT INTO cache (key, value) SELECT 'k' || i, 'v' FROM generate_series(1, 30000) i"
        )
        conn.execute("ANALYZE routes, cache")
        conn.execute(
            "INSERT INTO users (username, email, password_hash) VALUES"
            " ('u', 'u@x', '$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g')"
        )
    settings = Settings(lint=LintSettings(sample_interval=timedelta(seconds=1)))
    sql = (
        "ALTER TABLE routes ADD CONSTRAINT routes_path_check CHECK (path <> '');\n"
        "ALTER TABLE cache ADD CONSTRAINT cache_key_check CHECK (key <> '');\n"
        "ALTER TABLE sessions ADD CONSTRAINT sessions_token_check CHECK (token <> '');\n"
    )
    path = Path(database.name + ".upgrade.sql")
    stop = threading.Event()

    def auth_service() -> None:  # a small table written 50 times a second: busy
        with database.connect() as conn:
            while not stop.wait(0.02):
                conn.execute("INSERT INTO sessions (token) VALUES (md5(random()::text))")

    writer = threading.Thread(target=auth_service)
    try:
        path.write_text(sql, encoding="utf-8")
        writer.start()
        time.sleep(1.5)  # statistics reach pg_stat_user_tables about once a second
        report = lint.lint_files(settings, [path], target=database.target)
    finally:
        stop.set()
        writer.join()
        path.unlink()
    levels = {f.table: (f.level, f.context) for f in report.findings}
    assert levels["routes"][0] == "warning", levels
    assert "routes: ~500 rows" in levels["routes"][1]
    assert levels["cache"][0] == "error", levels
    assert "cache: ~30,000 rows" in levels["cache"][1]
    assert levels["sessions"][0] == "error", levels
    writes = float(levels["sessions"][1].split(", ")[-1].split(" ")[0])
    assert writes > 5


def test_the_tree_as_released_lints_clean_in_ci() -> None:
    """What .ci/run runs: no blocking finding, released revisions shown but never blocking."""
    result = run_cli("lint", "--json", timeout=120)
    assert result.code == 0, result.output
    report = json.loads(result.stdout)
    assert report["blocking"] == 0
    assert report["database"] is None
    rate_limits_id = [
        f
        for f in report["findings"]
        if f["file"] == "sql/migrations/0005_router_service.upgrade.sql"
        and f["rule"] == "prefer-bigint-over-int"
        and f["level"] == "warning"
    ]
    assert rate_limits_id and all(f["released"] for f in rate_limits_id)
    text = run_cli("lint")
    assert text.code == 0
    assert "released" in text.stdout


def test_migrate_refuses_an_unreleased_error_unless_waived_with_a_reason(
    tree_copy: tuple[Path, Path], database: Database
) -> None:
    root, config = tree_copy
    # write rates averaged since the statistics reset: no 2 s sample in every command here
    config.write_text(config.read_text() + '[lint]\nsample_interval = "0"\n', encoding="utf-8")
    bad = "-- a plain index on the partitioned logs\nCREATE INDEX logs_level_idx ON logs (level);\n"
    revision_file = write_revision(root, "index logs by level", bad, "DROP INDEX logs_level_idx;\n")
    args = ("--config", str(config), "--database-url", database.url)
    refused = run_cli("migrate", "--json", *args)
    assert refused.code == 8, refused.output
    assert "kronos-index-on-partitioned-table" in json.loads(refused.stdout)["error"]
    with database.connect() as conn:
        assert conn.execute("SELECT to_regclass('logs_level_idx')").fetchone() == (None,)
    # lint on its own says the same, and exits 8 too
    assert run_cli("lint", "--pending", *args).code == 8
    # a waiver without a reason is no waiver
    upgrade = revision_file.parent.parent.parent / "sql" / "migrations"
    (upgrade_sql,) = upgrade.glob(f"{revision_file.stem}.upgrade.sql")
    upgrade_sql.write_text(
        "-- kronos: waive kronos-index-on-partitioned-table\n"
        "CREATE INDEX logs_level_idx ON logs (level);\n",
        encoding="utf-8",
    )
    settings = Settings(migrations=MigrationSettings(directory=str(root)))
    unreasoned = lint.lint_revisions(settings, revisions=[revision_file.stem[:4]])
    assert {f.rule for f in unreasoned.blocking} == {
        "kronos-index-on-partitioned-table",
        "kronos-unreasoned-waiver",
    }
    upgrade_sql.write_text(
        "-- kronos: waive kronos-index-on-partitioned-table: built in the nightly maintenance"
        " window, log writers paused\n"
        "CREATE INDEX logs_level_idx ON logs (level);\n",
        encoding="utf-8",
    )
    applied = run_cli("migrate", *args)
    assert applied.code == 0, applied.output
    listed = run_cli("lint", "--json", str(upgrade_sql), *args)
    assert listed.code == 0
    (waived,) = [
        f for f in json.loads(listed.stdout)["findings"] if f["rule"].startswith("kronos-")
    ]
    assert waived["level"] == "waived"
    assert "maintenance window" in waived["waiver"]


def test_revision_lints_the_unreleased_revisions(tree_copy: tuple[Path, Path]) -> None:
    root, config = tree_copy
    write_revision(root, "drop a column", "ALTER TABLE cache DROP COLUMN expires_at;\n", "\n")
    result = run_cli("revision", "-m", "next one", "--config", str(config))
    assert result.code == 0, result.output
    assert "ban-drop-column" in result.stderr
    settings = Settings(migrations=MigrationSettings(directory=str(root)))
    heads = migrations.MigrationTree.from_settings(settings).script_directory().get_heads()
    assert len(heads) == 1


def test_squawk_missing_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.upgrade.sql"
    path.write_text("SELECT 1;\n", encoding="utf-8")
    config = tmp_path / "kronos.toml"
    config.write_text('[lint]\nsquawk = "no-such-squawk"\n', encoding="utf-8")
    result = run_cli("lint", str(path), "--config", str(config))
    assert result.code == 1, result.output
    assert "no-such-squawk" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ci_runs_lint_over_the_whole_tree() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/kronos-db lint" in ci
