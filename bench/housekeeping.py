"""Benchmark: `kronos-db expire sessions` (batches sized by time) against one plain DELETE.

    .venv/bin/python bench/housekeeping.py [--server postgresql://postgres@127.0.0.1:5432]
                                           [--rows 2000000] [--pairs 5] [--batch-time 25ms]

In a scratch database migrated to head (dropped afterwards), ``--pairs`` times: ``--rows``
sessions are loaded afresh (half of them expired a day ago, spread over the day), vacuumed and
checkpointed, then expired by one contender, and the same again for the other (the order
alternates from pair to pair). The contenders:

* kronos-db: ``kronos_db.housekeeping.expire_sessions`` with the default policy (batches of
  about ``--batch-time``, a physical pass over the heap then a sweep);
* the baseline: one autocommit ``DELETE FROM sessions WHERE expires_at < now()``.

While each runs, a second process plays the auth service: it updates ``last_active_at`` of
random sessions (half of them among the expired ones, about to go; ``last_active_at`` is
indexed, so each update writes a new row version, possibly on another page) in a loop, one
autocommit UPDATE every millisecond. We report its latency (p50, p99, max) and the longest
time any of its UPDATEs waited on a lock (sampled from pg_stat_activity every 2 ms), and after
each kronos-db run we count the expired sessions left (rows the updater moved included): 0.

The figures printed are medians over the pairs, ratios kronos-db / DELETE in the same pair.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
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
from kronos_db.durations import parse_duration
from kronos_db.housekeeping import BatchOptions

UPDATER = "bench-auth-service"


def load(conn: psycopg.Connection[Any], rows: int) -> None:
    """Sessions 1..rows afresh: even ids expired during the last day, odd ids valid for one."""
    conn.execute("TRUNCATE sessions CASCADE")
    conn.execute(
        "INSERT INTO sessions (id, token, created_at, expires_at, last_active_at)"
        " SELECT n, 'token-' || n || '-' || md5(n::text), now() - interval '2 days',"
        "        now() + CASE WHEN n %% 2 = 0 THEN -1 ELSE 1 END"
        "                * (n %% 86400 + 1) * interval '1 second', now()"
        "   FROM generate_series(1, %(rows)s::integer) AS n",
        {"rows": rows},
    )
    conn.execute("VACUUM ANALYZE sessions")
    conn.execute("CHECKPOINT")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--server",
        default=os.environ.get("KRONOS_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432"),
    )
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--batch-time", default="25ms")
    args = parser.parse_args()
    name = f"kronos_bench_housekeeping_{os.getpid()}"
    admin_url = f"{args.server}/postgres"
    url = f"{args.server}/{name}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        run(url, args.rows, args.pairs, parse_duration(args.batch_time))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def expired_left(conn: psycopg.Connection[Any], now: datetime) -> int:
    row = conn.execute(
        "SELECT count(*) FROM sessions WHERE expires_at < %(now)s", {"now": now}
    ).fetchone()
    return int(row[0]) if row else -1


def idle_for(seconds: float) -> int:
    time.sleep(seconds)
    return 0


def run(url: str, rows: int, pairs: int, batch_time: timedelta) -> None:
    migrations.upgrade(Settings(), resolve_target(url, Settings()), "head")
    options = BatchOptions(batch_time=batch_time)
    kronos: list[Observed] = []
    plain: list[Observed] = []
    left: list[int] = []
    batches: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        print(
            f"PostgreSQL {server}, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.2f}; {rows:,} sessions, half expired; "
            f"batch time {batch_time.total_seconds() * 1000:g} ms; {pairs} pairs",
            flush=True,
        )
        load(conn, rows)
        idle = observe(url, rows, lambda: idle_for(3))

        cutoffs: list[datetime] = []

        def batched() -> int:
            with psycopg.connect(url, autocommit=True) as job_conn:
                now = datetime.now(UTC)
                result = housekeeping.expire_sessions(
                    job_conn, now, idle_timeout=timedelta(0), options=options
                )
                cutoffs.append(now)
                batches.append(result.batches)
            return result.rows

        def single_delete() -> int:
            with psycopg.connect(url, autocommit=True) as job_conn:
                cursor = job_conn.execute("DELETE FROM sessions WHERE expires_at < now()")
                return cursor.rowcount

        for pair in range(pairs):
            order = [("kronos", batched), ("plain", single_delete)]
            for label, work in order if pair % 2 == 0 else list(reversed(order)):
                load(conn, rows)
                observed = observe(url, rows, work)
                (kronos if label == "kronos" else plain).append(observed)
                if label == "kronos":
                    # counted after the clock stopped (an index scan over a million dead
                    # entries takes a few hundred ms: not the job's time)
                    left.append(expired_left(conn, cutoffs[-1]))
                print(
                    f"pair {pair + 1} {label}: {observed.rows:,} rows in {observed.seconds:.2f}s,"
                    f" longest lock wait {observed.longest_lock_wait_ms:.1f} ms,"
                    f" slowest update {observed.max_ms:.1f} ms",
                    flush=True,
                )
    report(kronos, plain, idle, left, batches)


def report(
    kronos: list[Observed],
    plain: list[Observed],
    idle: Observed,
    left: list[int],
    batches: list[int],
) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    ratios = [k.rows_per_second / p.rows_per_second for k, p in zip(kronos, plain, strict=True)]
    print()
    print("| measure (median of the pairs) | kronos-db expire sessions | single DELETE | ratio |")
    print("| --- | ---: | ---: | ---: |")

    def line(label: str, attribute: str, unit: str, precision: int = 1) -> None:
        ours = median([getattr(k, attribute) for k in kronos])
        theirs = median([getattr(p, attribute) for p in plain])
        ratio = f"{ours / theirs:.2f}x" if theirs else "—"
        print(
            f"| {label} | {ours:,.{precision}f} {unit} | {theirs:,.{precision}f} {unit} | {ratio} |"
        )

    line("rows deleted", "rows", "", 0)
    line("wall time", "seconds", "s", 2)
    line("throughput", "rows_per_second", "rows/s", 0)
    line(f"auth-service UPDATE p50 (idle: {idle.p50_ms:.2f} ms)", "p50_ms", "ms", 2)
    line(f"auth-service UPDATE p99 (idle: {idle.p99_ms:.2f} ms)", "p99_ms", "ms", 2)
    line(f"auth-service UPDATE max (idle: {idle.max_ms:.1f} ms)", "max_ms", "ms", 1)
    line("longest lock wait of an UPDATE", "longest_lock_wait_ms", "ms", 1)
    line("auth-service UPDATEs during the run", "updates", "", 0)
    print()
    print(f"throughput ratio per pair: {', '.join(f'{r:.2f}x' for r in ratios)}")
    print(
        "longest lock wait of an UPDATE in any kronos-db run: "
        f"{max(k.longest_lock_wait_ms for k in kronos):.1f} ms; slowest UPDATE: "
        f"{max(k.max_ms for k in kronos):.1f} ms"
    )
    print(f"batches per kronos-db run: {', '.join(map(str, batches))}")
    print(f"expired sessions left after each kronos-db run: {', '.join(map(str, left))}")


if __name__ == "__main__":
    main()
