"""Benchmark of the logs partition lifecycle, side by side with its baselines.

1. Retiring one day of N logs (N = 1M, 5M): ``rotate`` (detach + drop) against one
   ``DELETE … WHERE "timestamp" < …`` of the same rows in an unpartitioned twin.
2. Creating 30 daily partitions ahead and retiring 30 old ones: kronos-db's native path against
   pg_partman's ``run_maintenance`` on the same table shape (two fresh databases).
3. ``COPY`` of 1M rows into the partitioned ``logs`` against an unpartitioned twin.

Each scenario runs in a database of its own, created and dropped here, on the server named by
``--url`` (a maintenance URL, default ``postgresql://postgres@127.0.0.1:5432/postgres``).
Data is made with ``INSERT … SELECT generate_series`` (fast); each measurement runs once.

    .venv/bin/python bench/partitions.py
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from kronos_db import db, migrations, partitions, partman
from kronos_db.config import PartitionSettings, Settings

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
    today = partitions.floor_time(datetime.now(UTC), "daily")
    day = today - timedelta(days=40)
    retire_at = day + timedelta(days=31, hours=1)
    with fresh_database(server) as url, psycopg.connect(url, autocommit=True) as conn:
        setup = policy(retention=timedelta(0))
        partitions.rotate(conn, setup, day)  # the day's partition (and 7 ahead)
        partitions.rotate(conn, setup, retire_at)  # what retire_at's premake wants: not timed
        fill(conn, "logs", day, rows)
        flat_twin(conn)
        conn.execute(
            sql.SQL("INSERT INTO logs_flat SELECT * FROM {}").format(
                sql.Identifier(partitions.partition_name("logs", day, "daily"))
            )
        )
        for statement in FLAT_INDEXES:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute("VACUUM ANALYZE logs_flat")
        conn.execute("VACUUM ANALYZE logs")
        conn.execute("CHECKPOINT")

        started = time.perf_counter()
        result = partitions.rotate(conn, policy(retention=timedelta(days=30)), retire_at)
        kronos = time.perf_counter() - started
        retired = [s.partition for s in result.steps if s.kind == "retire" and s.ok]
        assert retired == [partitions.partition_name("logs", day, "daily")], result.steps

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
    partitions.rotate(conn, policy(premake=59, retention=timedelta(0)), start)


def create_and_retire(server: str) -> Row:
    now = datetime.now(UTC)
    today = partitions.floor_time(now, "daily")
    settings = policy(premake=29, retention=timedelta(days=30))

    with fresh_database(server) as url, psycopg.connect(url, autocommit=True) as conn:
        prepare_sixty_days(conn, today)
        started = time.perf_counter()
        result = partitions.rotate(conn, settings, now)
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
        assert partitions.partition_name("logs", today + timedelta(days=29), "daily") in names
    return Row("create 30 days ahead + retire 30", kronos, baseline, "pg_partman run_maintenance")


def count_partitions(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'logs'::regclass "
        "AND c.relname <> 'logs_default'"
    ).fetchone()
    return int(row[0]) if row else 0


def copy_rows(server: str, rows: int) -> Row:
    today = partitions.floor_time(datetime.now(UTC), "daily")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--sizes",
        default="1000000,5000000",
        help="comma-separated row counts for the retirement scenario",
    )
    parser.add_argument("--copy-rows", type=int, default=1_000_000)
    args = parser.parse_args()

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


def print_row(row: Row) -> None:
    print(
        f"{row.scenario}: kronos-db {row.kronos * 1000:,.0f} ms, {row.baseline_name} "
        f"{row.baseline * 1000:,.0f} ms, ratio {row.ratio:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
