"""`kronos-db check`: the live schema against what head defines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import REPO, Database, run_cli

from kronos_db import migrations, schema
from kronos_db.config import Settings


def _check(database: Database, *extra: str) -> Any:
    return run_cli("check", "--database-url", database.url, *extra)


def test_a_freshly_migrated_database_matches_head(database: Database) -> None:
    result = _check(database)
    assert result.code == 0, result.output
    assert "matches head" in result.stdout


def test_check_reads_the_shipped_snapshot_and_builds_nothing(database: Database) -> None:
    result = _check(database)
    assert result.code == 0, result.output
    assert "scratch" not in result.stderr


def test_the_shipped_snapshot_is_what_a_scratch_build_gives(template_database: Database) -> None:
    """migrations/head_schema.json = head built from nothing (the template: migrated to head by
    a superuser on an empty database). Regenerate it with `python -m kronos_db.schema`."""
    tree = migrations.MigrationTree(REPO)
    snapshot = schema.read_head_snapshot(tree)
    assert snapshot is not None, "migrations/head_schema.json is missing"
    stale = "stale: run `python -m kronos_db.schema` and commit migrations/head_schema.json"
    assert snapshot.fingerprint == schema.tree_fingerprint(tree), stale
    assert snapshot.head == ",".join(tree.script_directory().get_heads()), stale
    with template_database.connect() as conn:
        built = schema.schema_facts(conn)
        assert snapshot.server_major == schema.server_major(conn)
    assert schema.compare(snapshot.facts, built) == [], stale
    assert schema.compare(built, snapshot.facts) == [], stale


def test_a_tree_of_its_own_is_built_in_a_scratch_database_dropped_afterwards(
    database: Database, tree_copy: tuple[Path, Path]
) -> None:
    root, config = tree_copy
    # an edited revision: the shipped snapshot no longer describes this tree's head
    extra = root / "sql" / "migrations" / "0003_log_service.upgrade.sql"
    extra.write_text(extra.read_text() + "\n-- a comment changes the fingerprint\n")
    result = _check(database, "--config", str(config))
    scratch = re.search(r"scratch database (kronos_check_\w+)", result.stderr)
    assert scratch is not None, result.output
    with database.connect() as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = %s", (scratch.group(1),)
        ).fetchall()
    assert left == []


def test_partitions_made_by_rotation_are_not_drift(database: Database) -> None:
    with database.connect() as conn:
        conn.execute(
            "CREATE TABLE logs_p2099_01_01 PARTITION OF logs"
            " FOR VALUES FROM ('2099-01-01 00:00+00') TO ('2099-01-02 00:00+00')"
        )
    assert _check(database).code == 0


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("ALTER TABLE cache DROP COLUMN expires_at", "column public.cache.expires_at: missing"),
        (
            "CREATE INDEX routes_service_idx ON routes (service)",
            "index public.routes_service_idx: not defined by head",
        ),
        (
            "ALTER TABLE users ALTER COLUMN created_at SET DEFAULT clock_timestamp()",
            "column public.users.created_at: default is 'clock_timestamp()', head has 'now()'",
        ),
        (
            "ALTER TABLE sessions ALTER COLUMN token TYPE varchar(500)",
            "column public.sessions.token: type is 'character varying(500)', head has 'text'",
        ),
        (
            "ALTER TABLE roles ALTER COLUMN permissions DROP NOT NULL",
            "column public.roles.permissions: not null is 'no', head has 'yes'",
        ),
        (
            "ALTER TABLE message_queue DROP CONSTRAINT message_queue_status_check",
            "constraint public.message_queue.message_queue_status_check: missing",
        ),
        (
            "DROP TRIGGER sessions_default_expiry ON sessions",
            "trigger public.sessions.sessions_default_expiry: missing",
        ),
        (
            "ALTER TABLE sessions DISABLE TRIGGER sessions_default_expiry",
            "trigger public.sessions.sessions_default_expiry: enabled is 'disabled'",
        ),
        (
            "DETACH PARTITION",  # handled below: the default partition detached
            "table public.logs: default partition is 'none', head has 'logs_default'",
        ),
        ("CREATE TABLE scratch (id int)", "table public.scratch: not defined by head"),
        (
            "CREATE OR REPLACE FUNCTION message_queue_notify() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RETURN NULL; END $$",
            "function public.message_queue_notify(): definition differs from head's:",
        ),
    ],
)
def test_a_manual_change_is_listed_and_exits_6(
    database: Database, statement: str, expected: str
) -> None:
    with database.connect() as conn:
        if statement == "DETACH PARTITION":
            conn.execute("ALTER TABLE logs DETACH PARTITION logs_default")
        else:
            conn.execute(statement)  # type: ignore[arg-type]
    result = _check(database)
    assert result.code == 6, result.output
    assert expected in result.stdout


def test_a_dropped_table_is_one_difference(database: Database) -> None:
    with database.connect() as conn:
        conn.execute("DROP TABLE rate_limits")
    result = _check(database, "--json")
    assert result.code == 6
    differences = json.loads(result.stdout)["differences"]
    assert [(d["kind"], d["name"], d["change"]) for d in differences] == [
        ("table", "public.rate_limits", "missing")
    ]


def test_a_database_behind_head_says_so(empty_database: Database) -> None:
    assert run_cli("migrate", "0006", "--database-url", empty_database.url).code == 0
    result = _check(empty_database)
    assert result.code == 6
    assert "revision" in result.stdout
    assert "public.backups: missing" in result.stdout


def test_check_against_a_given_reference(
    database: Database, empty_database: Database, conn: psycopg.Connection[Any]
) -> None:
    report = schema.check(Settings(), database.target, reference=empty_database.target)
    assert report.differences == ()
    conn.execute("ALTER TABLE backups ADD COLUMN note text")
    report = schema.check(Settings(), database.target, reference=empty_database.target)
    assert [d.describe() for d in report.differences] == [
        "column public.backups.note: not defined by head (added by hand?)"
    ]
