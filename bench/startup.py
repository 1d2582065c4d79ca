"""Benchmark: what one cron or monitoring run of kronos-db costs, as a whole process.

    .venv/bin/python bench/startup.py [--server postgresql://postgres@127.0.0.1:5432]
                                      [--runs 15] [--partitions 1000]

Cron runs the housekeeping commands every few minutes on every node and Nagios runs ``health``
every minute per check, so a run's cost is mostly the process: the interpreter, the imports,
the connection. Every contender below is a child process started the same way (no terminal,
the environment without any ``KRONOS_*`` variable, a scratch working directory); its CPU is the
child's own user + system time (``os.wait4``), its wall time from fork to exit. The contenders
run interleaved, ``--runs`` rounds of one run each (the order rotates from round to round),
after one warm-up round; the figures are medians over the rounds, ratios of medians. The
Python children keep their bytecode in a scratch ``PYTHONPYCACHEPREFIX`` written by the warm-up
round, as an installed package has it (pip byte-compiles on install), even where the caller
sets PYTHONDONTWRITEBYTECODE (this machine's shells do: every module would be compiled from
source at every start).

Two scratch databases, migrated to head and dropped afterwards:

* ``…_cron``, where nothing is due (``maintain`` ran once during set-up): the no-op cron
  commands ``kronos-db expire sessions``, ``kronos-db maintain``, ``kronos-db health --check
  connections``, against the Python floor (``python -c`` that imports psycopg, connects and
  runs ``DELETE FROM sessions WHERE expires_at < now()``, the statement a plain expiry would
  be) and ``psql -c`` with that statement;
* ``…_health`` with ``--partitions`` ``logs`` partitions (daily ones going back): ``kronos-db
  health`` (every check; on its default two connections, and on one with
  ``KRONOS_HEALTH_PARALLEL_CONNECTIONS=1``) against the statements it runs, captured with their
  bound values by running ``health_report()`` once in this process, on one connection, through
  a recording cursor, and replayed by one ``psql -X -f`` session (the floor: the same SQL, no
  Python, one statement after another). The library alone (``health_report()`` on an open
  connection, in this process, default settings) is shown for reference.

Shell completion (a TAB: ``_KRONOS_DB_COMPLETE=complete_bash`` with ``COMP_WORDS`` and
``COMP_CWORD``, as bash's completion function sets them) runs the installed ``kronos-db``
script, on the command names and on a command's subcommands.

Targets (issue 15): a no-op cron command ≤ 2x the Python floor in CPU and in wall time;
``health`` ≤ 1.5x ``psql -f`` in wall time on 1,000 partitions; a TAB < 300 ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from psycopg import ClientCursor

from kronos_db import db, migrations
from kronos_db.config import HealthSettings, Settings
from kronos_db.reports.health import health_report

FLOOR_STATEMENT = "DELETE FROM sessions WHERE expires_at < now()"
SCRIPT = str(Path(sys.executable).parent / "kronos-db")
COMPLETION_TARGET = 0.300
CRON_TARGET = 2.0
HEALTH_TARGET = 1.5


class RecordingCursor(ClientCursor[Any]):
    """Keeps every statement with its values bound, so psql can replay exactly the same SQL."""

    recorded: ClassVar[list[str]] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        RecordingCursor.recorded.append(self.mogrify(query, params))
        return super().execute(query, params, **kwargs)


@dataclass
class Contender:
    label: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # exit codes that mean "ran as intended" (health exits with the worst check's status)
    ok_codes: tuple[int, ...] = (0,)
    # in-process work instead of a child process
    call: Callable[[], object] | None = None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def run(self, cwd: str) -> None:
        if self.call is not None:
            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            self.call()
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            self.wall.append(wall)
            self.cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            return
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            started = time.perf_counter()
            process = subprocess.Popen(
                self.argv, cwd=cwd, env=self.env, stdout=stdout, stderr=stderr
            )
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode not in self.ok_codes:
                stderr.seek(0)
                stdout.seek(0)
                sys.exit(
                    f"{self.label}: exit {process.returncode}\n"
                    f"{stdout.read().decode(errors='replace')[-2000:]}"
                    f"{stderr.read().decode(errors='replace')[-2000:]}"
                )
        self.wall.append(wall)
        self.cpu.append(usage.ru_utime + usage.ru_stime)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


def clean_environment(pycache: str = "") -> dict[str, str]:
    """This process's environment without KRONOS_* and libpq's PG* (the URL says it all).

    With ``pycache``, Python writes and reads its bytecode there, whatever
    PYTHONDONTWRITEBYTECODE says: an installed kronos-db has its modules byte-compiled (pip
    does it on install), a checkout run with PYTHONDONTWRITEBYTECODE=1 would compile every
    module from source at every start (~100 ms for health), which no deployment pays.
    """
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KRONOS_", "PG", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"))
        and name not in {"COMP_WORDS", "COMP_CWORD"}
    }
    if pycache:
        environment["PYTHONPYCACHEPREFIX"] = pycache
    return environment


def add_partitions(url: str, wanted: int) -> int:
    """Daily ``logs`` partitions going back from yesterday until there are ``wanted``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            DO $$
            DECLARE
              day date := (now() AT TIME ZONE 'UTC')::date;
              have integer;
              back integer := 0;
            BEGIN
              SELECT count(*) INTO have FROM pg_inherits WHERE inhparent = 'logs'::regclass;
              WHILE have < %(wanted)s LOOP
                back := back + 1;
                IF to_regclass('logs_p' || to_char(day - back, 'YYYY_MM_DD')) IS NULL THEN
                  EXECUTE format(
                    'CREATE TABLE %I PARTITION OF logs FOR VALUES FROM (%L) TO (%L)',
                    'logs_p' || to_char(day - back, 'YYYY_MM_DD'),
                    ((day - back)::timestamp AT TIME ZONE 'UTC'),
                    ((day - back + 1)::timestamp AT TIME ZONE 'UTC'));
                  have := have + 1;
                END IF;
              END LOOP;
            END $$
            """.replace("%(wanted)s", str(int(wanted)))
        )
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'logs'::regclass"
        ).fetchone()
        return int(row[0]) if row else 0


def capture_health_sql(url: str, path: Path) -> int:
    """Run health once in process through a recording cursor; write what it ran to ``path``."""
    RecordingCursor.recorded = []
    # one connection: the one that records (health's own extra connections would not)
    serial = Settings(health=dataclasses.replace(HealthSettings(), parallel_connections=1))
    with psycopg.connect(url, autocommit=True, cursor_factory=RecordingCursor) as conn:
        health_report(conn, serial, now=datetime.now(UTC))
    statements = list(RecordingCursor.recorded)
    with path.open("w") as script:
        for statement in statements:
            script.write(statement.rstrip().rstrip(";") + ";\n")
    return len(statements)


def library_health(url: str) -> Callable[[], object]:
    """health_report() on a fresh connection (in this process: no start-up, no imports)."""

    def call() -> object:
        with psycopg.connect(url, autocommit=True) as conn:
            return health_report(conn, Settings(), now=datetime.now(UTC))

    return call


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def contenders(cron_url: str, health_url: str, health_sql: Path, pycache: str) -> list[Contender]:
    env = clean_environment(pycache)
    psql = shutil.which("psql") or "psql"
    kronos = [SCRIPT]
    floor = (
        "import psycopg\n"
        f"with psycopg.connect({cron_url!r}, autocommit=True) as conn:\n"
        f"    conn.execute({FLOOR_STATEMENT!r})\n"
    )

    def complete(words: str, cword: int) -> dict[str, str]:
        return {
            **env,
            "_KRONOS_DB_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        }

    return [
        Contender("python floor: import psycopg, connect, DELETE", [sys.executable, "-c", floor]),
        Contender("psql -c DELETE", [psql, "-X", "-q", "-c", FLOOR_STATEMENT, cron_url]),
        Contender(
            "kronos-db expire sessions (nothing to expire)",
            [*kronos, "expire", "sessions", "--database-url", cron_url],
        ),
        Contender(
            "kronos-db maintain (nothing due)",
            [*kronos, "maintain", "--database-url", cron_url],
        ),
        Contender(
            "kronos-db health --check connections",
            [*kronos, "health", "--check", "connections", "--database-url", cron_url],
        ),
        Contender(
            "kronos-db health (every check, N partitions)",
            [*kronos, "health", "--database-url", health_url],
            ok_codes=(0, 1, 2, 3),
        ),
        Contender(
            "kronos-db health on one connection (every check, N partitions)",
            [*kronos, "health", "--database-url", health_url],
            {**env, "KRONOS_HEALTH_PARALLEL_CONNECTIONS": "1"},
            ok_codes=(0, 1, 2, 3),
        ),
        Contender(
            "psql -f <the SQL health ran>",
            [
                psql,
                "-X",
                "-q",
                "-o",
                "/dev/null",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                str(health_sql),
                health_url,
            ],
        ),
        Contender("health_report() in process (library)", call=library_health(health_url)),
        Contender("TAB: kronos-db <TAB>", kronos, complete("kronos-db ", 1)),
        Contender("TAB: kronos-db expire <TAB>", kronos, complete("kronos-db expire ", 2)),
    ]


def fill_env(items: Sequence[Contender], pycache: str) -> None:
    base = clean_environment(pycache)
    for item in items:
        if not item.env:
            item.env = base


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "-"


def report(items: list[Contender], partitions: int, statements: int) -> bool:
    by_label = {item.label.split(" (")[0]: item for item in items}
    floor = by_label["python floor: import psycopg, connect, DELETE"]
    psql_c = by_label["psql -c DELETE"]
    psql_f = by_label["psql -f <the SQL health ran>"]
    ok = True
    print()
    print(f"| contender (median of {len(floor.wall)} runs) | wall | CPU (user+sys) |")
    print("| --- | ---: | ---: |")
    for item in items:
        label = item.label.replace("N partitions", f"{partitions:,} partitions")
        print(f"| {label} | {item.median_wall * 1000:,.0f} ms | {item.median_cpu * 1000:,.0f} ms |")
    print()
    print("| no-op cron command | wall / floor | CPU / floor | wall / psql -c | CPU / psql -c |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for item in items:
        if not item.label.startswith(
            ("kronos-db expire", "kronos-db maintain", "kronos-db health --")
        ):
            continue
        wall_ratio = item.median_wall / floor.median_wall
        cpu_ratio = item.median_cpu / floor.median_cpu
        ok &= wall_ratio <= CRON_TARGET and cpu_ratio <= CRON_TARGET
        print(
            f"| {item.label} | {wall_ratio:.2f}x | {cpu_ratio:.2f}x | "
            f"{ratio(item.median_wall, psql_c.median_wall)} | "
            f"{ratio(item.median_cpu, psql_c.median_cpu)} |"
        )
    health = next(item for item in items if item.label.startswith("kronos-db health (every"))
    serial = next(item for item in items if item.label.startswith("kronos-db health on one"))
    library = next(item for item in items if item.call is not None)
    print()
    print(
        f"health on {partitions:,} partitions ({statements} statements), wall / psql -f: "
        f"process {ratio(health.median_wall, psql_f.median_wall)} (on one connection "
        f"{ratio(serial.median_wall, psql_f.median_wall)}), "
        f"library {ratio(library.median_wall, psql_f.median_wall)}; the Python floor plus the "
        f"library (what any Python process running these checks pays at least) "
        f"{ratio(floor.median_wall + library.median_wall, psql_f.median_wall)}"
    )
    ok &= health.median_wall <= HEALTH_TARGET * psql_f.median_wall
    for item in items:
        if item.label.startswith("TAB"):
            ok &= item.median_wall < COMPLETION_TARGET
            print(
                f"{item.label}: {item.median_wall * 1000:.0f} ms (target < "
                f"{COMPLETION_TARGET * 1000:.0f} ms)"
            )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--server",
        default=os.environ.get("KRONOS_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432"),
    )
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--partitions", type=int, default=1000)
    args = parser.parse_args()
    base = f"kronos_bench_startup_{os.getpid()}"
    targets = {
        kind: db.resolve_target(f"{args.server}/{base}_{kind}", Settings())
        for kind in ("cron", "health")
    }
    for target in targets.values():
        db.create_database(target)
    workdir = tempfile.mkdtemp(prefix="kronos-bench-startup-")
    try:
        for target in targets.values():
            migrations.upgrade(Settings(), target, "head")
        cron_url = targets["cron"].conninfo
        health_url = targets["health"].conninfo
        # maintain once: what it then finds is nothing due
        subprocess.run(
            [SCRIPT, "maintain", "--database-url", cron_url],
            cwd=workdir,
            env=clean_environment(),
            check=True,
            capture_output=True,
        )
        partitions = add_partitions(health_url, args.partitions)
        health_sql = Path(workdir) / "health.sql"
        statements = capture_health_sql(health_url, health_sql)
        # the warm-up round writes every module's bytecode there, as an install would have
        pycache = str(Path(workdir) / "pycache")
        items = contenders(cron_url, health_url, health_sql, pycache)
        fill_env(items, pycache)
        load_before = os.getloadavg()
        busy_before = cpu_busy()
        print(
            f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} {load_before[1]:.2f} "
            f"{load_before[2]:.2f} at the start; {args.runs} rounds after one warm-up",
            flush=True,
        )
        for round_number in range(args.runs + 1):
            shift = round_number % len(items)
            for item in items[shift:] + items[:shift]:
                item.run(workdir)
            if round_number == 0:  # the warm-up round is not counted
                for item in items:
                    item.wall.clear()
                    item.cpu.clear()
                    busy_before = cpu_busy()
        busy_after = cpu_busy()
        load_after = os.getloadavg()
        busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
        print(
            f"load average {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} at the "
            f"end; the machine's CPUs were {busy:.0%} busy during the rounds (this benchmark "
            "included: it keeps about one busy)"
        )
        ok = report(items, partitions, statements)
        print()
        print("targets met" if ok else "a target missed")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for target in targets.values():
            db.drop_database(target)


if __name__ == "__main__":
    main()
