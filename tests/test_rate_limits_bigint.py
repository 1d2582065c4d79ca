"""Revision 0011: rate_limits.id to bigint, online, under the router's upsert workload."""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg
from conftest import Database, TimedWriter

from kronos_db import migrations, schema
from kronos_db.config import Settings

LOCK_TIMEOUT = 0.5  # the migration's default lock_timeout: the bound on any service wait
SLACK = 0.5  # scheduling on a loaded, shared test machine
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"


def _upsert() -> tuple[str, tuple[Any, ...]]:
    """The router's upsert of a (user, route) counter. Routes 51-60 have no counter yet, so
    rows are also inserted while the migration runs."""
    return (
        "INSERT INTO rate_limits (user_id, route_id, request_count) VALUES (%s, %s, 1)"
        " ON CONFLICT (user_id, route_id) DO UPDATE"
        " SET request_count = rate_limits.request_count + 1, last_request = now()",
        (random.randint(1, 200), random.randint(1, 60)),
    )


def _id_type(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'rate_limits'::regclass AND attname = 'id'"
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_0011_widens_the_id_online_keeping_every_row(empty_database: Database) -> None:
    settings = Settings()
    target = empty_database.target
    migrations.upgrade(settings, target, "0010")
    with empty_database.connect() as conn:
        conn.execute(
            "INSERT INTO users (username, email, password_hash)"
            " SELECT 'u' || i, 'u' || i || '@x', %s FROM generate_series(1, 200) AS i",
            (HASH,),
        )
        conn.execute(
            "INSERT INTO routes (path, service, method)"
            " SELECT '/r' || i, 'svc', 'GET' FROM generate_series(1, 60) AS i"
        )
        # 10,000 counters: the backfill takes two batches
        conn.execute(
            "INSERT INTO rate_limits (user_id, route_id, request_count)"
            " SELECT u, r, 1 FROM generate_series(1, 200) AS u, generate_series(1, 50) AS r"
        )
        before = set(conn.execute("SELECT id, user_id, route_id FROM rate_limits").fetchall())
        assert _id_type(conn) == "integer"
    routers = [TimedWriter(empty_database, 0.004, _upsert) for _ in range(2)]
    for router in routers:
        router.start()
    try:
        time.sleep(0.3)
        result = migrations.upgrade(settings, target, "0011")
        time.sleep(0.3)
    finally:
        for router in routers:
            router.stop.set()
            router.join()
    assert [step.revision for step in result.steps] == ["0011"]
    waits = sorted(w for router in routers for w in router.waits)
    assert [e for router in routers for e in router.errors] == []
    assert len(waits) > 100
    print(f"worst upsert wait {waits[-1] * 1000:.0f} ms over {len(waits)} upserts")
    assert waits[-1] < LOCK_TIMEOUT + SLACK, waits[-5:]
    with empty_database.connect() as conn:
        assert _id_type(conn) == "bigint"
        after = set(conn.execute("SELECT id, user_id, route_id FROM rate_limits").fetchall())
        assert before <= after, "every counter keeps its row and its id"
        assert len({row[0] for row in after}) == len(after)
        assert {row[2] for row in after - before} <= set(range(51, 61))
        (sequence_type,) = conn.execute(
            "SELECT data_type::regtype::text FROM pg_sequences"
            " WHERE sequencename = 'rate_limits_id_seq'"
        ).fetchone() or ("",)
        assert sequence_type == "bigint"
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'rate_limits_id_%%'"
        ).fetchone()
        assert leftovers == (0,)
    assert schema.check(settings, target).differences == ()

    migrations.downgrade(settings, target, "-1")
    with empty_database.connect() as conn:
        assert _id_type(conn) == "integer"
        assert set(conn.execute("SELECT id, user_id, route_id FROM rate_limits").fetchall()) == (
            after
        )
    migrations.upgrade(settings, target, "head")
    with empty_database.connect() as conn:
        assert _id_type(conn) == "bigint"
        conn.execute(
            "INSERT INTO rate_limits (user_id, route_id) VALUES (1, 60) ON CONFLICT DO NOTHING"
        )
    assert schema.check(settings, target).differences == ()
