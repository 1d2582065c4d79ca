"""Benchmark: what pooler-safe housekeeping costs, against the session-state way it replaced.

    .venv/bin/python bench/pooling.py [--server postgresql://postgres@127.0.0.1:5432]
                                      [--rows 200000] [--batch-size 1000] [--repeat 3]

In a scratch database migrated to head (dropped afterwards), with ``--rows`` expired sessions
loaded again before each run:

1. one batch of ``expire sessions``, as kronos-db runs it now (every batch its own transaction
   with ``SET LOCAL lock_timeout/statement_timeout``; no server-side prepared statements),
   against the baseline it replaced: the same statement on an autocommit connection whose
   session timeouts were set once, with psycopg's default prepare-after-five (median of
   ``--repeat`` runs each, alternating);
2. a job's lock: taking and releasing the lease (on the job's idle connection: a read, the
   taking transaction, the release; the heartbeat thread started and stopped) against
   ``pg_try_advisory_lock``/``pg_advisory_unlock`` on that same connection (median of 50 each).
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from kronos_db import housekeeping, locks, migrations
from kronos_db.config import Settings
from kronos_db.db import resolve_target
from kronos_db.housekeeping import BatchOptions, Tally
from kronos_db.resources import query

NOW = datetime.now(UTC)


def load(conn: psycopg.Connection[Any], rows: int) -> None:
    conn.execute("TRUNCATE sessions")
    conn.execute(
        "INSERT INTO sessions (token, expires_at, last_active_at)"
        " SELECT 'token-' || n, %(past)s, %(now)s FROM generate_series(1, %(rows)s::integer) AS n",
        {"past": NOW - timedelta(days=1), "now": NOW, "rows": rows},
    )
    conn.execute("VACUUM ANALYZE sessions")


def kronos_db_way(url: str, batch_size: int) -> float:
    options = BatchOptions(batch_size=batch_size)
    target = resolve_target(url, Settings())
    from kronos_db import db

    with db.connection(target) as conn:
        started = time.perf_counter()
        housekeeping.expire_sessions(conn, NOW, idle_timeout=timedelta(0), options=options)
        return time.perf_counter() - started


def baseline_way(url: str, batch_size: int) -> float:
    """The code before: session timeouts set once, prepared statements, no lease."""
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("SET lock_timeout = '2s'")
        conn.execute("SET statement_timeout = '60s'")
        statement = query("housekeeping", "delete_expired_sessions")
        params = {"now": NOW, "idle_before": NOW, "batch_size": batch_size}
        tally = Tally()
        while True:
            row = conn.execute(statement, params).fetchone()
            assert row is not None
            if not row[0]:
                break
            tally.rows += row[1]
        conn.execute("RESET lock_timeout")
        conn.execute("RESET statement_timeout")
        return time.perf_counter() - started


def lease_cost(url: str, count: int) -> tuple[float, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        leases = []
        for _ in range(count):
            started = time.perf_counter()
            with locks.try_advisory_lock(conn, "bench") as acquired:
                assert acquired
            leases.append(time.perf_counter() - started)
        advisory = []
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("SELECT pg_try_advisory_lock(42)")
            conn.execute("SELECT pg_advisory_unlock(42)")
            advisory.append(time.perf_counter() - started)
    return statistics.median(leases), statistics.median(advisory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    name = f"kronos_bench_pooling_{int(time.time())}"
    admin = f"{args.server}/postgres"
    url = f"{args.server}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        migrations.upgrade(Settings(), resolve_target(url, Settings()), "head")
        runs: dict[str, list[float]] = {"kronos-db": [], "baseline": []}
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(args.repeat):
                for label, way in (("kronos-db", kronos_db_way), ("baseline", baseline_way)):
                    load(conn, args.rows)
                    runs[label].append(way(url, args.batch_size))
        batches = -(-args.rows // args.batch_size)
        ours, theirs = (statistics.median(runs[k]) for k in ("kronos-db", "baseline"))
        print(f"expire sessions, {args.rows} rows in {batches} batches of {args.batch_size}:")
        print(
            f"  kronos-db (SET LOCAL per batch, no prepare): {ours:.2f} s "
            f"({ours / batches * 1000:.2f} ms/batch)"
        )
        print(
            f"  baseline (session SET once, prepared):       {theirs:.2f} s "
            f"({theirs / batches * 1000:.2f} ms/batch)"
        )
        print(f"  ratio kronos-db / baseline: {ours / theirs:.2f}")
        lease, advisory = lease_cost(url, 50)
        print("a job's lock, take and release (median of 50):")
        print(f"  lease (a read, a take, a release):        {lease * 1000:.2f} ms")
        print(f"  session advisory lock (same connection):  {advisory * 1000:.2f} ms")
        print(f"  ratio: {lease / advisory:.1f}")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    main()
