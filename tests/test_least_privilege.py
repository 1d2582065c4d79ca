"""Least privilege end to end: bootstrap once as a superuser, then every command as its role.

Roles are cluster-wide and other runs share the server: every role here carries a prefix unique
to this run, and is dropped at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import CliResult, Database, drop_roles, run_cli, unique_name, url_for
from psycopg import sql

from kronos_db import migrations, role_mapping
from kronos_db.config import SecuritySettings, Settings

NOW = datetime.now(UTC).replace(microsecond=0)
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"
HOUSEKEEPING = (
    ("expire", "sessions"),
    ("expire", "cache"),
    ("queue", "requeue-stuck"),
    ("queue", "purge"),
    ("queue", "stats"),
    ("ratelimits", "reset"),
    ("partitions", "rotate"),
    ("partitions", "status"),
)

pytestmark = pytest.mark.slow


@pytest.fixture
def prefix(empty_database: Database) -> Iterator[str]:
    name = unique_name("klp").replace("_", "") + "_"
    yield name
    settings = Settings(security=SecuritySettings(role_prefix=name))
    drop_roles(
        [empty_database.url], [*role_mapping.load_mapping(settings).role_names, f"{name}weak"]
    )


def _as(user: str, database: Database, config: Path, *args: str) -> CliResult:
    return run_cli(*args, "--config", str(config), "--database-url", url_for(database.name, user))


def _seed(conn: psycopg.Connection[Any]) -> None:
    past, long_ago = NOW - timedelta(hours=2), NOW - timedelta(days=30)
    conn.execute(
        "INSERT INTO sessions (token, expires_at, last_active_at)"
        " SELECT 's' || n, %(past)s, %(past)s FROM generate_series(1, 5) AS n",
        {"past": past},
    )
    conn.execute(
        "INSERT INTO cache (key, value, expires_at) SELECT 'c' || n, 'v', %(past)s"
        "  FROM generate_series(1, 5) AS n",
        {"past": past},
    )
    for status in ("processing", "processed"):
        conn.execute(
            "INSERT INTO message_queue (topic, payload, status, status_changed_at)"
            " SELECT 't', 'p', %(status)s, %(then)s FROM generate_series(1, 5)",
            {"status": status, "then": long_ago},
        )
    conn.execute(
        "INSERT INTO roles (name, permissions) VALUES ('user', '{}') ON CONFLICT DO NOTHING"
    )
    conn.execute(
        "INSERT INTO users (username, email, password_hash, role_id)"
        " VALUES ('u', 'u@example.org', %(hash)s, 1) ON CONFLICT DO NOTHING",
        {"hash": HASH},
    )
    conn.execute(
        "INSERT INTO routes (path, service, method) VALUES ('/api', 'api', 'GET')"
        " ON CONFLICT DO NOTHING"
    )
    conn.execute(
        "INSERT INTO rate_limits (user_id, route_id, request_count, last_request)"
        " VALUES (1, 1, 9, %(past)s) ON CONFLICT (user_id, route_id) DO NOTHING",
        {"past": past},
    )
    # a verified dump of today: health's last-backup check has nothing to say (it checks the
    # file on every run: a real one, with its size and SHA-256)
    dump = Path(tempfile.gettempdir()) / f"kronos-least-privilege-{os.getpid()}.dump"
    dump.write_bytes(b"x")
    conn.execute(
        "INSERT INTO backups (file_path, kind, created_at, size_bytes, sha256, row_counts,"
        " verified_at, verify_result) VALUES (%(path)s, 'pg_dump', %(now)s, 1, %(sha)s,"
        " '{}', %(now)s, 'passed')",
        {"path": str(dump), "now": NOW, "sha": hashlib.sha256(b"x").hexdigest()},
    )


def test_bootstrap_then_each_command_as_its_role(
    empty_database: Database, prefix: str, tmp_path: Path
) -> None:
    config = tmp_path / "kronos.toml"
    config.write_text(f'[security]\nrole_prefix = "{prefix}"\n')
    owner, maintenance, monitoring = (f"{prefix}{k}" for k in role_mapping.TOOLKIT_ROLES)
    database = empty_database

    # a dry run says what it would do and writes nothing: no role, no table, no lease
    rehearsal = _as("postgres", database, config, "bootstrap", "--dry-run")
    assert rehearsal.code == 0, rehearsal.output
    assert f"{owner}: missing privilege" in rehearsal.stdout + rehearsal.stderr
    with database.connect() as conn:
        assert conn.execute("SELECT to_regclass('kronos_leases')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = %s", (owner,)
        ).fetchone() == (0,)

    boot = _as("postgres", database, config, "bootstrap")
    assert boot.code == 0, boot.output
    assert "roles apply" in boot.stderr  # the table grants wait for the tables
    with database.connect() as conn:
        attributes = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s",
            (owner,),
        ).fetchone()
        assert attributes == (False, False, False)
        # pg_stat_statements is not trusted on PostgreSQL 15: an owner that finds it missing
        # is refused before anything is applied, naming the revision and the fix
        conn.execute("DROP EXTENSION pg_stat_statements")
    refused = _as(owner, database, config, "migrate")
    assert refused.code == 1, refused.output
    assert "revision 0010" in refused.stderr and "kronos-db bootstrap" in refused.stderr
    assert "nothing was applied" in refused.stderr
    with database.connect() as conn:
        assert migrations.current_revisions(conn) == ()

    # bootstrap again (idempotent): the extension is back; the owner migrates and checks
    assert _as("postgres", database, config, "bootstrap").code == 0
    for command in (("migrate",), ("roles", "apply"), ("roles", "check"), ("check",)):
        result = _as(owner, database, config, *command)
        assert result.code == 0, (command, result.output)

    with database.connect() as conn:
        _seed(conn)
    maintained = _as(maintenance, database, config, "maintain", "--json")
    assert maintained.code == 0, maintained.output
    rows = {job["job"]: job["result"]["rows"] for job in json.loads(maintained.stdout)["jobs"]}
    assert rows["expire-sessions"] == 5 and rows["purge-processed"] == 5
    for command in HOUSEKEEPING:
        result = _as(maintenance, database, config, *command)
        assert result.code == 0, (command, result.output)

    # health as a pg_monitor member: every check runs (none UNKNOWN for want of a privilege);
    # autovacuum is off on the shared test server, which the settings check rightly flags
    health = _as(monitoring, database, config, "health", "--json", "--skip", "settings")
    report = json.loads(health.stdout)
    assert [c["name"] for c in report["checks"] if c["status"] == "UNKNOWN"] == []
    assert health.code == 0, health.output
    assert _as(monitoring, database, config, "report", "snapshot").code == 0

    # a role short of the maintenance role's grants is told exactly the missing GRANT
    weak = f"{prefix}weak"
    with database.connect() as conn:
        _seed(conn)  # rows to expire: an empty table asks for no privilege at all
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(weak)))
        conn.execute(
            sql.SQL(
                "GRANT CONNECT ON DATABASE {} TO {weak}; GRANT USAGE ON SCHEMA public TO {weak};"
                " GRANT SELECT, UPDATE ON sessions TO {weak}"
            ).format(sql.Identifier(database.name), weak=sql.Identifier(weak))
        )
    no_lease = _as(weak, database, config, "expire", "sessions")
    assert no_lease.code == 1, no_lease.output
    assert f"GRANT SELECT, INSERT, UPDATE ON kronos_leases TO {weak}" in no_lease.stderr
    with database.connect() as conn:
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON kronos_leases TO {}").format(
                sql.Identifier(weak)
            )
        )
    short = _as(weak, database, config, "expire", "sessions")
    assert short.code == 1, short.output
    assert f"GRANT DELETE ON public.sessions TO {weak}" in short.stderr
    assert "maintenance role" in short.stderr
    assert len(short.stderr.strip().splitlines()) == 1
    # a month on: partitions to create, which only the owner and its members may
    later = (NOW + timedelta(days=30)).isoformat()
    rotated = _as(weak, database, config, "partitions", "rotate", "--now", later)
    assert rotated.code == 1, rotated.output
    assert f"GRANT {owner} TO {weak}" in rotated.stderr  # rotation is the owner's business
