"""Benchmark of the logs partition lifecycle, side by side with its baselines.

1. Retiring one day of N logs (N = 1M, 5M): ``rotate`` (detach + drop) against one
   ``DELETE … WHERE "timestamp" < …`` of the same rows in an unpartitioned twin.
2. Creating 30 daily partitions ahead and retiring 30 old ones: kronos-db's native path against
   pg_partman's ``run_maintenance`` on the same table shape (two fresh databases).
3. ``COPY`` of 1M rows into the partitioned ``logs`` against an unpartitioned twin.
4. Every kind of rotation step under load (``--load``): 1,000 inserts/s from 4 writer
   sessions and a log viewer counting through ``logs`` back to back for 8 s, started with the
   step: the worst insert wait per step, the rescue of 100,000 rows of the current range
   against the same rescue on a quiet machine (same script, no load), and the rows it moved
   against the rows it planned. Then the nightly reader: one transaction holding ``logs`` for
   8 s while a rotation needs its exclusive locks: the worst insert wait, and when it finishes.

Each scenario runs in a database of its own, created and dropped here, on the server named by
``--url`` (a maintenance URL, default ``postgresql://postgres@127.0.0.1:5432/postgres``).
Data is made with ``INSERT … SELECT generate_series`` (fast); each measurement runs once.

    .venv/bin/python bench/partitions.py
    .venv/bin/python bench/partitions.py --load-only   # scenario 4 only
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from kronos_db import db, migrations, partman
from kronos_db.config import PartitionSettings, Settings
from kronos_db.partitions.naming import floor_time, partition_name
from kronos_db.partitions.rotation import RotationResult, rotate

DAY = timedelta(days=1)
FLAT_INDEXES = (
    'ALTER TABLE logs_flat ADD PRIMARY KEY (id, "timestamp")',
    'CREATE INDEX ON logs_flat (service_name, "timestamp")',
    'CREATE INDEX ON logs_flat USING brin ("timestamp")',
)


@dataclasses.dataclass(frozen=True)
class Row:
    scenario: str
    kronos: float
    baseline: float
    baseline_name: str

    @property
    def ratio(self) -> float:
        return self.baseline / self.kronos if self.kronos else float("inf")


def policy(**changes: Any) -> Settings:
    return dataclasses.replace(Settings(), partitions=PartitionSettings(**changes))


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A migrated database of its own; dropped afterwards."""
    name = f"kronos_bench_{os.getpid()}_{secrets.token_hex(3)}"
    base = db.resolve_target(server, Settings())
    target = base.with_dbname(name)
    db.create_database(target)
    try:
        migrations.upgrade(Settings(), target, "head")
        yield target.conninfo
    finally:
        db.drop_database(target)


def fill(
    conn: psycopg.Connection[Any], table: str, start: datetime, rows: int, span: timedelta = DAY
) -> None:
    """``rows`` log lines spread evenly over [start, start + span)."""
    conn.execute(
        sql.SQL(
            'INSERT INTO {} (service_name, level, message, "timestamp") '
            "SELECT 'service-' || (i %% 20), 'info', 'request handled in ' || (i %% 997) || ' ms', "
            "%(start)s::timestamptz + (i * %(step)s::float8) * interval '1 second' "
            "FROM generate_series(0, %(rows)s::int - 1) AS i"
        ).format(sql.Identifier(table)),
        {"start": start, "step": span.total_seconds() / rows, "rows": rows},
    )


def flat_twin(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE logs_flat (LIKE logs INCLUDING DEFAULTS)")


def retire_one_day(server: str, rows: int) -> Row:
    today = floor_time(datetime.now(UTC), "daily")
    day = today - timedelta(days=40)
    retire_at = day + timedelta(days=31, hours=1)
    with fresh_database(server) as url, psycopg.connect(url, autocommit=True) as conn:
        setup = policy(retention=timedelta(0))
        rotate(conn, setup, day)  # the day's partition (and 7 ahead)
        rotate(conn, setup, retire_at)  # what retire_at's premake wants: not timed
        fill(conn, "logs", day, rows)
        flat_twin(conn)
        conn.execute(
            sql.SQL("INSERT INTO logs_flat SELECT * FROM {}").format(
                sql.Identifier(partition_name("logs", day, "daily"))
            )
        )
        for statement in FLAT_INDEXES:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute("VACUUM ANALYZE logs_flat")
        conn.execute("VACUUM ANALYZE logs")
        conn.execute("CHECKPOINT")

        started = time.perf_counter()
        result = rotate(conn, policy(retention=timedelta(days=30)), retire_at)
        kronos = time.perf_counter() - started
        retired = [s.partition for s in result.steps if s.kind == "retire" and s.ok]
        assert retired == [partition_name("logs", day, "daily")], result.steps

        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        deleted = conn.execute(
            'DELETE FROM logs_flat WHERE "timestamp" < %s', (day + DAY,)
        ).rowcount
        baseline = time.perf_counter() - started
        assert deleted == rows
    return Row(f"retire one day of {rows:,} rows", kronos, baseline, "DELETE")


def prepare_sixty_days(conn: psycopg.Connection[Any], today: datetime) -> None:
    """60 daily partitions ending yesterday, none ahead: 30 to retire, 30 to create."""
    for (name,) in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'logs'::regclass AND c.relname <> 'logs_default'"
    ).fetchall():
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    start = today - timedelta(days=60)
    rotate(conn, policy(premake=59, retention=timedelta(0)), start)


def create_and_retire(server: str) -> Row:
    now = datetime.now(UTC)
    today = floor_time(now, "daily")
    settings = policy(premake=29, retention=timedelta(days=30))

    with fresh_database(server) as url, psycopg.connect(url, autocommit=True) as conn:
        prepare_sixty_days(conn, today)
        started = time.perf_counter()
        result = rotate(conn, settings, now)
        kronos = time.perf_counter() - started
        kinds = [s.kind for s in result.steps if s.ok]
        assert (kinds.count("create"), kinds.count("retire")) == (30, 30), result.steps

    with fresh_database(server) as url, psycopg.connect(url, autocommit=True) as conn:
        prepare_sixty_days(conn, today)
        conn.execute("CREATE SCHEMA partman")
        conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
        partman.adopt(conn, settings)
        conn.execute("SET TimeZone = 'UTC'")  # pg_partman 4.x names partitions in it
        before = count_partitions(conn)
        started = time.perf_counter()
        conn.execute(
            "SELECT partman.run_maintenance('public.logs', p_analyze := false, p_jobmon := false)"
        )
        baseline = time.perf_counter() - started
        after = count_partitions(conn)
        assert before == after == 60, (before, after)
        names = {
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'logs'::regclass"
            ).fetchall()
        }
        assert partition_name("logs", today + timedelta(days=29), "daily") in names
    return Row("create 30 days ahead + retire 30", kronos, baseline, "pg_partman run_maintenance")


def count_partitions(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'logs'::regclass "
        "AND c.relname <> 'logs_default'"
    ).fetchone()
    return int(row[0]) if row else 0


def copy_rows(server: str, rows: int) -> Row:
    today = floor_time(datetime.now(UTC), "daily")
    buffer = io.StringIO()
    step = 7 * 86400 / rows
    for i in range(rows):
        moment = today + timedelta(seconds=i * step)
        buffer.write(
            f"service-{i % 20}\tinfo\trequest handled in {i % 997} ms\t{moment.isoformat()}\n"
        )
    data = buffer.getvalue().encode()

    def load(conn: psycopg.Connection[Any], table: str) -> float:
        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL('COPY {} (service_name, level, message, "timestamp") FROM STDIN').format(
                    sql.Identifier(table)
                )
            ) as copy,
        ):
            for offset in range(0, len(data), 1 << 20):
                copy.write(data[offset : offset + (1 << 20)])
        return time.perf_counter() - started

    with fresh_database(server) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE logs_flat (LIKE logs INCLUDING DEFAULTS INCLUDING IDENTITY)")
        for statement in FLAT_INDEXES:
            conn.execute(statement)  # type: ignore[arg-type]
        kronos = load(conn, "logs")
        baseline = load(conn, "logs_flat")
        assert conn.execute("SELECT count(*) FROM logs").fetchone() == (rows,)
    return Row(f"COPY {rows:,} rows (7 daily partitions)", kronos, baseline, "unpartitioned twin")


# ---------------------------------------------------------------------------------------------
# 4. Every kind of step under load


@dataclasses.dataclass
class Load:
    """``rate`` inserts/s from ``writers`` sessions, stamped by ``stamp()``; a viewer counting
    through logs back to back during ``viewer_seconds``. Records every insert's wait."""

    url: str
    stamp: Callable[[], datetime]
    rate: float = 1000.0
    writers: int = 4
    viewer_seconds: float = 8.0
    waits: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (start, wait)
    counts: int = 0
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _threads: list[threading.Thread] = dataclasses.field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.writers):
            self._threads.append(threading.Thread(target=self._write, daemon=True))
        self._threads.append(threading.Thread(target=self._view, daemon=True))
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _write(self) -> None:
        interval = self.writers / self.rate
        with psycopg.connect(self.url, autocommit=True) as conn:
            next_at = time.monotonic()
            while not self._stop.is_set():
                started = time.monotonic()
                conn.execute(
                    'INSERT INTO logs (service_name, level, message, "timestamp") '
                    "VALUES ('writer', 'info', 'request handled', %s)",
                    (self.stamp(),),
                )
                self.waits.append((started, time.monotonic() - started))
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _view(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                until = time.monotonic() + self.viewer_seconds
                while time.monotonic() < until and not self._stop.is_set():
                    conn.execute("SELECT count(*) FROM logs")
                    self.counts += 1
                self._stop.wait(3600)

    def between(self, start: float, end: float) -> list[float]:
        return [wait for at, wait in self.waits if start <= at <= end]


@dataclasses.dataclass(frozen=True)
class StepFigures:
    step: str
    seconds: float
    inserts: int
    rate: float
    worst_wait: float
    p99_wait: float
    planned: int = 0
    moved: int = 0
    arrived: int = 0
    quiet_seconds: float | None = None


def _figures(step: str, seconds: float, waits: list[float], **extra: Any) -> StepFigures:
    ordered = sorted(waits) or [0.0]
    return StepFigures(
        step,
        seconds,
        len(waits),
        len(waits) / seconds if seconds else 0.0,
        ordered[-1],
        ordered[int(len(ordered) * 0.99) - 1] if len(ordered) > 1 else ordered[-1],
        **extra,
    )


def _moved(result: RotationResult) -> tuple[int, int]:
    ok = [s for s in result.steps if s.ok]
    assert len(ok) == len(result.steps), result.failed
    return sum(s.rows_planned for s in ok), sum(s.rows_moved for s in ok)


def rescue_current(server: str, rows: int, loaded: bool) -> StepFigures:
    """Today's partition missing, ``rows`` of today in the default partition; rescue them."""
    today = floor_time(datetime.now(UTC), "daily")
    base, origin = today + timedelta(hours=12), time.monotonic()

    def clock() -> datetime:
        return base + timedelta(seconds=time.monotonic() - origin)

    name = partition_name("logs", today, "daily")
    with fresh_database(server) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        fill(conn, "logs", today, rows, timedelta(hours=12))
        conn.execute("VACUUM ANALYZE logs")
        conn.execute("CHECKPOINT")
        load = Load(url, clock) if loaded else None
        with load or _nothing():
            started = time.monotonic()
            result = rotate(conn, Settings(), clock())
            seconds = time.monotonic() - started
            end = time.monotonic()
        planned, moved = _moved(result)
        # writers' rows stamped before the stop point landed in the default partition and were
        # moved with the planned ones; those after it went straight to the new partition
        arrived = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE service_name = 'writer'").format(
                sql.Identifier(name)
            )
        ).fetchone()
        waits = load.between(started, end) if load else []
    label = f"rescue {rows:,} rows of the current range"
    return _figures(
        label,
        seconds,
        waits,
        planned=planned,
        moved=moved,
        arrived=int(arrived[0]) if arrived else 0,
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def steps_under_load(server: str) -> list[StepFigures]:
    """A past range's rescue, partitions ahead, and retirement by drop, detach and archive."""
    import tempfile

    today = floor_time(datetime.now(UTC), "daily")
    figures: list[StepFigures] = []
    for action in ("drop", "detach", "archive"):
        now = today + timedelta(days=35, hours=12)
        origin = time.monotonic()

        def clock(now: datetime = now, origin: float = origin) -> datetime:
            return now + timedelta(seconds=time.monotonic() - origin)

        with (
            fresh_database(server) as url,
            psycopg.connect(url, autocommit=True) as conn,
            tempfile.TemporaryDirectory() as directory,
        ):
            rotate(conn, policy(premake=40, retention=timedelta(0)), today - timedelta(days=5))
            for offset in range(1, 6):
                fill(conn, "logs", today - timedelta(days=offset), 20_000)
            lost = today + timedelta(days=34)
            conn.execute(
                sql.SQL("DROP TABLE {}").format(
                    sql.Identifier(partition_name("logs", lost, "daily"))
                )
            )
            fill(conn, "logs", lost, 100_000)
            conn.execute("VACUUM ANALYZE logs")
            settings = policy(retention_action=action, archive_directory=directory, premake=14)
            with Load(url, clock) as load:
                started = time.monotonic()
                result = rotate(conn, settings, clock())
                total = time.monotonic() - started
            assert not result.failed, result.failed
            # each step's own window: when it started, how long it took (in order); one row
            # per kind of step (the rescue and the creations once, with drop)
            kinds: dict[str, list[Any]] = {}
            at = started
            for step in result.steps:
                window = load.between(at, at + step.seconds)
                at += step.seconds
                if step.kind == "retire":
                    label = f"retire by {action}"
                elif action == "drop":
                    label = {"rescue": "rescue 100,000 rows of a past range"}.get(
                        step.kind, "create the partitions ahead"
                    )
                else:
                    continue
                kinds.setdefault(label, []).append((step, window))
            for label, done in kinds.items():
                figures.append(
                    _figures(
                        f"{label} ({len(done)} step(s))",
                        sum(step.seconds for step, _window in done),
                        [wait for _step, window in done for wait in window],
                        planned=sum(step.rows_planned for step, _window in done),
                        moved=sum(step.rows_moved for step, _window in done),
                    )
                )
            print(f"  rotation with retention {action}: {total:.2f} s, {len(result.steps)} steps")
    return figures


def nightly_reader(server: str, hold: float = 8.0) -> tuple[StepFigures, list[str]]:
    """A transaction holds logs for ``hold`` seconds while a rotation needs exclusive locks."""
    today = floor_time(datetime.now(UTC), "daily")
    now = today + timedelta(days=35, hours=12)
    origin = time.monotonic()

    def clock() -> datetime:
        return now + timedelta(seconds=time.monotonic() - origin)

    messages: list[str] = []
    with fresh_database(server) as url, psycopg.connect(url, autocommit=True) as conn:
        rotate(conn, policy(premake=40, retention=timedelta(0)), today)
        lost = today + timedelta(days=34)
        conn.execute(
            sql.SQL("DROP TABLE {}").format(sql.Identifier(partition_name("logs", lost, "daily")))
        )
        fill(conn, "logs", lost, 100_000)
        with Load(url, clock) as load, psycopg.connect(url) as reader:
            reader.execute("SELECT count(*) FROM logs")  # the transaction stays open
            threading.Timer(hold, reader.rollback).start()
            started = time.monotonic()
            result = rotate(conn, Settings(), clock(), notify=messages.append)
            seconds = time.monotonic() - started
            end = time.monotonic()
        assert not result.failed, result.failed
        planned, moved = _moved(result)
        return (
            _figures(
                f"rescue + retire while a transaction holds logs for {hold:.0f} s",
                seconds,
                load.between(started, end),
                planned=planned,
                moved=moved,
            ),
            messages,
        )


def idle_waits(server: str, seconds: float = 5.0) -> StepFigures:
    """The same load with no rotation running: what an insert waits anyway on this machine."""
    today = floor_time(datetime.now(UTC), "daily")
    with fresh_database(server) as url, Load(url, lambda: today + timedelta(hours=12)) as load:
        started = time.monotonic()
        time.sleep(seconds)
        return _figures(
            "no rotation running (the same load)", seconds, load.between(started, time.monotonic())
        )


def load_report(server: str, rows: int) -> None:
    print(f"rescue of {rows:,} current-range rows, quiet machine…", flush=True)
    quiet = rescue_current(server, rows, loaded=False)
    print(f"  {quiet.seconds:.2f} s", flush=True)
    print("the same under 1,000 inserts/s and an 8 s viewer…", flush=True)
    loaded = dataclasses.replace(
        rescue_current(server, rows, loaded=True), quiet_seconds=quiet.seconds
    )
    print(f"  {loaded.seconds:.2f} s", flush=True)
    print("every other kind of step under the same load…", flush=True)
    others = steps_under_load(server)
    print("a nightly reader holding logs for 8 s…", flush=True)
    nightly, messages = nightly_reader(server)
    idle = idle_waits(server)
    print()
    print(
        "| step | time | inserts (rate) | worst insert wait | p99 | rows planned | moved "
        "| moved - planned | written after the stop point (not moved) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in [idle, loaded, *others, nightly]:
        time_text = f"{row.seconds:.2f} s"
        if row.quiet_seconds:
            time_text += (
                f" (quiet {row.quiet_seconds:.2f} s: {row.seconds / row.quiet_seconds:.2f}x)"
            )
        print(
            f"| {row.step} | {time_text} | {row.inserts:,} ({row.rate:,.0f}/s) | "
            f"{row.worst_wait * 1000:,.0f} ms | {row.p99_wait * 1000:,.1f} ms | "
            f"{row.planned:,} | {row.moved:,} | {row.moved - row.planned:+,} | {row.arrived:,} |"
        )
    print()
    for message in messages[:3]:
        print(f"  nightly reader: {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--sizes",
        default="1000000,5000000",
        help="comma-separated row counts for the retirement scenario",
    )
    parser.add_argument("--copy-rows", type=int, default=1_000_000)
    parser.add_argument("--rescue-rows", type=int, default=100_000)
    parser.add_argument("--load-only", action="store_true", help="run scenario 4 only")
    args = parser.parse_args()

    if args.load_only:
        load_report(args.url, args.rescue_rows)
        return
    results: list[Row] = []
    for size in (int(s) for s in args.sizes.split(",")):
        results.append(retire_one_day(args.url, size))
        print_row(results[-1])
    results.append(create_and_retire(args.url))
    print_row(results[-1])
    results.append(copy_rows(args.url, args.copy_rows))
    print_row(results[-1])

    print()
    print("| scenario | kronos-db | baseline | baseline time | baseline / kronos-db |")
    print("| --- | ---: | --- | ---: | ---: |")
    for row in results:
        print(
            f"| {row.scenario} | {row.kronos * 1000:,.0f} ms | {row.baseline_name} | "
            f"{row.baseline * 1000:,.0f} ms | {row.ratio:.2f}x |"
        )
    print()
    load_report(args.url, args.rescue_rows)


def print_row(row: Row) -> None:
    print(
        f"{row.scenario}: kronos-db {row.kronos * 1000:,.0f} ms, {row.baseline_name} "
        f"{row.baseline * 1000:,.0f} ms, ratio {row.ratio:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
