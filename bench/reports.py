"""Benchmark: ``kronos-db health`` against the same SQL run by ``psql`` (the floor).

Builds a scratch database migrated to head with 1,000 ``logs`` partitions (992 days back
added to the 8 the migration makes) and pgbench's tables, runs a short pgbench workload so
that pg_stat_statements has something to rank, then times:

- ``kronos-db health --format json`` as a process (what cron and Nagios pay, Python start-up
  included);
- ``health_report()`` in process (the library alone);
- the exact statements health ran, captured with their bound values and replayed by
  ``psql -X -q -f`` in one session (the floor: no Python at all).

Run once:  .venv/bin/python bench/reports.py
Environment: KRONOS_BENCH_URL (default postgresql://postgres@127.0.0.1:5432/postgres) names
the server; a database ``kronos_bench_reports_<pid>`` is created and dropped.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from psycopg import ClientCursor

from kronos_db import db, migrations
from kronos_db.config import Settings
from kronos_db.reports.health import health_report

SERVER = os.environ.get("KRONOS_BENCH_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PARTITIONS = 1000
RUNS = 3
PGBENCH_SECONDS = 10


class RecordingCursor(ClientCursor[Any]):
    """Keeps every statement with its values bound, so psql can replay exactly the same SQL."""

    recorded: ClassVar[list[str]] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        RecordingCursor.recorded.append(self.mogrify(query, params))
        return super().execute(query, params, **kwargs)


def timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def pgbench_binary() -> str:
    found = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    if not Path(found).exists():
        sys.exit("pgbench not found (postgresql-15 ships it in /usr/lib/postgresql/15/bin)")
    return found


def main() -> None:
    name = f"kronos_bench_reports_{os.getpid()}"
    target = db.resolve_target(SERVER, Settings()).with_dbname(name)
    db.create_database(target)
    try:
        migrations.upgrade(Settings(), target, "head")
        url = target.conninfo
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("""
                DO $$
                DECLARE day date := (now() AT TIME ZONE 'UTC')::date;
                BEGIN
                  FOR back IN 1..992 LOOP
                    EXECUTE format('CREATE TABLE %I PARTITION OF logs FOR VALUES FROM (%L) TO (%L)',
                      'logs_p' || to_char(day - back, 'YYYY_MM_DD'),
                      ((day - back)::timestamp AT TIME ZONE 'UTC'),
                      ((day - back + 1)::timestamp AT TIME ZONE 'UTC'));
                  END LOOP;
                END $$""")
            (partitions,) = conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'logs'::regclass"
            ).fetchone() or (0,)
        pgbench = pgbench_binary()
        environment = {**os.environ, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}
        subprocess.run(
            [pgbench, "-i", "-q", "-s", "1", name], check=True, env=environment, capture_output=True
        )
        subprocess.run(
            [pgbench, "-c", "2", "-j", "1", "-T", str(PGBENCH_SECONDS), name],
            check=True,
            env=environment,
            capture_output=True,
        )

        cli = [
            sys.executable,
            "-m",
            "kronos_db",
            "health",
            "--format",
            "json",
            "--database-url",
            url,
        ]
        cli_times = [
            timed(lambda: subprocess.run(cli, capture_output=True, check=False))
            for _ in range(RUNS)
        ]

        library_times = []
        for _ in range(RUNS):
            RecordingCursor.recorded = []
            with psycopg.connect(url, autocommit=True, cursor_factory=RecordingCursor) as conn:
                library_times.append(
                    timed(lambda conn=conn: health_report(conn, Settings(), now=datetime.now(UTC)))
                )
        statements = list(RecordingCursor.recorded)

        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
            for statement in statements:
                script.write(statement.rstrip().rstrip(";") + ";\n")
        psql = [
            shutil.which("psql") or "psql",
            "-X",
            "-q",
            "-o",
            "/dev/null",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            script.name,
            url,
        ]
        psql_times = [
            timed(lambda: subprocess.run(psql, check=True, capture_output=True))
            for _ in range(RUNS)
        ]
        os.unlink(script.name)

        floor = statistics.median(psql_times)
        print(
            f"database: {partitions} logs partitions, pgbench scale 1 + {PGBENCH_SECONDS}s "
            f"workload; {len(statements)} statements per health run; median of {RUNS} runs"
        )
        print(f"{'what':<44} {'seconds':>9} {'ratio':>7}")
        for label, times in (
            ("psql -f <same SQL> (floor)", psql_times),
            ("health_report() in process", library_times),
            ("kronos-db health --format json (process)", cli_times),
        ):
            median = statistics.median(times)
            print(f"{label:<44} {median:>9.3f} {median / floor:>6.2f}x")
    finally:
        db.drop_database(target)


if __name__ == "__main__":
    main()
