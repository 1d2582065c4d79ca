"""Start-up: a command imports only what it runs, and a TAB imports no command at all.

Cron runs the housekeeping commands every few minutes and Nagios runs ``health`` every minute,
so what a process imports is what it costs (bench/startup.py measures it). These tests pin the
imports, which is what the timings follow from and, unlike timings, cannot be noisy.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import Database, run_process

# completion is keyed on the program's name: run the installed script, not `python -m`
SCRIPT = str(Path(sys.executable).parent / "kronos-db")

# what a no-op cron command never needs
HEAVY = (
    "rich",
    "pydantic",
    "alembic",
    "sqlalchemy",
    "argon2",
    "sqlparse",
    "kronos_db.migrations",
    "kronos_db.backups",
    "kronos_db.partitions",
    "kronos_db.security",
    "kronos_db.roles",
    # the HTML page's charts (health --html) and the slow_queries check only
    "kronos_db.reports.queries",
    "kronos_db.reports.space",
    "kronos_db.reports.snapshots",
    "kronos_db.cli.reports",
    "kronos_db.cli.backups",
    "kronos_db.cli.security",
)


# what the process had imported when it exited, whatever imported it: -X importtime misses the
# modules importlib.import_module loads (health's checks, the CLI's commands)
_REPORT_MODULES = """
import atexit, runpy, sys
def report():
    sys.stderr.write("".join(f"module: {name}\\n" for name in sorted(sys.modules)))
atexit.register(report)
sys.argv = ["kronos-db", *sys.argv[1:]]
runpy.run_module("kronos_db", run_name="__main__", alter_sys=True)
"""


def imported_by(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a ``kronos-db`` process had imported when it exited."""
    result = run_process([sys.executable, "-c", _REPORT_MODULES, *args], env=env)
    assert "Traceback" not in result.stderr, result.stderr
    modules = {
        line.removeprefix("module: ")
        for line in result.stderr.splitlines()
        if line.startswith("module: ")
    }
    assert "kronos_db.cli" in modules, result.stderr
    return modules


def heavy_among(modules: set[str]) -> list[str]:
    return sorted(
        name for name in modules if any(name == h or name.startswith(h + ".") for h in HEAVY)
    )


def test_a_no_op_cron_command_imports_only_what_it_runs(database: Database) -> None:
    modules = imported_by("expire", "sessions", "--database-url", database.url)
    assert "kronos_db.housekeeping" in modules
    assert heavy_among(modules) == []
    modules = imported_by("health", "--check", "connections", "--database-url", database.url)
    assert "kronos_db.reports.health" in modules
    assert heavy_among(modules) == []
    # every check: the partitions' status and pg_partman's policy, never the rotation's steps
    modules = imported_by("health", "--database-url", database.url)
    assert {"kronos_db.partitions.status", "kronos_db.partman"} <= modules
    rotation = ("executor", "runner", "ddl", "archive", "rotation", "partman_rotation")
    assert sorted(modules & {f"kronos_db.partitions.{name}" for name in rotation}) == []


def test_completion_lists_the_commands_without_importing_them() -> None:
    environment = {
        "_KRONOS_DB_COMPLETE": "complete_bash",
        "COMP_WORDS": "kronos-db ",
        "COMP_CWORD": "1",
    }
    result = run_process([SCRIPT], env={**environment, "PYTHONPROFILEIMPORTTIME": "1"})
    names = result.stdout.split()
    assert {"migrate", "expire", "maintain", "health", "backup", "report"} <= set(names)
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "psycopg" not in imported
    assert sorted(m for m in imported if m.startswith("kronos_db.cli.")) == ["kronos_db.cli.common"]
    deeper = {**environment, "COMP_WORDS": "kronos-db expire s", "COMP_CWORD": "2"}
    assert run_process([SCRIPT], env=deeper).stdout.split() == ["sessions"]
