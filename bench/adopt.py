"""Benchmark of ``kronos-db adopt --apply`` on a seed-built database, side by side with the
by-hand ways of reaching the same schema.

For each size (1M and 5M logs by default; the other tables in proportion: a user per 1,000 log
lines, a session per 20, a message per 10) a database is built from the original design's DDL
(``tests/seed.py``, the same builder the tests use, dirty rows included), then:

* kronos-db: ``adopt.apply`` while a writer inserts a log line and a session every 20 ms (log
  lines on the adoption's clock, into the day the rotation rescues). Measured: the total time
  and where it went (the steps, compare and stamp, the rotation that moves the old rows out of
  the default partition, the final check), the longest lock any step held that stops writes
  (timed by the engine around the step's transaction), and the writer's longest insert.
* baseline 1, in a twin database: the plain in-place DDL a DBA would try first,
  ``ALTER TABLE logs ALTER id TYPE bigint, ALTER "timestamp" TYPE timestamptz`` (a rewrite under
  ACCESS EXCLUSIVE): how long it stops writes to ``logs`` alone.
* baseline 2, in the same twin: the issue's by-hand conversion of ``logs``: a partitioned copy
  filled with ``INSERT … SELECT`` while the old table is locked, then swapped.

    .venv/bin/python bench/adopt.py                      # 1M and 5M logs
    .venv/bin/python bench/adopt.py --logs 200000        # quicker

Each database is created and dropped here, on the server of ``--url`` (a maintenance URL).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import seed

from kronos_db import adopt, db
from kronos_db.config import AdoptSettings, Settings

NOW = seed.SEED_NOW.replace(tzinfo=UTC)
FIX, QUARANTINE = seed.FIX, seed.QUARANTINE


def sizes_for(logs: int) -> seed.Sizes:
    return seed.Sizes(
        logs=logs,
        users=max(logs // 1000, 20),
        sessions=max(logs // 20, 40),
        cache=max(logs // 100, 10),
        routes=200,
        messages=max(logs // 10, 40),
        backups=365,
        days=30,
    )


@contextmanager
def seeded(server: str, logs: int) -> Iterator[db.Target]:
    name = f"kronos_bench_adopt_{os.getpid()}_{secrets.token_hex(3)}"
    target = db.resolve_target(server, Settings()).with_dbname(name)
    db.create_database(target)
    try:
        with db.connection(target) as conn:
            seed.create_seed_schema(conn)
            seed.fill(conn, seed.SEED_NOW, sizes_for(logs))
            conn.execute("VACUUM ANALYZE")
        yield target
    finally:
        db.drop_database(target)


class Writer(threading.Thread):
    """A log line and a session every 20 ms; the longest insert is the longest wait."""

    def __init__(self, target: db.Target) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(target.conninfo, autocommit=True, prepare_threshold=None)
        self.stop = threading.Event()
        self.waits: list[float] = []
        self.errors = 0

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            for statement, params in (
                (
                    "INSERT INTO logs (service_name, level, message, timestamp)"
                    " VALUES ('writer', 'INFO', 'bench', %s)",
                    (NOW + timedelta(milliseconds=n),),
                ),
                (
                    "INSERT INTO sessions (user_id, token) VALUES (1, %s)",
                    (secrets.token_hex(32),),
                ),
            ):
                started = time.monotonic()
                try:
                    self.conn.execute(statement, params)  # type: ignore[arg-type]
                except psycopg.Error:
                    self.errors += 1
                self.waits.append(time.monotonic() - started)
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        self.join()
        self.conn.close()


@dataclasses.dataclass(frozen=True)
class Measure:
    logs: int
    total: float
    steps: float
    stamp: float
    rotation: float
    check: float
    rows_moved: int
    longest_lock: float
    longest_lock_step: str
    top_locks: tuple[str, ...]
    writer_max: float
    writer_p99: float
    writer_inserts: int
    writer_errors: int
    in_place_freeze: float
    copy_freeze: float


def kronos(target: db.Target, settings: Settings) -> tuple[adopt.AdoptionResult, Writer]:
    """The whole adoption, its rotation included, with the writer on."""
    writer = Writer(target)
    writer.start()
    try:
        result = adopt.apply(
            settings, target, now=NOW, timestamps_in="UTC", fix=FIX, quarantine=QUARANTINE
        )
    finally:
        writer.finish()
    return result, writer


def baselines(target: db.Target) -> tuple[float, float]:
    """How long each by-hand way stops writes to logs."""
    with db.connection(target) as conn:
        conn.execute("UPDATE logs SET timestamp = now() WHERE timestamp IS NULL")
        started = time.monotonic()
        with conn.transaction():
            conn.execute("SET LOCAL TimeZone = 'UTC'")
            conn.execute(
                'ALTER TABLE logs ALTER COLUMN id TYPE bigint, ALTER COLUMN "timestamp" TYPE '
                'timestamptz, ALTER COLUMN "timestamp" SET NOT NULL'
            )
        in_place = time.monotonic() - started
        started = time.monotonic()
        with conn.transaction():
            conn.execute("LOCK TABLE logs IN ACCESS EXCLUSIVE MODE")
            conn.execute(
                "CREATE TABLE logs_copy (LIKE logs INCLUDING DEFAULTS)"
                ' PARTITION BY RANGE ("timestamp")'
            )
            conn.execute("CREATE TABLE logs_copy_default PARTITION OF logs_copy DEFAULT")
            conn.execute('ALTER TABLE logs_copy ADD PRIMARY KEY (id, "timestamp")')
            conn.execute('CREATE INDEX ON logs_copy (service_name, "timestamp")')
            conn.execute('CREATE INDEX ON logs_copy USING brin ("timestamp")')
            conn.execute("INSERT INTO logs_copy SELECT * FROM logs")
            conn.execute("ALTER TABLE logs RENAME TO logs_old")
            conn.execute("ALTER TABLE logs_copy RENAME TO logs")
        copy = time.monotonic() - started
    return in_place, copy


def measure(server: str, logs: int, settings: Settings) -> Measure:
    with seeded(server, logs) as target:
        print(f"  {logs:,} logs: seeded; adopting with a writer…", flush=True)
        result, writer = kronos(target, settings)
    longest = result.longest_lock
    with seeded(server, logs) as twin:
        print(f"  {logs:,} logs: by-hand baselines on a twin…", flush=True)
        in_place, copy = baselines(twin)
    waits = sorted(writer.waits)
    return Measure(
        logs=logs,
        total=result.seconds,
        steps=result.steps_seconds,
        stamp=result.stamp_seconds,
        rotation=result.rotation_seconds,
        check=result.check_seconds,
        rows_moved=result.rotation_rows_moved,
        longest_lock=longest.lock_seconds if longest else 0.0,
        longest_lock_step=longest.description if longest else "",
        top_locks=tuple(
            f"{s.lock_seconds * 1000:.0f} ms: {s.description}"
            for s in sorted(
                (s for s in result.steps if s.blocks_writes), key=lambda s: -s.lock_seconds
            )[:4]
        ),
        writer_max=max(waits),
        writer_p99=waits[int(len(waits) * 0.99)] if waits else 0.0,
        writer_inserts=len(waits),
        writer_errors=writer.errors,
        in_place_freeze=in_place,
        copy_freeze=copy,
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def report(results: list[Measure]) -> None:
    header = "| measure | " + " | ".join(f"{m.logs:,} logs" for m in results) + " |"
    print()
    print(header)
    print("| --- |" + " ---: |" * len(results))
    rows: list[tuple[str, Any]] = [
        ("adopt --apply, total", lambda m: _ms(m.total)),
        ("· the steps", lambda m: _ms(m.steps)),
        ("· compare with 0010, stamp, migrate to head", lambda m: _ms(m.stamp)),
        (
            "· rotation (rows moved out of logs_default)",
            lambda m: f"{_ms(m.rotation)} ({m.rows_moved:,})",
        ),
        ("· final check", lambda m: _ms(m.check)),
        ("longest lock that stops writes (kronos-db)", lambda m: _ms(m.longest_lock)),
        ("writer: longest insert / p99", lambda m: f"{_ms(m.writer_max)} / {_ms(m.writer_p99)}"),
        ("writer: inserts, errors", lambda m: f"{m.writer_inserts:,}, {m.writer_errors}"),
        ("baseline: ALTER … TYPE in place, writes stopped", lambda m: _ms(m.in_place_freeze)),
        ("baseline: copy into a partitioned logs, writes stopped", lambda m: _ms(m.copy_freeze)),
        (
            "ratio: baseline copy freeze / kronos-db longest lock",
            lambda m: f"{m.copy_freeze / m.longest_lock:,.0f}x" if m.longest_lock else "-",
        ),
    ]
    for name, cell in rows:
        print(f"| {name} | " + " | ".join(cell(m) for m in results) + " |")
    for m in results:
        print(f"longest locks that stop writes at {m.logs:,} logs:")
        for line in m.top_locks:
            print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--logs", type=int, nargs="+", default=[1_000_000, 5_000_000], help="log lines"
    )
    parser.add_argument("--lock-timeout", default="2s")
    args = parser.parse_args()
    from kronos_db.durations import parse_duration

    settings = Settings(adopt=AdoptSettings(lock_timeout=parse_duration(args.lock_timeout)))
    results = []
    for logs in args.logs:
        results.append(measure(args.url, logs, settings))
        report(results)  # as it goes: a 5M run is long


if __name__ == "__main__":
    main()
