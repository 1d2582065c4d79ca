"""Benchmark: `kronos-db expire sessions` (batched, SKIP LOCKED) against one plain DELETE.

    .venv/bin/python bench/housekeeping.py [--server postgresql://postgres@127.0.0.1:5432]
                                           [--rows 2000000] [--batch-size 1000]

In a scratch database migrated to head (dropped afterwards), with ``--rows`` sessions of
which half have expired:

1. throughput: the batched ``expire sessions`` job against one
   ``DELETE FROM sessions WHERE expires_at < now()`` of the same rows (the expired half is
   loaded again, and the table vacuumed, between the two);
2. while each runs, a second process plays the auth service: it updates ``last_active_at``
   of random sessions (half of them among the expired ones, about to go) in a loop, one
   autocommit UPDATE every millisecond; we report its p50/p99 latency and the longest time any
   of its UPDATEs waited on a lock (sampled from pg_stat_activity every 2 ms), with an idle
   baseline (no job running) first;
3. a no-op run (nothing to expire): whole-process wall time of the ``kronos-db expire sessions``
   command against ``psql -c`` running the equivalent DELETE (median of 5), i.e. the cron
   job's start-up cost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from kronos_db import housekeeping, migrations
from kronos_db.config import Settings
from kronos_db.db import resolve_target
from kronos_db.housekeeping import BatchOptions

UPDATER = "bench-auth-service"


def load(conn: psycopg.Connection[Any], rows: int) -> None:
    """Sessions 1..rows: even ids expired a day ago, odd ids valid for another day."""
    conn.execute(
        "INSERT INTO sessions (id, token, created_at, expires_at, last_active_at)"
        " SELECT n, 'token-' || n || '-' || md5(n::text), now() - interval '2 days',"
        "        now() + CASE WHEN n %% 2 = 0 THEN -1 ELSE 1 END * interval '1 day', now()"
        "   FROM generate_series(1, %(rows)s::integer) AS n",
        {"rows": rows},
    )


def reload_expired(conn: psycopg.Connection[Any], rows: int) -> None:
    conn.execute(
        "INSERT INTO sessions (id, token, created_at, expires_at, last_active_at)"
        " SELECT n, 'token-' || n || '-' || md5(n::text), now() - interval '2 days',"
        "        now() - interval '1 day', now()"
        "   FROM generate_series(2, %(rows)s::integer, 2) AS n",
        {"rows": rows},
    )


def updater(url: str, rows: int, stop: Any, out: Any) -> None:
    """The auth service: touch random sessions, half of them among the expired (even) ids."""
    samples: list[tuple[float, float]] = []
    with psycopg.connect(url, autocommit=True, application_name=UPDATER) as conn:
        statement = "UPDATE sessions SET last_active_at = now() WHERE id = %(id)s"
        conn.execute(statement, {"id": 1}, prepare=True)
        while not stop.is_set():
            session = random.randrange(1, rows // 2) * 2 + random.choice((0, 1))
            started = time.monotonic()
            conn.execute(statement, {"id": session}, prepare=True)
            samples.append((started, time.monotonic() - started))
            time.sleep(0.001)
    out.put(samples)


class LockWaitMonitor(threading.Thread):
    """Samples how long the updater's current statement has been waiting on a lock."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.longest = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            statement = (
                "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)"
                "  FROM pg_stat_activity"
                " WHERE application_name = %(name)s AND wait_event_type = 'Lock'"
            )
            while not self.stop.is_set():
                row = conn.execute(statement, {"name": UPDATER}, prepare=True).fetchone()
                self.longest = max(self.longest, float(row[0]) if row else 0.0)
                time.sleep(0.002)

    def reset(self) -> None:
        self.longest = 0.0


@dataclass
class Observed:
    seconds: float
    rows: int
    updates: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    longest_lock_wait_ms: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def observe(url: str, rows: int, work: Any) -> Observed:
    """Run ``work()`` (returns rows affected) while the updater runs; measure both."""
    context = multiprocessing.get_context("spawn")  # a fresh process, no inherited connection
    stop = context.Event()
    out: Any = context.Queue()
    process = context.Process(target=updater, args=(url, rows, stop, out))
    monitor = LockWaitMonitor(url)
    monitor.start()
    process.start()
    time.sleep(1.0)  # the updater is connected and in its loop
    monitor.reset()
    started = time.monotonic()
    affected = work()
    finished = time.monotonic()
    longest_wait = monitor.longest
    time.sleep(0.2)  # let updates blocked until the end finish and be counted
    stop.set()
    samples = out.get(timeout=60)
    process.join(timeout=30)
    monitor.stop.set()
    monitor.join(timeout=5)
    during = [latency for start, latency in samples if started <= start <= finished]
    return Observed(
        seconds=finished - started,
        rows=affected,
        updates=len(during),
        p50_ms=percentile(during, 0.50) * 1000,
        p99_ms=percentile(during, 0.99) * 1000,
        max_ms=max(during, default=0.0) * 1000,
        longest_lock_wait_ms=longest_wait * 1000,
    )


def wall_time(command: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        default=os.environ.get("KRONOS_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432"),
    )
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    name = f"kronos_bench_housekeeping_{os.getpid()}"
    admin_url = f"{args.server}/postgres"
    url = f"{args.server}/{name}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        run(url, args.rows, args.batch_size)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def run(url: str, rows: int, batch_size: int) -> None:
    migrations.upgrade(Settings(), resolve_target(url, Settings()), "head")
    with psycopg.connect(url, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        print(
            f"PostgreSQL {server}, {os.cpu_count()} CPUs (shared), {rows:,} sessions, "
            f"half expired; batch size {batch_size}",
            flush=True,
        )
        started = time.monotonic()
        load(conn, rows)
        conn.execute("VACUUM ANALYZE sessions")
        print(f"loaded in {time.monotonic() - started:.0f}s", flush=True)

        idle = observe(url, rows, lambda: (time.sleep(3), 0)[1])

        def batched() -> int:
            with psycopg.connect(url, autocommit=True) as job_conn:
                result = housekeeping.expire_sessions(
                    job_conn,
                    datetime.now(UTC),
                    idle_timeout=timedelta(0),
                    options=BatchOptions(batch_size=batch_size),
                )
            return result.rows

        kronos = observe(url, rows, batched)
        print(f"batched: {kronos.rows:,} rows in {kronos.seconds:.1f}s", flush=True)

        started = time.monotonic()
        reload_expired(conn, rows)
        conn.execute("VACUUM ANALYZE sessions")
        print(f"reloaded the expired half in {time.monotonic() - started:.0f}s", flush=True)

        def single_delete() -> int:
            with psycopg.connect(url, autocommit=True) as job_conn:
                cursor = job_conn.execute("DELETE FROM sessions WHERE expires_at < now()")
                return cursor.rowcount

        plain = observe(url, rows, single_delete)
        print(f"single DELETE: {plain.rows:,} rows in {plain.seconds:.1f}s", flush=True)
        conn.execute("VACUUM ANALYZE sessions")

    kronos_db = [sys.executable, "-m", "kronos_db", "expire", "sessions", "--database-url", url]
    psql = [
        shutil.which("psql") or "psql",
        url,
        "-qc",
        "DELETE FROM sessions WHERE expires_at < now()",
    ]
    noop_kronos = wall_time(kronos_db)
    noop_psql = wall_time(psql)

    print()
    print("| measure | kronos-db expire sessions (batched) | single DELETE | ratio |")
    print("| --- | ---: | ---: | ---: |")

    def line(label: str, ours: float, theirs: float, unit: str, precision: int = 1) -> None:
        ratio = f"{ours / theirs:.2f}x" if theirs else "—"
        print(
            f"| {label} | {ours:,.{precision}f} {unit} | {theirs:,.{precision}f} {unit} | {ratio} |"
        )

    line("rows deleted", kronos.rows, plain.rows, "", 0)
    line("wall time", kronos.seconds, plain.seconds, "s", 2)
    line("throughput", kronos.rows_per_second, plain.rows_per_second, "rows/s", 0)
    line(
        f"auth-service UPDATE p50 (idle: {idle.p50_ms:.2f} ms)",
        kronos.p50_ms,
        plain.p50_ms,
        "ms",
        2,
    )
    line(
        f"auth-service UPDATE p99 (idle: {idle.p99_ms:.2f} ms)",
        kronos.p99_ms,
        plain.p99_ms,
        "ms",
        2,
    )
    line(
        f"auth-service UPDATE max (idle: {idle.max_ms:.2f} ms)",
        kronos.max_ms,
        plain.max_ms,
        "ms",
        1,
    )
    line(
        "longest lock wait of an UPDATE",
        kronos.longest_lock_wait_ms,
        plain.longest_lock_wait_ms,
        "ms",
        1,
    )
    line("auth-service UPDATEs during the run", kronos.updates, plain.updates, "", 0)
    print()
    print(
        "| no-op run (nothing to expire), median of 5 | kronos-db expire sessions | "
        "psql -c (same DELETE) | ratio |"
    )
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| whole-process wall time | {noop_kronos * 1000:.0f} ms | {noop_psql * 1000:.0f} ms | "
        f"{noop_kronos / noop_psql:.1f}x |"
    )


if __name__ == "__main__":
    main()
