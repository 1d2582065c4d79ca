"""Fixtures: a real PostgreSQL server, a migrated template database, one clone per test.

The server is the one already running (pytest-postgresql's no-process mode): host, port and
superuser come from KRONOS_TEST_HOST, KRONOS_TEST_PORT and KRONOS_TEST_USER (127.0.0.1, 5432,
postgres). The template is migrated once per session; each test gets a clone
(``CREATE DATABASE … TEMPLATE``) and drops it afterwards. Names carry the process id and a
random part, so concurrent runs on one server never collide.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from kronos_db import db, migrations
from kronos_db.config import Settings

HOST = os.environ.get("KRONOS_TEST_HOST", "127.0.0.1")
PORT = int(os.environ.get("KRONOS_TEST_PORT", "5432"))
USER = os.environ.get("KRONOS_TEST_USER", "postgres")
REPO = Path(__file__).resolve().parent.parent


def url_for(dbname: str, user: str = USER) -> str:
    return f"postgresql://{user}@{HOST}:{PORT}/{dbname}"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


@dataclasses.dataclass(frozen=True)
class Database:
    name: str
    url: str

    @property
    def target(self) -> db.Target:
        return db.resolve_target(self.url, Settings())

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url, **kwargs)


def _janitor(name: str, template: str | None = None) -> DatabaseJanitor:
    return DatabaseJanitor(user=USER, host=HOST, port=PORT, dbname=name, template_dbname=template)


@pytest.fixture(scope="session")
def template_database() -> Iterator[Database]:
    """An empty database migrated to head once per session: every test's starting point."""
    name = unique_name("kronos_tpl")
    with _janitor(name):
        database = Database(name, url_for(name))
        migrations.upgrade(Settings(), database.target, "head")
        yield database


@pytest.fixture
def database(template_database: Database) -> Iterator[Database]:
    """A fresh database at head, cloned from the template."""
    name = unique_name("kronos_test")
    with _janitor(name, template=template_database.name):
        yield Database(name, url_for(name))


@pytest.fixture
def empty_database() -> Iterator[Database]:
    """A fresh database with nothing in it."""
    name = unique_name("kronos_empty")
    with _janitor(name):
        yield Database(name, url_for(name))


@pytest.fixture
def conn(database: Database) -> Iterator[psycopg.Connection[Any]]:
    with database.connect() as connection:
        yield connection


@pytest.fixture
def tree_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of migrations/ and sql/, and a kronos.toml pointing at it."""
    root = tmp_path / "tree"
    shutil.copytree(
        REPO / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "sql", root / "sql")
    config = tmp_path / "kronos.toml"
    config.write_text(f'[migrations]\ndirectory = "{root}"\n', encoding="utf-8")
    return root, config


def write_revision(root: Path, message: str, upgrade: str, downgrade: str) -> Path:
    """A new revision in the tree at ``root`` (after its head) with the given SQL pair."""
    from kronos_db.config import MigrationSettings
    from kronos_db.migration_sql import sql_path

    created = migrations.create_revision(
        Settings(migrations=MigrationSettings(directory=str(root))), message
    )
    revision_file = created.files[0]
    sql_path(revision_file, "upgrade").write_text(upgrade, encoding="utf-8")
    sql_path(revision_file, "downgrade").write_text(downgrade, encoding="utf-8")
    return revision_file


class TimedWriter(threading.Thread):
    """A service: one statement every ``interval`` seconds on its own connection, each timed
    (``waits``), failures kept (``errors``). ``statement`` gives the SQL and its parameters."""

    def __init__(
        self,
        database: Database,
        interval: float,
        statement: Callable[[], tuple[str, tuple[Any, ...]]],
    ) -> None:
        super().__init__(daemon=True)
        self.database, self.interval, self.statement = database, interval, statement
        self.stop = threading.Event()
        self.waits: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        with self.database.connect() as conn:
            while not self.stop.wait(self.interval):
                text, params = self.statement()
                started = time.monotonic()
                try:
                    conn.execute(text, params)
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                self.waits.append(time.monotonic() - started)


PROBE_ROLE = "kronos_auth_probe"
PROBE_PASSWORD = "kronos-probe-secret"


@pytest.fixture(scope="session")
def password_role() -> str:
    """A role that must log in with a password: .ci/run adds its scram rule to pg_hba.conf.

    Roles are cluster-wide and shared by concurrent runs: created or updated, never dropped.
    """
    with psycopg.connect(url_for("postgres"), autocommit=True) as conn:
        rule = conn.execute(
            "SELECT 1 FROM pg_hba_file_rules WHERE %s = ANY(user_name)"
            " AND auth_method = 'scram-sha-256'",
            (PROBE_ROLE,),
        ).fetchone()
        if rule is None:
            pytest.skip(f"pg_hba.conf has no scram-sha-256 rule for {PROBE_ROLE}: run .ci/run")
        role, password = sql.Identifier(PROBE_ROLE), sql.Literal(PROBE_PASSWORD)
        with contextlib.suppress(psycopg.errors.DuplicateObject):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(role, password))
    return PROBE_ROLE


@pytest.fixture
def settings() -> Settings:
    return Settings()


@dataclasses.dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without connection settings, plus ``extra``."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KRONOS_", "PG")) and k != "DATABASE_URL"
    }
    environment.update(extra or {})
    return environment


def run_process(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> CliResult:
    """Run a command with no terminal, as cron or CI would, from ``cwd`` (the repository)."""
    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=clean_environment(env),
        cwd=cwd or REPO,
        timeout=timeout,
        input=input,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> CliResult:
    """Run ``kronos-db`` in a subprocess."""
    return run_process(
        [sys.executable, "-m", "kronos_db", *args], env=env, cwd=cwd, timeout=timeout, input=input
    )


@pytest.fixture
def cli() -> Any:
    return run_cli


def statement_evictions(conn: psycopg.Connection[Any]) -> int:
    """How many times pg_stat_statements has evicted entries since its last reset."""
    from kronos_db.checks import Limits
    from kronos_db.reports import statements

    limits = Limits(statement_timeout=timedelta(seconds=5), lock_timeout=timedelta(seconds=1))
    extension = statements.require_statements(conn, limits)  # in whatever schema it is now
    return statements.statements_info(conn, extension, limits).dealloc or 0


def retry_on_eviction(
    conn: psycopg.Connection[Any], scenario: Callable[[int], None], attempts: int = 3
) -> None:
    """pg_stat_statements is server-wide and shared with every other job on this server: when
    it is full it evicts the least-used entries, ours included. A failure is retried only when
    an eviction happened meanwhile; any other failure is a real one."""
    for attempt in range(attempts):
        before = statement_evictions(conn)
        try:
            scenario(attempt)
            return
        except AssertionError:
            if statement_evictions(conn) == before or attempt == attempts - 1:
                raise


def wait_for(predicate: Callable[[], object], message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.05)


def migration_waiting_on_a_lock(conn: psycopg.Connection[Any]) -> int | None:
    """The backend of a kronos-db run of this database that waits for a lock, if any."""
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'kronos-db' AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else None


def wait_until_backend_ends(conn: psycopg.Connection[Any], pid: int | None) -> None:
    """A killed client's backend finishes its statement, finds the client gone, rolls back."""
    wait_for(
        lambda: (
            conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            == (0,)
        ),
        "the orphaned backend to end",
    )


def drop_roles(urls: Sequence[str], names: Sequence[str]) -> None:
    """Drop a test's own roles (cluster-wide: only those it created, never a shared one).

    In each database first: what they own back to the superuser (the schema public too, once
    the mapping's owner owned it), then their privileges dropped; then the roles.
    """
    for url in urls:
        with psycopg.connect(url, autocommit=True) as cleanup:
            for name in names:
                if cleanup.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                    role = sql.Identifier(name)
                    cleanup.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(role))
                    cleanup.execute(sql.SQL("DROP OWNED BY {}").format(role))
    with psycopg.connect(urls[0], autocommit=True) as cleanup:
        for name in names:
            cleanup.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
