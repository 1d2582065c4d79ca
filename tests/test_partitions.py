"""The logs partition lifecycle, against the real server, with the clock moved by weeks.

Every scenario that the issue's acceptance names runs on both backends: native, and pg_partman
(the extension created in the test's own database and the table adopted).
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import conftest
import psycopg
import pytest
from conftest import REPO, Database, unique_name, url_for
from psycopg import sql

from kronos_db import backups, locks, partman, role_mapping, roles
from kronos_db.checks import Status
from kronos_db.config import PartitionSettings, SecuritySettings, Settings
from kronos_db.errors import ConfigError
from kronos_db.partitions.archive import archive_table
from kronos_db.partitions.naming import add_intervals, floor_time, partition_name
from kronos_db.partitions.rotation import lock_name, rotate
from kronos_db.partitions.status import partition_status

# the template is migrated at the real time: today (UTC) and 7 days ahead exist
TODAY = floor_time(datetime.now(UTC), "daily")


def policy(**changes: Any) -> Settings:
    return dataclasses.replace(Settings(), partitions=PartitionSettings(**changes))


def names(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'public.logs'::regclass AND c.relname <> 'logs_default'"
    ).fetchall()
    return {row[0] for row in rows}


def daily(start: datetime, count: int) -> set[str]:
    return {partition_name("logs", start + timedelta(days=i), "daily") for i in range(count)}


def insert(conn: psycopg.Connection[Any], *times: datetime, message: str = "m") -> None:
    with conn.cursor() as cur:
        cur.executemany(
            'INSERT INTO logs (service_name, level, message, "timestamp") '
            "VALUES ('svc', 'info', %s, %s)",
            [(message, t) for t in times],
        )


def total_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM logs").fetchone()
    assert row is not None
    return int(row[0])


def default_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM logs_default").fetchone()
    assert row is not None
    return int(row[0])


def drop_roles(database: Database, names: list[str]) -> None:
    """Drop the test's own roles (cluster-wide: only those it created, never a shared one)."""
    conftest.drop_roles([database.url], names)


@pytest.fixture(params=["native", "partman"])
def backend(request: pytest.FixtureRequest, conn: psycopg.Connection[Any]) -> str:
    """Each acceptance test runs twice: native, and with the table adopted by pg_partman."""
    if request.param == "partman":
        conn.execute("CREATE SCHEMA partman")
        conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
        result = partman.adopt(conn, policy())
        assert result.created
    return str(request.param)


def test_names_and_bounds_follow_pg_partman() -> None:
    moment = datetime(2026, 11, 25, 13, 37, tzinfo=UTC)
    assert partition_name("logs", floor_time(moment, "hourly"), "hourly") == "logs_p2026_11_25_1300"
    assert partition_name("logs", floor_time(moment, "daily"), "daily") == "logs_p2026_11_25"
    assert floor_time(moment, "weekly") == datetime(2026, 11, 23, tzinfo=UTC)  # a Monday
    assert partition_name("logs", floor_time(moment, "weekly"), "weekly") == "logs_p2026w48"
    assert partition_name("logs", floor_time(moment, "monthly"), "monthly") == "logs_p2026_11"
    assert add_intervals(datetime(2026, 12, 1, tzinfo=UTC), "monthly") == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    # an instant given in another zone lands in its UTC partition
    tokyo = datetime.fromisoformat("2026-11-26T08:00:00+09:00")
    assert partition_name("logs", floor_time(tokyo, "daily"), "daily") == "logs_p2026_11_25"


def test_rotate_creates_and_retires_exactly_the_policy(
    conn: psycopg.Connection[Any], backend: str
) -> None:
    settings = policy(premake=7, retention=timedelta(days=30))
    original = daily(TODAY, 8)
    assert names(conn) == original

    three_weeks = TODAY + timedelta(days=21, hours=5)
    result = rotate(conn, settings, three_weeks)
    assert not result.failed, result.failed
    assert result.backend == backend
    assert names(conn) == original | daily(TODAY + timedelta(days=21), 8)
    again = rotate(conn, settings, three_weeks)
    assert again.steps == ()
    assert not again.changed

    # two months on: everything whose whole range is older than 30 days goes
    later = TODAY + timedelta(days=60, hours=1)
    result = rotate(conn, settings, later)
    assert not result.failed, result.failed
    cutoff = later - timedelta(days=30)
    survivors = {
        name
        for name in original | daily(TODAY + timedelta(days=21), 8)
        if datetime.strptime(name, "logs_p%Y_%m_%d").replace(tzinfo=UTC) + timedelta(days=1)
        >= cutoff
    }
    assert names(conn) == survivors | daily(TODAY + timedelta(days=60), 8)
    retired = {step.partition for step in result.steps if step.kind == "retire" and step.ok}
    assert retired == (original | daily(TODAY + timedelta(days=21), 8)) - survivors
    for name in retired:
        assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
    assert rotate(conn, settings, later).steps == ()


def test_rows_in_the_default_partition_end_in_their_partition(
    conn: psycopg.Connection[Any], backend: str
) -> None:
    settings = policy(move_batch_size=3)
    # written while no partition covered them: a gap in the past, and beyond coverage
    stray = [TODAY + timedelta(days=12, hours=h) for h in range(0, 24, 3)]
    stray += [TODAY + timedelta(days=15, minutes=m) for m in range(7)]
    covered = [TODAY + timedelta(hours=1), TODAY + timedelta(days=2)]
    insert(conn, *stray, *covered)
    before = total_rows(conn)
    assert default_rows(conn) == len(stray)

    now = TODAY + timedelta(days=14, hours=2)  # day 12 is in the past, day 15 is ahead
    result = rotate(conn, settings, now)
    assert not result.failed, result.failed
    assert sum(step.rows_moved for step in result.steps) == len(stray)
    assert default_rows(conn) == 0
    assert total_rows(conn) == before
    rows = conn.execute('SELECT tableoid::regclass::text, "timestamp", id FROM logs').fetchall()
    for table, moment, _id in rows:
        assert table == partition_name("logs", floor_time(moment, "daily"), "daily")
    assert len({(row[2], row[1]) for row in rows}) == len(rows)  # no row in two places
    assert rotate(conn, settings, now).steps == ()


def test_archive_writes_verifies_records_then_drops(
    conn: psycopg.Connection[Any], backend: str, tmp_path: Path
) -> None:
    settings = policy(retention_action="archive", archive_directory=str(tmp_path))
    old = partition_name("logs", TODAY, "daily")
    insert(conn, *[TODAY + timedelta(minutes=i) for i in range(50)], message="line\nwith\ttab")
    result = rotate(conn, settings, TODAY + timedelta(days=45))
    assert not result.failed, result.failed
    step = next(s for s in result.steps if s.partition == old)
    assert step.archived_rows == 50
    assert step.archive_file is not None
    path = Path(step.archive_file)
    with gzip.open(path, "rt") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 50
    assert "line\\nwith\\ttab" in lines[0]
    recorded = conn.execute(
        "SELECT kind, size_bytes, sha256, row_counts FROM backups WHERE file_path = %s",
        (str(path),),
    ).fetchall()
    digest = backups.file_digest(path)
    assert recorded == [
        ("partition_archive", digest.size_bytes, digest.sha256, {f"public.{old}": 50})
    ]
    assert conn.execute("SELECT to_regclass(%s)", (old,)).fetchone() == (None,)
    assert not list(tmp_path.glob("*.partial"))


def test_detach_keeps_the_retired_partition_as_a_plain_table(
    conn: psycopg.Connection[Any], backend: str
) -> None:
    settings = policy(retention_action="detach")
    old = partition_name("logs", TODAY, "daily")
    insert(conn, TODAY + timedelta(minutes=1))
    result = rotate(conn, settings, TODAY + timedelta(days=45))
    assert not result.failed, result.failed
    assert old not in names(conn)
    assert conn.execute(f"SELECT count(*) FROM {old}").fetchone() == (1,)
    note = conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", (old,)).fetchone()
    assert note is not None
    assert "detached from public.logs" in note[0]
    # a detached table keeps its name, and the next run leaves it alone
    assert rotate(conn, settings, TODAY + timedelta(days=45)).steps == ()


def test_the_library_also_takes_a_target(database: Database) -> None:
    status = partition_status(database.target, Settings(), TODAY + timedelta(hours=1))
    assert status.level is Status.OK
    result = rotate(database.target, Settings(), TODAY + timedelta(days=1, hours=1))
    assert [step.kind for step in result.steps] == ["create"]


def test_a_held_lock_makes_rotate_do_nothing(
    conn: psycopg.Connection[Any], database: Database, backend: str
) -> None:
    with (
        database.connect() as other,
        locks.try_advisory_lock(other, lock_name("public.logs")) as held,
    ):
        assert held
        result = rotate(conn, Settings(), TODAY + timedelta(days=21))
    assert result.skipped
    assert result.steps == ()
    assert names(conn) == daily(TODAY, 8)


@pytest.mark.slow
def test_two_rotations_started_together(database: Database, backend: str) -> None:
    now = (TODAY + timedelta(days=21)).isoformat()
    command = [
        sys.executable,
        "-m",
        "kronos_db",
        "partitions",
        "rotate",
        "--now",
        now,
        "--database-url",
        database.url,
    ]
    runs = [
        subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    creating = [out for out, _err in outputs if "create logs_p" in out]
    assert len(creating) == 1, outputs
    with database.connect() as conn:
        assert names(conn) == daily(TODAY, 8) | daily(TODAY + timedelta(days=21), 8)


def test_bounds_are_utc_whatever_the_session_time_zone(database: Database, backend: str) -> None:
    with database.connect() as conn:
        conn.execute(f"ALTER DATABASE {database.name} SET timezone = 'Pacific/Chatham'")
    with database.connect() as conn:
        assert conn.execute("SHOW timezone").fetchone() == ("Pacific/Chatham",)
        # a row ahead of now, beyond what exists: its partition is made with it
        insert(conn, TODAY + timedelta(days=21, hours=23, minutes=59))
        result = rotate(conn, Settings(), TODAY + timedelta(days=20, hours=23))
        assert not result.failed, result.failed
        conn.execute("SET timezone = 'UTC'")
        bounds = dict(
            conn.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'logs'::regclass"
            ).fetchall()
        )
    day = TODAY + timedelta(days=21)
    name = partition_name("logs", day, "daily")
    assert bounds[name] == (
        f"FOR VALUES FROM ('{day:%Y-%m-%d} 00:00:00+00') "
        f"TO ('{day + timedelta(days=1):%Y-%m-%d} 00:00:00+00')"
    )


def test_a_guard_left_by_an_older_version_is_dropped_first(
    conn: psycopg.Connection[Any],
) -> None:
    # kronos-db before this design guarded the default partition while it attached future
    # ranges; a run killed in between left the guard, which rejects rows of those ranges
    later = TODAY + timedelta(days=30)
    conn.execute(
        sql.SQL(
            "ALTER TABLE logs_default ADD CONSTRAINT logs_default_kronos_attach_guard "
            'CHECK (NOT ("timestamp" >= {} AND "timestamp" < {})) NOT VALID'
        ).format(sql.Literal(later), sql.Literal(later + timedelta(days=2)))
    )
    # and a row older than the retention sits in the default partition: left there, reported
    insert(conn, TODAY - timedelta(days=40))
    now = TODAY + timedelta(days=1, hours=1)
    status = partition_status(conn, Settings(), now)
    assert status.level is Status.WARNING
    assert any("logs_default_kronos_attach_guard" in p for p in status.problems), status.problems
    result = rotate(conn, Settings(), now)
    assert not result.failed, result.failed
    assert [(s.kind, s.partition) for s in result.steps] == [
        ("unguard", "logs_default_kronos_attach_guard"),
        ("create", partition_name("logs", TODAY + timedelta(days=8), "daily")),
    ]
    assert result.warnings == (
        "1 row(s) in the default partition are older than the retention (30d): left in place",
    )
    assert default_rows(conn) == 1
    guards = conn.execute(
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE '%kronos_attach_guard'"
    ).fetchone()
    assert guards == (0,)
    insert(conn, later + timedelta(hours=1))  # no longer refused


def test_dry_run_prints_the_sql_and_runs_nothing(conn: psycopg.Connection[Any]) -> None:
    insert(conn, TODAY + timedelta(days=30))
    result = rotate(conn, Settings(), TODAY + timedelta(days=40), dry_run=True)
    text = "\n".join(result.statements)
    assert 'CREATE TABLE "public"."logs_p' in text
    assert "ATTACH PARTITION" in text
    assert "DETACH PARTITION" in text
    assert "DROP TABLE" in text
    assert 'DELETE FROM "public"."logs_default"' in text
    assert names(conn) == daily(TODAY, 8)
    assert default_rows(conn) == 1


def test_lock_timeout_is_retried_then_reported_without_stopping_other_steps(
    conn: psycopg.Connection[Any], database: Database
) -> None:
    settings = policy(
        lock_timeout=timedelta(milliseconds=100),
        retry_delay=timedelta(milliseconds=100),
        budget=timedelta(seconds=1),
    )
    with database.connect(autocommit=False) as blocker:
        # a long transaction reading the oldest partition: its DETACH must wait
        blocker.execute(f"SELECT count(*) FROM {partition_name('logs', TODAY, 'daily')}")
        started = time.monotonic()
        result = rotate(conn, settings, TODAY + timedelta(days=31, hours=1))
        assert time.monotonic() - started < 10
        blocker.rollback()
    failed = {step.partition for step in result.failed}
    assert failed == {partition_name("logs", TODAY, "daily")}
    assert result.failed[0].attempts > 1
    assert "lock_timeout" in (result.failed[0].error or "")
    assert result.exit_code == 4
    # the independent steps still ran
    assert partition_name("logs", TODAY + timedelta(days=38), "daily") in names(conn)

    # a blocker that goes away within the budget: the retry succeeds
    settings = policy(
        lock_timeout=timedelta(milliseconds=100),
        retry_delay=timedelta(milliseconds=100),
        budget=timedelta(seconds=20),
    )
    blocker = database.connect(autocommit=False)
    blocker.execute(f"SELECT count(*) FROM {partition_name('logs', TODAY, 'daily')}")
    timer = threading.Timer(0.5, blocker.close)
    timer.start()
    try:
        result = rotate(conn, settings, TODAY + timedelta(days=31, hours=1))
    finally:
        timer.join()
    assert not result.failed, result.failed
    assert partition_name("logs", TODAY, "daily") not in names(conn)


def test_an_interrupted_concurrent_detach_is_finalized(
    conn: psycopg.Connection[Any], database: Database
) -> None:
    # without a default partition DETACH CONCURRENTLY is allowed, and can be interrupted
    conn.execute("ALTER TABLE logs DETACH PARTITION logs_default")
    conn.execute("DROP TABLE logs_default")
    victim = partition_name("logs", TODAY, "daily")
    with database.connect(autocommit=False) as reader:
        reader.execute("SELECT count(*) FROM logs")  # an old snapshot the detach waits for
        conn.execute("SET statement_timeout = '500ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"ALTER TABLE logs DETACH PARTITION {victim} CONCURRENTLY")
        conn.execute("RESET statement_timeout")
        reader.rollback()
    pending = conn.execute(
        "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = %s::regclass", (victim,)
    ).fetchone()
    assert pending == (True,)
    now = TODAY + timedelta(days=1, hours=1)
    status = partition_status(conn, Settings(), now)
    assert status.level is Status.WARNING
    assert "interrupted concurrent detach" in status.problems[0]
    result = rotate(conn, Settings(), now)
    first = result.steps[0]
    assert (first.kind, first.partition, first.ok) == ("finalize", victim, True)
    assert not result.failed, result.failed
    assert conn.execute("SELECT to_regclass(%s)", (victim,)).fetchone() == (None,)
    # and with no default partition, retention detaches CONCURRENTLY
    result = rotate(conn, Settings(), TODAY + timedelta(days=45))
    assert not result.failed, result.failed
    assert any("DETACH PARTITION" in s and s.endswith("CONCURRENTLY") for s in result.statements)
    assert names(conn) == daily(TODAY + timedelta(days=45), 8)


def test_status_levels_follow_coverage_and_default_rows(
    conn: psycopg.Connection[Any], backend: str
) -> None:
    settings = Settings()
    ok = partition_status(conn, settings, TODAY + timedelta(hours=1))
    assert (ok.level, ok.exit_code, ok.partitions_ahead) == (Status.OK, 0, 7)
    assert ok.covered_until == TODAY + timedelta(days=8)
    assert ok.backend == backend
    warning = partition_status(conn, settings, TODAY + timedelta(days=5, hours=1))
    assert (warning.level, warning.partitions_ahead) == (Status.WARNING, 2)
    critical = partition_status(conn, settings, TODAY + timedelta(days=9))
    assert (critical.level, critical.exit_code, critical.covered_until) == (
        Status.CRITICAL,
        2,
        None,
    )
    assert [a.kind for a in critical.plan].count("create") == 8
    insert(conn, TODAY + timedelta(days=20))
    stray = partition_status(conn, settings, TODAY + timedelta(hours=1))
    assert (stray.level, stray.default_rows) == (Status.WARNING, 1)


def test_cli_status_json_and_exit_codes(database: Database, cli: Any) -> None:
    now = (TODAY + timedelta(days=9)).isoformat()
    result = cli("partitions", "status", "--json", "--now", now, "--database-url", database.url)
    assert result.code == 2, result.output
    import json

    data = json.loads(result.stdout)
    assert data["status"] == "CRITICAL"
    assert data["data"]["level"] == "CRITICAL"
    assert data["data"]["default_partition"] == "logs_default"
    result = cli("partitions", "status", "--database-url", database.url)
    assert result.code == 0, result.output
    assert result.stdout.startswith("PARTITIONS OK: covered until ")
    assert "logs_default" in result.stdout
    missing = cli("partitions", "status", "--database-url", database.url + "_missing")
    assert missing.code == 3
    assert missing.stdout.startswith("PARTITIONS UNKNOWN: ")
    bad = cli("partitions", "rotate", "--interval", "yearly", "--database-url", database.url)
    assert bad.code == 2
    assert "Traceback" not in bad.output


def test_cli_rotate_is_quiet_without_a_terminal_when_nothing_to_do(
    database: Database, cli: Any
) -> None:
    first = cli("partitions", "rotate", "--database-url", database.url)
    assert (first.code, first.stdout, first.stderr) == (0, "", "")
    dry = cli(
        "partitions",
        "rotate",
        "--dry-run",
        "--now",
        (TODAY + timedelta(days=2)).isoformat(),
        "--database-url",
        database.url,
    )
    assert dry.code == 0
    assert "ATTACH PARTITION" in dry.stdout


def test_an_unfinished_archive_is_resumed(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    # a run that died after the detach: the table is marked, and the next run archives it
    old = partition_name("logs", TODAY, "daily")
    insert(conn, TODAY + timedelta(minutes=5))
    conn.execute(f"ALTER TABLE logs DETACH PARTITION {old}")
    conn.execute(
        f"COMMENT ON TABLE {old} IS 'kronos-db: retired from public.logs: archive pending'"
    )
    settings = policy(retention_action="archive", archive_directory=str(tmp_path))
    result = rotate(conn, settings, TODAY + timedelta(hours=1))
    assert [(s.kind, s.partition, s.ok, s.archived_rows) for s in result.steps] == [
        ("resume", old, True, 1)
    ]
    assert conn.execute("SELECT to_regclass(%s)", (old,)).fetchone() == (None,)


@pytest.mark.parametrize(
    ("interval", "premake", "expected"),
    [
        (
            "hourly",
            3,
            [
                "logs_p2027_03_03_1000",
                "logs_p2027_03_03_1100",
                "logs_p2027_03_03_1200",
                "logs_p2027_03_03_1300",
            ],
        ),
        ("weekly", 1, ["logs_p2027w09", "logs_p2027w10"]),
        ("monthly", 2, ["logs_p2027_03", "logs_p2027_04", "logs_p2027_05"]),
    ],
)
def test_every_interval_makes_contiguous_partman_named_partitions(
    conn: psycopg.Connection[Any], interval: str, premake: int, expected: list[str]
) -> None:
    for name in names(conn):
        conn.execute(f"DROP TABLE {name}")
    settings = policy(interval=interval, premake=premake, retention=timedelta(0))
    now = datetime(2027, 3, 3, 10, 30, tzinfo=UTC)
    result = rotate(conn, settings, now)
    assert not result.failed, result.failed
    assert sorted(names(conn)) == expected
    status = partition_status(conn, settings, now)
    assert status.partitions_ahead == premake
    assert rotate(conn, settings, now).steps == ()


def test_partitions_get_the_role_mappings_privileges_not_the_parents(
    conn: psycopg.Connection[Any], database: Database, backend: str
) -> None:
    # roles are cluster-wide: a unique prefix keeps concurrent runs apart
    prefix = unique_name("ktp").replace("_", "") + "_"
    settings = dataclasses.replace(Settings(), security=SecuritySettings(role_prefix=prefix))
    viewer = f"{prefix}viewer"
    roles.apply_roles(conn, settings)
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(viewer)))
    try:
        conn.execute(sql.SQL("GRANT SELECT ON logs TO {}").format(sql.Identifier(viewer)))
        for days in (1, 9, 17):
            result = rotate(conn, settings, TODAY + timedelta(days=days, hours=1))
            assert not result.failed, result.failed
            assert roles.check_roles(conn, settings).in_sync, roles.check_roles(conn, settings)
        newest = partition_name("logs", TODAY + timedelta(days=24), "daily")
        assert newest in names(conn)
        acl = conn.execute("SELECT relacl FROM pg_class WHERE oid = %s::regclass", (newest,))
        assert acl.fetchone() == (None,)  # only the owner's implicit rights
        with psycopg.connect(url_for(database.name, user=f"{prefix}log"), autocommit=True) as log:
            insert(log, TODAY + timedelta(days=20, hours=3))
            assert total_rows(log) == 1  # through logs: yes
            for statement in (
                f"SELECT count(*) FROM {newest}",
                f'INSERT INTO {newest} (service_name, level, message, "timestamp") '
                f"VALUES ('svc', 'info', 'm', '{TODAY + timedelta(days=24, hours=1)}')",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    log.execute(statement)  # type: ignore[arg-type]
    finally:
        drop_roles(database, [viewer, *role_mapping.load_mapping(settings).role_names])


def test_partition_grants_in_the_role_mapping_are_applied_and_checked(
    conn: psycopg.Connection[Any], database: Database, tmp_path: Path
) -> None:
    mapping = (role_mapping.default_roles_file().read_text()).replace(
        "grants = {}", 'grants = { log = ["select"] }'
    )
    (tmp_path / "roles.toml").write_text(mapping)
    prefix = unique_name("ktg").replace("_", "") + "_"
    security = SecuritySettings(role_prefix=prefix, roles_file=str(tmp_path / "roles.toml"))
    settings = dataclasses.replace(Settings(), security=security)
    assert role_mapping.load_mapping(settings).partitions.grants == {f"{prefix}log": ("SELECT",)}
    try:
        roles.apply_roles(conn, settings)
        assert roles.check_roles(conn, settings).in_sync
        result = rotate(conn, settings, TODAY + timedelta(days=1, hours=1))
        assert not result.failed, result.failed
        assert roles.check_roles(conn, settings).in_sync
        newest = partition_name("logs", TODAY + timedelta(days=8), "daily")
        allowed = conn.execute(
            "SELECT has_table_privilege(%s, %s, 'SELECT'), has_table_privilege(%s, %s, 'INSERT')",
            (f"{prefix}log", newest, f"{prefix}log", newest),
        ).fetchone()
        assert allowed == (True, False)
        # a grant beyond the mapping on a partition is drift
        conn.execute(
            sql.SQL("GRANT INSERT ON {} TO {}").format(
                sql.Identifier(newest), sql.Identifier(f"{prefix}log")
            )
        )
        drift = roles.check_roles(conn, settings).drift
        assert [(d.kind, d.target) for d in drift] == [("extra privilege", f"public.{newest}")]
    finally:
        drop_roles(database, role_mapping.load_mapping(settings).role_names)


def test_a_role_mapping_with_bad_partition_grants_is_refused() -> None:
    base = {"services": {name: {"tables": {}} for name in role_mapping.SERVICES}}
    for partitions_section, message in (
        ({"grants": {"nobody": ["SELECT"]}}, "unknown service(s) nobody"),
        ({"grants": {"log": ["FLY"]}}, "partitions.grants.log: unknown privilege(s) FLY"),
        ({"owner": 3}, 'partitions.owner must be "parent" or a role name'),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            role_mapping.parse_mapping(
                {**base, "partitions": partitions_section}, "k_", "test.toml"
            )


def test_new_partitions_inherit_the_newest_partitions_storage_parameters(
    conn: psycopg.Connection[Any],
) -> None:
    newest = partition_name("logs", TODAY + timedelta(days=7), "daily")
    conn.execute(
        f"ALTER TABLE {newest} SET (autovacuum_vacuum_scale_factor = 0.01, fillfactor = 90)"
    )
    rotate(conn, Settings(), TODAY + timedelta(days=1, hours=1))
    created = partition_name("logs", TODAY + timedelta(days=8), "daily")
    options = conn.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", (created,))
    assert options.fetchone() == (["autovacuum_vacuum_scale_factor=0.01", "fillfactor=90"],)


def test_status_and_rotate_leave_the_session_settings_as_they_were(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute("SET statement_timeout = '7s'")
    conn.execute("SET lock_timeout = '3s'")
    partition_status(conn, Settings(), TODAY + timedelta(hours=1))
    rotate(conn, Settings(), TODAY + timedelta(days=40))
    assert conn.execute("SHOW statement_timeout").fetchone() == ("7s",)
    assert conn.execute("SHOW lock_timeout").fetchone() == ("3s",)


def test_no_row_is_lost_while_services_write_into_the_range_being_attached(
    conn: psycopg.Connection[Any], database: Database
) -> None:
    # today's partition is gone: the services' rows land in the default partition
    today = partition_name("logs", TODAY, "daily")
    conn.execute(f"DROP TABLE {today}")
    insert(conn, *[TODAY + timedelta(seconds=i) for i in range(2000)])
    written = 2000
    stop = threading.Event()
    errors: list[BaseException] = []

    def service() -> None:
        nonlocal written
        try:
            with database.connect() as writer:
                second = 5000
                while not stop.is_set():
                    insert(writer, TODAY + timedelta(seconds=second))
                    written += 1
                    second += 1
        except BaseException as exc:  # the test fails below, with the cause
            errors.append(exc)

    thread = threading.Thread(target=service)
    thread.start()
    try:
        time.sleep(0.2)
        result = rotate(conn, policy(move_batch_size=100), TODAY + timedelta(hours=2))
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors  # no insert of a service failed
    assert written > 2000
    assert not result.failed, result.failed
    assert [s.partition for s in result.steps] == [today]
    assert default_rows(conn) == 0
    assert total_rows(conn) == written
    # the day is split at the stop point: before it the rescued rows, after it the new ones
    (stop,) = [p for p in names(conn) if p.startswith(f"{today}_")]
    both = conn.execute(f"SELECT (SELECT count(*) FROM {today}) + (SELECT count(*) FROM {stop})")
    assert both.fetchone() == (written,)


def test_an_archive_that_cannot_be_written_keeps_the_rows_for_the_next_run(
    conn: psycopg.Connection[Any], tmp_path: Path, cli: Any, database: Database
) -> None:
    old = partition_name("logs", TODAY, "daily")
    insert(conn, *[TODAY + timedelta(minutes=i) for i in range(10)])
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    later = (TODAY + timedelta(days=45)).isoformat()
    failed = cli(
        "partitions",
        "rotate",
        "--retention-action",
        "archive",
        "--archive-directory",
        str(blocked),
        "--now",
        later,
        "--database-url",
        database.url,
    )
    assert failed.code == 1, failed.output
    assert f"FAILED retire {old}" in failed.stdout
    assert "Traceback" not in failed.output
    assert conn.execute(f"SELECT count(*) FROM {old}").fetchone() == (10,)
    # the other steps ran: the partitions ahead of the moved clock exist
    assert partition_name("logs", TODAY + timedelta(days=52), "daily") in names(conn)

    settings = policy(retention_action="archive", archive_directory=str(tmp_path / "ok"))
    result = rotate(conn, settings, TODAY + timedelta(days=45))
    resumed = [s for s in result.steps if s.partition == old]
    assert [(s.kind, s.ok, s.archived_rows) for s in resumed] == [("resume", True, 10)]
    assert conn.execute("SELECT to_regclass(%s)", (old,)).fetchone() == (None,)


def test_a_stray_left_by_an_older_version_is_adopted_with_its_rows(
    conn: psycopg.Connection[Any], backend: str
) -> None:
    # what an older kronos-db left when killed mid-rescue: the day's table built by hand, part
    # of the day's rows moved into it (invisible: it was never attached), the rest still in
    # the default partition, and the day's partition impossible to create under that name
    day = TODAY + timedelta(days=3)
    name = partition_name("logs", day, "daily")
    conn.execute(f"DROP TABLE {name}")
    insert(conn, *[day + timedelta(minutes=i) for i in range(100)])
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE logs INCLUDING ALL, CONSTRAINT {} "
            'CHECK ("timestamp" >= {} AND "timestamp" < {}))'
        ).format(
            sql.Identifier(name),
            sql.Identifier(f"{name}_bounds"),
            sql.Literal(day),
            sql.Literal(day + timedelta(days=1)),
        )
    )
    conn.execute(
        sql.SQL(
            "WITH moved AS (DELETE FROM logs_default WHERE ctid IN "
            "(SELECT ctid FROM logs_default ORDER BY id LIMIT 60) RETURNING *) "
            "INSERT INTO {} SELECT * FROM moved"
        ).format(sql.Identifier(name))
    )
    assert total_rows(conn) == 40  # 60 rows nobody sees
    now = TODAY + timedelta(hours=1)
    status = partition_status(conn, Settings(), now)
    assert status.level is Status.WARNING
    assert [(s.name, s.rows, s.adoptable) for s in status.strays] == [(name, 60, True)]
    assert any(
        f"stray table public.{name} holds 60 row(s) that public.logs does not show: "
        "`kronos-db partitions rotate` adopts it" in problem
        for problem in status.problems
    ), status.problems
    result = rotate(conn, Settings(), now)
    assert not result.failed, result.failed
    assert [(s.kind, s.partition, s.rows_moved, s.rows_planned) for s in result.steps] == [
        ("adopt", name, 40, 40)
    ]
    assert total_rows(conn) == 100
    assert default_rows(conn) == 0
    assert name in names(conn)
    assert partition_status(conn, Settings(), now).level is Status.OK
    assert rotate(conn, Settings(), now).steps == ()


def test_a_stray_that_cannot_be_adopted_is_reported_with_sql_that_keeps_its_rows(
    conn: psycopg.Connection[Any],
) -> None:
    day = TODAY + timedelta(days=3)
    name = partition_name("logs", day, "daily")
    conn.execute(f"DROP TABLE {name}")
    # made by hand, with a column logs does not have: it cannot become a partition
    conn.execute(f"CREATE TABLE {name} (LIKE logs INCLUDING DEFAULTS, note text)")
    conn.execute(
        f'INSERT INTO {name} (id, service_name, level, message, "timestamp") '
        "SELECT i, 'svc', 'info', 'kept', %s::timestamptz + i * interval '1 minute' "
        "FROM generate_series(1, 5) AS i",
        (day,),
    )
    status = partition_status(conn, Settings(), TODAY + timedelta(hours=1))
    assert status.level is Status.WARNING
    (problem,) = [p for p in status.problems if "stray table" in p]
    assert "cannot be adopted (its columns differ from public.logs's)" in problem
    assert "drop" not in problem.lower()
    commands = problem.split("keep its rows with: ", 1)[1]
    result = rotate(conn, Settings(), TODAY + timedelta(hours=1))
    assert not result.failed, result.failed
    assert any(f"cannot create {name}" in w for w in result.warnings), result.warnings
    for command in commands.split("; "):
        conn.execute(command)  # type: ignore[call-overload]
    assert total_rows(conn) == 5  # in the default partition now, visible
    assert conn.execute(f"SELECT count(*) FROM {name}_kept").fetchone() == (0,)
    result = rotate(conn, Settings(), TODAY + timedelta(hours=1))
    assert not result.failed, result.failed
    assert conn.execute(f"SELECT count(*) FROM {name}").fetchone() == (5,)
    status = partition_status(conn, Settings(), TODAY + timedelta(hours=1))
    assert status.level is Status.OK, status.problems  # the emptied stray hides nothing


def test_an_archive_recorded_before_a_crash_is_not_recorded_again(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    # an older kronos-db recorded the archive, then died before dropping the table
    old = partition_name("logs", TODAY, "daily")
    insert(conn, *[TODAY + timedelta(minutes=i) for i in range(20)])
    conn.execute(f"ALTER TABLE logs DETACH PARTITION {old}")
    conn.execute(
        f"COMMENT ON TABLE {old} IS 'kronos-db: retired from public.logs: archive pending'"
    )
    path = tmp_path / f"public.{old}.copy.gz"
    assert archive_table(conn, sql.Identifier("public", old), path) == 20
    digest = backups.file_digest(path)
    backups.record_backup(
        conn,
        kind="partition_archive",
        file_path=path,
        size_bytes=digest.size_bytes,
        sha256=digest.sha256,
        row_counts={f"public.{old}": 20},
    )
    settings = policy(retention_action="archive", archive_directory=str(tmp_path))
    status = partition_status(conn, settings, TODAY + timedelta(hours=1))
    assert any(f"finish retiring {old}: archive pending" in p for p in status.problems)
    result = rotate(conn, settings, TODAY + timedelta(hours=1))
    assert [(s.kind, s.partition, s.ok, s.archived_rows) for s in result.steps] == [
        ("resume", old, True, 20)
    ]
    records = conn.execute(
        "SELECT file_path, sha256 FROM backups WHERE kind = 'partition_archive'"
    ).fetchall()
    assert records == [(str(path), digest.sha256)]  # once, and the file is the one recorded
    assert backups.file_digest(path) == digest
    assert conn.execute("SELECT to_regclass(%s)", (old,)).fetchone() == (None,)
