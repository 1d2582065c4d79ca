"""`kronos-db migrate --rehearse`: the pending revisions on a scratch copy under a synthetic
Kronos workload; a planted blocking change is reported (exit 8), a safe one passes."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import Database, run_cli, write_revision

from kronos_db import migrations, rehearse
from kronos_db.config import MigrationSettings, RehearseSettings, Settings

BLOCKING = """\
-- planted: a type change that rewrites rate_limits under ACCESS EXCLUSIVE, held a while
ALTER TABLE rate_limits ALTER COLUMN request_count TYPE bigint;
SELECT pg_sleep(1.5);
"""
SAFE = """\
-- kronos: no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_created_at_idx ON sessions (created_at);
"""
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"


def _fill(database: Database) -> None:
    with database.connect() as conn:
        conn.execute(
            "INSERT INTO users (username, email, password_hash)"
            " SELECT 'u' || i, 'u' || i || '@x', %s FROM generate_series(1, 3000) AS i",
            (HASH,),
        )
        conn.execute(
            "INSERT INTO routes (path, service, method)"
            " SELECT '/r' || i, 'svc', 'GET' FROM generate_series(1, 20) AS i"
        )
        conn.execute(
            "INSERT INTO sessions (user_id, token)"
            " SELECT 1 + i % 3000, md5(i::text) FROM generate_series(1, 4000) AS i"
        )
        conn.execute(
            "INSERT INTO rate_limits (user_id, route_id, request_count)"
            " SELECT 1 + i % 3000, 1 + i % 20, i FROM generate_series(1, 2000) AS i"
            " ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO logs (service_name, level, message)"
            " SELECT 'svc', 'INFO', 'm' || i FROM generate_series(1, 5000) AS i"
        )
        conn.execute("ANALYZE")


def test_rehearsal_reports_a_blocking_change_and_passes_a_safe_one(
    tree_copy: tuple[Path, Path], database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    root, config = tree_copy
    _fill(database)
    settings = Settings(
        migrations=MigrationSettings(directory=str(root)),
        rehearse=RehearseSettings(sample_rows=1000, rate=20.0),
    )
    head = migrations.MigrationTree.from_settings(settings).script_directory().get_heads()[0]

    undo = "DROP INDEX sessions_created_at_idx;\n"
    write_revision(root, "index sessions by creation", SAFE, undo)
    safe = rehearse.rehearse(settings, database.target, max_stall=timedelta(seconds=1))
    assert not safe.failed, safe
    (step,) = safe.revisions
    assert step.error is None
    assert step.rewritten == ()
    kinds = {s.kind for s in step.stalls}
    assert {"log insert", "session lookup", "rate-limit upsert"} <= kinds
    assert all(s.errors == 0 for s in step.stalls)
    assert step.worst_stall_ms < 1000
    copied = {c.table: c for c in safe.copied}
    assert copied["public.users"].sampled
    assert 0 < copied["public.users"].copied_rows < 3000
    assert not copied["public.routes"].sampled
    assert copied["public.routes"].copied_rows == 20
    # nothing happened to the target itself
    with database.connect() as conn:
        assert migrations.current_revisions(conn) == (head,)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (3000,)
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'kronos_rehearse_%%'"
        ).fetchone()
    assert leftovers == (0,)

    write_revision(root, "widen request counts", BLOCKING, "SELECT 1;\n")
    result = run_cli(
        "migrate",
        "--rehearse",
        "--max-stall",
        "1s",
        "--json",
        "--config",
        str(config),
        "--database-url",
        database.url,
        timeout=300,
    )
    assert result.code == 8, result.output
    report = json.loads(result.stdout)
    first, second = report["revisions"]
    assert not first["failed"]
    assert second["failed"]
    assert second["rewritten"] == ["rate_limits"]
    upsert = next(s for s in second["stalls"] if s["kind"] == "rate-limit upsert")
    assert upsert["worst_ms"] > 1000
    exclusive = [
        lock
        for lock in second["locks"]
        if lock["relation"] == "rate_limits" and lock["mode"] == "AccessExclusiveLock"
    ]
    assert exclusive and exclusive[0]["held_ms"] > 1000
    assert exclusive[0]["most_waiting"] >= 1
    with database.connect() as conn:
        assert migrations.current_revisions(conn) == (head,)
    # and for a person: the same, readable
    from kronos_db.cli.migrate import _print_rehearsal

    _print_rehearsal(safe)
    shown = capsys.readouterr().out
    assert f"ok {step.revision} index sessions by creation" in shown
    assert "worst wait: log insert" in shown
    assert "tables rewritten: none" in shown
