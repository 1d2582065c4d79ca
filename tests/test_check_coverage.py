"""`kronos-db check` beyond tables and columns: privileges (PUBLIC included), owners, row level
security and policies, storage parameters, collations, what one partition has of its own, and
functions shown as a diff; and what kronos-db's own commands change is said, not drift."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import Database, run_cli, unique_name, url_for
from psycopg import sql

from kronos_db import partman, schema
from kronos_db.config import PartitionSettings, Settings
from kronos_db.partitions.naming import floor_time, partition_name
from kronos_db.partitions.rotation import rotate


@pytest.fixture
def outsider() -> Iterator[str]:
    """A role of nobody's mapping (cluster-wide: a unique name, dropped by this test only)."""
    name = unique_name("kronos_outsider")
    with psycopg.connect(url_for("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    yield name
    with (
        psycopg.connect(url_for("postgres"), autocommit=True) as conn,
        contextlib.suppress(psycopg.Error),
    ):
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


DRIFT = [
    (
        "GRANT SELECT ON users TO PUBLIC",
        "table public.users: privileges of PUBLIC is 'SELECT', head has none",
    ),
    (
        "GRANT CREATE ON SCHEMA public TO PUBLIC",
        "schema public: privileges of PUBLIC is 'CREATE, USAGE', head has 'USAGE'",
    ),
    (
        "REVOKE EXECUTE ON FUNCTION sessions_default_expiry() FROM PUBLIC",
        "function public.sessions_default_expiry(): privileges of PUBLIC is none, "
        "head has 'EXECUTE'",
    ),
    (
        "ALTER TABLE cache OWNER TO {outsider}",
        "table public.cache: owner is '{outsider}', head has 'the migrating role'",
    ),
    (
        "ALTER TABLE sessions ENABLE ROW LEVEL SECURITY",
        "table public.sessions: row level security is 'enabled', head has 'disabled'",
    ),
    (
        "CREATE POLICY own_sessions ON sessions USING (user_id = 1)",
        "policy public.sessions.own_sessions: not defined by head",
    ),
    (
        "ALTER TABLE message_queue SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01)",
        "table public.message_queue: storage parameters is "
        "'autovacuum_vacuum_scale_factor=0.01, fillfactor=70', head has 'none'",
    ),
    (
        'ALTER TABLE cache ALTER COLUMN value TYPE text COLLATE "C"',
        "column public.cache.value: collation is 'pg_catalog.\"C\"', head has 'default'",
    ),
    (
        "CREATE INDEX logs_default_message_idx ON logs_default (message)",
        "partition index public.logs_default_message_idx: not defined by head",
    ),
    (
        "ALTER TABLE logs_default ADD CONSTRAINT logs_default_level_check CHECK (level <> '')",
        "partition constraint public.logs_default.logs_default_level_check: not defined by head",
    ),
    (
        "CREATE TRIGGER logs_default_notify AFTER INSERT ON logs_default"
        " FOR EACH ROW EXECUTE FUNCTION message_queue_notify()",
        "partition trigger public.logs_default.logs_default_notify: not defined by head",
    ),
    (
        "CREATE INDEX logs_level_idx ON ONLY logs (level)",
        "index public.logs_level_idx: not defined by head",
    ),
]


def test_each_kind_of_drift_is_found_against_head(
    outsider: str, database: Database, template_database: Database
) -> None:
    """Every change at once in one database, then each one named: one check, many kinds."""
    with database.connect() as conn:
        for statement, _expected in DRIFT:
            conn.execute(statement.format(outsider=f'"{outsider}"'))  # type: ignore[arg-type]
        # a grant to a role: access control, the role mapping's question; said, not drift
        conn.execute(f'GRANT INSERT ON rate_limits TO "{outsider}"')  # type: ignore[arg-type]
    report = schema.check(Settings(), database.target, reference=None)
    found = [d.describe() for d in report.differences]
    for _statement, expected in DRIFT:
        wanted = expected.format(outsider=outsider)
        assert any(line.startswith(wanted) for line in found), (wanted, found)
    # nothing else: a change is one difference, named once
    assert len(found) == len(DRIFT), "\n".join(found)
    assert any(
        note.startswith(f"{outsider}, a role outside the role mapping, holds privileges on 1")
        and "table public.rate_limits" in note
        for note in report.notes
    ), report.notes  # rate_limits (cache, which it owns, is "the owner"s)
    half_built = [d for d in report.differences if d.attribute == "partitions without it"]
    assert half_built == []  # an unexpected index is one difference, not one per attribute


def test_a_changed_function_reads_as_a_diff(database: Database) -> None:
    with database.connect() as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION message_queue_notify() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('other', NEW.topic); RETURN NULL;"
            " END $$"
        )
    result = run_cli("check", "--database-url", database.url)
    assert result.code == 6, result.output
    assert "None" not in result.stdout
    assert "definition differs from head's:" in result.stdout
    assert "--- head" in result.stdout
    assert "+++ live" in result.stdout
    assert "-    PERFORM pg_notify('kronos_message_queue', NEW.topic);" in result.stdout
    assert "pg_notify('other'" in result.stdout
    document = json.loads(run_cli("check", "--json", "--database-url", database.url).stdout)
    (difference,) = document["differences"]
    assert difference["kind"] == "function"
    assert any(line.startswith("+") and "other" in line for line in difference["diff"])


def test_grants_of_the_role_mapping_are_roles_checks_question(database: Database) -> Any:
    """`roles apply` grants the service roles what the mapping says: not drift for check."""
    apply = run_cli("roles", "apply", "--database-url", database.url)
    assert apply.code == 0, apply.output
    result = run_cli("check", "--database-url", database.url)
    assert result.code == 0, result.output
    assert "roles check" in result.stdout


def test_kronos_dbs_own_partition_changes_are_said_not_drift(database: Database) -> None:
    """After `partitions rotate --retention-action detach` (a kept table, and one whose
    retirement is pending) and `partitions adopt` (pg_partman's template table), check is
    clean and says why; a table detached by hand is still drift."""
    today = floor_time(datetime.now(UTC), "daily")
    settings = dataclasses.replace(
        Settings(), partitions=PartitionSettings(retention_action="detach")
    )
    with database.connect() as conn:
        conn.execute(
            'INSERT INTO logs (service_name, level, message, "timestamp")'
            " VALUES ('svc', 'INFO', 'old', %s)",
            (today + timedelta(minutes=1),),
        )
        rotated = rotate(conn, settings, today + timedelta(days=45))
        assert not rotated.failed, rotated.failed
        conn.execute("CREATE SCHEMA partman")
        conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
        assert partman.adopt(conn, settings).created
    kept = partition_name("logs", today, "daily")
    report = schema.check(Settings(), database.target)
    assert report.differences == (), [d.describe() for d in report.differences]
    notes = "\n".join(report.notes)
    assert f"table public.{kept}: a partition of public.logs detached and kept" in notes
    assert "table partman.template_public_logs: pg_partman's template table" in notes
    result = run_cli("check", "--database-url", database.url)
    assert result.code == 0, result.output
    assert "note: table partman.template_public_logs" in result.stdout
    # the same kind of table, detached by a person: drift
    with database.connect() as conn:
        day = partition_name("logs", today + timedelta(days=50), "daily")
        conn.execute(sql.SQL("ALTER TABLE logs DETACH PARTITION {}").format(sql.Identifier(day)))
    by_hand = [d.describe() for d in schema.check(Settings(), database.target).differences]
    assert by_hand == [f"table public.{day}: not defined by head (added by hand?)"]
